"""What is tested is stated once, in docs/integrations.md's "Tested" section, and agrees with setup.py.

Other pages link to the section; a paragraph elsewhere that lists tested transformers versions again
(two or more of them), or a stale version claim, fails here.
"""

from __future__ import annotations

import re

from _docs import PAGES, ROOT

INTEGRATIONS = ROOT / "docs" / "integrations.md"
VERSION = re.compile(r"(?<![\w.])(4\.45|4\.57|5\.25)(?:\.\d+)?(?![\w.])")
STALE = [re.compile(p) for p in (r"(?<![\w.])5\.(?:17|24)(?:\.0)?(?![\w.x])", r"do not fit the method")]


def _tested_section() -> str:
    text = INTEGRATIONS.read_text()
    m = re.search(r"^## Tested\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, "docs/integrations.md has no '## Tested' section"
    return m.group(1)


def _key(version: str) -> tuple:
    return tuple(int(x) for x in version.split("."))


def _paragraphs(text: str):
    return [p for p in re.split(r"\n\s*\n", text) if p.strip()]


def test_tested_versions_are_listed_in_one_place():
    section = _tested_section()
    assert {"4.45", "4.57", "5.25"} <= set(VERSION.findall(section))
    repeated = []
    for page in PAGES:
        text = page.read_text()
        if page == INTEGRATIONS:
            text = text.replace(section, "")
        for para in _paragraphs(text):
            if len(set(VERSION.findall(para))) >= 2:
                repeated.append(f"{page.relative_to(ROOT)}: {para.strip()[:120]!r}")
    assert not repeated, "link to docs/integrations.md#tested instead of listing versions:\n" + "\n".join(repeated)


def test_no_stale_statements():
    stale = [f"{page.relative_to(ROOT)}: {m.group(0)!r}" for page in PAGES for pattern in STALE
             for m in pattern.finditer(page.read_text())]
    assert not stale, "\n".join(stale)


def test_tested_versions_agree_with_setup_py():
    """The oldest tested transformers is setup.py's floor; the tested vLLM is inside its pin."""
    setup = (ROOT / "setup.py").read_text()
    floor = re.search(r'"transformers>=([\d.]+)"', setup).group(1)
    section = _tested_section()
    assert min(VERSION.findall(section), key=_key) == floor
    lo, hi = re.search(r'"vllm>=([\d.]+),<([\d.]+)"', setup).groups()
    vllm = re.search(r"vLLM \| \*\*([\d.]+)\*\*", section).group(1)
    assert _key(lo) <= _key(vllm) < _key(hi)

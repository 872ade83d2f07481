"""The code of README.md and docs/*.md as data: fenced blocks, inline commands, shell words.

Every fenced block states what it is in its info string (docs/CONTRIBUTING.md, "Code in the docs"):

- ```` ```text ````: not code (formulas, schemas, diagrams, printed output);
- ```` ```python run ```` / ```` ```bash run ````: run by tests/test_docs_commands.py as written (python
  blocks of one page share one interpreter, in page order, as a reader pasting them would);
- ```` ```python check ```` / ```` ```bash check ````: not run (needs checkpoints, a GPU, a server, minutes,
  or writes benchmarks/results/); parsed, and what it names is checked to exist;
- ```` ```bash usage ````: a synopsis (``[optional]`` parts); its flags are checked.

Inline code spans that start like a command (``python -m``, ``bash scripts/``, ``make`` ...) are
checked as ``check`` commands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
KINDS = {"text": {""}, "python": {"run", "check"}, "bash": {"run", "check", "usage"}}

_FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})(.*)$")
# a command at the start of an inline code span: optional VAR=value words, then one of these
_INLINE_COMMAND = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)*(?:python3?|\.venv-vllm/bin/python|bash|make|pytest|pip|"
                             r"compute-sanitizer)\s")
_INLINE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)


@dataclass(frozen=True)
class Block:
    """One fenced block: where it starts (1-based line of the opening fence), its info string, its text."""

    page: Path
    line: int
    lang: str
    mark: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str | None:
        """``text``, ``python run``, ``bash check`` ..., or None when the info string does not classify it."""
        return f"{self.lang} {self.mark}".strip() if self.mark in KINDS.get(self.lang, ()) else None


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a markdown page, in order."""
    lines = page.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, words = m.group(2), m.group(3).split()
        end = i + 1
        while end < len(lines) and not re.fullmatch(rf" {{0,3}}{fence[0]}{{{len(fence)},}}\s*", lines[end]):
            end += 1
        out.append(Block(page, i + 1, words[0] if words else "", " ".join(words[1:]),
                         "\n".join(lines[i + 1:end]) + "\n"))
        i = end + 1
    return out


def all_blocks() -> list[Block]:
    return [b for page in PAGES for b in blocks(page)]


def inline_commands(page: Path) -> list[tuple[str, str]]:
    """(where, command) of the inline code spans of a page that start like a shell command."""
    text = page.read_text()
    for b in blocks(page):  # blank the fenced blocks (keeping line numbers) so only prose spans remain
        lines = text.splitlines(keepends=True)
        n = b.text.count("\n") + 2
        for j in range(b.line - 1, min(b.line - 1 + n, len(lines))):
            lines[j] = "\n"
        text = "".join(lines)
    found = []
    for m in _INLINE_SPAN.finditer(text):
        span = " ".join(m.group(2).split())
        if _INLINE_COMMAND.match(span + " "):
            found.append((f"{page.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}", span))
    return found


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell snippet as word lists, quotes removed.

    Comments are dropped, backslash-newline joins lines, and ``;``, ``&&``, ``||``, ``|``, ``&`` and
    newlines (outside quotes) end a command; a quoted newline stays in its word (a JSON argument
    spread over lines). Enough for documentation commands, which use no here-docs or substitutions.
    """
    commands, words, word, quote, started = [], [], [], None, False
    i, n = 0, len(script)

    def end_word():
        nonlocal word, started
        if started:
            words.append("".join(word))
        word, started = [], False

    def end_command():
        nonlocal words
        end_word()
        if words:
            commands.append(words)
        words = []

    while i < n:
        ch = script[i]
        if quote:
            if ch == quote:
                quote = None
            elif ch == "\\" and quote == '"' and i + 1 < n and script[i + 1] in '"\\$`':
                i += 1
                word.append(script[i])
            else:
                word.append(ch)
        elif ch in "'\"":
            quote, started = ch, True
        elif ch == "\\" and i + 1 < n:
            i += 1
            if script[i] != "\n":
                word.append(script[i])
                started = True
        elif ch == "#" and not started:
            while i + 1 < n and script[i + 1] != "\n":
                i += 1
        elif ch in " \t":
            end_word()
        elif ch in "\n;|&":
            end_command()
        else:
            word.append(ch)
            started = True
        i += 1
    if quote:
        raise ValueError(f"unclosed {quote} quote in: {script!r}")
    end_command()
    return commands


def split_env(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Leading ``NAME=value`` words (the command's environment) and the command itself."""
    env = {}
    while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0], re.S):
        name, _, value = argv[0].partition("=")
        env[name] = value
        argv = argv[1:]
    return env, argv


def long_flags(words) -> list[str]:
    """The ``--flag`` words (``--flag=value`` gives ``--flag``)."""
    return [w.split("=", 1)[0] for w in words if re.match(r"--[A-Za-z]", w)]


def help_flags(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[A-Za-z][\w-]*)", help_text))

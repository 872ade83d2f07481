"""The subprocess side of tests/test_docs_commands.py: run in a fresh interpreter of the environment a
documented command uses (the main one, or ``.venv-vllm``), so nothing leaks into the test process.

    python tests/_docs_exec.py help TARGET...   # TARGET: module:NAME or path:FILE; prints {target: --help text}
    python tests/_docs_exec.py run FILE.json    # runs python blocks [{"page", "where", "code"}]; prints problems

``help`` runs each module / script with ``--help`` in this one process (argparse prints and exits
before any work), so torch is imported once. ``run`` executes the blocks of one page in one
namespace, in order, statement by statement; an expression statement whose line ends in a
comment starting with a number (``prefill_macs(cfg, 576, 64)  # 4_252_017_623_040``) must
evaluate to that number (the number then ends the line, or a colon or two spaces follow it).
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import runpy
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# "# 4_252_017_623_040", "# 335_544_320: 2 (K, V) ...", "# 1_675_...  (39.4%)"; not "# 2 x MACs"
_NUMBER_COMMENT = re.compile(r"\s*#\s*(-?[0-9][0-9_,]*(?:\.[0-9]+)?)(?=$|:|\s{2})")


def help_texts(targets) -> dict:
    sys.path.insert(0, str(ROOT))
    out = {}
    for target in targets:
        kind, _, name = target.partition(":")
        buf, argv = io.StringIO(), sys.argv
        sys.argv = [name, "--help"]
        try:
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
                if kind == "module":
                    runpy.run_module(name, run_name="__main__", alter_sys=True)
                else:  # as `python path`: the script's folder first on sys.path
                    sys.path.insert(0, str((ROOT / name).parent))
                    runpy.run_path(str(ROOT / name), run_name="__main__")
            out[target] = "ERROR: --help did not exit"
        except SystemExit as e:
            out[target] = buf.getvalue() if e.code in (0, None) else f"ERROR: --help exited with {e.code}"
        except BaseException:  # noqa: B036 - report anything (an ImportError of a missing dependency too)
            out[target] = "ERROR: " + traceback.format_exc(limit=3)
        finally:
            sys.argv = argv
    return out


def _number_comment(code_lines, stmt):
    m = _NUMBER_COMMENT.match(code_lines[stmt.end_lineno - 1][stmt.end_col_offset:])
    return None if m is None else float(m.group(1).replace("_", "").replace(",", ""))


def run_blocks(blocks) -> list:
    problems, namespaces = [], {}
    for block in blocks:
        ns = namespaces.setdefault(block["page"], {"__name__": "__main__"})
        lines = block["code"].splitlines()
        for stmt in ast.parse(block["code"]).body:
            where = f"{block['where']} (+{stmt.lineno})"
            try:
                if isinstance(stmt, ast.Expr):
                    value = eval(compile(ast.Expression(stmt.value), where, "eval"), ns)
                    want = _number_comment(lines, stmt)
                    if want is not None and value != want:
                        problems.append(f"{where}: {ast.unparse(stmt)} gives {value}, the comment says {want:g}")
                else:
                    exec(compile(ast.Module([stmt], []), where, "exec"), ns)
            except Exception:
                problems.append(f"{where}: {traceback.format_exc(limit=2)}")
                break
    return problems


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    result = help_texts(args) if mode == "help" else run_blocks(json.loads(Path(args[0]).read_text()))
    print("\n@@DOCS-JSON@@" + json.dumps(result))

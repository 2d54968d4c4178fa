"""The documentation's code runs, and says what it prints.

Every ```python block of the README, of each page of the documentation site
(docs/*.md) and of the public docstrings (the API reference is generated
from them) runs here: a page's blocks in order, in one namespace, as a reader
pasting them would run them. A ``print(...)`` whose comment starts with a
Python literal (``print(report.fused[:3])  # ['blocks.0', ...]``) must print
that value. The site itself builds with ``mkdocs build --strict`` (broken
links, anchors and API references fail it) where mkdocs is installed.
"""

from __future__ import annotations

import ast
import inspect
import io
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import tokenize
from pathlib import Path

import pytest
import torch

import droppath_ext as dp
from droppath_ext import residual

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
README_MAX_LINES = 250
# (indented too: a docstring's Example section indents its fence)
_PYTHON_BLOCK = re.compile(r"^([ \t]*)```python\n(.*?)^\1```", re.MULTILINE | re.DOTALL)
# The public API the reference renders (docs/reference.md).
_DOCUMENTED = [getattr(dp, name) for name in dp.__all__ if name != "__version__"] + [residual.skip_pays]


def python_blocks(text: str) -> list[str]:
    return [textwrap.dedent(m.group(2)) for m in _PYTHON_BLOCK.finditer(text)]


_NO_LITERAL = object()


def _literal_prefix(comment: str):
    """The longest prefix of ``comment`` that is a Python literal, cut at a
    colon or the end (``{'a': None}: both skip`` -> ``{'a': None}``); else a
    marker that there is none."""
    cuts = [len(comment)] + [i for i in range(len(comment) - 1, 0, -1) if comment[i] == ":"]
    for cut in cuts:
        try:
            return ast.literal_eval(comment[:cut].strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return _NO_LITERAL



def _printed_expectations(code: str) -> dict[int, object]:
    """Line number -> the literal a ``print(x)  # <literal>`` line promises."""
    comments = {}
    for tok in tokenize.generate_tokens(io.StringIO(code).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string[1:].strip()
    promised = {}
    for node in ast.parse(code).body:
        call = node.value if isinstance(node, ast.Expr) else None
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "print"
                and len(call.args) == 1 and not call.keywords and node.lineno == node.end_lineno):
            continue
        value = _literal_prefix(comments.get(node.lineno, ""))
        # (containers and True/False: a bare number or word may be prose)
        if value is not _NO_LITERAL and (isinstance(value, bool) or not isinstance(value, (int, float, str))):
            promised[node.lineno] = value
    return promised


def run_blocks(blocks: list[str], where: str) -> None:
    """Run ``blocks`` in order in one namespace; check the promised prints.
    Each block runs from a file of its own, as a reader's script would, so
    that ``inspect`` reads the source of what it defines (generic fusion
    rewrites a block's forward from its source)."""
    namespace: dict = {"__name__": "__docs__"}
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        try:
            for i, code in enumerate(blocks):
                path = os.path.join(folder, f"{re.sub(r'[^A-Za-z0-9]+', '_', where)}_block{i + 1}.py")
                Path(path).write_text(code)
                label = f"{where}, block {i + 1}"
                promised = _printed_expectations(code)
                for node in ast.parse(code).body:
                    if node.lineno in promised:
                        value = eval(compile(ast.Expression(node.value.args[0]), path, "eval"), namespace)
                        assert value == promised[node.lineno], (
                            f"{label}, line {node.lineno}: prints {value!r}, "
                            f"its comment says {promised[node.lineno]!r}")
                    else:
                        exec(compile(ast.Module([node], type_ignores=[]), path, "exec"), namespace)
        finally:
            torch._dynamo.reset()


def _needs(blocks: list[str]) -> None:
    for module in ("timm", "transformers"):
        if any(re.search(rf"^\s*import .*\b{module}\b|^\s*from {module}\b", b, re.MULTILINE) for b in blocks):
            pytest.importorskip(module, reason=f"the examples import {module} (install.py --test installs it)")


def _docstring_blocks(obj) -> list[str]:
    return python_blocks(inspect.cleandoc("\n" + (inspect.getdoc(obj) or "")) + "\n")


# (index.md shows the README's examples, through snippets: they run as the README's)
_PAGES_WITH_EXAMPLES = [page for page in PAGES if python_blocks(page.read_text())]
_DOCUMENTED_WITH_EXAMPLES = [obj for obj in _DOCUMENTED if _docstring_blocks(obj)]


@pytest.mark.parametrize("page", _PAGES_WITH_EXAMPLES, ids=[str(p.relative_to(ROOT)) for p in _PAGES_WITH_EXAMPLES])
def test_page_examples_run(page):
    blocks = python_blocks(page.read_text())
    _needs(blocks)
    run_blocks(blocks, str(page.relative_to(ROOT)))


@pytest.mark.parametrize("obj", _DOCUMENTED_WITH_EXAMPLES, ids=[o.__name__ for o in _DOCUMENTED_WITH_EXAMPLES])
def test_docstring_examples_run(obj):
    blocks = _docstring_blocks(obj)
    _needs(blocks)
    run_blocks(blocks, f"{obj.__module__}.{obj.__name__}")


def test_the_examples_are_found():
    """The collection above sees the examples (a changed fence would hide them)."""
    assert {p.name for p in _PAGES_WITH_EXAMPLES} >= {"README.md", "api.md", "converting.md", "skip-mode.md",
                                                     "after-training.md", "performance.md"}
    assert {o.__name__ for o in _DOCUMENTED_WITH_EXAMPLES} >= {"drop_path", "convert_model", "drop_path_residual"}


def test_print_promises_are_checked():
    """The check itself: a wrong promise fails, prose and partial values pass."""
    run_blocks(["x = [1, 2]\nprint(x)  # [1, 2]: the list\nprint(x)  # e.g. [1, ...]\nprint(len(x))  # 2 items"],
               "self-test")
    with pytest.raises(AssertionError, match="its comment says"):
        run_blocks(["print([1, 2])  # [1, 3]"], "self-test")


def test_readme_is_a_five_minute_read():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; the rest belongs in docs/"
    text = "\n".join(lines)
    for command in ("python scripts/install.py", "python scripts/install.py --test", "python scripts/docs.py serve"):
        assert command in text


def test_every_page_is_in_the_site_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        assert f": {page.name}" in nav, f"docs/{page.name} is not in mkdocs.yml's nav"


def test_site_builds_strictly(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason="the site's build tools: pip install -r docs/requirements.txt")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, NO_MKDOCS_2_WARNING="1"), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

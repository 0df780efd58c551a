"""The docs stay where a newcomer can find them and true to what they point at.

* No measurement rots in a library docstring: a timing written into one (``66.6 ms``,
  ``3.7 s``) belongs, with its date and its command, in ``docs/benchmarks.md``. The rule
  is deliberately plain: a docstring (or a ``#:`` attribute doc-comment, which Sphinx
  reads as one) of the library may not write a number followed by ``ms`` or ``s``. A
  duration that is a setting, not a measurement, is written out ("5 seconds") or named
  by its parameter.
* The README stays a README (the rest lives under ``docs/``).
* Every relative link of the README and of ``docs/*.md`` reaches a file that exists and,
  where it names an anchor in a Markdown file, a heading of that file.
* The GPU page and the GPU harness speak to any GPU owner, in no particular lab's words.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The library: every folder ``package-dir`` maps into ``sst`` except the benchmarks.
LIBRARY = ("export", "tracker", "client", "server_config", "model_repository")
TIMING = re.compile(r"\d+(\.\d+)? ?(ms|s)\b")
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 320


def _sources(folders: tuple[str, ...]) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py")
                  if "__pycache__" not in p.parts)


def _docstrings(path: Path) -> Iterator[tuple[int, str]]:
    """``(line, text)`` of every docstring of a module (module, classes, functions) and
    of every ``#:`` doc-comment."""
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield (node.body[0].lineno, doc)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and tok.string.startswith("#:"):
            yield (tok.start[0], tok.string)


def test_library_docstrings_hold_no_timings() -> None:
    found = []
    for path in _sources(LIBRARY):
        for line, doc in _docstrings(path):
            for m in TIMING.finditer(doc):
                found.append(f"{path.relative_to(ROOT)}:{line}: {m.group(0)!r} in "
                             f"{doc[max(0, m.start() - 40):m.end() + 20]!r}")
    assert not found, ("timings in library docstrings: move the figures, with their date "
                       "and command, to docs/benchmarks.md and say what the code does:\n"
                       + "\n".join(found))


def test_the_rule_catches_timings_and_spares_settings_written_out() -> None:
    assert TIMING.search("batch 1: 66.6 ms") and TIMING.search("(3.7 s alone")
    assert TIMING.search("took 43-45 s") and TIMING.search("in 5s")
    assert not TIMING.search("doubling up to 5 seconds")
    assert not TIMING.search("``idle_seconds`` (600 by default)")
    assert not TIMING.search("a region of zeros; 256 px; 1.9 MB; frames/s")


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines (at most {MAX_README_LINES}): move the detail "
        "to a page under docs/ and link it")


def test_readme_keeps_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert "./install.sh && .venv/bin/sst demo --random-weights-if-offline\n" in text
    assert "./install.sh --dev && .venv/bin/python -m pytest\n" in text


_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
_CODE = re.compile(r"`[^`]*`")


def _prose(path: Path) -> Iterator[tuple[int, str]]:
    """The lines of a Markdown file outside fenced code, without inline code spans."""
    fenced = False
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield n, _CODE.sub("", line)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = _CODE.sub(lambda m: m.group(0).strip("`"), heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m and not fenced:
            slug = _slug(m.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for n, line in _prose(page):
        for target in _LINK.findall(line):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            path_part, _, anchor = target.partition("#")
            dest = (page.parent / path_part).resolve() if path_part else page
            if not dest.exists():
                broken.append(f"{page.name}:{n}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.name}:{n}: {target} (no heading #{anchor})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme() -> None:
    text = README.read_text(encoding="utf-8")
    missing = [p.name for p in DOCS if f"(docs/{p.name})" not in text]
    assert not missing, f"docs pages the README's 'Where to read next' does not link: {missing}"


#: Words of one lab's tooling, not of a GPU owner running the harness.
TOOLING = re.compile(r"device (call|run|time)|\bcarr(y|ied)\b|run tool|\blent\b|budget_left"
                     r"|\$OUT\b", re.IGNORECASE)


def test_the_gpu_instructions_speak_to_any_gpu_owner() -> None:
    texts = [("docs/gpu.md", (ROOT / "docs" / "gpu.md").read_text(encoding="utf-8"))]
    for path in _sources(("benchmarks/gpu",)):
        texts += [(f"{path.relative_to(ROOT)}:{line}", doc) for line, doc in _docstrings(path)]
    found = [f"{where}: {m.group(0)!r}" for where, text in texts
             for m in TOOLING.finditer(text)]
    assert not found, "\n".join(found)

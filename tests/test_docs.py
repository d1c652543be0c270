"""Every code example in README.md and docs/ runs, so a broken example fails CI (issue #7).

The ```python blocks of a page run in order, in one namespace per page, in a temporary working
directory (``sqlite:///data.sqlite`` lands there), and then all of them once more in the same
directory with a fresh namespace: every example must survive being run twice in a row. The
namespace is a real module registered in ``sys.modules``, so classes defined by an example can
be pickled by qualified name, as memcached and shove require. Examples that use memcached name
``127.0.0.1:11211`` (or ``localhost:11211``), like the original README; the test substitutes
the server of the ``memcached_server`` fixture and gives every ``MemcacheStore`` of the page a
key prefix of its own (the same for both runs, as for a reader running the page twice), so no
other test's entries are touched.

Blocks that must not run use another info string: ``py2`` for stockpyle 0.1 code as it was,
``sh``/``text`` for everything else. Any other info string fails the fence check below, so a
typo cannot silently turn an example off.
"""

from __future__ import annotations

import functools
import re
import sys
import types
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]

#: Info strings (first word) of fenced blocks: the ones that run, and the ones shown only.
RUN = {"python"}
SHOW_ONLY = {"py2", "sh", "text"}

_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
_MEMCACHED = re.compile(r"\b(?:127\.0\.0\.1|localhost):11211\b")
_USES_MEMCACHED = re.compile(r"\bMemcached?Store\(|\bpymemcache\b|\bimport memcache\b")
#: Examples that use PostgreSQL name this database; the test substitutes the fixture's server.
_POSTGRES = re.compile(r"postgresql(?:\+psycopg)?://localhost/app\b")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int  # 1-based line of the first code line
    lang: str
    code: str


def fenced_blocks(page: Path) -> list[Block]:
    """The fenced blocks of a Markdown page (also those indented in admonitions or lists)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = _OPEN.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, fence = match["indent"], match["fence"]
        lang = match["info"].strip().split(" ", 1)[0].lstrip(".{").rstrip("}")
        close = re.compile(rf"^{re.escape(indent)}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        start = i + 1
        end = start
        while end < len(lines) and not close.match(lines[end]):
            end += 1
        if end == len(lines):
            msg = f"{page}:{i + 1}: unclosed code fence"
            raise ValueError(msg)
        body = [
            ln[len(indent) :] if ln.startswith(indent) else ln.lstrip() for ln in lines[start:end]
        ]
        blocks.append(Block(page, start + 1, lang, "\n".join(body) + "\n"))
        i = end + 1
    return blocks


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _isolate_memcache(monkeypatch: pytest.MonkeyPatch, namespace: str) -> None:
    """Give every MemcacheStore created by the page's examples a key prefix of its own."""
    from stockpyle.stores.memcache import MemcacheStore

    original = MemcacheStore.__init__

    @functools.wraps(original)
    def init(self: Any, *args: Any, prefix: str = "stockpyle", **kwargs: Any) -> None:
        original(self, *args, prefix=f"{namespace}-{prefix}", **kwargs)

    monkeypatch.setattr(MemcacheStore, "__init__", init)


def _release_stores(namespace: dict[str, Any]) -> None:
    """Release the stores an example left open (connections, SQLite files)."""
    from stockpyle._store import BaseStore

    for value in namespace.values():
        if isinstance(value, BaseStore):
            value.release()


def _has_examples(page: Path) -> bool:
    return any(b.lang in RUN for b in fenced_blocks(page))


@pytest.mark.parametrize("page", [p for p in PAGES if _has_examples(p)], ids=_page_id)
def test_examples_run(
    page: Path,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The page's ```python blocks run in order in one namespace and their asserts hold,
    against a real memcached (when they use one) and SQLite files in a temporary directory,
    and they do so twice in a row (the second run sees the first run's files and entries)."""
    blocks = [b for b in fenced_blocks(page) if b.lang in RUN]
    source = "".join(b.code for b in blocks)
    if _MEMCACHED.search(source) or _USES_MEMCACHED.search(source):
        server = request.getfixturevalue("memcached_server")
        _isolate_memcache(monkeypatch, f"docs{uuid.uuid4().hex[:12]}")
    else:
        server = None
    postgres = request.getfixturevalue("postgres_url") if _POSTGRES.search(source) else None
    monkeypatch.chdir(tmp_path)
    name = "stockpyle_docs_" + re.sub(r"\W", "_", _page_id(page).removesuffix(".md"))
    # Twice in a row, as a reader pasting the page into a terminal twice would: same working
    # directory (files such as data.sqlite are still there), same memcached, fresh namespace.
    for _run in range(2):
        module = types.ModuleType(name)
        monkeypatch.setitem(sys.modules, name, module)
        for block in blocks:
            code = block.code if server is None else _MEMCACHED.sub(server, block.code)
            if postgres is not None:
                code = _POSTGRES.sub(postgres, code)
            # Pad with blank lines so that tracebacks point at the right line of the page.
            compiled = compile("\n" * (block.line - 1) + code, str(page), "exec")
            exec(compiled, module.__dict__)
        _release_stores(module.__dict__)


def test_fences_use_known_info_strings() -> None:
    """Every fenced block is either run (```python) or deliberately shown only (```py2 for
    stockpyle 0.1 code, ```sh, ```text): a misspelt info string cannot skip an example."""
    unknown = [
        f"{_page_id(b.page)}:{b.line - 1}: ```{b.lang}"
        for page in PAGES
        for b in fenced_blocks(page)
        if b.lang not in RUN | SHOW_ONLY
    ]
    assert unknown == []


def test_pages_have_runnable_examples() -> None:
    """Every guide page (all but the API reference, changelog and benchmarks) shows at least
    one example that the suite runs."""
    exempt = {"changelog.md", "benchmarks.md"}
    without = [
        _page_id(page)
        for page in PAGES
        if page.parent.name != "reference" and page.name not in exempt and not _has_examples(page)
    ]
    assert without == []


def test_changelog_page_includes_the_changelog() -> None:
    """docs/changelog.md includes CHANGELOG.md rather than copying it: there is one changelog."""
    text = (DOCS / "changelog.md").read_text(encoding="utf-8")
    assert '--8<-- "CHANGELOG.md"' in text
    assert (ROOT / "CHANGELOG.md").is_file()

"""The built docs site reads well in a browser (issue #14): checked on the HTML that
``mkdocs build --strict`` writes, into a temporary directory that is removed afterwards.

Code lines must fit the content column, or a reader sees them cut off (the end of a line is
often the comment that explains it). The visible width is computed from the numbers of
Material's stylesheet and of ``docs/css/extra.css``, for the desktop widths the issue measured
in Chromium (1400 and 1920 px). The same formula gives 80 characters for Material's defaults,
which is what the issue measured before the column was widened.
"""

from __future__ import annotations

import html
import math
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTRA_CSS = ROOT / "docs" / "css" / "extra.css"

# Material for MkDocs (main.css): root font size by viewport (125% = 20 px below 100em =
# 1600 px, 137.5% below 125em = 2000 px), two 12.1rem sidebars, 1.2rem content margins,
# .md-typeset at .8rem with code at .85em and 1.1765em of left/right padding in a block.
MATERIAL_GRID_REM = 61.0
SIDEBARS_REM = 2 * 12.1
CONTENT_MARGINS_REM = 2 * 1.2
CODE_EM_OF_ROOT = 0.8 * 0.85
CODE_PADDING_LEFT_EM = 1.1764705882
MATERIAL_PADDING_RIGHT_EM = 1.1764705882
#: Advance width of the monospace fallback fonts (DejaVu Sans Mono, Menlo), in em.
MONO_ADVANCE_EM = 0.602
VIEWPORTS_PX = (1400, 1920)


def _root_px(viewport: int) -> float:
    return 16 * (1.25 if viewport < 1600 else 1.375 if viewport < 2000 else 1.5)


def visible_columns(viewport: int, grid_rem: float, padding_right_em: float) -> int:
    """How many monospace characters a code block shows without scrolling."""
    root = _root_px(viewport)
    grid = min(viewport, grid_rem * root)
    content = grid - (SIDEBARS_REM + CONTENT_MARGINS_REM) * root
    code_px = CODE_EM_OF_ROOT * root
    text = content - (CODE_PADDING_LEFT_EM + padding_right_em) * code_px
    return math.floor(text / (MONO_ADVANCE_EM * code_px))


def _css_number(pattern: str) -> float:
    match = re.search(pattern, EXTRA_CSS.read_text(encoding="utf-8"), re.S)
    assert match is not None, f"{EXTRA_CSS} lost the rule {pattern!r}"
    return float(match.group(1))


def column_width() -> int:
    """The characters a code block shows at the narrowest of VIEWPORTS_PX with extra.css."""
    grid = _css_number(r"\.md-grid\s*\{\s*max-width:\s*([\d.]+)rem")
    padding = _css_number(r"\.md-typeset pre > code\s*\{\s*padding-right:\s*([\d.]+)em")
    return min(visible_columns(v, grid, padding) for v in VIEWPORTS_PX)


@pytest.fixture(scope="module")
def site() -> Iterator[Path]:
    """The site, built strictly into a temporary directory that is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="stockpyle-site-") as tmp:
        env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
        build = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", tmp]
        done = subprocess.run(build, cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        yield Path(tmp)


def _pages(site: Path) -> list[Path]:
    return sorted(p for p in site.rglob("*.html") if p.name != "404.html")


def _code_blocks(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    return [
        html.unescape(re.sub(r"<[^>]+>", "", block))
        for block in re.findall(r"<pre[^>]*>(.*?)</pre>", text, re.S)
    ]


def test_the_width_formula_matches_the_measurement_it_replaces() -> None:
    """Material's default column shows 80 code characters at 1400 and 1920 px, as measured in
    Chromium for the issue; extra.css widens it to at least 100 (ruff's line length)."""
    for viewport in VIEWPORTS_PX:
        default = visible_columns(viewport, MATERIAL_GRID_REM, MATERIAL_PADDING_RIGHT_EM)
        assert default == 80
    assert column_width() >= 100


def test_no_code_line_is_cut_off(site: Path) -> None:
    """Every line of every code block of the built site fits the content column at 1400 and
    1920 px, so no example (or the comment that explains it) is hidden past the edge."""
    width = column_width()
    too_long = [
        f"{page.relative_to(site)}: {len(line)} > {width}: {line.strip()[:60]}"
        for page in _pages(site)
        for block in _code_blocks(page)
        for line in block.splitlines()
        if len(line) > width
    ]
    assert too_long == []


def test_the_copy_button_does_not_cover_code() -> None:
    """A code block keeps its text clear of the copy button in its top right corner (1.5em
    wide, .5em from the edge): the block's right padding is at least 2em."""
    assert _css_number(r"\.md-typeset pre > code\s*\{\s*padding-right:\s*([\d.]+)em") >= 2.0
    assert "css/extra.css" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")


def test_reference_examples_are_highlighted(site: Path) -> None:
    """The API reference's examples (docstring blocks) are syntax-highlighted: every code
    block on the reference pages carries highlighting spans."""
    plain = [
        f"{page.relative_to(site)}: {block[:60]!r}"
        for page in sorted((site / "reference").rglob("*.html"))
        for block in re.findall(r"<pre[^>]*>(.*?)</pre>", page.read_text(encoding="utf-8"), re.S)
        if '<span class="' not in block.replace("<span></span>", "")
    ]
    assert plain == []


def test_contents_point_only_at_visible_headings(site: Path) -> None:
    """Every entry of a page's table of contents links to a heading that the page shows (not
    to a hidden one, such as the root heading a reference page turns off)."""
    bad = []
    for page in _pages(site):
        text = page.read_text(encoding="utf-8")
        toc = text.split('data-md-component="toc"', 1)[-1].split("</nav>", 1)[0]
        for anchor in re.findall(r'href="#([^"]+)"', toc):
            heading = re.search(rf'<h\d[^>]*\bid="{re.escape(anchor)}"[^>]*>', text)
            if heading is None or re.search(r"hidden|display:\s*none", heading.group(0)):
                bad.append(f"{page.relative_to(site)}#{anchor}")
    assert bad == []


def test_old_code_is_marked_old(site: Path) -> None:
    """On "Coming from 0.1", every stockpyle 0.1 code block sits in an "old" admonition."""
    text = (site / "coming-from-0.1" / "index.html").read_text(encoding="utf-8")
    old_boxes = re.findall(r'<div class="admonition old">(.*?)</div>\s*</div>', text, re.S)
    assert len(old_boxes) >= 5
    source = (ROOT / "docs" / "coming-from-0.1.md").read_text(encoding="utf-8")
    for match in re.finditer(r"^([ \t]*)```py2$", source, re.M):
        before = source[: match.start()].rstrip().splitlines()
        assert match.group(1) == "    " and before[-1].startswith('!!! old "'), before[-1]


def test_pictures_are_local_and_linked_to_full_size(site: Path) -> None:
    """Every picture is a file of the site (nothing is fetched at view time) and links to
    itself at full size; the diagrams exist for chains, keys and stores."""
    shown = set()
    for page in _pages(site):
        text = page.read_text(encoding="utf-8")
        for link, img in re.findall(r'<a href="([^"]+)">\s*<img [^>]*src="([^"]+)"', text):
            assert link == img
        for src in re.findall(r'<img [^>]*src="([^"]+)"', text):
            assert not re.match(r"[a-z]+:", src), f"{page}: {src} is fetched from elsewhere"
            target = (page.parent / src).resolve()
            assert target.is_file(), f"{page}: {src} is missing"
            assert re.search(
                rf'<a href="{re.escape(src)}">\s*<img [^>]*src="{re.escape(src)}"', text
            ), f"{page}: {src} is not linked to full size"
            shown.add(f"{page.parent.relative_to(site)}/{Path(src).name}")
    for expected in (
        "chains/chain-read-write.svg",
        "chains/cache-failures.svg",
        "keys/key-layout.svg",
        "stores/key-layout.svg",
        "benchmarks/benchmarks.png",
    ):
        assert expected in shown


def test_svg_pictures_need_no_network() -> None:
    """The SVG diagrams reference no external resource (fonts, images, stylesheets)."""
    for svg in (ROOT / "docs" / "img").glob("*.svg"):
        text = svg.read_text(encoding="utf-8")
        assert not re.search(r"(?:href|src)=\"(?:https?:)?//", text), svg
        assert "@import" not in text and "url(http" not in text, svg

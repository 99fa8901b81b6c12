"""The rendered report as a reader meets it, in every renderer (pandoc and the built-in markdown-it-py one):
no escaped tags, every link and image resolves, the navigation reaches every page, chapter pages have a table
of contents, and in headless Chromium images load, a click reaches a unit page and the pages render."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image

from test_report import make_store, parse_site

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
RENDERERS = ["python", "pandoc"]
ESCAPED_TAG = re.compile(r"</?(nav|div|span|img|a|table|figure|p)\b[^>]*>")


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    """{renderer: site folder}: one build, rendered by each renderer this machine has."""
    from report import builder, render, spec

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(spec, "FIGURES_ALIGNMENT", [])  # no alignment chapter in these tests
        root = tmp_path_factory.mktemp("html")
        # No aliased metrics: the index then shows how to make them, a long command line that must wrap.
        store = make_store(root / "store.zarr", weights="random:0", profile_name="toy", aliased=False)
        builder.build(store, root / "python", how="python")
        found = {"python": root / "python" / "_site"}
        if shutil.which("pandoc"):
            shutil.copytree(root / "python", root / "pandoc", ignore=shutil.ignore_patterns("_site"))
            pages = [spec.CHAPTERS[c] for c in ("store", "naturally", "interpreting")] + [builder.METHOD_PAGE]
            render.render_fallback(root / "pandoc", pages, use_pandoc=True)
            shutil.copytree(found["python"] / "units", root / "pandoc" / "_site" / "units")
            found["pandoc"] = root / "pandoc" / "_site"
        yield found


def site_of(sites, renderer: str) -> Path:
    if renderer not in sites:
        pytest.skip(f"{renderer} is not installed (CI installs it)")
    return sites[renderer]


def local_target(page: Path, href: str) -> tuple[Path, str] | None:
    """(file, fragment) a relative link points at; None for links off the site."""
    parsed = urlparse(href)
    if parsed.scheme in ("http", "https", "mailto"):
        return None
    target = page if not parsed.path else (page.parent / unquote(parsed.path)).resolve()
    return target, parsed.fragment


@pytest.mark.parametrize("renderer", RENDERERS)
def test_no_markup_shows_as_text(sites, renderer):
    site = site_of(sites, renderer)
    for name, page in parse_site(site).items():
        text = "".join(page.text)
        assert not ESCAPED_TAG.search(text), (name, ESCAPED_TAG.search(text).group(0))
        assert "{.badge" not in text and ":::" not in text, name


@pytest.mark.parametrize("renderer", RENDERERS)
def test_every_link_and_image_resolves(sites, renderer):
    site = site_of(sites, renderer)
    pages = {path: parse_site(path.parent, path.name)[path.name]
             for path in [*site.glob("*.html"), *sorted(site.glob("units/*.html"))[:40]]}
    ids = {}
    for path, page in pages.items():
        for source in page.images:
            assert (path.parent / unquote(source)).is_file(), (path.name, source)
        for href in page.links:
            found = local_target(path, href)
            if found is None:
                continue
            target, fragment = found
            assert target.is_file(), (path.name, href)
            if fragment:
                ids.setdefault(target, parse_site(target.parent, target.name)[target.name].ids)
                assert fragment in ids[target], (path.name, href)


@pytest.mark.parametrize("renderer", RENDERERS)
def test_navigation_reaches_every_page_and_chapters_have_contents(sites, renderer):
    site = site_of(sites, renderer)
    pages = parse_site(site)
    every = set(pages) | {"units/index.html"}
    for name, page in pages.items():
        assert set(page.nav_links) == every, name
        assert page.toc, name


@pytest.mark.parametrize("renderer", RENDERERS)
def test_every_grid_cell_links_to_its_unit_page(sites, renderer):
    site = site_of(sites, renderer)
    for name in ("naturally-computed.html", "interpreting.html"):
        text = (site / name).read_text()
        for figure in re.findall(r'<div class="grid-figure"><img src="(figures/[^"]+)\.png"[^>]*>(.*?)</div>', text, re.S):
            cells = json.loads((site.parent / f"{figure[0]}.cells.json").read_text())
            if not cells or "cells" not in cells:
                continue
            linked = re.findall(r'<a class="cell" href="units/([^"]+)\.html"', figure[1])
            assert linked == [cell["unit"] for cell in cells["cells"]], figure[0]
            assert all((site / "units" / f"{unit}.html").is_file() for unit in linked)


# ---------------------------------------------------------------- headless Chromium

CHECKER = """<!DOCTYPE html><html><body><pre id="result">pending</pre><iframe id="frame" width="1280" height="1600"></iframe>
<script>
const frame = document.getElementById("frame");
const load = url => new Promise(done => { frame.onload = () => done(frame.contentDocument); frame.src = url; });
const follow = link => new Promise(done => { frame.onload = () => done(frame.contentDocument); link.click(); });
const widest = doc => Math.max(...[...doc.querySelectorAll("pre, code, table, img")].map(e => e.getBoundingClientRect().right));
const seen = doc => ({url: doc.location.href, images: doc.images.length,
  broken: [...doc.images].filter(image => !(image.complete && image.naturalWidth > 0)).map(image => image.getAttribute("src")),
  overflow: widest(doc) > doc.documentElement.clientWidth + 1});
(async () => {
  const pages = [];
  for (const url of PAGES) pages.push(seen(await load(url)));
  let doc = await load(PAGES[0]);
  doc = await follow(doc.querySelector('nav.report-nav a[href="units/index.html"]'));
  doc = await follow(doc.querySelector('a[href="./BLOCK.html"]'));
  const column = [...doc.querySelectorAll("th")].findIndex(th => th.textContent === "M");
  doc.querySelectorAll("th")[column].click();
  const sorted = [...doc.querySelectorAll("tbody tr")].map(row => parseFloat(row.cells[column].dataset.value));
  const clicked = seen(await follow(doc.querySelector("tbody a")));
  doc = await load(PAGES[PAGES.length - 1]);
  const cell = doc.querySelector("a.cell");
  const box = cell ? cell.getBoundingClientRect() : null;
  const fromGrid = cell ? {...seen(await follow(cell)), width: box.width, height: box.height} : null;
  document.getElementById("result").textContent = JSON.stringify({pages, sorted, clicked, fromGrid});
})().catch(error => { document.getElementById("result").textContent = JSON.stringify({error: String(error)}); });
</script></body></html>
"""


def chromium(*arguments: str, profile: Path) -> subprocess.CompletedProcess:
    if BROWSER is None:
        pytest.skip("chromium is not installed (CI installs it)")
    command = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--no-first-run", "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
               "--hide-scrollbars", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("renderer", RENDERERS)
def test_in_chromium_images_load_a_click_reaches_a_unit_page_and_tables_sort(sites, renderer, tmp_path):
    site = site_of(sites, renderer)
    pages = [(site / name).as_uri() for name in ("index.html", "naturally-computed.html", "interpreting.html")]
    checker = tmp_path / "check.html"
    checker.write_text(CHECKER.replace("PAGES", json.dumps(pages)).replace("BLOCK", "2.1"))
    run = chromium("--allow-file-access-from-files", "--virtual-time-budget=30000", "--dump-dom", checker.as_uri(),
                   profile=tmp_path / "profile")
    found = json.loads(re.search(r'<pre id="result">(.*?)</pre>', run.stdout, re.S).group(1))
    assert "error" not in found, found
    for page in found["pages"]:
        assert not page["broken"] and not page["overflow"], page
    assert all(page["images"] for page in found["pages"][1:])  # the chapters' figures
    assert found["clicked"]["url"].endswith("/units/2.1:0.html") or "/units/2.1:" in found["clicked"]["url"]
    assert found["clicked"]["images"] >= 3 and not found["clicked"]["broken"], found["clicked"]
    assert found["sorted"] == sorted(found["sorted"]) and len(found["sorted"]) == 8
    grid = found["fromGrid"]  # a click on a channel's grid in a chapter figure opens its unit page
    assert "/units/" in grid["url"] and grid["images"] >= 3 and not grid["broken"], grid
    assert grid["width"] > 50 and grid["height"] > 50  # the link covers the grid it sits on


def screenshot(url: str, target: Path, profile: Path) -> np.ndarray:
    run = chromium("--window-size=1280,1400", f"--screenshot={target}", url, profile=profile)
    assert run.returncode == 0 and target.is_file(), run.stderr[-2000:]
    return np.asarray(Image.open(target).convert("RGB"))


def test_screenshots_of_the_index_and_a_unit_page_show_their_images(sites, tmp_path):
    site = sites["python"]
    unit = site / "units" / "2.1:3.html"
    index = screenshot((site / "index.html").as_uri(), tmp_path / "index.png", tmp_path / "profile")
    page = screenshot(unit.as_uri(), tmp_path / "unit.png", tmp_path / "profile")
    for shot in (index, page):
        assert shot.shape[:2] == (1400, 1280)
        assert (shot.std(axis=2) > 30).mean() > 0.005  # coloured pixels: badges, figures, not a blank page
    # The unit page's FZs are the store's random noise images: a colourful block where the first FZ sits.
    colourful_rows = np.nonzero((page.std(axis=2) > 40).mean(axis=1) > 0.1)[0]
    assert len(colourful_rows) > 100
    checker = tmp_path / "check.html"
    checker.write_text(CHECKER.replace("PAGES", json.dumps([(site / "index.html").as_uri(), unit.as_uri()]))
                       .replace("BLOCK", "2.1"))
    run = chromium("--allow-file-access-from-files", "--virtual-time-budget=30000", "--dump-dom", checker.as_uri(),
                   profile=tmp_path / "profile")
    found = json.loads(re.search(r'<pre id="result">(.*?)</pre>', run.stdout, re.S).group(1))
    assert [page["broken"] for page in found["pages"]] == [[], []], found

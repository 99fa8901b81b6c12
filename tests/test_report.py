"""The report builds on a tiny synthetic store: every spec entry is in the HTML, every image exists, the
page loads in headless Chromium, and an unchanged rebuild is fast."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from repro import profiles
from repro.store import Store, labels

BLOCKS = ("1.1", "2.0", "2.1", "3.0", "3.1", "4.0", "4.1")
TAPS = ("I", "B", "O")
SCALES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
IMAGENET_FILE_SHA256 = "f37072fd" + "0" * 56


def root_attrs(weights: str = "imagenet", profile_name: str = "paper") -> dict:
    profile = profiles.load("paper")
    profile["name"] = profile_name
    return {"store_kind": "residual-stream", "profile_name": profile_name, "profile": json.dumps(profile),
            "weights": weights, "weights_sha256": "ab" * 32,
            "weights_file_sha256": IMAGENET_FILE_SHA256 if weights == "imagenet" else "cd" * 32,
            "git_commit": "0123456789abcdef", "package_version": "0.1.0", "torch_version": "test",
            "torchvision_version": "test", "created": "2025-01-01T00:00:00+00:00"}


def group_attrs(name: str) -> dict:
    return {"finished": "2025-01-01T00:00:00+00:00", "complete": True, "units_done": [f"{name}-0"],
            "signature": "synthetic"}


def write_group(path: Path, name: str, dataset: xr.Dataset) -> None:
    dataset.attrs = group_attrs(name)
    dataset.to_zarr(str(path), group=name, mode="w", zarr_format=3, consolidated=False)


def metrics_dataset(widths: dict[str, int], rng: np.random.Generator,
                    invariant: dict[str, list[int]] | None = None) -> xr.Dataset:
    """Random metrics; ``invariant`` fixes the channels passing every criterion (the rest fail mix)."""
    width = max(widths.values())
    shape = (len(widths), width, 2)
    mix = rng.uniform(0.0, 5.0, shape)
    up_ok, down_ok = rng.random(shape) < 0.6, rng.random(shape) < 0.6
    for index, block in enumerate(widths):
        chosen = (invariant or {}).get(block)
        if chosen is not None:
            outside = np.ones(width, bool)
            outside[list(chosen)] = False
            mix[index, outside, :] = np.where(rng.random((outside.sum(), 2)) < 0.5, 0.3, 2.5)
            mix[index, list(chosen), :] = 1.0 + rng.uniform(-0.2, 0.2, (len(chosen), 2))
            up_ok[index, list(chosen), :] = down_ok[index, list(chosen), :] = True
    mix_ok = (mix > 2 / 3) & (mix < 3 / 2)
    valid = np.array([[channel < widths[block] for channel in range(width)] for block in widths])
    coords = {"block": labels(widths), "channel": np.arange(width), "stimulus_set": labels(["fz", "top9"])}
    per_set = ("block", "channel", "stimulus_set")
    per_channel = ("block", "channel")
    return xr.Dataset({
        "mix": (per_set, mix), "up_delta": (per_set, rng.normal(size=shape)),
        "down_delta": (per_set, rng.normal(size=shape)), "scale_metric": (per_set, rng.normal(size=shape)),
        "mix_ok": (per_set, mix_ok), "up_ok": (per_set, up_ok), "down_ok": (per_set, down_ok),
        "invariant_naturally": (per_set, mix_ok & up_ok & valid[..., None]),
        "invariant_interpreting": (per_set, mix_ok & up_ok & down_ok & valid[..., None]),
        "failed_fz": (per_set, np.zeros(shape, bool)),
        "bn2_weight_abs": (per_channel, rng.random(shape[:2])), "conv2_weight_mean_abs": (per_channel, rng.random(shape[:2])),
        "tuning_rho": (per_channel, rng.uniform(-1, 1, shape[:2])), "valid": (per_channel, valid),
    }, coords=coords)


def ablation_dataset(rng: np.random.Generator, trials: int = 10) -> xr.Dataset:
    accuracy = np.full((2, 3, trials, len(SCALES)), np.nan)
    base = 70.0 - 5 * np.arange(len(SCALES))
    accuracy[:, 0, 0, :] = base
    accuracy[:, 1, 0, :] = base - 6 - np.arange(len(SCALES))
    accuracy[:, 2, :, :] = base - 6 + rng.normal(0, 0.3, (2, trials, len(SCALES)))
    return xr.Dataset({"accuracy": (("block", "condition", "trial", "scale"), accuracy)},
                      coords={"block": labels(["2.1", "3.1"]), "condition": labels(["none", "invariant", "random"]),
                              "trial": np.arange(trials), "scale": np.array(SCALES)})


def make_store(path: Path, *, channels: int = 8, size: int = 16, images: int = 20, weights: str = "imagenet",
               profile_name: str = "paper", invariant: dict[str, list[int]] | None = None,
               widths: dict[str, int] | None = None, pixels: bool = True, seed: int = 0) -> Store:
    """A store with the real layout: tiny images and widths unless told otherwise."""
    rng = np.random.default_rng(seed)
    widths = widths or {block: channels for block in BLOCKS}
    width = max(widths.values())
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.attrs.update(root_attrs(weights, profile_name))
    write_group(path, "metrics", metrics_dataset(widths, rng, invariant))
    write_group(path, "metrics_aliased", metrics_dataset(widths, rng, invariant))
    write_group(path, "ablation", ablation_dataset(rng))
    valid = np.array([[channel < widths[block] for channel in range(width)] for block in widths])
    unit = {"block": labels(widths), "tap": labels(TAPS), "channel": np.arange(width)}
    write_group(path, "responses", xr.Dataset(
        {"response": (("block", "tap", "channel", "source", "transform", "stimulus_set"),
                      rng.normal(size=(len(widths), 3, width, 3, 3, 2)).astype(np.float32))},
        coords={**unit, "source": labels(TAPS), "transform": labels(["none", "S", "S_inv"]),
                "stimulus_set": labels(["fz", "top9"])}))
    if not pixels:
        return Store(path)
    picture = ("block", "tap", "channel", "y", "x", "rgb")
    for group in ("fz", "fz_channel"):
        write_group(path, group, xr.Dataset({
            "image": (picture, rng.integers(0, 255, (len(widths), 3, width, size, size, 3), dtype=np.uint8)),
            "activation": (("block", "tap", "channel"), rng.normal(size=(len(widths), 3, width)).astype(np.float32)),
            "valid": (("block", "channel"), valid)}, coords=unit))
    write_group(path, "natural", xr.Dataset({
        "activation": (("block", "tap", "channel", "image"), rng.normal(size=(len(widths), 3, width, images)).astype(np.float32)),
        "top_images": (("block", "tap", "channel", "rank"), rng.integers(0, images, (len(widths), 3, width, 9)))},
        coords={**unit, "rank": np.arange(9), "image": np.arange(images),
                "path": ("image", labels(f"n0/{i}.JPEG" for i in range(images))),
                "label": ("image", np.zeros(images, int))}))
    write_group(path, "image_cache", xr.Dataset(
        {"pixels": (("image", "y", "x", "rgb"), rng.integers(0, 255, (images, size, size, 3), dtype=np.uint8))},
        coords={"image": np.arange(images)}))
    return Store(path)


# ---------------------------------------------------------------- the tests

class PageContents(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.images = set(), []

    def handle_starttag(self, tag, attributes):
        attributes = dict(attributes)
        if "id" in attributes:
            self.ids.add(attributes["id"])
        if tag == "img":
            self.images.append(attributes.get("src", ""))


def parse_site(site: Path) -> dict[str, PageContents]:
    pages = {}
    for page in site.glob("*.html"):
        pages[page.name] = PageContents()
        pages[page.name].feed(page.read_text())
    return pages


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from report import builder, spec

    with pytest.MonkeyPatch.context() as patch:
        # The alignment chapter's simulations take half a minute of CPU; its test below uses a stand-in module.
        patch.setattr(spec, "ALIGNMENT_MODULE", "analyses.no_alignment_chapter_in_these_tests")
        root = tmp_path_factory.mktemp("report")
        store = make_store(root / "store.zarr")
        started = time.monotonic()
        index = builder.build(store, root / "out")
        yield store, root / "out", index, time.monotonic() - started


def test_every_spec_entry_is_in_the_html_with_its_figure_or_table(built):
    from report import spec

    _, out, index, _ = built
    pages = parse_site(index.parent)
    ids = set().union(*(page.ids for page in pages.values()))
    for entry in [*spec.FIGURES, *spec.alignment_figures()]:
        assert entry.id in ids, entry.id
    for claim in spec.CLAIMS:
        assert claim.id in ids, claim.id
    for chapter in ("index.html", "naturally-computed.html", "interpreting.html"):
        assert chapter in pages
    html = "".join(page.read_text() for page in index.parent.glob("*.html"))
    for entry in spec.FIGURES:
        if entry.kind == "figure":
            assert f"figures/{entry.id}.png" in html, entry.id
        else:
            assert re.search(rf'id="{re.escape(entry.id)}"[^>]*>\s*<table', html) or "not built" in html, entry.id
    assert (out / "_quarto.yml").is_file() and (out / "index.qmd").is_file()
    assert "@fig-naturally-1" in (out / "naturally-computed.qmd").read_text()
    assert "{#fig-naturally-1}" in (out / "naturally-computed.qmd").read_text()


def test_every_referenced_image_exists(built):
    _, _, index, _ = built
    pages = parse_site(index.parent)
    sources = [source for page in pages.values() for source in page.images]
    assert sources
    for source in sources:
        assert (index.parent / source).is_file(), source


def test_figures_are_written_as_png_and_svg(built):
    from report import spec

    _, out, _, _ = built
    for entry in spec.FIGURES:
        if entry.kind == "figure" and not entry.comparable_only:
            assert (out / "figures" / f"{entry.id}.png").stat().st_size > 0
            assert (out / "figures" / f"{entry.id}.svg").stat().st_size > 0
        elif entry.kind == "table" and entry.chapter != "store":
            assert (out / "tables" / f"{entry.id}.csv").is_file()


def test_unchanged_rebuild_is_fast_and_cached(built, capsys):
    from report import builder

    store, out, _, first = built
    started = time.monotonic()
    builder.build(store, out)
    assert time.monotonic() - started < 10
    assert " 0 built" in capsys.readouterr().out


def test_store_provenance_and_badges_are_shown(built):
    _, _, index, _ = built
    text = index.read_text()
    assert "f37072fd" in text and "paper" in text and "0123456789ab" in text
    chapter = (index.parent / "naturally-computed.html").read_text()
    assert "badge-" in chapter and "claim-naturally-invariant-2-1" in chapter


def test_pure_python_renderer_gives_the_same_ids(built, tmp_path):
    from report import builder, spec

    _, out, _, _ = built
    copy = tmp_path / "out"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("_site"))
    index = builder.render_fallback(copy, ["store", "naturally", "interpreting"], use_pandoc=False)
    ids = set().union(*(page.ids for page in parse_site(index.parent).values()))
    assert {entry.id for entry in spec.FIGURES} <= ids
    for source in [s for page in parse_site(index.parent).values() for s in page.images]:
        assert (index.parent / source).is_file()


def test_page_loads_in_headless_chromium(built, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (CI installs it)")
    _, _, index, _ = built
    shot = tmp_path / "shot.png"
    for page in sorted(index.parent.glob("*.html")):
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                   "--no-first-run", "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
                   "--enable-logging=stderr", "--v=0", "--window-size=1280,2000"]
        run = subprocess.run([*command, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        console = [line for line in run.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
        assert not console, console
        assert "</html>" in run.stdout and "<h1" in run.stdout
    run = subprocess.run([*command, f"--screenshot={shot}", index.as_uri()], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.stat().st_size > 10_000, run.stderr[-2000:]


def test_alignment_chapter_appears_when_its_module_exists(built, tmp_path, monkeypatch):
    import importlib.machinery
    import sys
    import types

    from matplotlib.figure import Figure

    from report import builder, spec

    module = types.ModuleType("stand_in_alignment_figures")
    module.__spec__ = importlib.machinery.ModuleSpec(module.__name__, None)

    def cka_deflation_figure():
        """Linear CKA of two superposed systems against the closed form."""
        figure = Figure()
        figure.add_subplot().plot([0, 1], [0, 1])
        return figure

    cka_deflation_figure.__module__ = module.__name__
    module.cka_deflation_figure = cka_deflation_figure
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(spec, "ALIGNMENT_MODULE", module.__name__)
    store, out, _, _ = built
    shutil.copytree(out, tmp_path / "out")
    index = builder.build(store, tmp_path / "out")
    page = (index.parent / "alignment.html").read_text()
    assert 'id="fig-alignment-cka-deflation"' in page and "figures/fig-alignment-cka-deflation.png" in page
    assert "alignment.html" in index.read_text()

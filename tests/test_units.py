"""The channel browser: a page per unit with its FZs, top images, metrics, rank and figures, checked against
the store's own arrays; per-block sortable indexes; every seed when the store has seeds."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from analyses import figures
from test_report import BLOCKS, make_store, parse_site, write_group


@pytest.fixture(scope="module")
def browsed(tmp_path_factory):
    from report import builder, spec

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(spec, "FIGURES_ALIGNMENT", [])  # no alignment chapter in these tests
        root = tmp_path_factory.mktemp("units")
        store = make_store(root / "store.zarr", channels=8, widths={**{b: 8 for b in BLOCKS}, "1.1": 6})
        builder.build(store, root / "out", how="python")
        yield store, root / "out" / "_site"


def metrics_of(store) -> xr.Dataset:
    return xr.open_zarr(str(store.path), group="metrics", consolidated=False).load()


def unit_text(site: Path, unit: str) -> str:
    return " ".join(" ".join(parse_site(site / "units", f"{unit}.html")[f"{unit}.html"].text).split())


def test_every_valid_channel_has_a_unit_page_linked_from_its_block(browsed):
    store, site = browsed
    metrics = metrics_of(store)
    for block in BLOCKS:
        channels = metrics["channel"].values[metrics["valid"].sel(block=block).values]
        block_page = parse_site(site / "units", f"{block}.html")[f"{block}.html"]
        linked = [href for href in block_page.links if href.startswith(f"./{block}:")]
        assert linked == [f"./{block}:{c}.html" for c in channels]
        assert all((site / "units" / f"{block}:{c}.html").is_file() for c in channels)
    assert not (site / "units" / "1.1:6.html").exists()  # beyond block 1.1's width
    row = re.search(r'<tr><td data-value="0">.*?</tr>', (site / "units" / "2.1.html").read_text()).group(0)
    shown = re.findall(r">([^<>]+)</td>", row)
    mix_ok = bool(metrics["mix_ok"].sel(block="2.1", channel=0, stimulus_set="fz"))
    assert shown[3] == ("yes" if mix_ok else "no")  # unit, M, SM, then the mix criterion
    index = parse_site(site / "units", "index.html")["index.html"]
    assert [href for href in index.links if href.startswith("./") and href != "./index.html"] == \
        [f"./{block}.html" for block in BLOCKS]


def test_unit_page_shows_the_stores_metrics(browsed):
    store, site = browsed
    metrics = metrics_of(store)
    for block, channel in (("2.1", 3), ("4.1", 7)):
        text = unit_text(site, f"{block}:{channel}")
        for name in ("mix", "scale_metric", "up_delta", "down_delta"):
            for stimulus_set in ("fz", "top9"):
                value = float(metrics[name].sel(block=block, channel=channel, stimulus_set=stimulus_set))
                assert f"{value:.4g}" in text, (name, stimulus_set)
        for name in ("mix_ok", "up_ok", "down_ok", "invariant_naturally"):
            row = re.search(rf"{name} (yes|no) (yes|no)", text)
            expected = ["yes" if v else "no" for v in metrics[name].sel(block=block, channel=channel).values]
            assert row and list(row.groups()) == expected, name
        assert f"{float(metrics['bn2_weight_abs'].sel(block=block, channel=channel)):.4g}" in text


def test_unit_rank_in_its_block(browsed):
    store, site = browsed
    metrics = metrics_of(store)
    scale = metrics["scale_metric"].sel(block="3.1", stimulus_set="fz").values
    mix = metrics["mix"].sel(block="3.1", stimulus_set="fz").values
    for channel in range(8):
        by_scale = int(np.sum(scale > scale[channel])) + 1  # ties do not occur in random floats
        by_mix = int(np.sum(np.abs(mix - 1) < np.abs(mix[channel] - 1))) + 1
        text = unit_text(site, f"3.1:{channel}")
        assert f"rank {by_scale} of 8 by scale metric" in text and f"rank {by_mix} of 8 by |M − 1|" in text


def test_unit_page_images_are_the_stores_fzs_and_top_images(browsed):
    from PIL import Image

    store, site = browsed
    fz = xr.open_zarr(str(store.path), group="fz", consolidated=False)
    page = (site / "units" / "2.0:5.html").read_text()
    sources = re.findall(r'<img src="(img/[^"]+)"', page)
    assert len(sources) == 9  # neuron and channel FZ, top-9 montage, for I, B, O
    for tap in figures.TAPS:
        name = next(source for source in sources if source.endswith(f"-neuron-{tap}.png"))
        shown = np.asarray(Image.open(site / "units" / name))
        np.testing.assert_array_equal(shown, fz["image"].sel(block="2.0", tap=tap, channel=5).values)
    natural = xr.open_zarr(str(store.path), group="natural", consolidated=False)
    cache = xr.open_zarr(str(store.path), group="image_cache", consolidated=False)
    for tap in figures.TAPS:
        name = next(source for source in sources if source.endswith(f"-top9-{tap}.png"))
        shown = np.asarray(Image.open(site / "units" / name))
        ranked = natural["top_images"].sel(block="2.0", tap=tap, channel=5).values
        side = cache.sizes["x"]  # the montage keeps the cached squares' size: its tiles are them, in rank order
        for rank in (0, 4, 8):
            row, column = divmod(rank, 3)
            np.testing.assert_array_equal(shown[row * side:(row + 1) * side, column * side:(column + 1) * side],
                                          cache["pixels"].sel(image=int(ranked[rank])).values)


def test_units_link_to_the_figures_they_appear_in(browsed):
    from report import builder

    store, site = browsed
    examples = figures.spectrum_examples(metrics_of(store).sel(stimulus_set="fz"), "1.1")
    for channel in examples.values():
        page = parse_site(site / "units", f"1.1:{channel}.html")[f"1.1:{channel}.html"]
        assert f"../interpreting.html#{builder.anchor('fig-interpreting-1a')}" in page.links
    chapter = (site / "interpreting.html").read_text()
    for channel in examples.values():
        assert f'href="units/1.1:{channel}.html"' in chapter


def test_an_unchanged_browser_is_not_rewritten(browsed, tmp_path):
    from report import builder

    store, site = browsed
    out = tmp_path / "out"
    shutil.copytree(site.parent, out)
    page = out / "_site" / "units" / "2.1:3.html"
    before = page.stat().st_mtime_ns
    builder.build(store, out, how="python")
    assert page.stat().st_mtime_ns == before


def test_every_seed_is_shown_with_criterion_frequencies(tmp_path):
    from report import builder, spec, units
    from report.loader import Loader

    store = make_store(tmp_path / "store.zarr", channels=4)
    fz = xr.open_zarr(str(store.path), group="fz", consolidated=False).load()
    seeded = xr.concat([fz, fz.assign(image=255 - fz["image"])], dim=xr.DataArray([0, 1], dims="seed", name="seed"))
    write_group(store.path, "fz", seeded)
    metrics = xr.open_zarr(str(store.path), group="metrics", consolidated=False).load()
    flags = xr.DataArray(np.array([True, False, False]), dims="seed", coords={"seed": [0, 1, 2]})
    seeded_metrics = metrics.assign(mix_ok=metrics["mix_ok"] & flags, mix=metrics["mix"] * xr.ones_like(flags, float))
    write_group(store.path, "metrics", seeded_metrics)
    context = builder.StoreContext.of(store)
    site = tmp_path / "site"
    units.write(store, Loader(store), context, site, {}, None, [("index", "What this store is")])
    page = (site / "units" / "2.1:1.html").read_text()
    assert "FZ, center neuron, seed 0" in page and "FZ, center neuron, seed 1" in page
    assert len(re.findall(r'<img src="img/2.1-1-neuron-I-seed\d.png"', page)) == 2
    assert "of 3 seeds" in page
    block = (site / "units" / "2.1.html").read_text()
    assert "(frequency)" in block

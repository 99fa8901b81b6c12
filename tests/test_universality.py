"""The universality section: the spectrum and invariant fractions per block against a by-hand count, the
store's model read from its attrs, and the report across stores of two architectures (tiny ResNet-18 and
ResNet-34 stores made by `repro fz` and `repro metrics`), in its sources, its CLI and headless Chromium."""
from __future__ import annotations

import re
import shutil

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from click.testing import CliRunner

from analyses import universality
from report import models
from residual_stream.cli import main

SECTION = "Universality: the spectrum and invariance across architectures"


# ---------------------------------------------------------------- the analysis, against a by-hand count

def synthetic_metrics(rng: np.random.Generator, low: float = 2 / 3, high: float = 3 / 2) -> xr.Dataset:
    """Two seeds, three blocks (the second narrower), both stimulus sets; mix ratios that land on the bounds,
    NaN for channels not computed, and failed FZs."""
    seeds, blocks, width, sets = 2, ["1.1", "2.0", "2.1"], 10, ["fz", "top9"]
    shape = (seeds, len(blocks), width, len(sets))
    mix = rng.choice([0.0, 0.3, low, 0.9, 1.0, 1.2, high, 2.5, 5.0], size=shape)
    mix[rng.random(shape) < 0.1] = np.nan
    valid = np.ones((len(blocks), width), bool)
    valid[1, 6:] = False
    mix[:, ~valid, :] = np.nan
    flags = {name: rng.random(shape) < 0.4 for name in ("invariant_naturally", "invariant_interpreting", "failed_fz")}
    return xr.Dataset(
        {"mix": (("seed", "block", "channel", "stimulus_set"), mix),
         **{name: (("seed", "block", "channel", "stimulus_set"), values & valid[None, :, :, None])
            for name, values in flags.items()},
         "valid": (("block", "channel"), valid)},
        coords={"seed": [3, 7], "block": blocks, "channel": np.arange(width), "stimulus_set": sets},
        attrs={"mix_low": low, "mix_high": high})


def by_hand(metrics: xr.Dataset) -> pd.DataFrame:
    """The first seed's FZ values of every block, counted with plain numpy."""
    rows = []
    blocks = list(metrics["block"].values)
    for position, block in enumerate(blocks):
        valid = metrics["valid"].values[position]
        first = {name: metrics[name].values[0, position, :, 0][valid] for name in metrics.data_vars if name != "valid"}
        mix = first["mix"]
        computed = mix[~np.isnan(mix)]
        low, high = metrics.attrs["mix_low"], metrics.attrs["mix_high"]
        rows.append({"block": block, "depth": (position + 1) / len(blocks), "channels": int(valid.sum()),
                     "computed": len(computed), "failed_fz": int(first["failed_fz"].sum()),
                     "overwrite": np.sum(computed <= low) / len(computed),
                     "mix": np.sum((computed > low) & (computed < high)) / len(computed),
                     "skip": np.sum(computed >= high) / len(computed), "median_mix": np.median(computed),
                     "invariant_naturally": first["invariant_naturally"].sum() / valid.sum(),
                     "invariant_interpreting": first["invariant_interpreting"].sum() / valid.sum()})
    return pd.DataFrame(rows).set_index("block")


@pytest.mark.parametrize("bounds", [(2 / 3, 3 / 2), (0.5, 2.5)])
def test_the_spectrum_equals_a_count_by_hand(bounds):
    metrics = synthetic_metrics(np.random.default_rng(4), *bounds)
    found = universality.spectrum(metrics)
    expected = by_hand(metrics)
    pd.testing.assert_frame_equal(found[expected.columns], expected, check_dtype=False)
    assert np.allclose(found[["overwrite", "mix", "skip"]].sum(axis=1), 1.0)


def test_the_table_sets_models_side_by_side_on_one_depth_axis():
    rng = np.random.default_rng(5)
    deep, shallow = synthetic_metrics(rng), synthetic_metrics(rng).isel(block=[0, 2])
    table = universality.spectrum_table({"deep": deep, "shallow": shallow})
    assert list(table["model"]) == ["deep"] * 3 + ["shallow"] * 2
    assert list(table["depth"]) == pytest.approx([1 / 3, 2 / 3, 1, 1 / 2, 1])
    assert list(table.columns[:3]) == ["model", "block", "depth"]
    # pooled fractions weigh each block by its channels
    summary = universality.model_summary(table)
    rows = table[table["model"] == "shallow"]
    assert summary.loc["shallow", "skip"] == pytest.approx(
        (rows["skip"] * rows["computed"]).sum() / rows["computed"].sum())
    figure = universality.spectrum_figure({"deep": deep, "shallow": shallow})
    axes = [axis for axis in figure.axes if axis.get_visible()]
    assert len(axes) == 6 and all(len(axis.lines) >= 2 for axis in axes)


def test_a_store_already_narrowed_to_one_seed_and_stimulus_set_reads_alike():
    metrics = synthetic_metrics(np.random.default_rng(6))
    narrowed = metrics.isel(seed=0, drop=True).sel(stimulus_set="fz", drop=True)
    pd.testing.assert_frame_equal(universality.spectrum(narrowed), universality.spectrum(metrics))


# ---------------------------------------------------------------- the model of a store

def test_the_model_is_read_from_the_store_attrs():
    resnet = models.of({"identity": {"arch": "resnet34", "weights_sha256": "ab" * 32}, "weights": "random:1",
                        "profile_name": "tiny-r34"})
    assert (resnet.arch, resnet.family, resnet.profile) == ("resnet34", "resnet", "tiny-r34")
    zoo = models.of({"profile": '{"model": {"arch": "repro.zoo:tiny_convnext"}}', "weights_sha256": "cd" * 32})
    assert (zoo.arch, zoo.family, zoo.weights_sha256) == ("repro.zoo:tiny_convnext", "convnext", "cd" * 32)
    assert models.family_from_arch("vit_b_16") == "vit" and models.family_from_arch("resnext50_32x4d") == "resnet"
    assert models.family_from_arch("mobilenet_v2") == "unknown"
    assert models.of({"profile": '{"model": {"arch": "x:y", "family": "vit"}}'}).family == "vit"
    assert resnet.same_as(models.Model("resnet34", "resnet", "other name", "ab" * 32, "p"))
    assert not resnet.same_as(models.Model("resnet34", "resnet", "random:1", "cd" * 32, "tiny-r34"))


def test_labels_are_distinct():
    same = models.Model("resnet18", "resnet", "random:0", "a", "tiny")
    other_weights = models.Model("resnet18", "resnet", "random:1", "b", "tiny")
    assert models.labels([same, other_weights]) == ["tiny · resnet18 · random:0", "tiny · resnet18 · random:1"]
    assert models.labels([same, same]) == ["tiny · resnet18 · random:0 (1)", "tiny · resnet18 · random:0 (2)"]
    assert models.labels([same]) == ["tiny · resnet18"]


# ---------------------------------------------------------------- the report across stores

def synthetic_store(path, seed: int, arch: str | None = None):
    from test_report import make_store

    store = make_store(path, aliased=False, pixels=False, seed=seed, channels=16)
    if arch:  # another model: another architecture and weights
        store.update_attrs("", identity={"arch": arch, "weights_sha256": "ef" * 32, "image_size": 224})
    return store


def test_a_compared_store_of_the_same_model_feeds_the_readings_and_every_store_the_section(tmp_path, monkeypatch):
    from report import builder, spec

    monkeypatch.setattr(spec, "FIGURES_ALIGNMENT", [])
    main_store = synthetic_store(tmp_path / "main.zarr", 0)
    same = synthetic_store(tmp_path / "same.zarr", 1)
    other = synthetic_store(tmp_path / "other.zarr", 2, arch="repro.zoo:tiny_convnext")
    assert builder.reading_store(main_store, [other, same]) is same
    assert builder.reading_store(main_store, [other]) is None
    builder.build(main_store, tmp_path / "out", how="python", compare=[other, same])
    index = (tmp_path / "out" / "index.qmd").read_text()
    readings_part, section = index.split(f"## {SECTION}")
    assert "| criterion | stimuli | block |" in readings_part  # the same model's store, the other reading
    assert "tiny_convnext" not in readings_part
    table = pd.read_csv(tmp_path / "out" / "tables" / "tbl-universality-spectrum.csv")
    labels = list(dict.fromkeys(table["model"]))
    convnext = "paper · repro.zoo:tiny_convnext"
    assert labels == ["paper · resnet18 · imagenet (1)", convnext, "paper · resnet18 · imagenet (2)"]
    assert all(f"| {label} |" in section for label in labels)
    assert f"| {convnext} | `repro.zoo:tiny_convnext` | convnext |" in section
    expected = universality.spectrum(other.dataset("metrics").load())
    got = table[table["model"] == convnext].set_index("block")
    assert np.allclose(got["skip"], expected["skip"]) and np.allclose(got["invariant_naturally"],
                                                                      expected["invariant_naturally"])


def test_one_store_alone_shows_its_spectrum_and_how_to_add_others(tmp_path, monkeypatch):
    from report import builder, spec

    monkeypatch.setattr(spec, "FIGURES_ALIGNMENT", [])
    store = synthetic_store(tmp_path / "alone.zarr", 0)
    builder.build(store, tmp_path / "out", how="python")
    section = (tmp_path / "out" / "index.qmd").read_text().split(f"## {SECTION}")[1]
    assert "Only this store is shown" in section and "--compare S2 --compare S3" in section
    assert "figures/fig-universality-spectrum.png" in section
    assert len(pd.read_csv(tmp_path / "out" / "tables" / "tbl-universality-spectrum.csv")) == 7


TINY_STORES = {  # profile name → the lines a profile file adds to the tiny one
    "tiny-r18": "",
    "tiny-r34": ('[model]\narch = "resnet34"\nweights = "random:1"\nblocks = ["1.2", "2.3", "3.5", "4.2"]\n\n'
                 "[fz.jitter]\n" + "".join(f'"{block}" = {{ I = 0, B = 0, O = 0 }}\n'
                                           for block in ("1.2", "2.3", "3.5", "4.2"))),
}


@pytest.fixture(scope="module")
def tiny_stores(tmp_path_factory):
    """{profile name: store path}: FZs and metrics (no natural images, ablation or alignment) of a tiny
    ResNet-18 and a tiny ResNet-34 with other weights and four of its sixteen blocks."""
    root = tmp_path_factory.mktemp("universality")
    runner, stores = CliRunner(), {}
    for name, extra in TINY_STORES.items():
        profile = root / f"{name}.toml"
        profile.write_text(f'base = "tiny"\nname = "{name}"\n\n[toy]\ndata_dir = "{root / "data"}"\n\n'
                           "[fz]\nchannel_grids = false\ncompare_aliased = false\n\n" + extra)
        stores[name] = root / f"{name}.zarr"
        for args in (["fz", "--profile", str(profile)], ["metrics"]):
            result = runner.invoke(main, [*args, "--store", str(stores[name])])
            assert result.exit_code == 0, result.output
    return stores


@pytest.fixture(scope="module")
def tiny_report(tiny_stores, tmp_path_factory):
    from report import spec

    out = tmp_path_factory.mktemp("universality-report") / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(spec, "FIGURES_ALIGNMENT", [])
        result = CliRunner().invoke(main, ["report", "--store", str(tiny_stores["tiny-r18"]), "--out", str(out),
                                           "--compare", str(tiny_stores["tiny-r34"])])
    assert result.exit_code == 0, result.output
    return out


def test_the_report_sets_two_architectures_side_by_side(tiny_stores, tiny_report):
    from repro.store import Store

    section = (tiny_report / "index.qmd").read_text().split(f"## {SECTION}")[1]
    for arch, weights, profile in (("resnet18", "random:0", "tiny-r18"), ("resnet34", "random:1", "tiny-r34")):
        assert re.search(rf"\| {profile} · {arch} \| `{arch}` \| resnet \| `{weights}` .*\| `{profile}` \|", section)
    table = pd.read_csv(tiny_report / "tables" / "tbl-universality-spectrum.csv")
    assert table.groupby("model", sort=False).size().to_dict() == {"tiny-r18 · resnet18": 7, "tiny-r34 · resnet34": 4}
    assert table.loc[table["model"] == "tiny-r34 · resnet34", "depth"].tolist() == [0.25, 0.5, 0.75, 1.0]
    for name, label in (("tiny-r18", "tiny-r18 · resnet18"), ("tiny-r34", "tiny-r34 · resnet34")):
        metrics = Store(tiny_stores[name]).dataset("metrics").load()
        expected = universality.spectrum(metrics)
        got = table[table["model"] == label].set_index("block")
        assert np.allclose(got["mix"], expected["mix"]) and np.allclose(got["median_mix"], expected["median_mix"])
    assert "Pooled over each model's blocks, tiny-r18 · resnet18: overwrite" in section
    # another model: not a second reading of this store
    assert "No second reading to compare with" in (tiny_report / "index.qmd").read_text()


def test_the_section_and_its_figure_are_in_the_page_chromium_renders(tiny_report, tmp_path):
    from test_report_html import chromium

    index = tiny_report / "_site" / "index.html"
    run = chromium("--allow-file-access-from-files", "--dump-dom", index.as_uri(), profile=tmp_path / "profile")
    assert run.returncode == 0, run.stderr[-2000:]
    text = " ".join(re.sub(r"<[^>]+>", " ", run.stdout).split()).replace("’", "'")  # pandoc's typographic quotes
    assert SECTION in text and "Skip, overwrite and mix across architectures" in text
    assert "tiny-r34 · resnet34" in text and "Pooled over each model's blocks" in text
    sources = re.findall(r'<img[^>]*src="([^"]*fig-universality-spectrum\.png)"', run.stdout)
    assert sources and (index.parent / sources[0]).stat().st_size > 10_000


def one_line_exit_2(result) -> str:
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    return lines[0]


def test_a_compared_store_that_is_stale_or_lacks_metrics_is_refused_in_one_line(tiny_stores, tmp_path):
    from repro.store import Store

    stale = tmp_path / "stale.zarr"
    shutil.copytree(tiny_stores["tiny-r34"], stale)
    Store(stale).update_attrs("fz", version="rebuilt")  # the metrics were made from another fz group
    without = tmp_path / "without.zarr"
    shutil.copytree(tiny_stores["tiny-r34"], without, ignore=shutil.ignore_patterns("metrics"))
    for compared, words in ((stale, "stale groups"), (without, "no metrics group")):
        result = CliRunner().invoke(main, ["report", "--store", str(tiny_stores["tiny-r18"]), "--out",
                                           str(tmp_path / "out"), "--compare", str(compared)])
        assert words in one_line_exit_2(result)
    assert not (tmp_path / "out").exists()

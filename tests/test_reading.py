"""The authors'-code reading: each item of docs/method.md's list of paper/code differences against a by-hand
computation of the code's formula, the switch that sets them all, and the store keeping readings apart."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from PIL import Image
from torchvision import transforms

from analyses import stats
from repro import ablate, fz, metrics, profiles, reading
from repro.errors import UserError
from repro.store import labels
from test_metrics import (SIZE, TAPS, TRANSFORMS, Reference, named_blocks, new_store, randomize_bn, random_fz,
                          tiny_model, tiny_profile, widths, write_fz, write_group)

CODE = {"fz.input_jitter": "previous_output", "metrics.delta_relu": "both", "metrics.direction": "normalised",
        "metrics.mix_edges": "code", "metrics.top9_relu": "per_image", "metrics.top9_png": True,
        "ablation.scale_definition": "code", "ablation.resize": "pil", "metrics.interpreting_criterion": "mix_up"}
PAPER = {"fz.input_jitter": "schedule", "metrics.delta_relu": "unscaled", "metrics.direction": "delta",
         "metrics.mix_edges": "paper", "metrics.top9_relu": "of_mean", "metrics.top9_png": False,
         "ablation.scale_definition": "paper", "ablation.resize": "tensor",
         "metrics.interpreting_criterion": "mix_up_down"}


# ---------------------------------------------------------------- the switch and the settings

def test_the_switch_sets_every_item_and_the_paper_profile_is_unchanged():
    assert reading.items_of(profiles.load("paper")) == PAPER
    assert reading.items_of(profiles.load("tiny")) == PAPER
    code = profiles.load("paper-code")
    assert code["reading"] == "code" and reading.items_of(code) == CODE and reading.label(code) == "code"
    # Only the reading items differ between the two ready profiles.
    paper = profiles.load("paper")
    for key in ("model", "stimulus", "natural"):
        assert code[key] == paper[key]
    assert {k: v for k, v in code["metrics"].items() if f"metrics.{k}" not in CODE} == \
           {k: v for k, v in paper["metrics"].items() if f"metrics.{k}" not in CODE}


def test_a_profile_mixes_readings_and_its_own_items_survive_a_switch(tmp_path):
    mixed = tmp_path / "mixed.toml"
    mixed.write_text('base = "paper-code"\n[metrics]\ndelta_relu = "unscaled"\n')
    profile = profiles.load(str(mixed))
    assert reading.items_of(profile) == {**CODE, "metrics.delta_relu": "unscaled"}
    assert reading.label(profile) == "code, except metrics.delta_relu = 'unscaled'"
    # A derived profile's reading moves every item its chain does not set itself.
    derived = tmp_path / "derived.toml"
    derived.write_text('base = "tiny"\nreading = "code"\n')
    assert reading.items_of(profiles.load(str(derived))) == CODE
    # --reading: items following the reading switch, items set apart stay, items given with it win.
    switched = profiles.override(profile, {"reading": "paper"})
    assert reading.items_of(switched) == PAPER
    back = profiles.override(profiles.load("tiny"), {"reading": "code", "ablation.resize": "tensor"})
    assert reading.items_of(back) == {**CODE, "ablation.resize": "tensor"}


def test_bad_readings_are_refused_in_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('base = "paper"\nreading = "cod"\n')
    with pytest.raises(UserError, match="reading must be one of paper, code"):
        profiles.load(str(bad))
    with pytest.raises(UserError, match="reading must be one of paper, code"):
        profiles.override(profiles.load("tiny"), {"reading": "cod"})
    with pytest.raises(UserError, match="metrics.direction must be one of delta, normalised"):
        profiles.override(profiles.load("tiny"), {"metrics.direction": "sign"})


# ---------------------------------------------------------------- items 2, 3, 4, 7: the formulas

def planted_responses(rng, n=400):
    """Responses of ``n`` channels with both signs everywhere, exact zeros at the mix edges, and some O(X_B)
    and O(X_I) both exactly 0 (failed for the paper, not for the code)."""
    values = rng.normal(size=(3, n, 3, 3))
    o = TAPS.index("O")
    values[o, :40, TAPS.index("B"), 0] = 0.0
    values[o, 20:60, TAPS.index("I"), 0] = 0.0
    values[o, 60:120, TAPS.index("I"), 0] = values[o, 60:120, TAPS.index("B"), 0] * rng.uniform(0.5, 8.0, 60)
    return xr.DataArray(values, dims=("tap", "channel", "source", "transform"),
                        coords={"tap": list(TAPS), "channel": np.arange(n), "source": list(TAPS),
                                "transform": list(TRANSFORMS)})


def by_hand(r, items):
    """One channel's metrics from r[(tap, source, transform)]: the paper's formulas (docs/method.md), with each item
    the code's where ``items`` says so (stream_inspect.py's arithmetic, as docs/method.md describes it)."""
    o_i, o_b = r[("O", "I", "none")], r[("O", "B", "none")]
    if items["metrics.mix_edges"] == "code":
        mix = 10.0 if o_b <= 0 else 0.0 if o_i <= 0 else o_i / o_b
        failed = o_i < 0 and o_b < 0
    else:
        mix = 5.0 if o_b <= 0 else 0.0 if o_i <= 0 else min(o_i / o_b, 5.0)
        failed = o_i <= 0 and o_b <= 0
    both = items["metrics.delta_relu"] == "both"
    scaled_up, scaled_down = r[("B", "I", "S")], r[("I", "B", "S_inv")]
    up = (max(scaled_up, 0.0) if both else scaled_up) - max(r[("B", "I", "none")], 0.0)
    down = (max(scaled_down, 0.0) if both else scaled_down) - max(r[("I", "B", "none")], 0.0)
    b_b, i_i = r[("B", "B", "none")], r[("I", "I", "none")]
    if items["metrics.direction"] == "normalised":
        up_ok, down_ok = up / b_b > 0, down / i_i > 0
    else:
        up_ok, down_ok = up > 0, down > 0
    mix_ok = 2 / 3 < mix < 1.5 and not failed
    interpreting = mix_ok and up_ok and (items["metrics.interpreting_criterion"] == "mix_up" or down_ok)
    return {"mix": mix, "failed_fz": failed, "up_delta": up, "down_delta": down, "scale_metric": up / b_b + down / i_i,
            "up_ok": up_ok, "down_ok": down_ok, "mix_ok": mix_ok, "invariant_naturally": mix_ok and up_ok,
            "invariant_interpreting": interpreting}


def check_against_by_hand(response, settings, items):
    got = metrics.channel_metrics(response, settings)
    for c in range(response.sizes["channel"]):
        r = {(tap, source, transform): float(response.sel(tap=tap, source=source, transform=transform, channel=c))
             for tap in TAPS for source in TAPS for transform in TRANSFORMS}
        for name, value in by_hand(r, items).items():
            if isinstance(value, bool):
                assert bool(got[name][c]) == value, (c, name)
            else:
                np.testing.assert_allclose(float(got[name][c]), value, rtol=1e-5, err_msg=f"{c} {name}")
    return got


# The tiny profile with the papers' mix bounds, which ``by_hand`` writes out (tiny widens them for its random network).
TINY_PAPER_BOUNDS = {"metrics.mix_low": 2 / 3, "metrics.mix_high": 1.5}


def tiny_with(overrides=None):
    return profiles.override(profiles.load("tiny"), {**TINY_PAPER_BOUNDS, **(overrides or {})})


ONE_ITEM = {
    2: {"metrics.delta_relu": "both"},
    3: {"metrics.direction": "normalised"},
    4: {"metrics.mix_edges": "code"},
    7: {"metrics.interpreting_criterion": "mix_up"},
}
# What each item alone changes on the planted responses (so each comparison can fail).
CHANGED = {2: ("up_delta", "scale_metric"), 3: ("up_ok", "down_ok"), 4: ("mix", "failed_fz"),
           7: ("invariant_interpreting",)}


@pytest.mark.parametrize("item", sorted(ONE_ITEM))
def test_each_metric_item_alone_equals_the_codes_formula_by_hand(item):
    response = planted_responses(np.random.default_rng(item))
    profile = tiny_with(ONE_ITEM[item])
    items = reading.items_of(profile)
    got = check_against_by_hand(response, metrics.metrics_settings(profile), items)
    paper = metrics.channel_metrics(response, metrics.metrics_settings(tiny_with()))
    for name in CHANGED[item]:
        assert not np.array_equal(np.nan_to_num(got[name].values), np.nan_to_num(paper[name].values)), name
    if item == 4:  # the criteria agree; only the stored M and the failed-FZ edge differ
        assert np.array_equal(got["mix_ok"].values, paper["mix_ok"].values)
        assert (got["mix"].values == 10).any() and (got["mix"].values > 5).any()


def test_the_code_reading_computes_every_metric_item_at_once():
    response = planted_responses(np.random.default_rng(9))
    profile = tiny_with({"reading": "code"})
    check_against_by_hand(response, metrics.metrics_settings(profile), CODE)
    check_against_by_hand(response, metrics.metrics_settings(tiny_with()), PAPER)


def test_the_histogram_clamps_the_codes_unclamped_mix():
    mix = np.array([[0.1, 1.0, 4.9, 5.0, 7.5, 10.0]])
    dataset = xr.Dataset({"mix": (("block", "channel", "stimulus_set"), mix[..., None]),
                          "valid": (("block", "channel"), np.ones((1, 6), bool))},
                         coords={"block": ["1.1"], "channel": np.arange(6), "stimulus_set": ["fz"]})
    counts, _ = stats.mix_histogram(dataset, "1.1")
    assert counts.sum() == 6 and counts[-1] == 4  # 4.9 and 5 are in the last bin, and so are 7.5 and 10


def test_item_7_the_interpreting_criterion_follows_the_metrics_reading():
    rng = np.random.default_rng(3)
    flags = {name: rng.random((1, 50, 1)) < 0.5 for name in ("mix_ok", "up_ok", "down_ok")}
    dataset = xr.Dataset({name: (("block", "channel", "stimulus_set"), value) for name, value in flags.items()}
                         | {"valid": (("block", "channel"), np.ones((1, 50), bool))},
                         coords={"block": ["2.1"], "channel": np.arange(50), "stimulus_set": ["fz"]})
    by_paper = (flags["mix_ok"] & flags["up_ok"] & flags["down_ok"])[0, :, 0]
    by_code = (flags["mix_ok"] & flags["up_ok"])[0, :, 0]
    assert np.array_equal(stats.passing(dataset, "2.1", "interpreting").values, by_paper)
    dataset.attrs["interpreting_criterion"] = "mix_up"
    assert np.array_equal(stats.passing(dataset, "2.1", "interpreting").values, by_code)
    assert not np.array_equal(by_paper, by_code)


# ---------------------------------------------------------------- item 5: top-9 responses

def test_png_round_trip_truncates_as_topilimage_does():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((2, 3, 5, 7), dtype=np.float32))
    x[0, 0, 0, :3] = torch.tensor([0.0, 1.0, 254.99 / 255])
    expected = np.floor(x.numpy() * np.float32(255)).astype(np.uint8).astype(np.float32) / np.float32(255)
    assert np.array_equal(metrics.png_round_trip(x).numpy(), expected)
    # The same through PIL and a real PNG file, as the code's tuning-curve script and stream_inspect do it.
    import io
    buffer = io.BytesIO()
    transforms.ToPILImage()(x[1]).save(buffer, format="PNG")
    reread = transforms.ToTensor()(Image.open(io.BytesIO(buffer.getvalue())))
    assert torch.equal(metrics.png_round_trip(x[1:])[0], reread)


@pytest.mark.filterwarnings("ignore::repro.metrics.FailedFZWarning")
def test_top9_under_the_code_reading_is_the_mean_of_per_image_relus_after_a_png_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    profile = tiny_profile(reading="code")
    model, record = tiny_model(profile)
    randomize_bn(model, 2)
    block, n_images = "2.0", 12
    # Two FZ seeds: top-9 stimuli are natural images, the same under every seed.
    seeds = [0, 3]
    store = new_store(tmp_path, profile, record)
    write_fz(store, model, [random_fz(rng, model, [block]) for _ in seeds], seeds=seeds)
    n = widths(model, [block])[block]
    # Cached squares: pixel values k/255 whose float32 product with 255 falls below k lose a level.
    cache = rng.integers(0, 256, (n_images, 36, 36, 3), dtype=np.uint8)
    top = np.stack([rng.permutation(n_images)[:9] for _ in range(3 * n)]).reshape(1, 3, n, 9)
    write_group(store, "natural", xr.Dataset(
        {"activation": (("block", "tap", "channel", "image"), rng.normal(size=(1, 3, n, n_images)).astype(np.float32)),
         "top_images": (("block", "tap", "channel", "rank"), top)},
        coords={"block": labels([block]), "tap": labels(TAPS), "channel": np.arange(n), "image": np.arange(n_images)}))
    side = np.full(n_images, 36, dtype=np.int32)
    write_group(store, "image_cache", xr.Dataset(
        {"pixels": (("image", "y", "x", "rgb"), cache), "resized_height": ("image", side),
         "resized_width": ("image", side), "corrupt": ("image", np.zeros(n_images, bool))},
        coords={"image": np.arange(n_images)}))
    metrics.run(store, model, record, profile)
    stored = store.dataset("responses").sel(block=block, stimulus_set="top9").load()

    reference = Reference(model, profile)
    mean, std = reference.mean.numpy(), reference.std.numpy()

    def png_tensor(square):  # the eval crop as uint8, ToTensor, ToPILImage's truncation, ToTensor, Normalize
        unit = square[2:34, 2:34].transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        unit = np.floor(unit * np.float32(255)).astype(np.float32) / np.float32(255)
        return torch.from_numpy((unit - mean) / std)[None]

    seen = {(i, t): reference.taps(reference.transform(png_tensor(cache[i]), t)) for i in range(n_images)
            for t in TRANSFORMS}
    differs = False
    assert list(stored["seed"].values) == seeds
    for seed in seeds:
        for c in range(n):
            for s, source in enumerate(TAPS):
                for t, transform in enumerate(TRANSFORMS):
                    values = np.array([seen[(i, transform)][(block, tap)][c] for i in top[0, s, c]
                                       for tap in TAPS]).reshape(9, 3)
                    got = stored.sel(seed=seed, channel=c, source=source, transform=transform)
                    np.testing.assert_allclose(got["response"].sel(tap=list(TAPS)).values, values.mean(0),
                                               rtol=1e-4, atol=1e-4)
                    np.testing.assert_allclose(got["relu_response"].sel(tap=list(TAPS)).values,
                                               np.maximum(values, 0).mean(0), rtol=1e-4, atol=1e-4)
                    differs |= bool((np.abs(np.maximum(values, 0).mean(0) - np.maximum(values.mean(0), 0))
                                     > 1e-3).any())
    assert differs  # the mean of ReLUs is not the ReLU of the mean here, so the comparison can fail
    # The deltas read the per-image ReLU means, with both terms ReLU'd (items 2 and 5 together), per seed.
    result = store.dataset("metrics").sel(block=block, stimulus_set="top9").load()
    for seed in seeds:
        relu_of = stored["relu_response"].sel(seed=seed, tap="B", source="I")
        up = relu_of.sel(transform="S") - relu_of.sel(transform="none")
        np.testing.assert_allclose(result["up_delta"].sel(seed=seed).values[:n], up.values[:n], rtol=1e-5, atol=1e-6)
    assert result.attrs["reading"] == "code"


# ---------------------------------------------------------------- item 1: the I tap of 3.1

def jitter_profile(**settings):
    schedule = {block: {"I": 0, "B": 0, "O": 0} for block in ("1.1", "2.0", "2.1", "4.0", "4.1")}
    schedule.update({"3.0": {"I": 4, "B": 4, "O": 4}, "3.1": {"I": 16, "B": 16, "O": 16}})
    return tiny_profile(**{"fz.jitter": schedule, "fz.steps": 2, "fz.channel_batch": 8, **settings})


def test_item_1_jitter_of_each_tap_by_hand():
    for reading_name in ("paper", "code"):
        profile = jitter_profile(reading=reading_name)
        model, _ = tiny_model(profile)
        names = list(named_blocks(model))
        for block in profile["model"]["blocks"]:
            for tap in TAPS:
                own = profile["fz"]["jitter"][block][tap]
                simple = named_blocks(model)[block].downsample is None and names.index(block) > 0
                previous = names[names.index(block) - 1]
                reuses = reading_name == "code" and tap == "I" and simple and previous in profile["fz"]["jitter"]
                expected = profile["fz"]["jitter"][previous]["O"] if reuses else own
                assert fz.tap_jitter(model, profile, block, tap) == expected, (reading_name, block, tap)
    model, _ = tiny_model(jitter_profile(reading="code"))
    assert fz.tap_jitter(model, jitter_profile(reading="code"), "3.1", "I") == 4
    assert fz.tap_jitter(model, jitter_profile(), "3.1", "I") == 16


def test_item_1_the_code_readings_3_1_i_fz_is_byte_identical_to_3_0_o(tmp_path):
    stored = {}
    for reading_name in ("paper", "code"):
        profile = jitter_profile(reading=reading_name)
        model, record = tiny_model(profile)
        (tmp_path / reading_name).mkdir()
        store = new_store(tmp_path / reading_name, profile, record)
        fz.run(store, model, record, profile, blocks=["3.0", "3.1"], channels=range(4))
        images = store.dataset("fz")["image"]
        stored[reading_name] = (images.sel(block="3.1", tap="I", channel=range(4)).values,
                                images.sel(block="3.0", tap="O", channel=range(4)).values)
        assert store.group_attrs("fz")["reading"] == reading_name
    code_i, code_o = stored["code"]
    assert code_i.tobytes() == code_o.tobytes()
    paper_i, paper_o = stored["paper"]
    assert paper_i.tobytes() != paper_o.tobytes()  # jitter 16 and jitter 4: two FZs
    assert paper_o.tobytes() == code_o.tobytes()  # 3.0's O is the same FZ under both readings


# ---------------------------------------------------------------- item 6: the ablation's crops

def test_item_6_code_crops_and_pil_bilinear_resize_by_hand():
    settings = ablate.Settings.from_profile(profiles.load("paper-code"))
    assert [settings.crop_px(p) for p in (0.1, 0.2, 0.3, 0.4, 0.5)] == [int(224 * (1 - p)) for p in
                                                                          (0.1, 0.2, 0.3, 0.4, 0.5)]
    assert [settings.crop_px(p) for p in (0.1, 0.2, 0.3, 0.4, 0.5)] == [201, 179, 156, 134, 112]
    rng = np.random.default_rng(1)
    crops = torch.from_numpy(rng.integers(0, 256, (3, 201, 201, 3), dtype=np.uint8))  # the code's 10 % crop
    resize = transforms.Resize((224, 224))  # the code's transform on a PIL image: PIL's bilinear
    expected = np.stack([np.asarray(resize(Image.fromarray(crop))) for crop in crops.numpy()]).transpose(0, 3, 1, 2)
    got = ablate.resize_crops_pil(crops, 224)
    assert got.dtype == torch.uint8 and np.array_equal(got.numpy(), expected)
    # The tensor kernel rounds differently (by one level, here), so the comparison can fail.
    assert not np.array_equal(ablate.resize_crops(crops, 224).numpy(), expected)


# ---------------------------------------------------------------- the store keeps readings apart

@pytest.mark.filterwarnings("ignore::repro.metrics.FailedFZWarning")
def test_groups_made_under_another_reading_are_replaced_not_mixed(tmp_path):
    rng = np.random.default_rng(2)
    paper = tiny_profile()
    model, record = tiny_model(paper)
    store = new_store(tmp_path, paper, record)
    write_fz(store, model, random_fz(rng, model, ["2.1"]))
    metrics.run(store, model, record, paper)
    first = store.dataset("metrics").load()
    assert first.attrs["reading"] == "paper"
    code = profiles.override(paper, {"reading": "code"})
    inputs = metrics.read_inputs(store, code)
    assert not store.is_current("metrics", metrics.group_settings(code, inputs), inputs.input_groups)
    metrics.run(store, model, record, code)
    second = store.dataset("metrics").load()
    assert second.attrs["reading"] == "code" and second.attrs["settings"]["metrics"]["delta_relu"] == "both"
    assert not np.array_equal(np.nan_to_num(first["up_delta"].values), np.nan_to_num(second["up_delta"].values))
    assert store.is_current("metrics", metrics.group_settings(code, inputs), inputs.input_groups)


# ---------------------------------------------------------------- the report

def code_settings() -> dict:
    return {"metrics": {key.split(".")[1]: value for key, value in CODE.items() if key.startswith("metrics.")}}


def test_the_report_compares_the_two_readings_per_block_and_criterion(tmp_path):
    from click.testing import CliRunner

    from residual_stream.cli import main
    from repro.store import Store
    from report import builder, readings, spec
    from test_report import make_store

    published = spec.NATURALLY["invariant_channels"]
    mine = {block: [c for c in published[block] if c < 64] for block in spec.BLOCKS}  # the paper's, where < 64
    theirs = {block: [0, 1, 2] for block in spec.BLOCKS}
    store = make_store(tmp_path / "paper.zarr", invariant=mine, aliased=False, channels=64, pixels=False)
    other = make_store(tmp_path / "code.zarr", invariant=theirs, aliased=False, seed=1, channels=64, pixels=False)
    Store(other.path).update_attrs("metrics", settings=code_settings())
    assert readings.store_reading(store) == "paper" and readings.store_reading(other) == "code"

    table = readings.comparison(store.dataset("metrics"), other.dataset("metrics"), ("paper", "code"), True)
    assert len(table) == 2 * len(spec.BLOCKS)
    for _, row in table.iterrows():
        a, b = set(mine[row["block"]]), set(theirs[row["block"]])
        listed = set((published if row["criterion"] == "naturally"
                      else spec.INTERPRETING["fz_and_imagenet"])[row["block"]])
        union = a | b
        assert (row["count (paper)"], row["count (code)"], row["shared"]) == (len(a), len(b), len(a & b))
        assert row["jaccard"] == pytest.approx(len(a & b) / len(union) if union else 1.0)
        jaccard_a = len(a & listed) / len(a | listed) if a | listed else 1.0
        jaccard_b = len(b & listed) / len(b | listed) if b | listed else 1.0
        assert row["jaccard with published (paper)"] == pytest.approx(jaccard_a)
        assert row["published closer to"] == ("paper" if jaccard_a > jaccard_b else
                                              "code" if jaccard_b > jaccard_a else "equal")
    naturally = table[table["criterion"] == "naturally"].set_index("block")
    assert naturally.loc["1.1", "published closer to"] == "paper"  # all six of its channels are below 64
    assert naturally.loc["1.1", "jaccard with published (paper)"] == 1.0

    context = builder.StoreContext.of(store)
    section = builder.reading_section(store, context, other)
    assert "| criterion | stimuli | block | count (paper) | count (code) |" in section
    assert "IMAGENET1K_V2" in section  # item 8 is stated, not reproduced
    assert "Reading: **paper**" in builder.reading_note(context)
    without = builder.reading_section(store, context)
    assert "--compare S2" in without and "| criterion |" not in without

    result = CliRunner().invoke(main, ["report", "--store", str(store.path), "--out", str(tmp_path / "out"),
                                       "--compare", str(tmp_path / "absent.zarr")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output


def test_the_reading_comparison_goes_seed_by_seed_against_seed_noise(tmp_path):
    from report import readings, spec
    from test_report import metrics_dataset

    widths = {block: 16 for block in spec.BLOCKS}

    def seeded(per_seed: list[dict], seeds: list[int]) -> xr.Dataset:
        rng = np.random.default_rng(7)
        return xr.concat([metrics_dataset(widths, rng, invariant) for invariant in per_seed],
                         dim=xr.DataArray(seeds, dims="seed", name="seed"))

    def sets(*channels):
        return {block: list(channels) for block in spec.BLOCKS}

    # This store: three seeds whose naturally sets overlap pairwise by 2/4, 3/3, 2/4 (the floor: 1/2 .. 1).
    mine = seeded([sets(0, 1, 2), sets(0, 1, 3), sets(0, 1, 2)], [0, 1, 2])
    # The other reading: seeds 1 and 2 shared (seed 5 is not in this store), far from this store's sets.
    theirs = seeded([sets(8, 9), sets(0, 9), sets(0, 1, 2)], [1, 2, 5])
    assert readings.seed_pairs(mine, theirs) == [(1, 1), (2, 2)]
    table = readings.comparison(mine, theirs, ("paper", "code"), False).set_index(["criterion", "block"])
    row = table.loc[("naturally", "1.1")]
    assert row["seeds"] == "1, 2"
    # Seed 1: {0,1,3} vs {8,9} (J = 0); seed 2: {0,1,2} vs {0,9} (J = 1/4): medians over the two pairs.
    assert row["count (paper)"] == 3 and row["count (code)"] == 2
    assert row["shared"] == pytest.approx(0.5) and row["jaccard"] == pytest.approx(0.125)
    assert row["seed-to-seed jaccard"] == pytest.approx(0.5)  # pairs 0-1: 2/4, 0-2: 1, 1-2: 2/4
    assert bool(row["beyond seed noise"])  # the best pair (1/4) is below the lowest seed-to-seed overlap (1/2)
    assert row["published closer to"] == "n/a (published numbers do not apply)"
    # No seed in common: the first seed of each; one seed: the floor is unknown.
    one = mine.isel(seed=[0])
    assert readings.seed_pairs(one, theirs.isel(seed=[2])) == [(0, 5)]
    single = readings.comparison(one, theirs.isel(seed=[2]), ("paper", "code"), False)
    first = single.set_index(["criterion", "block"]).loc[("naturally", "1.1")]
    assert first["seeds"] == "0/5" and first["jaccard"] == 1.0 and first["beyond seed noise"] is None
    assert np.isnan(first["seed-to-seed jaccard"])

"""Several FZ seeds per neuron: the seed dim through fz, responses and metrics, the pass frequencies and
robust labels, seed noise floors, and the verification rule that uses them."""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import xarray as xr

from analyses import noise
from analyses import measures
from report import rules, verify
from report.loader import Loader
from repro import fz, metrics, profiles
from repro.errors import UserError
from repro.model import ModelSpec, load_model
from repro.store import Store

BLOCKS = ["1.1", "2.0"]
NO_JITTER = {block: {"I": 0, "B": 0, "O": 0} for block in ("1.1", "2.0", "2.1", "3.0", "3.1", "4.0", "4.1")}


def tiny_profile(seeds) -> dict:
    return profiles.override(profiles.load("paper"), {
        "model.widths": [8, 8, 16, 16], "model.stem": "small", "model.num_classes": 10,
        "model.weights": "random:0", "model.image_size": 32, "model.blocks": BLOCKS,
        "stimulus.crop": 16, "stimulus.shrink": 16, "stimulus.pad": 8,
        "fz.steps": 6, "fz.trace_every": 2, "fz.channel_batch": 8, "fz.jitter": NO_JITTER, "fz.seeds": list(seeds)})


def build(tmp_path, seeds) -> Store:
    profile = tiny_profile(seeds)
    model, record = load_model(ModelSpec.from_profile(profile["model"]))
    store = Store.create_or_open(tmp_path / "run.zarr", profile, record)
    fz.run(store, model, record, profile)
    with warnings.catch_warnings():  # random-weight FZs may fail some channels; not what these tests check
        warnings.simplefilter("ignore", metrics.FailedFZWarning)
        metrics.run(store, model, record, profile)
    return store


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return (build(tmp_path_factory.mktemp("three"), [0, 1, 2]), build(tmp_path_factory.mktemp("one"), [0]))


def test_every_group_has_the_seed_dim(stores):
    three, _ = stores
    fz_group, responses, stored = (three.dataset(g) for g in ("fz", "responses", "metrics"))
    assert fz_group["seed"].values.tolist() == [0, 1, 2]
    for name in ("image", "activation", "initial_objective", "final_objective", "objective_trace"):
        assert fz_group[name].dims[0] == "seed", name
    assert responses["response"].dims[0] == "seed" and responses["relu_response"].dims[0] == "seed"
    for name in metrics.PER_SET_FLOATS + metrics.per_set_flags():
        assert stored[name].dims == ("seed", "block", "channel", "stimulus_set"), name
    for name in metrics.criterion_flags():
        assert "seed" not in stored[f"{name}_frequency"].dims and "seed" not in stored[f"{name}_robust"].dims
    # Different seeds make different images.
    images = fz_group["image"].sel(block="1.1", tap="B").values
    assert not np.array_equal(images[0], images[1]) and not np.array_equal(images[1], images[2])


def test_seed_0_of_three_equals_a_one_seed_run(stores):
    three, one = stores
    for group, names in (("fz", ("image", "activation", "final_objective", "objective_trace")),
                         ("responses", ("response", "relu_response")), ("metrics", ("mix", "scale_metric", "invariant_naturally"))):
        a, b = three.dataset(group).sel(seed=0).load(), one.dataset(group).sel(seed=0).load()
        for name in names:
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=f"{group}.{name}")


def test_frequencies_and_robust_labels_equal_a_count_by_hand(stores):
    three, _ = stores
    stored = three.dataset("metrics").load()
    fraction = stored.attrs["robust_fraction"]
    for block in BLOCKS:
        valid = stored["valid"].sel(block=block).values.astype(bool)
        for name in metrics.criterion_flags():
            flags = stored[name].sel(block=block, stimulus_set="fz").values  # seed, channel
            for c in range(len(valid)):
                frequency = stored[f"{name}_frequency"].sel(block=block, channel=c, stimulus_set="fz").item()
                robust = bool(stored[f"{name}_robust"].sel(block=block, channel=c, stimulus_set="fz"))
                if not valid[c]:
                    assert np.isnan(frequency) and not robust
                    continue
                passed = sum(bool(flags[s, c]) for s in range(3))
                assert frequency == pytest.approx(passed / 3), (block, name, c)
                assert robust == (passed / 3 >= fraction), (block, name, c)


def test_objective_trace_records_every_k_steps(stores):
    three, _ = stores
    group = three.dataset("fz").load()
    assert group["trace_step"].values.tolist() == [2, 4, 6]
    # The last traced step is the last step: its value is final_objective.
    np.testing.assert_array_equal(group["objective_trace"].sel(trace_step=6).values, group["final_objective"].values)


def test_visualize_snapshot_equals_a_shorter_run():
    profile = tiny_profile([0])
    model, _ = load_model(ModelSpec.from_profile(profile["model"]))
    engine = fz.prepare(model)
    longer = fz.visualize(engine, profile, "1.1", "B", [0, 1], jitter=0, seed=5, steps=6, snapshot_at=[3])
    shorter = fz.visualize(engine, profile, "1.1", "B", [0, 1], jitter=0, seed=5, steps=3)
    np.testing.assert_array_equal(longer.snapshots[3].numpy(), shorter.images.numpy())
    np.testing.assert_array_equal(longer.trace[:, 0].numpy(), shorter.trace[:, 0].numpy())


@pytest.mark.parametrize("override, message", [({"fz.seeds": [0, 0]}, "distinct"), ({"fz.seeds": []}, "distinct"),
                                               ({"metrics.robust_fraction": 0.0}, "robust_fraction")])
def test_bad_seed_settings_are_refused(override, message):
    with pytest.raises(UserError, match=message):
        profiles.override(profiles.load("paper"), override)


# ---------------------------------------------------------------- noise floors on constructed sets


def test_jaccard_and_floor_by_hand():
    assert noise.jaccard([1, 2, 3], [2, 3, 4]) == pytest.approx(2 / 4)
    assert noise.jaccard([], []) == 1.0 and noise.jaccard([1], []) == 0.0
    lists = {0: [1, 2, 3], 1: [2, 3, 4], 2: [1, 2, 3, 4, 5, 6]}
    found = noise.floor(lists)
    expected = [len(set(a) & set(b)) / len(set(a) | set(b)) for a, b in itertools.combinations(lists.values(), 2)]
    assert found.pairs == pytest.approx(expected) and found.seeds == 3
    assert found.median == pytest.approx(np.median(expected))
    assert found.low == pytest.approx(min(expected)) and found.high == pytest.approx(max(expected))
    assert found.contains(min(expected)) and not found.contains(min(expected) - 0.01)
    unknown = noise.floor({0: [1, 2]})
    assert not unknown.known and "unknown" in unknown.describe() and not unknown.contains(1.0)


def constructed_metrics(sets_per_seed: dict[int, list[int]], mix_per_seed: dict[int, list[float]], n: int = 8):
    """A metrics dataset of one block: channel c passes mix and up in seed s when c is in sets_per_seed[s]."""
    seeds = sorted(sets_per_seed)
    passing = np.array([[c in sets_per_seed[s] for c in range(n)] for s in seeds])
    mix = np.array([mix_per_seed[s] for s in seeds], dtype=np.float32)
    ones = np.ones_like(passing)
    dims = ("seed", "block", "channel", "stimulus_set")
    return xr.Dataset({
        "mix_ok": (dims, passing[:, None, :, None]), "up_ok": (dims, passing[:, None, :, None]),
        "down_ok": (dims, ones[:, None, :, None]), "mix": (dims, mix[:, None, :, None]),
        "scale_metric": (dims, np.tile(np.arange(n, dtype=np.float32), (len(seeds), 1))[:, None, :, None]),
        "valid": (("block", "channel"), np.ones((1, n), bool)),
    }, coords={"seed": seeds, "block": ["2.1"], "channel": np.arange(n), "stimulus_set": ["fz"]})


def test_seed_lists_and_floors_table_on_a_constructed_store():
    sets = {0: [1, 2, 3], 1: [2, 3, 4], 2: [1, 2, 3, 4]}
    mixes = {0: [1.0, 1.1, 0.95, 3, 3, 3, 3, 3], 1: [3, 1.0, 1.2, 0.9, 3, 3, 3, 3], 2: [1.0, 1.1, 3, 0.98, 3, 3, 3, 3]}
    dataset = constructed_metrics(sets, mixes).sel(stimulus_set="fz")
    assert noise.seed_lists(dataset, "2.1", "criterion", "naturally") == sets
    assert noise.seed_lists(dataset, "2.1", "top_mix") == {0: [0, 2, 1], 1: [1, 3, 2], 2: [0, 3, 1]}
    # Top by SM among channels passing mix, up and down: SM rises with the channel number here.
    assert noise.seed_lists(dataset, "2.1", "top_sm") == {0: [3, 2, 1], 1: [4, 3, 2], 2: [4, 3, 2]}
    table = noise.floors_table(dataset).set_index("list")
    row = table.loc["naturally"]
    assert row["seeds"] == 3 and row["pairs"] == 3
    assert row["low"] == pytest.approx(min(noise.floor(sets).pairs))
    assert table.loc["top-3 mix", "median"] == pytest.approx(noise.floor({0: [0, 2, 1], 1: [1, 3, 2],
                                                                          2: [0, 3, 1]}).median)


def test_set_claim_is_within_noise_exactly_when_inside_the_seed_floor():
    sets = {0: [1, 2, 3], 1: [2, 3, 4], 2: [1, 2, 3, 4]}  # seed-to-seed Jaccard 0.5, 0.75, 0.75
    dataset = constructed_metrics(sets, {s: [3.0] * 8 for s in sets}).sel(stimulus_set="fz")
    measured = measures.invariant_set(dataset, "2.1", "naturally")
    assert isinstance(measured, measures.SeededSet) and list(measured) == [1, 2, 3] and measured.per_seed == sets
    floor_low = 0.5
    # Reference [1, 2, 3, 4, 5]: Jaccard 3/5, 3/5, 4/5 per seed, median 0.6 ≥ 0.5 → within noise (below 0.75).
    inside = rules.set_overlap([1, 2, 3, 4, 5], measured, verified=0.75, noise=0.99)
    assert inside.badge == rules.WITHIN_NOISE and "0.50" in inside.detail and "3 seeds" in inside.detail
    # Reference [3, 4, 5, 6, 7]: median Jaccard 2/6 < 0.5 → deviates, though the fixed tolerance (0.2) would pass it.
    outside = rules.set_overlap([3, 4, 5, 6, 7], measured, verified=0.75, noise=0.2)
    assert outside.badge == rules.DEVIATES
    assert np.median([noise.jaccard([3, 4, 5, 6, 7], s) for s in sets.values()]) < floor_low
    assert rules.set_overlap([1, 2, 3, 4], measured, verified=0.75).badge == rules.VERIFIED


def test_one_seed_store_says_the_floor_is_unknown():
    dataset = constructed_metrics({0: [1, 2, 3]}, {0: [3.0] * 8}).sel(stimulus_set="fz")
    measured = measures.invariant_set(dataset, "2.1", "naturally")
    outcome = rules.set_overlap([1, 2, 3, 4, 5], measured, verified=0.75, noise=0.4)
    assert outcome.badge == rules.WITHIN_NOISE and "floor unknown" in outcome.detail
    assert rules.set_overlap([5, 6, 7], measured, verified=0.75, noise=0.4).badge == rules.DEVIATES


# ---------------------------------------------------------------- the aliased comparison


@pytest.fixture(scope="module")
def aliased_store(tmp_path_factory):
    from repro import pipeline
    from repro.stages import ALIASED_STEPS

    profile = profiles.override(tiny_profile([0, 1]), {"fz.compare_aliased": True})
    model, record = load_model(ModelSpec.from_profile(profile["model"]))
    store = Store.create_or_open(tmp_path_factory.mktemp("aliased") / "run.zarr", profile, record)
    fz.run(store, model, record, profile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", metrics.FailedFZWarning)
        metrics.run(store, model, record, profile)
        pipeline.run_steps(ALIASED_STEPS, store, model, record, profile)
    return store, model, profile


def test_compare_aliased_builds_metrics_aliased_from_one_seed(aliased_store):
    store, _, _ = aliased_store
    made = store.dataset("metrics_aliased")
    assert made.attrs["complete"] and made["seed"].values.tolist() == [0]
    assert made["mix"].sel(stimulus_set="fz").notnull().any()
    assert store.group_attrs("fz_aliased")["aliased"] is True and store.group_attrs("fz")["aliased"] is False
    # Another objective, other images (same seed, same initial image).
    assert not np.array_equal(store.dataset("fz_aliased")["image"].sel(seed=0, block="1.1", tap="B").values,
                              store.dataset("fz")["image"].sel(seed=0, block="1.1", tap="B").values)


def test_aliased_b_fzs_maximise_lucents_hook_the_post_relu_block_output(aliased_store):
    import copy

    import torch
    from lucent.optvis.render import ModuleHook

    store, model, profile = aliased_store
    group = store.dataset("fz_aliased").sel(seed=0, block="1.1", tap="B").load()
    channels = [0, 1, 2, 3]
    images = group["image"].sel(channel=channels).values
    pixels = fz.normalizer(profile)(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    # Lucent's hook on bn2 of a plain torchvision forward: what the authors' FZ objective read.
    plain = copy.deepcopy(model).eval()
    hook = ModuleHook(plain.layer1[1].bn2)
    with torch.no_grad():
        plain(pixels)
    features = hook.features
    hook.close()
    lucent_value = features[torch.arange(4), torch.tensor(channels), features.shape[2] // 2, features.shape[3] // 2]
    engine = fz.prepare(model)
    index = torch.tensor(channels)
    with torch.no_grad():
        aliased = fz.tap_values(engine, pixels, "1.1", "B", index, aliased=True)
        post_relu = torch.relu(fz.tap_values(engine, pixels, "1.1", "O", index))
    torch.testing.assert_close(aliased, lucent_value, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lucent_value, post_relu, rtol=1e-5, atol=1e-5)
    # The stored images are exactly the FZs of that objective: their names, optimized again, reproduce them.
    from repro.fz_engine import fz_names, optimize

    aliased_profile = profiles.override(profile, {"model.aliased": True})
    names = fz_names(aliased_profile, "1.1", "B", list(range(8)), [0], jitter=fz.jitter_of(profile, "1.1", "B"),
                     resample=profile["fz"]["resample"])
    again = optimize(engine, aliased_profile, names, resample=profile["fz"]["resample"])
    np.testing.assert_array_equal(fz.to_uint8(again.images), group["image"].values)


def test_aliased_table_against_seed_noise(aliased_store):
    store, _, _ = aliased_store
    true = store.dataset("metrics").sel(stimulus_set="fz").load()
    aliased = store.dataset("metrics_aliased").sel(stimulus_set="fz").load()
    table = noise.aliased_against_seed_noise(true, aliased).set_index(["block", "criterion"])
    for block in BLOCKS:
        true_sets = {s: stats_channels(true.sel(seed=s), block) for s in (0, 1)}
        aliased_set = stats_channels(aliased.sel(seed=0), block)
        row = table.loc[(block, "naturally")]
        against = [noise.jaccard(aliased_set, true_sets[s]) for s in (0, 1)]
        assert row["aliased"] == len(aliased_set) and row["aliased_vs_true_high"] == pytest.approx(max(against))
        seed_to_seed = noise.jaccard(true_sets[0], true_sets[1])
        assert row["seed_to_seed_low"] == pytest.approx(seed_to_seed)
        assert bool(row["beyond_noise"]) == (max(against) < seed_to_seed)


def stats_channels(one: xr.Dataset, block: str) -> list[int]:
    """mix ∧ up by hand from the flags."""
    valid = one["valid"].sel(block=block).values.astype(bool)
    flags = one["mix_ok"].sel(block=block).values & one["up_ok"].sel(block=block).values & valid
    return [int(c) for c in one["channel"].values[flags]]


# ---------------------------------------------------------------- a profile's reference run


def test_reference_from_a_store_verifies_it_and_a_perturbed_one_deviates(stores, tmp_path):
    import tomllib

    from report import reference

    three, _ = stores
    path = reference.write(three, tmp_path / "ref.toml", "repro pipeline --profile test-three-seeds")
    written = reference.load(path)
    assert written["kind"] == "reference" and written["seeds"] == [0, 1, 2] and tomllib.loads(path.read_text())
    stored = three.dataset("metrics").sel(stimulus_set="fz").load()
    for block in BLOCKS:  # the robust set and frequencies by hand
        flags = (stored["mix_ok"] & stored["up_ok"] & stored["valid"]).sel(block=block).values  # seed, channel
        robust = [c for c in range(flags.shape[1]) if flags[:, c].mean() >= stored.attrs["robust_fraction"]]
        assert written["blocks"][block]["naturally"]["channels"] == robust
        assert written["blocks"][block]["naturally"]["frequency"] == pytest.approx([flags[:, c].mean() for c in robust],
                                                                                    abs=1e-4)
    # The store that made the reference: every set and count is verified or within its own seed noise.
    results = verify.evaluate(three, reference.claims(written))
    badges = {r.claim.id: r.outcome.badge for r in results}
    assert set(badges.values()) <= {rules.VERIFIED, rules.WITHIN_NOISE}, badges
    assert all("seed" in r.outcome.detail for r in results if r.claim.rule is rules.set_overlap)
    # A reference with other channels and counts: the sets and counts deviate.
    perturbed = {**written, "blocks": {}}
    for block, entry in written["blocks"].items():
        width = int(stored["valid"].sel(block=block).sum())
        perturbed["blocks"][block] = {
            criterion: {"channels": [c for c in range(width) if c not in entry[criterion]["channels"]][:4],
                        "count": entry[criterion]["count"] + 20, "frequency": []}
            for criterion in ("naturally", "interpreting")}
        perturbed["blocks"][block]["top_mixes"] = [c for c in range(width) if c not in entry["top_mixes"]][:3]
    results = verify.evaluate(three, reference.claims(perturbed))
    counts = [r for r in results if "-count-" in r.claim.id]
    assert all(r.outcome.badge == rules.DEVIATES for r in counts)
    # Sets: within noise exactly when the median Jaccard over seeds reaches the lowest seed-to-seed Jaccard.
    from analyses import stats

    for r in results:
        if r.claim.rule is not rules.set_overlap or not r.claim.published:
            continue
        one = {s: stored.sel(seed=s) for s in (0, 1, 2)}
        block = r.claim.args["block"]
        if "top-mixes" in r.claim.id:
            lists = [stats.top_mixes(one[s], block, 3) for s in one]
        else:
            lists = [stats.invariant_channels(one[s], block, r.claim.args["criterion"]) for s in one]
        median = np.median([noise.jaccard(r.claim.published, channels) for channels in lists])
        low = min(noise.jaccard(a, b) for a, b in itertools.combinations(lists, 2))
        verified = r.claim.tolerance["verified"]
        expected = (rules.VERIFIED if median >= verified else rules.WITHIN_NOISE if median >= low else rules.DEVIATES)
        assert r.outcome.badge == expected, (r.claim.id, median, low)
    assert rules.DEVIATES in {r.outcome.badge for r in results if r.claim.rule is rules.set_overlap}


def test_reference_claims_do_not_apply_to_another_profile(stores):
    from report import reference

    three, _ = stores
    claims = reference.claims({"profile": "toy", "weights_sha256": "", "blocks": {
        "1.1": {"naturally": {"channels": [1], "count": 1}, "interpreting": {"channels": [1], "count": 1},
                "top_mixes": [1, 2, 3]}}})
    results = verify.evaluate(three, claims)
    assert {r.outcome.badge for r in results} == {rules.NOT_COMPARABLE}
    assert all("profile 'toy'" in r.outcome.reason for r in results)


def test_convergence_trace_relative_to_the_last_step(stores):
    from analyses import convergence

    three, _ = stores
    group = three.dataset("fz").load()
    relative = convergence.relative_trace(group, "1.1", "B")
    trace = group["objective_trace"].sel(block="1.1", tap="B").values.reshape(-1, 3)  # (seed x channel, step)
    trace = trace[trace[:, -1] > 0]
    np.testing.assert_allclose(relative, trace / trace[:, -1:])
    assert np.allclose(relative[:, -1], 1.0)
    table = convergence.convergence_table(group)
    row = table.set_index(["block", "tap"]).loc[("1.1", "B")]
    assert row["half_step"] == 2 and row["median_at_half"] == pytest.approx(np.median(trace[:, 0] / trace[:, -1]))
    convergence.convergence_figure(group)


# ---------------------------------------------------------------- the authors'-code reading, per seed


def test_the_code_reading_is_computed_on_every_seed(stores, tmp_path):
    """The same three-seed FZs measured under reading = "code": each seed's metrics follow the code's
    formulas (items 2-4 and 7) by hand, and the frequencies count the code's flags."""
    from test_metrics import write_group

    three, _ = stores
    profile = profiles.override(tiny_profile([0, 1, 2]), {"reading": "code"})
    model, record = load_model(ModelSpec.from_profile(profile["model"]))
    store = Store.create_or_open(tmp_path / "code.zarr", profile, record)
    write_group(store, "fz", three.dataset("fz").load())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", metrics.FailedFZWarning)
        metrics.run(store, model, record, profile)
    code = store.dataset("responses").sel(stimulus_set="fz").load()
    paper = three.dataset("responses").sel(stimulus_set="fz").load()
    np.testing.assert_array_equal(code["response"].values, paper["response"].values)  # same FZs, same taps
    np.testing.assert_array_equal(code["relu_response"].values, np.maximum(code["response"].values, 0))
    stored = store.dataset("metrics").sel(stimulus_set="fz").load()
    assert stored.attrs["reading"] == "code" and stored["seed"].values.tolist() == [0, 1, 2]
    differs = False
    for block in BLOCKS:
        valid = stored["valid"].sel(block=block).values.astype(bool)
        passed = []
        for seed in (0, 1, 2):
            r = code["response"].sel(seed=seed, block=block).values.astype(np.float64)  # tap, channel, source, transform
            at = {(tap, source, transform): r[t, :, s, k] for t, tap in enumerate("IBO") for s, source in enumerate("IBO")
                  for k, transform in enumerate(("none", "S", "S_inv"))}
            o_i, o_b = at[("O", "I", "none")], at[("O", "B", "none")]
            with np.errstate(divide="ignore", invalid="ignore"):
                mix = np.where(o_b <= 0, 10.0, np.where(o_i <= 0, 0.0, o_i / o_b))
                up = np.maximum(at[("B", "I", "S")], 0) - np.maximum(at[("B", "I", "none")], 0)
                down = np.maximum(at[("I", "B", "S_inv")], 0) - np.maximum(at[("I", "B", "none")], 0)
                up_ok, down_ok = up / at[("B", "B", "none")] > 0, down / at[("I", "I", "none")] > 0
            low, high = stored.attrs["mix_low"], stored.attrs["mix_high"]  # the profile's bounds (the papers' 2/3, 3/2)
            mix_ok = (low < mix) & (mix < high) & ~((o_i < 0) & (o_b < 0))
            one = stored.sel(seed=seed, block=block)
            np.testing.assert_allclose(one["mix"].values[valid], mix[valid], rtol=1e-6)
            np.testing.assert_allclose(one["up_delta"].values[valid], up[valid], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(one["down_delta"].values[valid], down[valid], rtol=1e-5, atol=1e-6)
            for name, flags in (("mix_ok", mix_ok), ("up_ok", up_ok), ("down_ok", down_ok),
                                ("invariant_interpreting", mix_ok & up_ok)):
                assert np.array_equal(one[name].values[valid], flags[valid]), (block, seed, name)
            passed.append((mix_ok & up_ok)[valid])
            reference = three.dataset("metrics").sel(seed=seed, block=block, stimulus_set="fz").load()
            differs |= not np.allclose(reference["up_delta"].values[valid], up[valid])
        frequency = stored["invariant_interpreting_frequency"].sel(block=block).values[valid]
        np.testing.assert_allclose(frequency, np.mean(passed, axis=0), rtol=1e-6)
    assert differs  # the paper's deltas differ from the code's on these FZs, so the comparison can fail


# ---------------------------------------------------------------- the report's loader


def test_the_report_drops_the_fz_seed_but_keeps_the_alignment_draws(tmp_path):
    from report import spec
    from test_metrics import write_group

    profile = tiny_profile([0, 1])
    model, record = load_model(ModelSpec.from_profile(profile["model"]))
    store = Store.create_or_open(tmp_path / "run.zarr", profile, record)
    per_seed = xr.Dataset({"mix": (("seed", "block", "channel"), np.arange(12.0).reshape(2, 2, 3))},
                          coords={"seed": [4, 7], "block": ["1.1", "2.0"], "channel": np.arange(3)})
    for group in ("metrics", "metrics_aliased", "fz_channel"):
        write_group(store, group, per_seed)
    write_group(store, "alignment", xr.Dataset({"recovery": (("d", "seed"), np.arange(6.0).reshape(2, 3))},
                                               coords={"d": [8, 16], "seed": np.arange(3)}))
    loader = Loader(store)
    for group in ("metrics", "metrics_aliased", "fz_channel"):
        first = loader.load(spec.Selection(group))
        assert "seed" not in first.dims and first["mix"].values.tolist() == [[0, 1, 2], [3, 4, 5]], group
        assert loader.load(spec.Selection(group, seeds=True)).sizes["seed"] == 2
    draws = loader.load(spec.Selection("alignment"))
    assert draws["recovery"].dims == ("d", "seed") and draws["recovery"].values.tolist() == [[0, 1, 2], [3, 4, 5]]


# ---------------------------------------------------------------- the toy world's reference file


def reference_store(path, sets: dict[str, list[int]], seeds=(0, 1, 2)):
    """A toy-profile store whose metrics are built from reference numbers: in every seed exactly ``sets``
    pass mix, up and down, and their first three channels have the mix ratios closest to 1."""
    from test_report import make_store, metrics_dataset
    from test_report import write_group as write_report_group

    store = make_store(path, profile_name="toy", weights="random", invariant=sets, pixels=False, aliased=False)
    widths = {block: 8 for block in sets}
    per_seed = []
    for seed in seeds:
        one = metrics_dataset(widths, np.random.default_rng(seed), sets)
        mix = one["mix"].values.copy()
        for b, block in enumerate(sets):
            for rank, channel in enumerate(sets[block]):
                mix[b, channel, :] = 1.0 + 0.01 * (rank + 1)
        per_seed.append(one.assign(mix=(one["mix"].dims, mix)))
    flagged = [name for name in per_seed[0].data_vars if "stimulus_set" in per_seed[0][name].dims]
    seeded = xr.concat([one[flagged] for one in per_seed], dim=xr.DataArray(list(seeds), dims="seed", name="seed"))
    seeded = seeded.merge(per_seed[0].drop_vars(flagged))
    write_report_group(path, "metrics", seeded)
    Store(path).update_attrs("metrics", robust_fraction=0.5)
    return store


def test_the_toy_reference_file_verifies_a_store_built_from_it_and_a_perturbed_one_deviates(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from report import reference
    from residual_stream.cli import main

    blocks = ("1.1", "2.0", "2.1", "3.0", "3.1", "4.0", "4.1")
    sets = {block: [1, 3, 4, 6] for block in blocks}
    numbers = {block: {"naturally": {"channels": channels, "frequency": [1.0] * len(channels), "count": len(channels)},
                       "interpreting": {"channels": channels, "frequency": [1.0] * len(channels),
                                        "count": len(channels)},
                       "top_mixes": channels[:3]} for block, channels in sets.items()}
    published = tmp_path / "published"
    published.mkdir()
    (published / "toy.toml").write_text(reference.to_toml(
        numbers, profile="toy", command="repro pipeline --profile toy-reference", store_attrs={}, seeds=[0, 1, 2, 3]))
    monkeypatch.setattr(reference, "PUBLISHED", published)
    assert reference.of_profile("toy")["blocks"]["2.1"]["naturally"]["channels"] == sets["2.1"]

    # Built from the reference numbers: every reference claim is verified, through the default claim list.
    built = reference_store(tmp_path / "built.zarr", sets)
    results = [r for r in verify.evaluate(built, reference.claims_for("toy")) if r.claim.paper == "reference"]
    assert len(results) == 5 * len(blocks)  # per block: two sets, two counts, the top mixes
    assert {r.outcome.badge for r in results} == {rules.VERIFIED}, [(r.claim.id, r.outcome.detail) for r in results]
    # Perturbed: other channels pass (as many of them), so the sets and top mixes deviate; counts still agree.
    perturbed = reference_store(tmp_path / "perturbed.zarr", {block: [0, 2, 5, 7] for block in blocks})
    outcomes = {r.claim.id: r.outcome.badge for r in verify.evaluate(perturbed, reference.claims_for("toy")) if r.claim.paper == "reference"}
    for block in blocks:
        bid = block.replace(".", "-")
        for criterion in ("naturally", "interpreting"):
            assert outcomes[f"claim-reference-{criterion}-{bid}"] == rules.DEVIATES
            assert outcomes[f"claim-reference-{criterion}-count-{bid}"] == rules.VERIFIED
        assert outcomes[f"claim-reference-top-mixes-{bid}"] == rules.DEVIATES
    # repro verify prints them.
    printed = CliRunner().invoke(main, ["verify", "--store", str(tmp_path / "perturbed.zarr")])
    assert printed.exit_code == 0, printed.output
    lines = [line for line in printed.output.splitlines() if "claim-reference-naturally-2-1" in line]
    assert len(lines) == 1 and rules.DEVIATES in lines[0], printed.output

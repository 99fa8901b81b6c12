"""analyses.stats against scipy and numpy on the same vectors, over a synthetic metrics / responses cube."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import stats as scipy_stats

from analyses import stats
from repro.store import labels

BLOCKS = ["1.1", "2.0", "2.1"]
WIDTH = {"1.1": 8, "2.0": 12, "2.1": 12}
N = 12
SETS = ["fz", "top9"]
TAPS = ["I", "B", "O"]


def synthetic(seed: int = 0) -> tuple[xr.Dataset, xr.Dataset]:
    """Metrics and responses shaped like the store's, with random values, NaN beyond each block's width."""
    rng = np.random.default_rng(seed)
    valid = np.array([[c < WIDTH[block] for c in range(N)] for block in BLOCKS])
    per_set = (len(BLOCKS), N, len(SETS))
    mix = rng.uniform(0, 5, per_set)
    mix[0, :2, 0] = [0.0, 5.0]  # the two conventions' values, and M exactly 1 (a skip)
    mix[1, 3, 0] = 1.0
    flags = {name: rng.random(per_set) < 0.5 for name in ("mix_ok", "up_ok", "down_ok")}
    variables = {
        "mix": (("block", "channel", "stimulus_set"), mix),
        "scale_metric": (("block", "channel", "stimulus_set"), rng.normal(size=per_set)),
        **{name: (("block", "channel", "stimulus_set"), value) for name, value in flags.items()},
        "invariant_naturally": (("block", "channel", "stimulus_set"), flags["mix_ok"] & flags["up_ok"]),
        "bn2_weight_abs": (("block", "channel"), np.abs(rng.normal(size=(len(BLOCKS), N)))),
        "conv2_weight_mean_abs": (("block", "channel"), np.abs(rng.normal(size=(len(BLOCKS), N)))),
        "tuning_rho": (("block", "channel"), rng.uniform(-1, 1, (len(BLOCKS), N))),
        "valid": (("block", "channel"), valid),
        "downsample": (("block",), np.array([False, True, False])),
    }
    metrics = xr.Dataset(variables, coords={"block": labels(BLOCKS), "channel": np.arange(N),
                                            "stimulus_set": labels(SETS)})
    for name in ("mix", "scale_metric", "bn2_weight_abs", "conv2_weight_mean_abs", "tuning_rho"):
        metrics[name] = metrics[name].where(metrics["valid"])
    metrics["tuning_rho"][0, 5] = np.nan  # a channel with too few driven images
    response = rng.normal(size=(len(BLOCKS), 3, N, 3, 3, len(SETS)))
    responses = xr.Dataset(
        {"response": (("block", "tap", "channel", "source", "transform", "stimulus_set"), response)},
        coords={"block": labels(BLOCKS), "tap": labels(TAPS), "channel": np.arange(N), "source": labels(TAPS),
                "transform": labels(["none", "S", "S_inv"]), "stimulus_set": labels(SETS)})
    return metrics, responses


def column(metrics, name, block, stimulus_set="fz"):
    values = metrics[name].sel(block=block)
    if "stimulus_set" in values.dims:
        values = values.sel(stimulus_set=stimulus_set)
    return values.values[: WIDTH[block]]


# ---------------------------------------------------------------- vector tests


def test_spearman_is_scipys_over_finite_pairs():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=30), rng.normal(size=30)
    x[3], y[7] = np.nan, np.inf
    keep = np.isfinite(x) & np.isfinite(y)
    expected = scipy_stats.spearmanr(x[keep], y[keep])
    assert stats.spearman(x, y) == pytest.approx((expected.statistic, expected.pvalue))
    assert np.isnan(stats.spearman([1.0, 2.0, np.nan], [2.0, 1.0, 3.0])).all()  # fewer than 3 pairs
    assert np.isnan(stats.spearman(np.ones(5), np.arange(5.0))).all()  # constant side


def test_anova_skip_overwrite_is_scipys_f_oneway():
    rng = np.random.default_rng(2)
    values, mix = rng.normal(size=40), rng.uniform(0, 5, 40)
    mix[0], values[1], mix[2] = 1.0, np.nan, np.nan  # M = 1 is a skip; NaN pairs are left out
    keep = np.isfinite(values) & np.isfinite(mix)
    skip, overwrite = values[keep & (mix >= 1)], values[keep & (mix < 1)]
    expected = scipy_stats.f_oneway(skip, overwrite)
    result = stats.anova_skip_overwrite(values, mix)
    assert (result.f, result.p) == pytest.approx((expected.statistic, expected.pvalue))
    assert (result.n_skip, result.n_overwrite) == (len(skip), len(overwrite))
    assert (result.mean_skip, result.mean_overwrite) == pytest.approx((skip.mean(), overwrite.mean()))
    assert values[0] in skip
    empty = stats.anova_skip_overwrite([1.0, 2.0], [2.0, 3.0])
    assert np.isnan(empty.f) and np.isnan(empty.p) and empty.n_overwrite == 0


# ---------------------------------------------------------------- counts and channel lists


def test_block_counts_and_invariant_channels():
    metrics, _ = synthetic()
    table = stats.block_counts(metrics, "naturally")
    assert list(table.index) == BLOCKS
    for block in BLOCKS:
        flags = column(metrics, "mix_ok", block) & column(metrics, "up_ok", block)
        assert table.loc[block, "count"] == flags.sum() and table.loc[block, "channels"] == WIDTH[block]
        assert table.loc[block, "percent"] == pytest.approx(100 * flags.mean())
        assert stats.invariant_channels(metrics, block, "naturally") == list(np.flatnonzero(flags))
        # The stored boolean variable gives the same answer as the named criterion.
        assert stats.invariant_channels(metrics, block, "invariant_naturally") == list(np.flatnonzero(flags))
        both = flags & column(metrics, "mix_ok", block, "top9") & column(metrics, "up_ok", block, "top9")
        assert stats.block_counts(metrics, "naturally", "both").loc[block, "count"] == both.sum()
        no_mix = column(metrics, "up_ok", block) & column(metrics, "down_ok", block)
        assert stats.block_counts(metrics, "interpreting_without_mix").loc[block, "count"] == no_mix.sum()

    interpreting = column(metrics, "mix_ok", "2.0") & column(metrics, "up_ok", "2.0") & column(
        metrics, "down_ok", "2.0")
    chosen = np.flatnonzero(interpreting)
    by_metric = chosen[np.argsort(-column(metrics, "scale_metric", "2.0")[chosen], kind="stable")]
    assert stats.invariant_channels(metrics, "2.0", "interpreting", order="scale_metric") == list(by_metric)
    assert stats.top_by_scale_metric(metrics, "2.0", n=2, criterion="interpreting") == list(by_metric[:2])
    everything = np.argsort(-column(metrics, "scale_metric", "2.0"), kind="stable")
    assert stats.top_by_scale_metric(metrics, "2.0", n=3, criterion=None) == list(everything[:3])
    with pytest.raises(ValueError):
        stats.block_counts(metrics, "rotation")


def test_both_stimulus_sets_rank_by_the_fz_scale_metric():
    metrics, _ = synthetic()
    block = "2.1"
    both = np.flatnonzero(np.logical_and.reduce(
        [column(metrics, name, block, s) for name in ("mix_ok", "up_ok") for s in SETS]))
    expected = both[np.argsort(-column(metrics, "scale_metric", block, "fz")[both], kind="stable")]
    assert stats.invariant_channels(metrics, block, "naturally", "both", order="scale_metric") == list(expected)


def test_top_mixes_and_histogram():
    metrics, _ = synthetic()
    metrics["mix"].loc[dict(block="2.1", stimulus_set="fz")] = np.r_[
        [0.5, 1.05, 5.0, 0.97, 2.0, 1.2, 0.0, 4.0, 1.0, 3.0, 0.8, 1.5]]
    assert stats.top_mixes(metrics, "2.1", n=3) == [8, 3, 1]
    mix = column(metrics, "mix", "2.1")
    counts, edges = stats.mix_histogram(metrics, "2.1")
    expected_counts, expected_edges = np.histogram(mix, bins=np.arange(0, 5.25, 0.25))
    np.testing.assert_array_equal(counts, expected_counts)
    np.testing.assert_array_equal(edges, expected_edges)
    assert counts[-1] >= 1 and counts.sum() == WIDTH["2.1"]  # M = 5 is counted, in the last bin
    # Invalid (padded) channels of a narrower block never appear.
    assert stats.mix_histogram(metrics, "1.1")[0].sum() == WIDTH["1.1"]
    assert all(channel < WIDTH["1.1"] for channel in stats.top_mixes(metrics, "1.1", n=20))


# ---------------------------------------------------------------- mix against weights, activations, tuning


def test_weight_mix_correlations_are_scipys_on_simple_blocks():
    metrics, _ = synthetic()
    table = stats.weight_mix_correlations(metrics)
    assert list(table.index) == ["1.1", "2.1"]  # 2.0 has a downsample branch
    for block in table.index:
        mix = column(metrics, "mix", block)
        for weight, prefix in (("bn2_weight_abs", "bn2"), ("conv2_weight_mean_abs", "conv2")):
            expected = scipy_stats.spearmanr(column(metrics, weight, block), mix)
            assert table.loc[block, f"{prefix}_rho"] == pytest.approx(expected.statistic)
            assert table.loc[block, f"{prefix}_p"] == pytest.approx(expected.pvalue)
        assert table.loc[block, "n"] == WIDTH[block]
    assert list(stats.weight_mix_correlations(metrics, blocks=["2.0"]).index) == ["2.0"]


@pytest.mark.filterwarnings("ignore:One or more sample arguments is too small")  # scipy: NaN for a tiny group
def test_activation_and_tuning_mix_are_scipys_anova():
    metrics, responses = synthetic()
    activation = stats.activation_mix(metrics, responses)
    tuning = stats.tuning_mix(metrics, stimulus_set="top9")
    assert np.isfinite(activation["f"]).all() and np.isfinite(tuning["f"]).any()
    for block in BLOCKS:
        b_at_input = responses["response"].sel(block=block, tap="B", source="I", transform="none",
                                                stimulus_set="fz").values[: WIDTH[block]]
        mix = column(metrics, "mix", block)
        expected = scipy_stats.f_oneway(b_at_input[mix >= 1], b_at_input[mix < 1])
        assert activation.loc[block, "f"] == pytest.approx(expected.statistic)
        assert activation.loc[block, "p"] == pytest.approx(expected.pvalue)
        assert activation.loc[block, "mean_skip"] == pytest.approx(b_at_input[mix >= 1].mean())

        rho, mix_top9 = column(metrics, "tuning_rho", block), column(metrics, "mix", block, "top9")
        keep = np.isfinite(rho)
        expected = scipy_stats.f_oneway(rho[keep & (mix_top9 >= 1)], rho[keep & (mix_top9 < 1)])
        assert tuning.loc[block, "f"] == pytest.approx(expected.statistic, nan_ok=True)  # NaN: a group too small
        assert tuning.loc[block, "n_skip"] + tuning.loc[block, "n_overwrite"] == keep.sum()


def test_functions_read_a_stored_cube(tmp_path):
    """Datasets opened lazily from zarr (as users do) give the same numbers as in-memory ones."""
    metrics, responses = synthetic()
    metrics.to_zarr(tmp_path / "m.zarr", zarr_format=3, consolidated=False)
    responses.to_zarr(tmp_path / "r.zarr", zarr_format=3, consolidated=False)
    stored_metrics = xr.open_zarr(tmp_path / "m.zarr", consolidated=False)
    stored_responses = xr.open_zarr(tmp_path / "r.zarr", consolidated=False)
    pd.testing.assert_frame_equal(stats.block_counts(stored_metrics, "interpreting"),
                                  stats.block_counts(metrics, "interpreting"))
    pd.testing.assert_frame_equal(stats.activation_mix(stored_metrics, stored_responses),
                                  stats.activation_mix(metrics, responses))
    assert stats.top_mixes(stored_metrics.sel(stimulus_set="top9"), "2.0") == stats.top_mixes(metrics, "2.0",
                                                                                            stimulus_set="top9")

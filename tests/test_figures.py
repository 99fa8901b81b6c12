"""The papers' figures as a reader sees them: which channels they pick, what their labels and panels say."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg

from analyses import ablation, figures, stats
from repro import metrics as repro_metrics
from repro import profiles
from repro.store import labels


def one_block_metrics(mix: list[float], clamp: float | None = 5.0) -> xr.Dataset:
    channels = np.arange(len(mix))
    metrics = xr.Dataset({"mix": (("block", "channel"), np.array([mix])),
                          "valid": (("block", "channel"), np.ones((1, len(mix)), bool))},
                         coords={"block": labels(["1.1"]), "channel": channels})
    if clamp is not None:
        metrics.attrs["mix_clamp"] = clamp
    return metrics


# ---------------------------------------------------------------- Fig. 1A: the spectrum examples

def test_skip_example_is_the_highest_unclamped_mix_ratio():
    # ch 2: M = 1.41 (inside the mix band), ch 3: 1.84, the highest M and not clamped: the skip example.
    metrics = one_block_metrics([0.1, 1.02, 1.41, 1.84])
    assert figures.spectrum_examples(metrics, "1.1") == {"overwrite": 0, "mix": 1, "skip": 3}


def test_skip_example_passes_over_clamped_channels_only():
    metrics = one_block_metrics([0.1, 1.02, 1.41, 5.0, 1.84, 5.0])
    assert figures.spectrum_examples(metrics, "1.1")["skip"] == 4
    everything_clamped = one_block_metrics([0.1, 1.02, 5.0, 5.0])
    assert figures.spectrum_examples(everything_clamped, "1.1")["skip"] in (2, 3)
    own_clamp = one_block_metrics([0.1, 1.02, 3.0, 2.0], clamp=3.0)
    assert figures.spectrum_examples(own_clamp, "1.1")["skip"] == 3


# ---------------------------------------------------------------- paper 1 Fig. 2: missing trials

def ablation_with_trials(accepted: int, trials: int = 5, rejected: int = 4) -> xr.Dataset:
    rng = np.random.default_rng(0)
    scales = [0.0, 0.1, 0.2]
    accuracy = np.full((1, 3, trials, 3), np.nan)
    accuracy[0, 0, 0] = 70.0
    accuracy[0, 1, 0] = [60.0, 55.0, 50.0]
    accuracy[0, 2, :accepted] = 61.0 + rng.normal(0, 1, size=(accepted, 3))
    return xr.Dataset({"accuracy": (("block", "condition", "trial", "scale"), accuracy),
                       "rejected_draws": (("block",), np.array([rejected]))},
                      coords={"block": labels(["2.1"]), "condition": labels(["none", "invariant", "random"]),
                              "trial": np.arange(trials), "scale": scales})


def test_ratios_rest_on_the_accepted_trials_only():
    ds = ablation_with_trials(accepted=2)
    ratios = ablation.accuracy_ratios(ds, "2.1")
    per_trial = np.array([60.0, 55.0, 50.0])[None] / ds["accuracy"].values[0, 2, :2]
    np.testing.assert_allclose(ratios["mean"].values, per_trial.mean(axis=0))
    np.testing.assert_allclose(ratios["sem"].values, per_trial.std(axis=0, ddof=1) / np.sqrt(2))
    assert ratios["n_trials"].values.tolist() == [2, 2, 2]
    assert ablation.trials_note(ratios) == "2 of 5 random trials, 4 draws rejected"


def test_one_trial_has_no_standard_error():
    ratios = ablation.accuracy_ratios(ablation_with_trials(accepted=1), "2.1")
    assert np.isnan(ratios["sem"].values).all() and np.isfinite(ratios["mean"].values).all()


def test_ratio_figure_says_how_many_trials_and_draws_no_bars_below_the_axis():
    figure = ablation.ratio_figure(ablation_with_trials(accepted=2))
    axis = figure.get_axes()[0]
    assert "2 of 5 random trials, 4 draws rejected" in axis.get_title()
    assert not axis.patches  # points with SE bars, nothing rising from below the zoomed axis
    FigureCanvasAgg(figure).draw()
    renderer = figure.canvas.get_renderer()
    legends = figure.legends or [axis.get_legend()]
    legend_box = legends[0].get_window_extent(renderer)
    assert not legend_box.overlaps(axis.get_window_extent(renderer))  # the legend sits outside the panel


def test_accuracy_table_fills_mean_and_se_from_accepted_trials():
    ds = ablation_with_trials(accepted=2)
    table = ablation.accuracy_table(ds)
    random = ds["accuracy"].values[0, 2, :2]
    np.testing.assert_allclose(table.loc[("2.1", "random (mean)")].values, random.mean(axis=0))
    np.testing.assert_allclose(table.loc[("2.1", "random (SE)")].values, random.std(axis=0, ddof=1) / np.sqrt(2))
    assert table.loc[("2.1", "random (trials of 5)")].tolist() == [2, 2, 2]


# ---------------------------------------------------------------- paper 2 Fig. 2, Fig. 6

def test_mix_histograms_keep_a_readable_panel_width():
    metrics = xr.Dataset({"mix": (("block", "channel"), np.random.default_rng(0).uniform(0, 5, (7, 10))),
                          "valid": (("block", "channel"), np.ones((7, 10), bool))},
                         coords={"block": labels(stats_blocks := ["1.1", "2.0", "2.1", "3.0", "3.1", "4.0", "4.1"]),
                                 "channel": np.arange(10)})
    figure = figures.mix_histograms(metrics)
    visible = [axis for axis in figure.get_axes() if axis.get_visible()]
    assert [axis.get_title() for axis in visible] == stats_blocks
    page_px = 1100  # the report's content width
    shown = min(1.0, page_px / (figure.get_figwidth() * 100))  # the PNG is saved at 100 dpi
    narrowest = min(axis.get_position().width * figure.get_figwidth() * 100 * shown for axis in visible)
    assert narrowest >= 200, narrowest


def test_scale_metric_terms_sum_to_the_scale_metric():
    rng = np.random.default_rng(3)
    channels = 6
    response = xr.DataArray(rng.uniform(0.1, 2.0, (3, channels, 3, 3)), dims=("tap", "channel", "source", "transform"),
                            coords={"tap": labels("IBO"), "channel": np.arange(channels), "source": labels("IBO"),
                                    "transform": labels(["none", "S", "S_inv"])})
    computed = repro_metrics.channel_metrics(response, repro_metrics.metrics_settings(profiles.load("paper")))
    metrics = computed.expand_dims(block=labels(["2.1"])).assign(
        valid=(("block", "channel"), np.ones((1, channels), bool)))
    responses = xr.Dataset({"response": response.expand_dims(block=labels(["2.1"]))})
    terms = stats.scale_metric_terms(metrics, responses, "2.1")
    value = response.sel
    up = (value(tap="B", source="I", transform="S") - np.maximum(value(tap="B", source="I", transform="none"), 0)) \
        / value(tap="B", source="B", transform="none")
    down = (value(tap="I", source="B", transform="S_inv") - np.maximum(value(tap="I", source="B", transform="none"), 0)) \
        / value(tap="I", source="I", transform="none")
    np.testing.assert_allclose(terms["up"].values, up.values, rtol=1e-5)
    np.testing.assert_allclose(terms["down"].values, down.values, rtol=1e-5)
    np.testing.assert_allclose(terms.sum(axis=1).values, computed["scale_metric"].values, rtol=1e-5)


@pytest.mark.parametrize("criterion", ["naturally", "interpreting", "interpreting_without_mix"])
def test_reader_text_names_criteria_in_words(criterion):
    assert criterion not in figures.criterion_words(criterion).split()


def test_fig_6_grids_show_m_and_the_two_deltas(tmp_path):
    from test_report import make_store

    store = make_store(tmp_path / "store.zarr", invariant={"2.1": [1, 2, 3]})
    read = {group: xr.open_zarr(str(store.path), group=group, consolidated=False).load()
            for group in ("fz", "natural", "image_cache", "metrics", "responses")}
    metrics = read["metrics"].sel(stimulus_set="fz")
    figure = figures.top_scale_metric_grids(read["fz"], read["natural"], read["image_cache"], metrics,
                                            read["responses"])
    texts = [text.get_text() for text in figure.get_axes()[0].texts]
    labels = [text for text in texts if text.startswith("2.1: channel")]
    assert len(labels) == 3 and all("Δup=" in text and "Δdown=" in text and "SM=" not in text for text in labels)
    channel = int(labels[0].split("channel ")[1].split("\n")[0])
    terms = stats.scale_metric_terms(metrics, read["responses"], "2.1", [channel]).loc[channel]
    assert f"Δup={terms['up']:.2f}" in labels[0] and f"Δdown={terms['down']:.2f}" in labels[0]


def test_fig_4_caption_legend_and_anova_agree_on_what_skip_means():
    from report import spec

    caption = next(entry.caption for entry in spec.FIGURES if entry.id == "fig-interpreting-4")
    assert "skip (M ≥ 1" in caption and "M > 1" not in caption
    metrics = one_block_metrics([0.5, 1.0, 2.0, 0.2])
    result = stats.anova_skip_overwrite(np.array([1.0, 2.0, 3.0, 0.0]), metrics["mix"].values[0])
    assert result.n_skip == 2  # M = 1 counts as skip in the ANOVA, as in the caption
    from matplotlib.figure import Figure
    axis = Figure().add_subplot()
    figures._skip_overwrite_panel(axis, stats.per_channel(metrics, "mix", "1.1"), np.array([1.0, 2.0, 3.0, 0.0]), "", "1.1")
    assert "skip mean (M ≥ 1)" in [line.get_label() for line in axis.get_lines()]

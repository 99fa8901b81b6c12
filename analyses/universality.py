"""Universality: the skip/overwrite/mix spectrum and the invariant fraction per block, side by side for
several models (architectures, weights), each from its own store's ``metrics`` dataset.

Per block, over its ``valid`` channels, with FZ stimuli and the first FZ seed (the papers' single-FZ method,
as every count of the report):

* the spectrum, over the channels whose mix ratio M is computed: *overwrite* M ≤ mix_low, *mix*
  mix_low < M < mix_high, *skip* M ≥ mix_high (the bounds of the mix criterion, 2/3 and 3/2 in both papers,
  read from the dataset's attrs), and the median M;
* the invariant fraction of every stored criterion (``invariant_<name>``), over the block's valid channels
  (as the papers' Fig. 5 counts them);
* the block's normalised depth, its position among the dataset's blocks (1-based) over their count, so
  networks of different depth share one axis from 1/n to 1.

Inputs are ``{model label: metrics dataset}``; a dataset may still carry the ``seed`` and ``stimulus_set``
dims (the first seed and FZ stimuli are then taken).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

from analyses import criteria, stats

KINDS = ("overwrite", "mix", "skip")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def mix_bounds(metrics: xr.Dataset) -> tuple[float, float]:
    """The mix criterion's bounds the metrics were computed with (the papers' where not recorded)."""
    return (float(metrics.attrs.get("mix_low", criteria.MIX_LOW)),
            float(metrics.attrs.get("mix_high", criteria.MIX_HIGH)))


def spectrum_kind(mix: np.ndarray, low: float, high: float) -> np.ndarray:
    """Each ratio's kind by the papers' rules ("" where M is not computed)."""
    mix = np.asarray(mix, dtype=float)
    kinds = np.full(mix.shape, "", dtype=object)
    computed = np.isfinite(mix)
    kinds[computed & (mix <= low)] = "overwrite"
    kinds[computed & (mix > low) & (mix < high)] = "mix"
    kinds[computed & (mix >= high)] = "skip"
    return kinds


def normalised_depths(blocks) -> dict[str, float]:
    """Block → its 1-based position over the number of blocks: the last block is at 1 in every network."""
    blocks = list(blocks)
    return {block: (position + 1) / len(blocks) for position, block in enumerate(blocks)}


def stored_criteria(metrics: xr.Dataset) -> list[str]:
    """The stored criteria this dataset has a column of, in registry order."""
    return [criterion.name for criterion in criteria.stored() if criterion.column in metrics]


def _fraction(flags: np.ndarray) -> float:
    return float(np.mean(flags)) if len(flags) else float("nan")


def block_spectrum(metrics: xr.Dataset, block: str) -> dict:
    """One block's row: channel counts, spectrum fractions, median M and invariant fractions."""
    mix = stats.per_channel(metrics, "mix", block).to_numpy(dtype=float)
    kinds = spectrum_kind(mix, *mix_bounds(metrics))
    computed = kinds != ""
    row = {"block": block, "channels": len(mix), "computed": int(computed.sum())}
    if "failed_fz" in metrics:
        row["failed_fz"] = int(stats.per_channel(metrics, "failed_fz", block).astype(bool).sum())
    row.update({kind: _fraction(kinds[computed] == kind) for kind in KINDS})
    row["median_mix"] = float(np.median(mix[computed])) if computed.any() else float("nan")
    for name in stored_criteria(metrics):
        flags = stats.per_channel(metrics, criteria.CRITERIA[name].column, block).to_numpy()
        row[f"invariant_{name}"] = _fraction(flags.astype(bool))
    return row


def spectrum(metrics: xr.Dataset) -> pd.DataFrame:
    """Every block of one model's metrics, in the dataset's block order, with its normalised depth."""
    blocks = stats.blocks_of(metrics)
    depths = normalised_depths(blocks)
    rows = [{"depth": depths[block], **block_spectrum(metrics, block)} for block in blocks]
    return pd.DataFrame(rows).set_index("block")


def spectrum_table(metrics: Mapping[str, xr.Dataset]) -> pd.DataFrame:
    """One row per model and block (``model`` is the mapping's key), models in the mapping's order."""
    frames = [spectrum(dataset).reset_index().assign(model=model) for model, dataset in metrics.items()]
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    return table[["model", *[column for column in table.columns if column != "model"]]]


def model_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per model, each fraction pooled over its blocks (weighted by their channels)."""
    rows = []
    for model, rows_of_model in table.groupby("model", sort=False):
        computed, channels = rows_of_model["computed"], rows_of_model["channels"]
        row = {"model": model, "blocks": len(rows_of_model)}
        row.update({kind: _pooled(rows_of_model[kind], computed) for kind in KINDS})
        row.update({column: _pooled(rows_of_model[column], channels)
                    for column in rows_of_model.columns if column.startswith("invariant_")})
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def _pooled(fractions: pd.Series, weights: pd.Series) -> float:
    keep = fractions.notna() & (weights > 0)
    return float(np.average(fractions[keep], weights=weights[keep])) if keep.any() else float("nan")


def spectrum_figure(metrics: Mapping[str, xr.Dataset]) -> Figure:
    """Per quantity a panel (overwrite, mix and skip fractions, median M, each criterion's invariant
    fraction) against normalised depth, one line with markers per model."""
    table = spectrum_table(metrics)
    invariant = [column for column in table.columns if column.startswith("invariant_")]
    quantities = [*KINDS, "median_mix", *invariant]
    columns = 3
    rows = -(-len(quantities) // columns)
    figure = Figure(figsize=(3.2 * columns, 2.8 * rows))
    axes = np.array(figure.subplots(rows, columns, squeeze=False)).ravel()
    for axis, quantity in zip(axes, quantities):
        for index, (model, rows_of_model) in enumerate(table.groupby("model", sort=False)):
            axis.plot(rows_of_model["depth"], rows_of_model[quantity], marker=MARKERS[index % len(MARKERS)],
                      label=model)
        axis.set_title(_quantity_title(quantity), fontsize=9)
        axis.set_xlim(0, 1.05)
        axis.set_xlabel("normalised depth (block / blocks)", fontsize=8)
        if quantity == "median_mix":
            axis.axhline(1.0, color="0.6", linestyle=":")
        else:
            axis.set_ylim(-0.03, 1.03)
    for axis in axes[len(quantities):]:
        axis.set_visible(False)
    if len(table):
        axes[0].legend(fontsize=7)
    figure.tight_layout()
    return figure


def _quantity_title(quantity: str) -> str:
    if quantity in KINDS:
        return f"fraction {quantity}"
    if quantity == "median_mix":
        return "median mix ratio M"
    return f"fraction invariant ({quantity.removeprefix('invariant_')})"

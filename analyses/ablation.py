"""The scale-robust ablation analysis (paper "Naturally computed scale invariance", Fig. 2 and Eq. 3).

Input: the store's ``ablation`` group, ``accuracy[block, condition, trial, scale]`` with ``none`` and
``invariant`` in trial 0 and ``random`` in every trial; ``scale`` 0 is the untransformed eval crop.
The statistic is the mean over random trials i of acc_invariant / acc_random_i at each scale, with its
standard error across trials, against the same ratio with no scale transform.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import scipy.stats
import xarray as xr
from matplotlib.figure import Figure


def _scale_label(scale: float, crop_px=None) -> str:
    label = f"{scale:.0%}"
    return f"{label} ({int(crop_px)} px)" if crop_px is not None else label


def sem_of_accepted(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """Standard error along ``axis`` of the finite values (scipy.stats.sem, ddof 1); NaN below two values."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns for the slices with fewer than two values: NaN is the answer
        return np.asarray(scipy.stats.sem(values, axis=axis, nan_policy="omit"), dtype=float)


def _sem(values: xr.DataArray, dim: str) -> xr.DataArray:
    return xr.apply_ufunc(sem_of_accepted, values, input_core_dims=[[dim]], kwargs={"axis": -1})


def accuracy_ratios(ablation_ds: xr.Dataset, block: str) -> xr.Dataset:
    """Per scale: ``ratio`` (trial, scale) = acc_invariant / acc_random_i, its ``mean`` and ``sem`` over the
    accepted trials (those with a finite accuracy; scipy.stats.sem, ddof 1, NaN with fewer than two), their
    number ``n_trials``, the no-scale values ``no_scale_ratio`` and ``no_scale_sem``; attrs ``trials`` (the
    trials asked for) and ``rejected_draws`` (random draws screening dropped, when the store records them)."""
    accuracy = ablation_ds["accuracy"].sel(block=block).load()
    invariant = accuracy.sel(condition="invariant", trial=0, drop=True)
    random = accuracy.sel(condition="random", drop=True)
    ratio = (invariant / random).transpose("trial", "scale")
    sem = _sem(ratio, "trial")
    mean = ratio.mean("trial", skipna=True)
    attrs = {"block": block, "trials": int(ratio.sizes["trial"])}
    if "rejected_draws" in ablation_ds:
        attrs["rejected_draws"] = int(ablation_ds["rejected_draws"].sel(block=block))
    return xr.Dataset(
        {
            "ratio": ratio,
            "mean": mean,
            "sem": sem,
            "n_trials": ratio.notnull().sum("trial"),
            "no_scale_ratio": mean.sel(scale=0.0, drop=True),
            "no_scale_sem": sem.sel(scale=0.0, drop=True),
        },
        attrs=attrs,
    )


def trials_note(ratios: xr.Dataset) -> str:
    """How many random trials the means rest on, and how many draws screening rejected."""
    counts = sorted({int(n) for n in ratios["n_trials"].values})
    accepted = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    note = f"{accepted} of {ratios.attrs['trials']} random trials"
    if "rejected_draws" in ratios.attrs:
        note += f", {ratios.attrs['rejected_draws']} draws rejected"
    return note


def ratio_figure(ablation_ds: xr.Dataset) -> Figure:
    """Fig. 2: one panel per block; a point per scale (mean ratio over the accepted random trials, black SE
    bars), blue line at the no-scale ratio; the panel title says how many trials the means rest on."""
    blocks = [str(b) for b in ablation_ds["block"].values]
    figure = Figure(figsize=(4.2 * len(blocks), 3.6), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(blocks), squeeze=False)[0])
    for ax, block in zip(axes, blocks):
        _ratio_panel(ax, accuracy_ratios(ablation_ds, block), block)
    handles, names = axes[0].get_legend_handles_labels()
    figure.legend(handles, names, loc="outside lower center", ncols=2, fontsize="small", frameon=False)
    return figure


def _ratio_panel(ax, ratios: xr.Dataset, block: str) -> None:
    """Points with SE bars, not bars: the axis is zoomed on a few-percent effect, and bars rising from
    below the visible axis would suggest a baseline that is not there."""
    scaled = ratios.sel(scale=ratios["scale"] > 0)
    scales = scaled["scale"].values
    positions = np.arange(len(scales))
    means, sems = scaled["mean"].values, scaled["sem"].values
    no_scale = float(ratios["no_scale_ratio"])
    ax.errorbar(positions, means, yerr=np.where(np.isfinite(sems), sems, 0.0), fmt="o", color="0.25",
                ecolor="black", capsize=4, label="mean ratio ± SE over random trials")
    undefined = ~np.isfinite(sems) & np.isfinite(means)
    if undefined.any():  # one accepted trial: no standard error to draw
        ax.plot(positions[undefined], means[undefined], "o", mfc="white", color="0.25", label="SE undefined (1 trial)")
    ax.axhline(no_scale, color="tab:blue", linewidth=1.5, label="no-scale ratio")
    ax.set_xticks(positions, [_scale_label(s) for s in scales])
    ax.set_xlim(-0.5, len(scales) - 0.5)
    ax.set_xlabel("scale transform")
    ax.set_ylabel("top-1 ratio, invariant / random")
    ax.set_title(f"block {block}: no-scale {no_scale:.4f}\n{trials_note(ratios)}", fontsize=9)
    # Zoom on the points and the line, as the paper does: the effect is a few percent.
    finite = np.concatenate([means - np.nan_to_num(sems), means + np.nan_to_num(sems), [no_scale]])
    finite = finite[np.isfinite(finite)]
    if finite.size:
        low, high = finite.min(), finite.max()
        margin = max(0.25 * (high - low), 0.005)
        ax.set_ylim(low - margin, high + margin)


def accuracy_table(ablation_ds: xr.Dataset) -> pd.DataFrame:
    """Top-1 per block and condition (rows) and scale (columns): none, invariant, the accepted random trials'
    mean and standard error (NaN below two trials) and their number. ``attrs["rejected_draws"]`` holds each
    block's rejected random draws."""
    accuracy = ablation_ds["accuracy"].load()
    crops = ablation_ds["crop_px"].values if "crop_px" in ablation_ds.coords else [None] * accuracy.sizes["scale"]
    columns = [_scale_label(s, c) for s, c in zip(accuracy["scale"].values, crops)]
    rows, index = [], []
    for block in accuracy["block"].values:
        per_block = accuracy.sel(block=block)
        random = per_block.sel(condition="random").values
        accepted = np.isfinite(random).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(accepted > 0, np.nansum(random, axis=0) / np.maximum(accepted, 1), np.nan)
        rows += [
            per_block.sel(condition="none", trial=0).values,
            per_block.sel(condition="invariant", trial=0).values,
            mean,
            sem_of_accepted(random, axis=0),
            accepted.astype(float),
        ]
        index += [(str(block), name) for name in ("none", "invariant", "random (mean)", "random (SE)",
                                                  f"random (trials of {random.shape[0]})")]
    table = pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=["block", "condition"]), columns=columns)
    if "rejected_draws" in ablation_ds:
        table.attrs["rejected_draws"] = {
            str(b): int(n) for b, n in zip(ablation_ds["block"].values, ablation_ds["rejected_draws"].values)
        }
    return table

"""The scale-robust ablation analysis (paper "Naturally computed scale invariance", Fig. 2 and Eq. 3).

Input: the store's ``ablation`` group, ``accuracy[block, condition, trial, scale]`` with ``none`` and
``invariant`` in trial 0 and ``random`` in every trial; ``scale`` 0 is the untransformed eval crop.
The statistic is the mean over random trials i of acc_invariant / acc_random_i at each scale, with its
standard error across trials, against the same ratio with no scale transform.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.stats
import xarray as xr
from matplotlib.figure import Figure


def _scale_label(scale: float, crop_px=None) -> str:
    label = f"{scale:.0%}"
    return f"{label} ({int(crop_px)} px)" if crop_px is not None else label


def accuracy_ratios(ablation_ds: xr.Dataset, block: str) -> xr.Dataset:
    """Per scale: ``ratio`` (trial, scale) = acc_invariant / acc_random_i, its ``mean`` and ``sem`` over
    trials (scipy.stats.sem, ddof 1), and the no-scale values ``no_scale_ratio`` and ``no_scale_sem``."""
    accuracy = ablation_ds["accuracy"].sel(block=block).load()
    invariant = accuracy.sel(condition="invariant", trial=0, drop=True)
    random = accuracy.sel(condition="random", drop=True)
    ratio = (invariant / random).transpose("trial", "scale")
    sem = xr.apply_ufunc(scipy.stats.sem, ratio, input_core_dims=[["trial"]], kwargs={"axis": -1})
    mean = ratio.mean("trial")
    return xr.Dataset(
        {
            "ratio": ratio,
            "mean": mean,
            "sem": sem,
            "no_scale_ratio": mean.sel(scale=0.0, drop=True),
            "no_scale_sem": sem.sel(scale=0.0, drop=True),
        },
        attrs={"block": block},
    )


def ratio_figure(ablation_ds: xr.Dataset) -> Figure:
    """Fig. 2: one panel per block; a bar per scale (mean ratio, black SE bars), blue line at the
    no-scale ratio."""
    blocks = [str(b) for b in ablation_ds["block"].values]
    figure = Figure(figsize=(4.2 * len(blocks), 3.4), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(blocks), squeeze=False)[0])
    for ax, block in zip(axes, blocks):
        _ratio_panel(ax, accuracy_ratios(ablation_ds, block), block)
    return figure


def _ratio_panel(ax, ratios: xr.Dataset, block: str) -> None:
    scaled = ratios.sel(scale=ratios["scale"] > 0)
    scales = scaled["scale"].values
    positions = np.arange(len(scales))
    means, sems = scaled["mean"].values, np.nan_to_num(scaled["sem"].values)
    no_scale = float(ratios["no_scale_ratio"])
    ax.bar(positions, means, yerr=sems, color="0.7", edgecolor="0.3", ecolor="black", capsize=4, width=0.6)
    ax.axhline(no_scale, color="tab:blue", linewidth=1.5, label=f"no scale: {no_scale:.4f}")
    ax.set_xticks(positions, [_scale_label(s) for s in scales])
    ax.set_xlabel("scale transform")
    ax.set_ylabel("top-1 ratio, invariant / random")
    ax.set_title(f"block {block}")
    # Zoom on the bars and the line, as the paper does: the effect is a few percent.
    finite = np.concatenate([means - sems, means + sems, [no_scale]])
    finite = finite[np.isfinite(finite)]
    if finite.size:
        low, high = finite.min(), finite.max()
        margin = max(0.25 * (high - low), 0.005)
        ax.set_ylim(low - margin, high + margin)
    ax.legend(loc="lower left", fontsize="small", frameon=False)


def accuracy_table(ablation_ds: xr.Dataset) -> pd.DataFrame:
    """Top-1 per block and condition (rows) and scale (columns): none, invariant, and the random trials'
    mean and standard error. ``attrs["rejected_draws"]`` holds each block's rejected random draws."""
    accuracy = ablation_ds["accuracy"].load()
    crops = ablation_ds["crop_px"].values if "crop_px" in ablation_ds.coords else [None] * accuracy.sizes["scale"]
    columns = [_scale_label(s, c) for s, c in zip(accuracy["scale"].values, crops)]
    rows, index = [], []
    for block in accuracy["block"].values:
        per_block = accuracy.sel(block=block)
        random = per_block.sel(condition="random").values
        rows += [
            per_block.sel(condition="none", trial=0).values,
            per_block.sel(condition="invariant", trial=0).values,
            random.mean(axis=0),
            scipy.stats.sem(random, axis=0),
        ]
        index += [(str(block), name) for name in ("none", "invariant", "random (mean)", "random (SE)")]
    table = pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=["block", "condition"]), columns=columns)
    if "rejected_draws" in ablation_ds:
        table.attrs["rejected_draws"] = {
            str(b): int(n) for b, n in zip(ablation_ds["block"].values, ablation_ds["rejected_draws"].values)
        }
    return table

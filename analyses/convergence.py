"""How far the stored FZs are from convergence: the objective trace (``fz.objective_trace``) per block.

Each FZ's objective after every ``fz.trace_every`` steps is divided by its last traced value, so a curve
that has flattened near 1 well before the last step has converged; one still climbing at the end has not.
Per block and tap the panel shows the median over channels and seeds, with the 25-75 % band.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

TAPS = ("I", "B", "O")


def relative_trace(fz: xr.Dataset, block: str, tap: str) -> np.ndarray:
    """[FZs, traced steps]: each valid FZ's objective over its last traced value (FZs ending ≤ 0 left out)."""
    trace = fz["objective_trace"].sel(block=block, tap=tap)
    valid = fz["valid"].sel(block=block).values.astype(bool)
    values = np.asarray(trace.values, dtype=np.float64)  # (seed, channel, step) or (channel, step)
    values = values.reshape(-1, valid.size, values.shape[-1])[:, valid].reshape(-1, values.shape[-1])
    last = values[:, -1:] if values.shape[-1] else np.empty((len(values), 0))
    keep = (last[:, 0] > 0) if values.shape[-1] else np.zeros(len(values), bool)
    return values[keep] / last[keep]


def convergence_table(fz: xr.Dataset) -> pd.DataFrame:
    """Per block and tap: the median relative objective at the half-way traced step (1 = converged by then)."""
    rows = []
    if "objective_trace" not in fz:
        return pd.DataFrame(rows)
    steps = fz["trace_step"].values
    for block in [str(b) for b in fz["block"].values]:
        for tap in [t for t in TAPS if t in fz["tap"].values]:
            relative = relative_trace(fz, block, tap)
            if not len(relative) or len(steps) < 2:
                continue
            half = len(steps) // 2 - 1
            rows.append({"block": block, "tap": tap, "fzs": len(relative), "half_step": int(steps[half]),
                         "median_at_half": float(np.median(relative[:, half]))})
    return pd.DataFrame(rows)


def convergence_figure(fz: xr.Dataset) -> Figure:
    """One panel per block: median relative objective against step, a line per tap. A store made before the
    objective was traced gets one panel saying so."""
    if "objective_trace" not in fz or fz.sizes.get("trace_step", 0) == 0:
        figure = Figure(figsize=(5.2, 1.2))
        axis = figure.subplots()
        axis.axis("off")
        axis.text(0.5, 0.5, "this store's FZs have no objective trace (fz.objective_trace)", ha="center", va="center")
        return figure
    blocks = [str(b) for b in fz["block"].values]
    steps = fz["trace_step"].values
    figure = Figure(figsize=(2.6 * max(len(blocks), 1), 2.4))
    axes = np.atleast_1d(figure.subplots(1, max(len(blocks), 1), squeeze=False)[0])
    for axis, block in zip(axes, blocks):
        for tap in [t for t in TAPS if t in fz["tap"].values]:
            relative = relative_trace(fz, block, tap)
            if not len(relative):
                continue
            low, median, high = np.quantile(relative, [0.25, 0.5, 0.75], axis=0)
            axis.plot(steps, median, label=tap)
            axis.fill_between(steps, low, high, alpha=0.2)
        axis.axhline(1.0, color="0.7", linestyle=":")
        axis.set_title(block)
        axis.set_xlabel("step")
    if blocks:
        axes[0].set_ylabel("objective / last traced")
        axes[0].legend(fontsize="small")
    figure.tight_layout()
    return figure

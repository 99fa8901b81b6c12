"""The alignment chapter: figures and tables from the ``alignment`` store group and from cheap simulations.

Plotting functions are pure: they take simulation results (``analyses.superposition``) or the group
``alignment`` (written by ``repro alignment``) and return a ``matplotlib.figure.Figure`` (built without
pyplot) or a ``pandas.DataFrame``. Every simulated point carries a 95 % t-interval of the mean over its
draws; every network value a 95 % percentile bootstrap interval over images.

``FIGURES`` lists the report's entries: kind (what the function returns, ``"figure"`` or ``"table"``), id,
title, caption, function and, for entries that read the store,
``inputs`` (argument name → group). ``findings_table`` states each figure's outcome in words, generated
from the same numbers.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure
from scipy import stats

from analyses import superposition as sp

METRIC_LABELS = {
    "cka": "linear CKA (biased)",
    "cka_biased": "linear CKA (biased)",
    "cka_debiased": "linear CKA (debiased)",
    "rsa": "RSA (sq. Euclidean, Pearson)",
    "regression_r2": "OLS R² (in sample)",
    "regression_median_r": "OLS median per-unit r",
    "ridge_r2": "ridge R² (out of fold, both ways)",
    "hungarian": "Hungarian matching r",
    "semi_matching": "semi-matching r",
    "soft_matching": "soft matching r",
    "ground_truth_r": "ground-truth recovery r",
}
SWEEP_METRICS = ("cka", "rsa", "regression_r2")
RECOVERY_METRICS = ("ground_truth_r", "cka_debiased", "rsa", "ridge_r2", "hungarian", "semi_matching")
NETWORK_METRICS = ("cka_debiased", "cka", "rsa", "ridge_r2", "hungarian", "semi_matching")
REPRESENTATION_STYLE = {"raw": ("tab:red", "o", "raw neurons"), "sae": ("tab:blue", "s", "unsupervised TopK SAE"),
                        "sae_supervised": ("tab:green", "^", "supervised TopK SAE (reference)")}
MIXING_STYLE = {"gaussian": ("tab:orange", "o"), "orthogonal": ("tab:purple", "s")}
AGREEMENT_LEVEL = 0.001     # a closed form agrees if the draws do not reject it at this two-sided level ...
AGREEMENT_ALLOWANCE = 0.005  # ... after an allowance for the ratio-of-expectations error (≤ 0.002)


def _label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def _interval_bars(ax, x, value, low, high, color, marker, label, offset=1.0, shift=0.0):
    """The value as a marker and its interval as a vertical line. Drawn as lines rather than error bars:
    a resampling interval need not contain the full-sample value (matching scores are biased upwards by
    the copies a resample holds)."""
    x = np.asarray(x, float) * offset + shift
    ax.vlines(x, np.asarray(low, float), np.asarray(high, float), color=color, lw=1.2)
    ax.plot(x, np.asarray(value, float), marker, color=color, ms=4, ls="none", label=label)


# ---------------------------------------------------------------- simulations (pure, cheap)

def _closed_form(metric: str, k: float, d: float, gamma: float, n: int | None) -> float:
    if metric == "cka":
        return sp.expected_linear_cka(k, d, d)
    if metric == "rsa":
        return sp.expected_rsa(k, d, d, gamma)
    if metric == "regression_r2":
        return sp.in_sample_r2(min(d, k) / k, min(d, k), n)
    return sp.expected_regression_median_r(k, d, n=n)


def plot_sweeps(draws: pd.DataFrame, metrics=SWEEP_METRICS) -> Figure:
    """Deflation of identical latents (``simulate_sweeps``): one row per sweep (d, k, p), one column per
    metric; the closed form as a line, Monte Carlo means with 95 % t-intervals over the draws."""
    summary = sp.summarize(draws)
    sweeps = [s for s in ("d", "k", "p") if s in set(summary["sweep"])]
    figure = Figure(figsize=(3.3 * len(metrics), 2.8 * len(sweeps)), layout="constrained")
    axes = np.atleast_2d(figure.subplots(len(sweeps), len(metrics), squeeze=False))
    n = int(draws["n"].iloc[0])
    for row, sweep in enumerate(sweeps):
        part = summary[summary["sweep"] == sweep]
        x_name = {"d": "compression", "k": "k", "p": "p"}[sweep]
        for column, metric in enumerate(metrics):
            ax = axes[row, column]
            rows = part[part["metric"] == metric].sort_values(x_name)
            if sweep == "d":
                k, gamma = int(rows["k"].iloc[0]), float(rows["gamma"].iloc[0])
                grid = np.geomspace(rows["d"].min(), rows["d"].max(), 200)
                ax.plot(grid / k, [_closed_form(metric, k, d, gamma, n) for d in grid], color="black", lw=1.2,
                        label="closed form")
                ax.axvline(1.0, color="0.7", lw=0.8, ls=":")
            else:
                ax.plot(rows[x_name], rows["closed_form"], color="black", lw=1.2, label="closed form")
            _interval_bars(ax, rows[x_name], rows["mc_mean"], rows["mc_low"], rows["mc_high"], "tab:orange", "o",
                           f"simulation, mean and 95 % interval ({int(rows['n_draws'].iloc[0])} draws)")
            ax.set_xscale("log", base=2 if sweep != "p" else 10)
            ax.set_ylim(0, 1.05)
            fixed = {"d": f"k = {int(rows['k'].iloc[0])}", "k": f"d = {int(rows['d'].iloc[0])}",
                     "p": f"k = {int(rows['k'].iloc[0])}, d = {int(rows['d'].iloc[0])}"}[sweep]
            ax.set_xlabel({"d": "neurons / features  d / k", "k": "features k", "p": "active probability p"}[sweep])
            ax.set_title(f"{_label(metric)}, {fixed}", fontsize=8)
        axes[row, 0].set_ylabel("alignment of X = ZA, Y = ZB")
    axes[0, 0].legend(fontsize=6, loc="upper left")
    figure.suptitle(f"Superposition deflates alignment of identical latents (sparse latents, n = {n} stimuli)",
                    fontsize=9)
    return figure


def _mixing_closed_form(mixing: str, metric: str, k: int, d: float, gamma: float, n: int) -> float:
    if metric == "regression_r2":
        return sp.in_sample_r2(min(d, k) / k, min(d, k), n)
    if mixing == "orthogonal":
        return sp.expected_orthogonal_cka(k, d) if metric == "cka" else sp.expected_orthogonal_rsa(k, d, gamma)
    return sp.expected_linear_cka(k, d, d) if metric == "cka" else sp.expected_rsa(k, d, d, gamma)


def plot_mixing(draws: pd.DataFrame, metrics=SWEEP_METRICS, p: float = sp.ACTIVE_PROBABILITY) -> Figure:
    """Random Gaussian vs orthogonal mixing (``simulate_mixing``) vs d/k: closed forms as lines, Monte Carlo
    means with 95 % t-intervals."""
    summary = sp.summarize(draws)
    k, n = int(draws["k"].iloc[0]), int(draws["n"].iloc[0])
    gamma = sp.latent_gamma(draws["latent"].iloc[0], p)
    figure = Figure(figsize=(3.4 * len(metrics), 3.2), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(metrics)))
    grid = np.geomspace(summary["d"].min(), summary["d"].max(), 200)
    for ax, metric in zip(axes, metrics):
        for index, (mixing, (color, marker)) in enumerate(MIXING_STYLE.items()):
            rows = summary[(summary["metric"] == metric) & (summary["mixing"] == mixing)].sort_values("d")
            ax.plot(grid / k, [_mixing_closed_form(mixing, metric, k, d, gamma, n) for d in grid], color=color, lw=1,
                    ls="-" if index == 0 else "--", label=f"{mixing}: closed form")
            _interval_bars(ax, rows["compression"], rows["mc_mean"], rows["mc_low"], rows["mc_high"], color, marker,
                           f"{mixing}: simulation ({int(rows['n_draws'].iloc[0])} draws)", 1.04 if index else 0.96)
        ax.set_xscale("log", base=2)
        ax.axvline(1.0, color="0.7", lw=0.8, ls=":")
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("neurons / features  d / k")
        ax.set_title(_label(metric), fontsize=9)
    axes[0].set_ylabel("alignment of X = ZA, Y = ZB")
    axes[0].legend(fontsize=6, loc="lower right")
    figure.suptitle(f"Orthogonal vs random mixing of the same k = {k} latents (n = {n}); right of the dotted line "
                    "d ≥ k: orthogonal mixing keeps every metric at 1, Gaussian mixing does not", fontsize=8)
    return figure


def plot_overlap_map(draws: pd.DataFrame) -> Figure:
    """The partial-overlap map (``simulate_overlap_map``): (a) the closed-form Δ over (k_s, d) with the
    boundary Δ = 0; (b) the simulated cells, marked by what their 95 % interval says about the inversion."""
    table = sp.overlap_map(draws)
    K = int(table["k_total"].iloc[0])
    figure = Figure(figsize=(10, 3.9), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    d_grid = np.geomspace(table["d"].min(), table["d"].max(), 200)
    shared_grid = np.linspace(0, K, 200)
    delta = shared_grid[:, None] / K - d_grid[None, :] / (d_grid[None, :] + K + 1)
    limit = float(np.nanmax(np.abs(delta)))
    mesh = axes[0].pcolormesh(d_grid, shared_grid, delta, cmap="RdBu_r", vmin=-limit, vmax=limit, shading="auto")
    boundary = K * d_grid / (d_grid + K + 1)
    for ax in axes:
        ax.plot(d_grid, boundary, color="black", lw=1.2, label="Δ = 0: k_s/K = d/(d + K + 1)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("neurons d of the identical-content pair")
    axes[0].set_ylabel(f"features shared k_s (of K = {K}), no superposition")
    axes[0].set_title("(a) closed form Δ = k_s/K − d/(d + K + 1); red: inverted", fontsize=8)
    figure.colorbar(mesh, ax=axes, label="Δ CKA (fewer shared − all shared)", shrink=0.85)
    simulated, decided = table["inverts_simulated"], table["inverts_simulated"].notna()
    verdicts = {True: ("tab:red", "simulated Δ > 0 (interval)"), False: ("tab:blue", "simulated Δ < 0 (interval)")}
    for verdict, (color, label) in verdicts.items():
        cells = table[decided & (simulated == verdict).fillna(False)]
        axes[1].scatter(cells["d"], cells["k_shared"], color=color, s=45, label=label)
    undecided = table[~decided]
    axes[1].scatter(undecided["d"], undecided["k_shared"], facecolors="none", edgecolors="0.3", s=45,
                    label="interval contains 0")
    wrong = table[decided & (simulated.fillna(False) != table["inverts_closed_form"])]
    axes[1].scatter(wrong["d"], wrong["k_shared"], marker="x", color="black", s=60, label="disagrees with closed form")
    axes[1].legend(fontsize=6, loc="upper left")
    axes[1].set_title(f"(b) simulation: debiased CKA, {int(table['n_draws'].min())} draws per side", fontsize=8)
    return figure


def closed_form_table(sweeps: pd.DataFrame | None = None, mixing: pd.DataFrame | None = None,
                      overlap: pd.DataFrame | None = None) -> pd.DataFrame:
    """Closed form vs simulation, one row per experiment, condition and metric.

    ``agrees``: |difference| ≤ t · standard error + 0.005, t the two-sided 0.1 % quantile of Student's t with
    n_draws − 1 degrees of freedom (a one-sample t-test at that level, so that among the ~80 rows a chance
    disagreement is rare), 0.005 for the closed forms being ratios of expectations. A condition whose draws
    do not vary (orthogonal mixing at d ≥ k: exactly 1) agrees when the difference is below 1e-9.
    """
    parts = []
    if sweeps is not None:
        summary = sp.summarize(sweeps)
        summary["condition"] = [f"sweep {s}: k = {k}, d = {d}, p = {p:g}" for s, k, d, p
                                in zip(summary["sweep"], summary["k"], summary["d"], summary["p"])]
        parts.append(summary.assign(experiment="deflation"))
    if mixing is not None:
        summary = sp.summarize(mixing)
        summary["condition"] = [f"{m} mixing: k = {k}, d = {d}" for m, k, d in
                                zip(summary["mixing"], summary["k"], summary["d"])]
        parts.append(summary.assign(experiment="mixing control"))
    if overlap is not None:
        summary = sp.summarize(overlap)
        summary["condition"] = [f"{pair}: {ks} of {kt} shared, d = {d}" for pair, ks, kt, d
                                in zip(summary["pair"], summary["k_shared"], summary["k_total"], summary["d"])]
        parts.append(summary.assign(experiment="partial overlap"))
    columns = ["experiment", "condition", "metric", "closed_form", "mc_mean", "mc_low", "mc_high", "n_draws",
               "difference", "standard_error"]
    if not parts:
        return pd.DataFrame(columns=[*columns, "agrees"])
    table = pd.concat([part[columns] for part in parts], ignore_index=True)
    degrees = np.maximum(table["n_draws"].to_numpy(dtype=float) - 1, 1)
    bound = stats.t.ppf(1 - AGREEMENT_LEVEL / 2, degrees) * table["standard_error"] + AGREEMENT_ALLOWANCE
    table["agrees"] = (np.abs(table["difference"]) <= np.maximum(bound, 1e-9)).astype("boolean")
    return table


# ---------------------------------------------------------------- the alignment group

def _recovery_frame(alignment: xr.Dataset) -> pd.DataFrame:
    variables = ["recovery_mean", "recovery_low", "recovery_high"]
    frame = alignment[variables].to_dataframe().reset_index()
    closed = alignment["recovery_closed_form"].to_dataframe().reset_index()
    return frame.merge(closed, on=["metric", "d"], how="left")


def plot_recovery(alignment: xr.Dataset, metrics=RECOVERY_METRICS) -> Figure:
    """Recovery vs neurons d (group ``alignment``): per metric, the raw neurons, the unsupervised SAE and the
    supervised reference, means with 95 % t-intervals over draws; the raw closed forms as a line."""
    frame = _recovery_frame(alignment)
    attrs = alignment.attrs
    draws = int(alignment.sizes["seed"])
    columns = 3
    figure = Figure(figsize=(3.4 * columns, 2.9 * -(-len(metrics) // columns)), layout="constrained")
    axes = figure.subplots(-(-len(metrics) // columns), columns, squeeze=False).ravel()
    for ax, metric in zip(axes, metrics):
        for index, (kind, (color, marker, label)) in enumerate(REPRESENTATION_STYLE.items()):
            rows = frame[(frame["metric"] == metric) & (frame["representation"] == kind)].sort_values("d")
            if rows["recovery_mean"].notna().any():
                _interval_bars(ax, rows["d"], rows["recovery_mean"], rows["recovery_low"], rows["recovery_high"], color,
                               marker, label, 1 + 0.04 * (index - 1))
                ax.plot(rows["d"], rows["recovery_mean"], color=color, lw=0.8)
        closed = frame[(frame["metric"] == metric) & (frame["representation"] == "raw")].sort_values("d")
        if closed["recovery_closed_form"].notna().any():
            ax.plot(closed["d"], closed["recovery_closed_form"], color="black", ls="--", lw=1, label="raw: closed form")
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("neurons d")
        ax.set_title(_label(metric), fontsize=9)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=6, loc="lower right")
    settings = _settings(attrs)
    figure.suptitle(f"Two systems, the same k = {settings.get('features', '?')} sparse latents in d neurons each; "
                    f"{draws} draws per d (mean, 95 % interval). Ground truth is used only for the first panel",
                    fontsize=8)
    return figure


def _settings(attrs) -> dict:
    import json
    try:
        return json.loads(attrs.get("settings", "{}"))
    except (TypeError, ValueError):
        return {}


def _network_frame(alignment: xr.Dataset) -> pd.DataFrame:
    frame = alignment[["network", "network_low", "network_high"]].to_dataframe().reset_index()
    return frame[frame["representation"].isin(["raw", "sae"])]


def _gain_frame(alignment: xr.Dataset) -> pd.DataFrame:
    return alignment[["network_gain", "network_gain_low", "network_gain_high"]].to_dataframe().reset_index()


def _matched(frame: pd.DataFrame) -> pd.DataFrame:
    """The matching block pairs: the group stores them first, one per block (equal labels when the partner is
    the same architecture, the i-th blocks of each network when it is another)."""
    pairs = list(dict.fromkeys(frame["pair"]))
    return frame[frame["pair"].isin(pairs[:len(set(frame["block_a"]))])]


def plot_networks(alignment: xr.Dataset, metrics=NETWORK_METRICS) -> Figure:
    """Two trained networks at matching blocks (group ``alignment``): raw center neurons vs SAE latents, per
    metric, with 95 % bootstrap intervals over images."""
    frame = _matched(_network_frame(alignment))
    blocks = list(dict.fromkeys(frame["block_a"]))
    positions = np.arange(len(blocks))
    figure = Figure(figsize=(10.5, 5.6), layout="constrained")
    axes = figure.subplots(2, 3).ravel()
    for ax, metric in zip(axes, metrics):
        for index, kind in enumerate(("raw", "sae")):
            color, marker, label = REPRESENTATION_STYLE[kind]
            rows = frame[(frame["metric"] == metric) & (frame["representation"] == kind)].set_index("block_a").loc[blocks]
            _interval_bars(ax, positions, rows["network"], rows["network_low"], rows["network_high"], color, marker,
                           label, shift=(index - 0.5) * 0.2)
        ax.set_xticks(positions, blocks, fontsize=8)
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(_label(metric), fontsize=9)
        ax.set_xlabel("block (both networks)")
    axes[0].legend(fontsize=7, loc="upper left")
    attrs = alignment.attrs
    figure.suptitle(f"The store's network vs {partner_name(attrs)}, matching blocks: "
                    f"{attrs.get('network_images', '?')} images' center "
                    f"neurons; {attrs.get('bootstrap', '?')} bootstrap resamples (95 % percentile intervals)", fontsize=9)
    return figure


def partner_name(attrs: dict) -> str:
    """The partner network as the alignment group records it: its profile, else its weights' file name."""
    try:
        profile = json.loads(attrs.get("profile") or "{}")
    except (TypeError, ValueError):
        profile = {}
    named = (profile.get("alignment") or {}).get("partner_profile") or ""
    return Path(named).stem or Path(str(attrs.get("partner_weights") or "")).name or "its partner"


def plot_cross_blocks(alignment: xr.Dataset, metric: str = "cka_debiased") -> Figure:
    """Every block of one network against every block of the other (group ``alignment``): ``metric`` on raw
    neurons and on SAE latents, and the SAE − raw gain; gain cells whose 95 % interval excludes 0 are marked."""
    frame = _network_frame(alignment)
    gains = _gain_frame(alignment)
    blocks = list(dict.fromkeys(frame["block_a"]))
    figure = Figure(figsize=(11, 3.8), layout="constrained")
    axes = figure.subplots(1, 3)

    def grid(values: pd.DataFrame, column: str) -> np.ndarray:
        table = values.pivot(index="block_a", columns="block_b", values=column)
        return table.reindex(index=blocks, columns=blocks).to_numpy(dtype=float)
    for ax, kind in zip(axes[:2], ("raw", "sae")):
        rows = frame[(frame["metric"] == metric) & (frame["representation"] == kind)]
        image = ax.imshow(grid(rows, "network"), vmin=0, vmax=1, cmap="viridis")
        ax.set_title(f"{REPRESENTATION_STYLE[kind][2]}: {_label(metric)}", fontsize=8)
        figure.colorbar(image, ax=ax, shrink=0.8)
    rows = gains[gains["metric"] == metric]
    gain, low, high = grid(rows, "network_gain"), grid(rows, "network_gain_low"), grid(rows, "network_gain_high")
    limit = float(np.nanmax(np.abs(gain))) if np.isfinite(gain).any() else 1.0
    image = axes[2].imshow(gain, vmin=-limit, vmax=limit, cmap="RdBu_r")
    figure.colorbar(image, ax=axes[2], shrink=0.8)
    for i in range(len(blocks)):
        for j in range(len(blocks)):
            if np.isfinite(low[i, j]) and (low[i, j] > 0 or high[i, j] < 0):
                axes[2].text(j, i, "+" if low[i, j] > 0 else "−", ha="center", va="center", fontsize=9)
    axes[2].set_title("SAE − raw (+/−: 95 % interval excludes 0)", fontsize=8)
    for ax in axes:
        ax.set_xticks(range(len(blocks)), blocks, fontsize=7)
        ax.set_yticks(range(len(blocks)), blocks, fontsize=7)
        ax.set_xlabel("block of the seed-1 network")
        ax.set_ylabel("block of the toy network")
    return figure


def _with_interval(value, low, high) -> str:
    return f"{value:.3f} [{low:.3f}, {high:.3f}]" if np.isfinite(value) else ""


def networks_table(alignment: xr.Dataset) -> pd.DataFrame:
    """Matching blocks: each metric on raw neurons and SAE latents and their difference, 95 % intervals."""
    frame = _matched(_network_frame(alignment))
    gains = _matched(_gain_frame(alignment))
    rows = []
    for block in dict.fromkeys(frame["block_a"]):
        for metric in NETWORK_METRICS + ("soft_matching",):
            pick = lambda kind: frame[(frame["block_a"] == block) & (frame["metric"] == metric)
                                      & (frame["representation"] == kind)].iloc[0]
            gain = gains[(gains["block_a"] == block) & (gains["metric"] == metric)].iloc[0]
            raw, sae = pick("raw"), pick("sae")
            rows.append({"block": block, "metric": metric,
                         "raw": _with_interval(raw["network"], raw["network_low"], raw["network_high"]),
                         "SAE latents": _with_interval(sae["network"], sae["network_low"], sae["network_high"]),
                         "SAE − raw": _with_interval(gain["network_gain"], gain["network_gain_low"],
                                                     gain["network_gain_high"]),
                         "verdict": _verdict(gain["network_gain_low"], gain["network_gain_high"])})
    return pd.DataFrame(rows)


def _verdict(low: float, high: float) -> str:
    if not np.isfinite(low):
        return ""
    return "SAE higher" if low > 0 else "raw higher" if high < 0 else "no difference shown"


def recovery_table(alignment: xr.Dataset) -> pd.DataFrame:
    """Recovery vs d: per d and representation, ground-truth recovery and the cross-system alignment
    (debiased CKA, Hungarian matching), means with 95 % intervals over draws."""
    frame = _recovery_frame(alignment)
    rows = []
    for d in sorted(set(frame["d"])):
        for kind in REPRESENTATION_STYLE:
            entry = {"d": int(d), "representation": kind}
            for metric in ("ground_truth_r", "cka_debiased", "hungarian", "ridge_r2"):
                row = frame[(frame["d"] == d) & (frame["representation"] == kind) & (frame["metric"] == metric)].iloc[0]
                entry[metric] = _with_interval(row["recovery_mean"], row["recovery_low"], row["recovery_high"])
            rows.append(entry)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- outcomes in words

def _first_d(frame: pd.DataFrame, kind: str, threshold: float) -> str:
    rows = frame[(frame["metric"] == "ground_truth_r") & (frame["representation"] == kind)].sort_values("d")
    above = rows[rows["recovery_low"] >= threshold]
    return f"d = {int(above['d'].iloc[0])}" if len(above) else f"no d up to {int(rows['d'].max())}"


def _ds(values) -> str:
    return "d = " + ", ".join(map(str, values)) if values else "no d"


def recovery_findings(alignment: xr.Dataset) -> list[str]:
    frame = _recovery_frame(alignment)
    draws = int(alignment.sizes["seed"])
    cka = frame[frame["metric"] == "cka_debiased"].pivot(index="d", columns="representation")
    better = [int(d) for d in cka.index if cka.loc[d, ("recovery_low", "sae")] > cka.loc[d, ("recovery_high", "raw")]]
    worse = [int(d) for d in cka.index if cka.loc[d, ("recovery_high", "sae")] < cka.loc[d, ("recovery_low", "raw")]]
    top = int(cka.index.max())
    return [
        f"Ground-truth recovery (evaluation only; {draws} draws per d): the unsupervised SAE's 95 % interval lies "
        f"above r = 0.9 from {_first_d(frame, 'sae', 0.9)}, the supervised reference's from "
        f"{_first_d(frame, 'sae_supervised', 0.9)}; raw neurons reach a mean r of "
        f"{frame[(frame['metric'] == 'ground_truth_r') & (frame['representation'] == 'raw')]['recovery_mean'].max():.2f}"
        " at most.",
        f"Cross-system debiased CKA of SAE latents exceeds that of raw neurons (intervals apart) at "
        f"{_ds(better)}, falls below it at {_ds(worse)}; "
        f"at d = {top}: SAE {_with_interval(*cka.loc[top, [('recovery_mean', 'sae'), ('recovery_low', 'sae'), ('recovery_high', 'sae')]])}"
        f", supervised {_with_interval(*cka.loc[top, [('recovery_mean', 'sae_supervised'), ('recovery_low', 'sae_supervised'), ('recovery_high', 'sae_supervised')]])}"
        f", raw {_with_interval(*cka.loc[top, [('recovery_mean', 'raw'), ('recovery_low', 'raw'), ('recovery_high', 'raw')]])}.",
    ]


def network_findings(alignment: xr.Dataset) -> list[str]:
    gains = _gain_frame(alignment)
    if not np.isfinite(gains["network_gain"]).any():
        return [f"Two networks: not compared ({alignment.attrs.get('networks', 'no partner network')})."]
    matched = _matched(gains)
    matched = matched[np.isfinite(matched["network_gain"])]
    verdicts = [_verdict(low, high) for low, high in zip(matched["network_gain_low"], matched["network_gain_high"])]
    counts = {v: verdicts.count(v) for v in ("SAE higher", "raw higher", "no difference shown")}
    by_metric = []
    for metric in NETWORK_METRICS:
        part = matched[matched["metric"] == metric]
        per = [_verdict(low, high) for low, high in zip(part["network_gain_low"], part["network_gain_high"])]
        by_metric.append(f"{_label(metric)}: SAE higher in {per.count('SAE higher')}, raw higher in "
                         f"{per.count('raw higher')} of {len(per)} blocks")
    agree = counts["SAE higher"] > counts["raw higher"] + counts["no difference shown"]
    cross = alignment.attrs.get("settings", "")
    lines = [
        f"Matching blocks, {len(matched)} (block, metric) cases with {alignment.attrs.get('bootstrap', '?')} "
        f"bootstrap resamples: SAE-latent alignment is higher than raw alignment in {counts['SAE higher']}, lower in "
        f"{counts['raw higher']}, and not distinguishable in {counts['no difference shown']}.",
        "; ".join(by_metric) + ".",
        "The paper's v2 reports SAE-latent alignment above raw alignment for pretrained vision and language models; "
        + ("the two toy networks agree." if agree else "the two toy networks do not show that: SAE latents align "
           "better in fewer than half of the cases."),
    ]
    frame = _network_frame(alignment)
    cka = frame[(frame["metric"] == "cka_debiased")]
    for kind in ("raw", "sae"):
        grid = cka[cka["representation"] == kind].pivot(index="block_a", columns="block_b", values="network")
        diagonal_best = sum(grid.loc[b].idxmax() == b for b in grid.index)
        lines.append(f"Across blocks ({REPRESENTATION_STYLE[kind][2]}, debiased CKA): the same block of the other "
                     f"network is the most similar one for {diagonal_best} of {len(grid)} blocks.")
    del cross
    unexplained = alignment.attrs.get("network_sae_unexplained_variance") or {}
    if unexplained:
        values = np.array(list(unexplained.values()), dtype=float)
        lines.append(f"The network SAEs leave {values.min():.0%}–{values.max():.0%} of the center vectors' variance "
                     f"unexplained (median {np.median(values):.0%}).")
    return lines


def simulation_findings(sweeps: pd.DataFrame, mixing: pd.DataFrame, overlap_draws: pd.DataFrame) -> list[str]:
    table = closed_form_table(sweeps, mixing)
    agree = table["agrees"].astype(bool)
    summary = sp.summarize(mixing).set_index(["mixing", "metric", "d"])
    k = int(mixing["k"].iloc[0])
    at_k = {m: summary.loc[(m, "cka", k)] for m in sp.MIXINGS}
    below = int(sorted(set(mixing["d"]))[1])
    r2 = {m: summary.loc[(m, "regression_r2", below)] for m in sp.MIXINGS}
    cells = sp.overlap_map(overlap_draws)
    decided = cells[cells["inverts_simulated"].notna()]
    disagree = int((decided["inverts_simulated"].astype(bool) != decided["inverts_closed_form"]).sum())
    return [
        f"Deflation and mixing control: the closed form lies within the agreement bound in {int(agree.sum())} of "
        f"{len(table)} conditions ({int(sweeps['draw'].max()) + 1} draws each).",
        f"At d = k = {k}, Gaussian mixing gives debiased CKA {at_k['gaussian']['mc_mean']:.3f} "
        f"[{at_k['gaussian']['mc_low']:.3f}, {at_k['gaussian']['mc_high']:.3f}] (closed form "
        f"{at_k['gaussian']['closed_form']:.3f}) while orthogonal mixing gives {at_k['orthogonal']['mc_mean']:.3f}; "
        f"at d = {below} the OLS R² is {r2['gaussian']['mc_mean']:.3f} (Gaussian) and {r2['orthogonal']['mc_mean']:.3f} "
        "(orthogonal), both near min(d, k)/k: CKA and RSA deflate under any non-orthogonal mixing, the regression "
        "only when d < k.",
        f"Partial-overlap map: the closed form puts {int(cells['inverts_closed_form'].sum())} of {len(cells)} cells in "
        f"the inverted region (the pair sharing fewer features scores higher); the simulation's interval decides "
        f"{len(decided)} cells, {disagree} of them against the closed form, and leaves {len(cells) - len(decided)} "
        "(near the boundary) undecided.",
    ]


def findings_table(alignment: xr.Dataset | None = None, seed: int = 0) -> pd.DataFrame:
    """Each figure's outcome in words, generated from its numbers."""
    rows = [{"figure": "fig-alignment-sweeps / fig-alignment-mixing / fig-alignment-overlap-map", "finding": text}
            for text in simulation_findings(_sweeps(seed), _mixing(seed), _overlap(seed))]
    if alignment is not None:
        rows += [{"figure": "fig-alignment-recovery", "finding": text} for text in recovery_findings(alignment)]
        rows += [{"figure": "fig-alignment-networks / fig-alignment-cross-blocks", "finding": text}
                 for text in network_findings(alignment)]
    return pd.DataFrame(rows)


NOTATION = [
    ("features (latents)", "n; z ∈ ℝⁿ", "k; the columns of Z (n_stimuli × k)"),
    ("neurons", "m", "d"),
    ("superposition", "y = A z, A ∈ ℝ^{m×n}, m < n", "X = Z A, A ∈ ℝ^{k×d} (rows embed features), d < k"),
    ("second system", "—", "Y = Z B, B independent of A"),
    ("Gram matrices of the projections", "—", "P = A Aᵀ, Q = B Bᵀ (k × k)"),
    ("participation ratio", "—", "r = (tr Σ)² / tr(Σ²), r = k for isotropic latents"),
    ("latent kurtosis term", "—", "γ = half the latent's excess kurtosis"),
]
DERIVATIONS = [
    ("E CKA = √(d₁d₂ / ((d₁+1+r)(d₂+1+r))); d/(d+k+1)", "this package (ratio of expectations)"),
    ("biased CKA at finite n: r = sample participation ratio", "this package"),
    ("partial overlap: × k_s/√(K₁K₂)", "this package"),
    ("RSA: (2+γ)√(d₁d₂)/√([2(d₁+k+1)+γ(d₁+2)][2(d₂+k+1)+γ(d₂+2)])", "this package (ratio of expectations)"),
    ("OLS R²: Beta(d₁d₂/2, (k−d₁)d₂/2), mean min(d₁, k)/k", "this package"),
    ("orthogonal mixing: CKA min(d, k)/k; RSA (2+γ)(d/k)/(2+γ(d+2)/(k+2))", "this package"),
    ("inversion boundary k_s/K = d/(d+K+1)", "this package"),
    ("unbiased HSIC", "Song et al. 2012; for CKA Nguyen, Raghu & Kornblith 2021"),
    ("TopK SAE, auxiliary loss", "Makhzani & Frey 2014; Gao et al. 2024"),
]


def notation_table() -> pd.DataFrame:
    """Notation: the paper's symbols beside this package's, and which formulas are this package's own."""
    rows = [{"what": what, "Liu et al. 2026": paper, "this package": ours} for what, paper, ours in NOTATION]
    rows += [{"what": formula, "Liu et al. 2026": "—", "this package": f"source: {source}"}
             for formula, source in DERIVATIONS]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- report entries

@functools.lru_cache(maxsize=4)
def _sweeps(seed: int) -> pd.DataFrame:
    return sp.simulate_sweeps(seed=seed)


@functools.lru_cache(maxsize=4)
def _mixing(seed: int) -> pd.DataFrame:
    return sp.simulate_mixing(seed=seed)


@functools.lru_cache(maxsize=4)
def _overlap(seed: int) -> pd.DataFrame:
    return sp.simulate_overlap_map(seed=seed)


@functools.lru_cache(maxsize=4)
def _inversion(seed: int) -> pd.DataFrame:
    return sp.simulate_partial_overlap(seed=seed)


def sweeps_figure(seed: int = 0) -> Figure:
    return plot_sweeps(_sweeps(seed).copy())


def mixing_figure(seed: int = 0) -> Figure:
    return plot_mixing(_mixing(seed).copy())


def overlap_map_figure(seed: int = 0) -> Figure:
    return plot_overlap_map(_overlap(seed).copy())


def closed_form_vs_simulation_table(seed: int = 0) -> pd.DataFrame:
    return closed_form_table(_sweeps(seed).copy(), _mixing(seed).copy(), _inversion(seed).copy())


STORE = {"alignment": "alignment"}

FIGURES = [
    {"kind": "table", "id": "tbl-alignment-notation", "title": "Notation and where the formulas come from",
     "caption": "The paper's symbols (n features, m neurons, y = Az) beside this package's (k, d, X = ZA); the "
                "closed forms are this package's own derivations, checked by Monte Carlo in its tests.",
     "function": notation_table},
    {"kind": "table", "id": "tbl-alignment-findings", "title": "What the figures show",
     "caption": "Each figure's outcome, in sentences generated from the same numbers the figures plot.",
     "function": findings_table, "inputs": STORE, "optional": True},
    {"kind": "figure", "id": "fig-alignment-sweeps",
     "title": "Superposition deflates alignment: sweeps over d, k and sparsity",
     "caption": "Two systems carry the same sparse latents (active with probability p, U[0, 1]) through independent "
                "random N(0, 1) matrices. Rows: d varied at k = 64; k varied at d = 16; p varied at k = 64, d = 16. "
                "Lines: closed forms; points: mean and 95 % t-interval over 8 draws of Z, A, B (debiased CKA, "
                "squared-Euclidean RDMs compared by Pearson, in-sample OLS).",
     "function": sweeps_figure},
    {"kind": "figure", "id": "fig-alignment-mixing", "title": "Orthogonal vs random mixing",
     "caption": "The same k = 64 latents mixed by random orthogonal matrices (orthonormal rows for d ≥ k, "
                "orthonormal columns below) or by Gaussian ones; mean and 95 % t-interval over 8 draws. "
                "Orthogonal mixing with d ≥ k leaves every metric at 1.",
     "function": mixing_figure},
    {"kind": "figure", "id": "fig-alignment-overlap-map", "title": "Where partial overlap inverts the ordering",
     "caption": "Debiased CKA of a pair sharing k_s of K = 128 features without superposition minus that of a pair "
                "sharing all 128 but each superposed into d neurons. (a) closed form; (b) simulation, 8 draws per "
                "side, cells marked by whether the Welch 95 % interval of the difference excludes 0.",
     "function": overlap_map_figure},
    {"kind": "figure", "id": "fig-alignment-recovery",
     "title": "Recovery without ground truth, and the supervised reference",
     "caption": "Group alignment (repro alignment). Two systems with the same sparse latents, each in d random "
                "neurons; an unsupervised TopK SAE per system (trained on its own activity), and the supervised "
                "TopK SAE trained to predict the latents (upper reference). The systems are compared on fresh "
                "stimuli without any matching to the ground truth (Hungarian, semi- and soft matching use only the "
                "two systems' latents); ground-truth recovery is an evaluation only. Mean and 95 % t-interval over "
                "the draws.",
     "function": plot_recovery, "inputs": STORE},
    {"kind": "table", "id": "tbl-alignment-recovery", "title": "Recovery vs neurons",
     "caption": "Group alignment: per d and representation, ground-truth recovery r and cross-system debiased CKA, "
                "Hungarian matching and ridge R², mean [95 % interval] over the draws.",
     "function": recovery_table, "inputs": STORE},
    {"kind": "figure", "id": "fig-alignment-networks",
     "title": "Two trained networks: raw vs SAE latents at matching blocks",
     "caption": "Group alignment: the store's network and its partner (on the toy, its twin trained with another "
                "seed; the title names it), at matching blocks' "
                "post-ReLU output (center neurons over the store's images); SAE latents from an unsupervised TopK "
                "SAE per network and block. 95 % percentile bootstrap intervals over images (SAEs fixed). Matching "
                "scores are biased upwards in a resample (copies of an image raise chance correlations), so their "
                "intervals can lie above the full-sample value.",
     "function": plot_networks, "inputs": STORE},
    {"kind": "table", "id": "tbl-alignment-networks", "title": "Two trained networks at matching blocks",
     "caption": "Group alignment: value [95 % bootstrap interval] for raw neurons and SAE latents, and the paired-"
                "bootstrap interval of their difference.",
     "function": networks_table, "inputs": STORE},
    {"kind": "figure", "id": "fig-alignment-cross-blocks", "title": "Two trained networks across blocks",
     "caption": "Group alignment: debiased CKA between every block of the store's network and every block of its "
                "partner (on the toy, its twin trained with another seed), "
                "raw and SAE latents, and the SAE − raw difference (marked where its 95 % bootstrap interval "
                "excludes 0).",
     "function": plot_cross_blocks, "inputs": STORE},
    {"kind": "table", "id": "tbl-alignment-closed-form", "title": "Closed forms vs simulation",
     "caption": "Each closed form beside the Monte Carlo mean and 95 % t-interval over draws; agrees: |difference| "
                "≤ t(0.1 %, draws − 1) standard errors + 0.005 (the closed forms are ratios of expectations).",
     "function": closed_form_vs_simulation_table},
]

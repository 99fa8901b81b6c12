"""Each table's outcome in words, generated from its numbers, so a caption's prediction never stands alone.

``describe(function, table, args)`` returns one sentence for tables made by a known analysis function (the
registry ``DESCRIBERS``, keyed by the function), or "" for others.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from analyses import ablation, stats, universality
from analyses import figures as fg

ALPHA = 0.05


def _blocks(names) -> str:
    names = [str(name) for name in names]
    return ", ".join(names) if names else "none"


def _of(chosen, every) -> str:
    """"2 of 3 blocks (1.1, 2.1)"."""
    return f"{len(chosen)} of {len(every)} blocks" + (f" ({_blocks(chosen)})" if len(chosen) else "")


def channel_lists(table: pd.DataFrame, args: Mapping[str, Any]) -> str:
    with_channels = table.loc[table["store_count"] > 0, "block"]
    sentence = f"This store's lists have {int(table['store_count'].sum())} channels; blocks with any: {_blocks(with_channels)}."
    if "published" in table:
        shared, listed = int(table["shared"].sum()), int(table["published_count"].sum())
        sentence += f" {shared} of the paper's {listed} listed channels are among them."
    return sentence


def ablation_accuracies(table: pd.DataFrame, args: Mapping[str, Any]) -> str:
    parts = []
    for block in table.index.get_level_values("block").unique():
        rows = table.loc[block]
        trials_row = next(name for name in rows.index if str(name).startswith("random (trials of"))
        total = str(trials_row).removeprefix("random (trials of ").rstrip(")")
        accepted = sorted({int(n) for n in rows.loc[trials_row].to_numpy() if np.isfinite(n)})
        below = (rows.loc["invariant"] < rows.loc["random (mean)"]).to_numpy()
        counted = np.isfinite(rows.loc["random (mean)"].to_numpy())
        parts.append(f"block {block}: invariant ablation below the random mean at {int((below & counted).sum())} of "
                     f"{int(counted.sum())} scales, over {'/'.join(map(str, accepted)) or 0} of {total} random trials")
    rejected = table.attrs.get("rejected_draws")
    if rejected:
        parts.append("rejected draws " + ", ".join(f"{block}: {count}" for block, count in rejected.items()))
    return "In this store, " + "; ".join(parts) + "."


def weight_correlations(table: pd.DataFrame, args: Mapping[str, Any]) -> str:
    falling = [block for block, row in table.iterrows() if row["bn2_rho"] < 0 and row["conv2_rho"] < 0]
    significant = [block for block in falling
                   if table.loc[block, "bn2_p"] < ALPHA and table.loc[block, "conv2_p"] < ALPHA]
    return (f"Both weight magnitudes fall with M (negative rho) in {_of(falling, table.index)}; "
            f"significantly (p < {ALPHA}) in {_blocks(significant)}.")


def skip_overwrite(table: pd.DataFrame, args: Mapping[str, Any]) -> str:
    lower = [block for block, row in table.iterrows() if row["mean_overwrite"] < row["mean_skip"]]
    significant = [block for block in lower if table.loc[block, "p"] < ALPHA]
    return (f"Overwrite channels (M < 1) have the lower mean in {_of(lower, table.index)}; "
            f"significantly (p < {ALPHA}) in {_blocks(significant)}.")


def percent_invariant(table: pd.DataFrame, args: Mapping[str, Any]) -> str:
    passing = table.index[table["all_criteria"] > 0]
    none = table.index[table["all_criteria"] == 0]
    first = (f"Channels pass all three criteria in {_of(passing, table.index)}" + (f", none in {_blocks(none)}" if len(none) else "")
             if len(passing) else "No channel passes all three criteria in any block")
    return f"{first}; without the mix criterion {int(table['without_mix'].sum())} channels pass in all."


def aliased(table: pd.DataFrame, args: Mapping[str, Any]) -> str:
    jaccard = table["jaccard"].dropna()
    mean = f"mean Jaccard {jaccard.mean():.2f}" if len(jaccard) else "no block with channels on either side"
    return (f"The default taps give {int(table['default'].sum())} invariant channels, the aliased taps "
            f"{int(table['aliased'].sum())}, {int(table['shared'].sum())} shared ({mean}).")


def spectra(table: pd.DataFrame, args: Mapping[str, Any]) -> str:
    """Each model's spectrum and invariant fractions pooled over its blocks."""
    parts = []
    for model, row in universality.model_summary(table).iterrows():
        kinds = ", ".join(f"{kind} {row[kind]:.0%}" for kind in universality.KINDS)
        invariant = ", ".join(f"{column.removeprefix('invariant_')} {row[column]:.0%}"
                              for column in row.index if column.startswith("invariant_"))
        parts.append(f"{model}: {kinds}" + (f" (invariant: {invariant})" if invariant else ""))
    return "Pooled over each model's blocks, " + "; ".join(parts) + "."


DESCRIBERS: dict[Callable, Callable[[pd.DataFrame, Mapping[str, Any]], str]] = {
    fg.channel_list_table: channel_lists,
    ablation.accuracy_table: ablation_accuracies,
    stats.weight_mix_correlations: weight_correlations,
    stats.activation_mix: skip_overwrite,
    stats.tuning_mix: skip_overwrite,
    fg.percent_invariant_table: percent_invariant,
    fg.aliased_comparison_table: aliased,
    universality.spectrum_table: spectra,
}


def agreement(table: pd.DataFrame, args: Mapping[str, Any]) -> str:
    """Any table with a boolean ``agrees`` column (closed forms against simulations, say)."""
    agrees = table["agrees"].dropna().astype(bool)  # rows without a closed form have no verdict
    if agrees.empty:
        return ""
    disagreeing = int((~agrees).sum())
    return f"{int(agrees.sum())} of {len(agrees)} rows agree" + (
        "." if not disagreeing else f"; {disagreeing} {'does' if disagreeing == 1 else 'do'} not.")


def describe(function: Callable, table: pd.DataFrame, args: Mapping[str, Any]) -> str:
    """The table's outcome in one sentence: by its analysis function's describer, else by an ``agrees``
    column, else none."""
    describer = DESCRIBERS.get(function)
    if describer is None and "agrees" in table:
        describer = agreement
    return describer(table, args) if describer is not None and not table.empty else ""

"""Measures: store datasets → the store's value of a published claim (a channel set, a count, a percent,
an accuracy, or ``Evidence`` for a qualitative claim). ``report.spec`` names one per claim; ``report.verify``
compares its value with the published one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import xarray as xr

from analyses import ablation as ablation_analysis
from analyses import figures, stats


@dataclass(frozen=True)
class Evidence:
    """What a qualitative measure found: ``holds``, ``weakly`` (right direction, not significant or not
    everywhere) or ``fails``, with a one-line summary of the numbers."""
    level: str
    summary: str

    def __str__(self) -> str:
        return self.summary


class MissingInput(Exception):
    """The store lacks what a claim measures (a group, a block, a condition)."""



MIX_LOW, MIX_HIGH = 2 / 3, 3 / 2  # the mix criterion's bounds (both papers)


def _block(dataset: xr.Dataset, block: str) -> str:
    """``block``, after checking the store has it and its mix ratios are computed (for every stimulus set
    the dataset holds: top-9 needs the natural group)."""
    if block not in stats.blocks_of(dataset):
        raise MissingInput(f"block {block} is not in this store")
    if "mix" in dataset:
        mix = dataset["mix"].sel(block=block, channel=stats.valid_channels(dataset, block))
        computed = mix.notnull().any("channel") if "stimulus_set" in mix.dims else mix.notnull().any()
        if not bool(computed.all()):
            raise MissingInput(f"block {block}'s metrics are not computed yet"
                               + (" (top-9 needs the natural and image_cache groups)" if "stimulus_set" in mix.dims else ""))
    return block


def invariant_set(metrics: xr.Dataset, block: str, criterion: str) -> list[int]:
    return stats.invariant_channels(metrics, _block(metrics, block), criterion)


def invariant_count(metrics: xr.Dataset, block: str, criterion: str) -> int:
    return len(invariant_set(metrics, block, criterion))


def invariant_percent(metrics: xr.Dataset, block: str, criterion: str) -> float:
    return float(stats.block_counts(metrics.sel(block=[_block(metrics, block)]), criterion).loc[block, "percent"])


def fz_imagenet_set(metrics: xr.Dataset, block: str, criterion: str = "interpreting") -> list[int]:
    return figures.fz_and_imagenet(metrics, _block(metrics, block), criterion)


def top_mix_set(metrics: xr.Dataset, block: str, count: int = 3) -> list[int]:
    return stats.top_mixes(metrics, _block(metrics, block), count)


def no_invariant(metrics: xr.Dataset, blocks: Sequence[str], criterion: str, few: int = 2) -> Evidence:
    """None of ``blocks`` has a passing channel (weakly: each has at most ``few``)."""
    counts = {block: invariant_count(metrics, block, criterion) for block in blocks}
    level = "holds" if not any(counts.values()) else "weakly" if max(counts.values()) <= few else "fails"
    return Evidence(level, ", ".join(f"{block}: {count}" for block, count in counts.items()))


def with_invariant(metrics: xr.Dataset, blocks: Sequence[str], criterion: str) -> Evidence:
    """Every one of ``blocks`` has a passing channel (weakly: all but one)."""
    counts = {block: invariant_count(metrics, block, criterion) for block in blocks}
    empty = sum(count == 0 for count in counts.values())
    level = "holds" if empty == 0 else "weakly" if empty == 1 else "fails"
    return Evidence(level, ", ".join(f"{block}: {count}" for block, count in counts.items()))


def _mix(metrics: xr.Dataset, block: str) -> np.ndarray:
    return stats.per_channel(metrics, "mix", _block(metrics, block)).to_numpy()


def overwrite_fraction(metrics: xr.Dataset, block: str) -> float:
    return float(np.mean(_mix(metrics, block) < 1))


def overwrite_skew(metrics: xr.Dataset, blocks: Sequence[str]) -> Evidence:
    """Most channels of every block are overwrite (M < 1); weakly: on average over the blocks."""
    fractions = {block: overwrite_fraction(metrics, block) for block in blocks}
    level = ("holds" if min(fractions.values()) > 0.5 else
             "weakly" if np.mean(list(fractions.values())) > 0.5 else "fails")
    return Evidence(level, "overwrite share " + ", ".join(f"{b}: {f:.0%}" for b, f in fractions.items()))


def less_skewed(metrics: xr.Dataset, simple: Sequence[str], downsample: Sequence[str]) -> Evidence:
    """Every simple block has a smaller overwrite share than every downsample block (weakly: on average)."""
    simple_share = {block: overwrite_fraction(metrics, block) for block in simple}
    down_share = {block: overwrite_fraction(metrics, block) for block in downsample}
    level = ("holds" if max(simple_share.values()) < min(down_share.values()) else
             "weakly" if np.mean(list(simple_share.values())) < np.mean(list(down_share.values())) else "fails")
    shares = {**simple_share, **down_share}
    return Evidence(level, "overwrite share " + ", ".join(f"{b}: {f:.0%}" for b, f in shares.items()))


def lowest_bin_share(metrics: xr.Dataset, block: str, bin_high: float, all_share: float = 0.95,
                     most_share: float = 0.8) -> Evidence:
    """Nearly all of the block's channels have M < ``bin_high`` (and how many of those are non-zero)."""
    mix = _mix(metrics, block)
    lowest = mix[mix < bin_high]
    share, nonzero = float(np.mean(mix < bin_high)), float(np.mean(lowest > 0)) if len(lowest) else 0.0
    level = "holds" if share >= all_share else "weakly" if share >= most_share else "fails"
    return Evidence(level, f"{share:.0%} of channels below {bin_high}; {nonzero:.0%} of those non-zero")


def weights_fall_with_mix(metrics: xr.Dataset, block: str, alpha: float) -> Evidence:
    """|bn2| and mean |conv2| weights have significantly negative Spearman rho with M (weakly: negative only)."""
    row = stats.weight_mix_correlations(metrics, [_block(metrics, block)]).loc[block]
    found = {name: (row[f"{name}_rho"], row[f"{name}_p"]) for name in ("bn2", "conv2")}
    if any(not np.isfinite(rho) for rho, _ in found.values()):
        raise MissingInput(f"block {block}'s weight correlations are undefined (constant or missing weights)")
    negative = all(rho < 0 for rho, _ in found.values())
    significant = all(rho < 0 and p < alpha for rho, p in found.values())
    level = "holds" if significant else "weakly" if negative else "fails"
    return Evidence(level, "; ".join(f"{name}: rho {rho:.2f}, p {p:.1e}" for name, (rho, p) in found.items()))


def _anova_summary(result: Mapping[str, float]) -> str:
    return (f"skip mean {result['mean_skip']:.3g} (n={result['n_skip']}), overwrite mean "
            f"{result['mean_overwrite']:.3g} (n={result['n_overwrite']}), F {result['f']:.3g}, p {result['p']:.1e}")


def overwrite_inhibited(metrics: xr.Dataset, responses: xr.Dataset, block: str, alpha: float) -> Evidence:
    """B_c(X_I) is lower for overwrite than for skip channels, significantly by one-way ANOVA."""
    result = stats.activation_mix(metrics, responses, [_block(metrics, block)]).loc[block]
    lower = result["mean_overwrite"] < result["mean_skip"]
    level = "holds" if lower and result["p"] < alpha else "weakly" if lower else "fails"
    return Evidence(level, _anova_summary(result))


def tuning_difference(metrics: xr.Dataset, block: str, alpha: float, significant: bool) -> Evidence:
    """Overwrite channels' input-block tuning rho is significantly more negative than skip channels'
    (``significant=True``), or not significantly different (``False``)."""
    if not stats.per_channel(metrics, "tuning_rho", _block(metrics, block)).notna().any():
        raise MissingInput("tuning correlations need the natural group")
    result = stats.tuning_mix(metrics, [block]).loc[block]
    more_negative = result["mean_overwrite"] < result["mean_skip"]
    is_significant = bool(result["p"] < alpha)
    if significant:
        level = "holds" if more_negative and is_significant else "weakly" if more_negative else "fails"
    else:
        level = "holds" if not is_significant else "weakly" if not more_negative else "fails"
    return Evidence(level, _anova_summary(result))


def percents_without_mix(metrics: xr.Dataset, blocks: Sequence[str]) -> dict[str, float]:
    counts = stats.block_counts(metrics.sel(block=[_block(metrics, block) for block in blocks]),
                                "interpreting_without_mix")
    return {block: float(counts.loc[block, "percent"]) for block in blocks}


def few_without_mix(metrics: xr.Dataset, blocks: Sequence[str], few_percent: float) -> Evidence:
    """Without the mix criterion, at most ``few_percent`` % of each block's channels pass (weakly: twice that)."""
    percents = percents_without_mix(metrics, blocks)
    worst = max(percents.values())
    level = "holds" if worst <= few_percent else "weakly" if worst <= 2 * few_percent else "fails"
    return Evidence(level, ", ".join(f"{b}: {p:.1f}%" for b, p in percents.items()))


def appreciable_without_mix(metrics: xr.Dataset, block: str, neighbours: Sequence[str],
                            appreciable_percent: float) -> Evidence:
    """Without the mix criterion, ``block`` has at least ``appreciable_percent`` % passing, fewer than its
    neighbours (weakly: some, fewer than its neighbours)."""
    percents = percents_without_mix(metrics, [block, *neighbours])
    below = all(percents[block] < percents[neighbour] for neighbour in neighbours)
    level = ("holds" if below and percents[block] >= appreciable_percent else
             "weakly" if below and percents[block] > 0 else "fails")
    return Evidence(level, ", ".join(f"{b}: {p:.1f}%" for b, p in percents.items()))


def named_in_top_scale_metric(metrics: xr.Dataset, block: str, named: Sequence[int], count: int,
                              criterion: str) -> Evidence:
    """The paper's named channels are among the store's top ``count`` by scale metric (weakly: they pass the
    criteria but rank lower)."""
    top = stats.top_by_scale_metric(metrics, _block(metrics, block), count, criterion)
    passing = set(stats.invariant_channels(metrics, block, criterion))
    level = "holds" if set(named) <= set(top) else "weakly" if set(named) <= passing else "fails"
    return Evidence(level, f"store top {count}: {' '.join(map(str, top)) or 'none'}; "
                           f"named passing: {' '.join(str(c) for c in named if c in passing) or 'none'}")


def spectrum_positions(metrics: xr.Dataset, block: str, overwrite: int, mix: int, skip: int) -> Evidence:
    """The named overwrite/mix/skip channels fall in M <= 2/3, 2/3 < M < 3/2, M >= 3/2 (weakly: ordered)."""
    named = {"overwrite": overwrite, "mix": mix, "skip": skip}
    ratios = stats.per_channel(metrics, "mix", _block(metrics, block))
    missing = [channel for channel in named.values() if channel not in ratios.index]
    if missing:
        raise MissingInput(f"block {block} has no channel {', '.join(map(str, missing))}")
    values = {kind: float(ratios[channel]) for kind, channel in named.items()}
    placed = (values["overwrite"] <= MIX_LOW and MIX_LOW < values["mix"] < MIX_HIGH and values["skip"] >= MIX_HIGH)
    ordered = values["overwrite"] < values["mix"] < values["skip"]
    level = "holds" if placed else "weakly" if ordered else "fails"
    return Evidence(level, ", ".join(f"{kind} channel {channel}: M {values[kind]:.2f}" for kind, channel in named.items()))


def _scale_column(ablation: xr.Dataset, block: str, condition: str) -> xr.DataArray:
    if block not in [str(value) for value in ablation["block"].values]:
        raise MissingInput(f"block {block} was not ablated in this store")
    if condition not in ablation["condition"].values:
        raise MissingInput(f"the ablation has no {condition!r} condition")
    return ablation["accuracy"].sel(block=block, condition=condition).mean("trial", skipna=True)


def ratio_below_no_scale(ablation: xr.Dataset, block: str) -> Evidence:
    """The mean accuracy ratio is below the no-scale ratio at every scale (weakly: on average)."""
    _scale_column(ablation, block, "invariant")
    if 0.0 not in ablation["scale"].values:
        raise MissingInput("the ablation has no no-scale (scale 0) condition")
    ratios = ablation_analysis.accuracy_ratios(ablation, block)
    base = float(ratios["no_scale_ratio"])
    scaled = ratios["mean"].sel(scale=ratios["scale"] > 0).values
    if not np.isfinite(scaled).any() or not np.isfinite(base):
        raise MissingInput(f"block {block}'s ablation is not finished")
    level = "holds" if (scaled < base).all() else "weakly" if np.nanmean(scaled) < base else "fails"
    return Evidence(level, f"no-scale ratio {base:.4f}; scaled " + ", ".join(f"{r:.4f}" for r in scaled))


def unablated_accuracy(ablation: xr.Dataset) -> float:
    """Top-1 % of the unablated model without a scale transform."""
    if "none" not in ablation["condition"].values:
        raise MissingInput("the ablation has no unablated ('none') condition")
    return float(ablation["accuracy"].sel(condition="none", scale=0.0).mean(skipna=True))


def invariant_accuracies(ablation: xr.Dataset, block: str, scales: Sequence[float]) -> dict[float, float]:
    """Top-1 % with the block's invariant channels ablated, at each of ``scales``."""
    column = _scale_column(ablation, block, "invariant")
    by_scale = {round(float(scale), 6): float(value) for scale, value in zip(column["scale"].values, column.values)}
    return {float(scale): by_scale[round(float(scale), 6)] for scale in scales if round(float(scale), 6) in by_scale}

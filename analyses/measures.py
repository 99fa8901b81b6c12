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
from analyses import figures, noise, stats
from analyses.criteria import MIX_HIGH, MIX_LOW
from analyses.levels import Level


@dataclass(frozen=True)
class Evidence:
    """What a qualitative measure found: a ``Level`` (holds, holds weakly: the right direction, not
    significant or not everywhere, or fails), with a one-line summary of the numbers."""
    level: Level
    summary: str

    def __str__(self) -> str:
        return self.summary


class MissingInput(Exception):
    """The store lacks what a claim measures (a group, a block, a condition)."""


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


class SeededSet(list):
    """A channel list of the store's first FZ seed (what the papers' single-FZ method gives), carrying the
    same list computed on every seed alone (``per_seed``) for the seed noise floor."""

    def __init__(self, per_seed: Mapping[int, Sequence[int]]):
        self.per_seed = {int(seed): list(channels) for seed, channels in per_seed.items()}
        super().__init__(next(iter(self.per_seed.values())))

    @property
    def floor(self) -> noise.Floor:
        return noise.floor(self.per_seed)


def seed_lists(measured: Sequence[int]) -> list[list[int]]:
    """Every seed's list of a ``SeededSet``, or the one list of a plain sequence."""
    return list(measured.per_seed.values()) if isinstance(measured, SeededSet) else [list(measured)]


def floor_of(measured: Sequence[int]) -> noise.Floor:
    return measured.floor if isinstance(measured, SeededSet) else noise.Floor((), 1)


def per_seed(metrics: xr.Dataset, compute) -> list[int]:
    """``compute(one seed's metrics)``: a ``SeededSet`` over every seed when the dataset has a seed dim."""
    if "seed" not in metrics.dims:
        return compute(metrics)
    return SeededSet({seed: compute(noise.one_seed(metrics, seed)) for seed in noise.seeds_of(metrics)})


def invariant_set(metrics: xr.Dataset, block: str, criterion: str) -> list[int]:
    _block(metrics, block)
    return per_seed(metrics, lambda one: stats.invariant_channels(one, block, criterion))


def invariant_count(metrics: xr.Dataset, block: str, criterion: str) -> int:
    return len(invariant_set(metrics, block, criterion))


def invariant_percent(metrics: xr.Dataset, block: str, criterion: str) -> float:
    return float(stats.block_counts(metrics.sel(block=[_block(metrics, block)]), criterion).loc[block, "percent"])


def fz_imagenet_set(metrics: xr.Dataset, block: str, criterion: str = "interpreting") -> list[int]:
    _block(metrics, block)
    return per_seed(metrics, lambda one: figures.fz_and_imagenet(one, block, criterion))


def top_mix_set(metrics: xr.Dataset, block: str, count: int = 3) -> list[int]:
    _block(metrics, block)
    return per_seed(metrics, lambda one: stats.top_mixes(one, block, count))


def no_invariant(metrics: xr.Dataset, blocks: Sequence[str], criterion: str, few: int = 2) -> Evidence:
    """None of ``blocks`` has a passing channel (weakly: each has at most ``few``)."""
    counts = {block: invariant_count(metrics, block, criterion) for block in blocks}
    level = Level.HOLDS if not any(counts.values()) else Level.WEAKLY if max(counts.values()) <= few else Level.FAILS
    return Evidence(level, ", ".join(f"{block}: {count}" for block, count in counts.items()))


def with_invariant(metrics: xr.Dataset, blocks: Sequence[str], criterion: str) -> Evidence:
    """Every one of ``blocks`` has a passing channel (weakly: all but one)."""
    counts = {block: invariant_count(metrics, block, criterion) for block in blocks}
    empty = sum(count == 0 for count in counts.values())
    level = Level.HOLDS if empty == 0 else Level.WEAKLY if empty == 1 else Level.FAILS
    return Evidence(level, ", ".join(f"{block}: {count}" for block, count in counts.items()))


def _mix(metrics: xr.Dataset, block: str) -> np.ndarray:
    return stats.per_channel(metrics, "mix", _block(metrics, block)).to_numpy()


def overwrite_fraction(metrics: xr.Dataset, block: str) -> float:
    return float(np.mean(_mix(metrics, block) < 1))


def overwrite_skew(metrics: xr.Dataset, blocks: Sequence[str]) -> Evidence:
    """Most channels of every block are overwrite (M < 1); weakly: on average over the blocks."""
    fractions = {block: overwrite_fraction(metrics, block) for block in blocks}
    level = (Level.HOLDS if min(fractions.values()) > 0.5 else
             Level.WEAKLY if np.mean(list(fractions.values())) > 0.5 else Level.FAILS)
    return Evidence(level, "overwrite share " + ", ".join(f"{b}: {f:.0%}" for b, f in fractions.items()))


def less_skewed(metrics: xr.Dataset, simple: Sequence[str], downsample: Sequence[str]) -> Evidence:
    """Every simple block has a smaller overwrite share than every downsample block (weakly: on average)."""
    simple_share = {block: overwrite_fraction(metrics, block) for block in simple}
    down_share = {block: overwrite_fraction(metrics, block) for block in downsample}
    level = (Level.HOLDS if max(simple_share.values()) < min(down_share.values()) else
             Level.WEAKLY if np.mean(list(simple_share.values())) < np.mean(list(down_share.values())) else Level.FAILS)
    shares = {**simple_share, **down_share}
    return Evidence(level, "overwrite share " + ", ".join(f"{b}: {f:.0%}" for b, f in shares.items()))


def lowest_bin_share(metrics: xr.Dataset, block: str, bin_high: float, all_share: float = 0.95,
                     most_share: float = 0.8) -> Evidence:
    """Nearly all of the block's channels have M < ``bin_high`` (and how many of those are non-zero)."""
    mix = _mix(metrics, block)
    lowest = mix[mix < bin_high]
    share, nonzero = float(np.mean(mix < bin_high)), float(np.mean(lowest > 0)) if len(lowest) else 0.0
    level = Level.HOLDS if share >= all_share else Level.WEAKLY if share >= most_share else Level.FAILS
    return Evidence(level, f"{share:.0%} of channels below {bin_high}; {nonzero:.0%} of those non-zero")


def weights_fall_with_mix(metrics: xr.Dataset, block: str, alpha: float) -> Evidence:
    """|bn2| and mean |conv2| weights have significantly negative Spearman rho with M (weakly: negative only)."""
    row = stats.weight_mix_correlations(metrics, [_block(metrics, block)]).loc[block]
    found = {name: (row[f"{name}_rho"], row[f"{name}_p"]) for name in ("bn2", "conv2")}
    if any(not np.isfinite(rho) for rho, _ in found.values()):
        raise MissingInput(f"block {block}'s weight correlations are undefined (constant or missing weights)")
    negative = all(rho < 0 for rho, _ in found.values())
    significant = all(rho < 0 and p < alpha for rho, p in found.values())
    level = Level.HOLDS if significant else Level.WEAKLY if negative else Level.FAILS
    return Evidence(level, "; ".join(f"{name}: rho {rho:.2f}, p {p:.1e}" for name, (rho, p) in found.items()))


def _anova_summary(result: Mapping[str, float]) -> str:
    return (f"skip mean {result['mean_skip']:.3g} (n={result['n_skip']}), overwrite mean "
            f"{result['mean_overwrite']:.3g} (n={result['n_overwrite']}), F {result['f']:.3g}, p {result['p']:.1e}")


def overwrite_inhibited(metrics: xr.Dataset, responses: xr.Dataset, block: str, alpha: float) -> Evidence:
    """B_c(X_I) is lower for overwrite than for skip channels, significantly by one-way ANOVA."""
    result = stats.activation_mix(metrics, responses, [_block(metrics, block)]).loc[block]
    lower = result["mean_overwrite"] < result["mean_skip"]
    level = Level.HOLDS if lower and result["p"] < alpha else Level.WEAKLY if lower else Level.FAILS
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
        level = Level.HOLDS if more_negative and is_significant else Level.WEAKLY if more_negative else Level.FAILS
    else:
        level = Level.HOLDS if not is_significant else Level.WEAKLY if not more_negative else Level.FAILS
    return Evidence(level, _anova_summary(result))


def percents_without_mix(metrics: xr.Dataset, blocks: Sequence[str]) -> dict[str, float]:
    counts = stats.block_counts(metrics.sel(block=[_block(metrics, block) for block in blocks]),
                                "interpreting_without_mix")
    return {block: float(counts.loc[block, "percent"]) for block in blocks}


def few_without_mix(metrics: xr.Dataset, blocks: Sequence[str], few_percent: float) -> Evidence:
    """Without the mix criterion, at most ``few_percent`` % of each block's channels pass (weakly: twice that)."""
    percents = percents_without_mix(metrics, blocks)
    worst = max(percents.values())
    level = Level.HOLDS if worst <= few_percent else Level.WEAKLY if worst <= 2 * few_percent else Level.FAILS
    return Evidence(level, ", ".join(f"{b}: {p:.1f}%" for b, p in percents.items()))


def appreciable_without_mix(metrics: xr.Dataset, block: str, neighbours: Sequence[str],
                            appreciable_percent: float) -> Evidence:
    """Without the mix criterion, ``block`` has at least ``appreciable_percent`` % passing, fewer than its
    neighbours (weakly: some, fewer than its neighbours)."""
    percents = percents_without_mix(metrics, [block, *neighbours])
    below = all(percents[block] < percents[neighbour] for neighbour in neighbours)
    level = (Level.HOLDS if below and percents[block] >= appreciable_percent else
             Level.WEAKLY if below and percents[block] > 0 else Level.FAILS)
    return Evidence(level, ", ".join(f"{b}: {p:.1f}%" for b, p in percents.items()))


def named_in_top_scale_metric(metrics: xr.Dataset, block: str, named: Sequence[int], count: int,
                              criterion: str) -> Evidence:
    """The paper's named channels are among the store's top ``count`` by scale metric (weakly: they pass the
    criteria but rank lower)."""
    _block(metrics, block)
    tops = per_seed(metrics, lambda one: stats.top_by_scale_metric(one, block, count, criterion))
    top = list(tops)
    passing = set(stats.invariant_channels(stats.first_seed(metrics), block, criterion))
    level = Level.HOLDS if set(named) <= set(top) else Level.WEAKLY if set(named) <= passing else Level.FAILS
    return Evidence(level, f"store top {count}: {' '.join(map(str, top)) or 'none'}; "
                           f"named passing: {' '.join(str(c) for c in named if c in passing) or 'none'}; "
                           f"top-{count} SM {floor_of(tops).describe()}")


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
    level = Level.HOLDS if placed else Level.WEAKLY if ordered else Level.FAILS
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
    level = Level.HOLDS if (scaled < base).all() else Level.WEAKLY if np.nanmean(scaled) < base else Level.FAILS
    return Evidence(level, f"no-scale ratio {base:.4f}; scaled " + ", ".join(f"{r:.4f}" for r in scaled))


def ablation_ratios(ablation: xr.Dataset, block: str) -> dict[float, float]:
    """The mean accuracy ratio (invariant set / random sets) at every scale, the no-scale one included."""
    _scale_column(ablation, block, "invariant")
    mean = ablation_analysis.accuracy_ratios(ablation, block)["mean"]
    return {float(scale): float(value) for scale, value in zip(mean["scale"].values, mean.values)}


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

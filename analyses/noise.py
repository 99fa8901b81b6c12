"""Seed noise floors: how much a channel list changes when only the FZ seed changes.

The papers made one FZ per neuron, so every channel list they publish (a block's invariant set, its top-3
mixes, its top channels by scale metric) is one draw. A store with several FZ seeds (dim ``seed``) measures
that draw's spread: the list is computed for each seed alone and every pair of seeds is compared by
Jaccard index. The *floor* is that set of seed-to-seed overlaps (median and range). An overlap between the
store and a reference (the papers, or a longer reference run) that lies within the floor is as large as
two seeds of the same store agree with each other: the difference is within seed noise.

Example::

    metrics = xr.open_zarr("build/toy.zarr", group="metrics").sel(stimulus_set="fz")
    floor(seed_lists(metrics, "2.1", "criterion", "naturally"))   # Floor(pairs=(0.33, 0.5, 0.4), seeds=3)
    floors_table(metrics)                                          # every block and list kind
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from analyses import criteria, stats

# The lists the papers publish per block: criterion sets, the 3 mixes closest to 1 (A.4), the top channels
# by scale metric among those passing the "interpreting" criterion (Fig. 6).
KINDS = ("criterion", "top_mix", "top_sm")
TOP_N = 3


def jaccard(first: Iterable[int], second: Iterable[int]) -> float:
    """|A ∩ B| / |A ∪ B|; two empty sets agree completely (1)."""
    first, second = set(first), set(second)
    union = first | second
    return len(first & second) / len(union) if union else 1.0


@dataclass(frozen=True)
class Floor:
    """The seed-to-seed Jaccard indices of one list (every pair of seeds) and the number of seeds."""
    pairs: tuple[float, ...]
    seeds: int

    @property
    def known(self) -> bool:
        return len(self.pairs) > 0

    @property
    def median(self) -> float:
        return float(np.median(self.pairs)) if self.known else float("nan")

    @property
    def low(self) -> float:
        return float(min(self.pairs)) if self.known else float("nan")

    @property
    def high(self) -> float:
        return float(max(self.pairs)) if self.known else float("nan")

    def contains(self, overlap: float) -> bool:
        """Is ``overlap`` at least the lowest seed-to-seed overlap (as close as two seeds can be)?"""
        return self.known and overlap >= self.low - 1e-12

    def describe(self) -> str:
        if not self.known:
            return "seed noise floor unknown (one FZ seed)"
        return (f"seed-to-seed Jaccard {self.median:.2f} (range {self.low:.2f}–{self.high:.2f}, "
                f"{len(self.pairs)} pairs of {self.seeds} seeds)")


def floor(lists: Mapping[int, Sequence[int]] | Sequence[Sequence[int]]) -> Floor:
    """The floor of one list computed per seed: ``{seed: channels}`` or a sequence of channel lists."""
    values = list(lists.values()) if isinstance(lists, Mapping) else list(lists)
    pairs = tuple(jaccard(a, b) for a, b in itertools.combinations(values, 2))
    return Floor(pairs, len(values))


def seeds_of(metrics: xr.Dataset) -> list[int]:
    return [int(seed) for seed in metrics["seed"].values] if "seed" in metrics.dims else [0]


def one_seed(metrics: xr.Dataset, seed: int) -> xr.Dataset:
    return metrics.sel(seed=seed, drop=True) if "seed" in metrics.dims else metrics


def seed_lists(metrics: xr.Dataset, block: str, kind: str, criterion: str = "naturally",
               stimulus_set: str = "fz") -> dict[int, list[int]]:
    """{seed: the block's list of this kind, computed on that seed's FZs alone}."""
    if kind not in KINDS:
        raise ValueError(f"unknown list kind {kind!r}: use one of {', '.join(KINDS)}")
    lists = {}
    for seed in seeds_of(metrics):
        alone = one_seed(metrics, seed)
        if kind == "criterion":
            lists[seed] = stats.invariant_channels(alone, block, criterion, stimulus_set)
        elif kind == "top_mix":
            lists[seed] = stats.top_mixes(alone, block, TOP_N, stimulus_set)
        else:
            lists[seed] = stats.top_by_scale_metric(alone, block, TOP_N, "interpreting", stimulus_set)
    return lists


def floors_table(metrics: xr.Dataset, blocks: Sequence[str] | None = None, stimulus_set: str = "fz") -> pd.DataFrame:
    """Per block and list (each criterion's set, top-3 mixes, top-3 by SM): seeds, the seed-to-seed
    Jaccard median and range, and the mean list length."""
    rows = []
    # Every criterion of the registry, then each single test.
    lists = ([("criterion", c) for c in (*criteria.CRITERIA, *criteria.FLAGS)]
             + [("top_mix", "top-3 mix"), ("top_sm", "top-3 SM")])
    for block in blocks or stats.blocks_of(metrics):
        for kind, name in lists:
            per_seed = seed_lists(metrics, block, kind, name if kind == "criterion" else "naturally", stimulus_set)
            found = floor(per_seed)
            rows.append({"block": block, "list": name, "seeds": found.seeds, "pairs": len(found.pairs),
                         "median": found.median, "low": found.low, "high": found.high,
                         "mean_size": float(np.mean([len(v) for v in per_seed.values()]))})
    return pd.DataFrame(rows)


def aliased_against_seed_noise(metrics: xr.Dataset, metrics_aliased: xr.Dataset,
                               criteria: Sequence[str] = ("naturally", "interpreting")) -> pd.DataFrame:
    """Is the aliasing trap's effect on the channel sets larger than seed noise?

    Per block and criterion: channels passing with the true taps (median over seeds) and with FZs made for
    Lucent's aliased taps (its first seed), the Jaccard of the aliased set with each true-tap seed's set
    (median and range), and the true taps' seed-to-seed Jaccard (median and range). ``beyond_noise`` is
    true when even the best aliased-vs-true overlap is below the lowest seed-to-seed overlap; with one
    true-tap seed the floor is unknown and ``beyond_noise`` is missing."""
    rows = []
    aliased_seed = seeds_of(metrics_aliased)[0]
    blocks = [block for block in stats.blocks_of(metrics) if block in stats.blocks_of(metrics_aliased)]
    for block in blocks:
        for criterion in criteria:
            true_sets = seed_lists(metrics, block, "criterion", criterion)
            aliased = stats.invariant_channels(one_seed(metrics_aliased, aliased_seed), block, criterion)
            against = [jaccard(aliased, channels) for channels in true_sets.values()]
            seed_floor = floor(true_sets)
            rows.append({"block": block, "criterion": criterion,
                         "true": float(np.median([len(c) for c in true_sets.values()])), "aliased": len(aliased),
                         "aliased_vs_true": float(np.median(against)), "aliased_vs_true_low": min(against),
                         "aliased_vs_true_high": max(against), "seed_to_seed": seed_floor.median,
                         "seed_to_seed_low": seed_floor.low, "seed_to_seed_high": seed_floor.high,
                         "seeds": seed_floor.seeds,
                         "beyond_noise": (max(against) < seed_floor.low - 1e-12) if seed_floor.known else None})
    return pd.DataFrame(rows)

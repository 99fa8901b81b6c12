"""The reading a store was made under (the papers' text or the authors' code) and the two side by side.

A store's groups record the reading items they read (``repro.reading``) in their settings; a group made
before the items existed computed the paper's reading. The comparison takes the other reading's metrics
from a second store of the same model (``repro report --store S --compare S2``) or from a group of this store named
``metrics_code`` / ``metrics_paper`` (copied in, as ``metrics_aliased`` is), and shows per block and
criterion the invariant channels under each reading, their overlap, and which reading the published
channel list is closer to. Stores with several FZ seeds are compared seed by seed, against the seed noise
of this store's own sets.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
import xarray as xr

from analyses import figures, noise, stats
from repro import profiles, reading
from report import rules, spec, verify

READING_GROUPS = ("fz", "metrics", "ablation")  # the groups whose settings hold reading items
# (criterion, the published list it is checked against, the stimulus sets a channel must pass with)
PUBLISHED_SETS = {
    "naturally": (spec.NATURALLY["invariant_channels"], "FZ"),
    "interpreting": (spec.INTERPRETING["fz_and_imagenet"], "FZ and top-9"),
}


def recorded_items(attrs: Mapping) -> dict:
    """The reading items in a group's recorded settings (the paper's value where a group predates one)."""
    settings = attrs.get("settings") or {}
    paper = verify.paper_profile()
    items = {}
    for key in reading.ITEM_KEYS:
        table, name = key.split(".")
        if table in settings:
            items[key] = settings[table].get(name, paper[table][name])
    return items


def store_items(store) -> dict:
    items = {}
    for group in READING_GROUPS:
        if store.has(group):
            items.update(recorded_items(store.group_attrs(group)))
    return items


def store_reading(store) -> str:
    """``paper``, ``code`` or ``mixed (...)``: what the store's groups were made under."""
    items = store_items(store)
    if items:
        return reading.describe(items)
    profile = verify.store_profile(store.attrs)  # no group records items: the store's profile says
    return reading.label(profiles.with_reading_defaults(profile)) if "metrics" in profile else "not recorded"


def invariant_sets(metrics: xr.Dataset, block: str, criterion: str) -> list[int]:
    if criterion == "naturally":
        return stats.invariant_channels(metrics, block, "naturally", "fz")
    return figures.fz_and_imagenet(metrics, block)


def seed_pairs(first: xr.Dataset, second: xr.Dataset) -> list[tuple[int, int]]:
    """The FZ seeds compared: every seed both hold (seed s against seed s), else the first seed of each."""
    mine, theirs = noise.seeds_of(first), noise.seeds_of(second)
    shared = [seed for seed in mine if seed in theirs]
    return [(seed, seed) for seed in shared] if shared else [(mine[0], theirs[0])]


def _median(values) -> float:
    return float(np.median(values))


def comparison(first: xr.Dataset, second: xr.Dataset, names: tuple[str, str], comparable: bool) -> pd.DataFrame:
    """Per block and criterion: invariant counts under both readings, their overlap, and the Jaccard index
    of each with the published list, naming the closer reading (only where the published numbers apply).

    With several FZ seeds each reading's set is computed per seed and the two readings are compared seed by
    seed (``seed_pairs``); counts and overlaps are medians over those pairs. ``seed-to-seed jaccard`` is the
    first store's own seed noise floor for the set (NaN with one seed), and ``beyond seed noise`` says whether
    even the closest pair of readings overlaps less than two seeds of one reading do."""
    rows = []
    blocks = [b for b in stats.blocks_of(first) if b in set(stats.blocks_of(second))]
    pairs = seed_pairs(first, second)
    for criterion, (published, stimuli) in PUBLISHED_SETS.items():
        for block in blocks:
            a = [invariant_sets(noise.one_seed(first, mine), block, criterion) for mine, _ in pairs]
            b = [invariant_sets(noise.one_seed(second, theirs), block, criterion) for _, theirs in pairs]
            listed = list(published.get(block, []))
            jaccard_a = _median([rules.overlap(listed, one)["jaccard"] for one in a])
            jaccard_b = _median([rules.overlap(listed, one)["jaccard"] for one in b])
            closer = (names[0] if jaccard_a > jaccard_b else names[1] if jaccard_b > jaccard_a else "equal")
            between = [noise.jaccard(one, other) for one, other in zip(a, b)]
            floor = noise.floor([invariant_sets(noise.one_seed(first, seed), block, criterion)
                                 for seed in noise.seeds_of(first)])
            rows.append({
                "criterion": criterion, "stimuli": stimuli, "block": block,
                f"count ({names[0]})": _median([len(one) for one in a]),
                f"count ({names[1]})": _median([len(one) for one in b]),
                "shared": _median([len(set(one) & set(other)) for one, other in zip(a, b)]),
                "jaccard": _median(between),
                "seed-to-seed jaccard": floor.median,
                "beyond seed noise": (max(between) < floor.low - 1e-12) if floor.known else None,
                "published count": len(listed),
                f"jaccard with published ({names[0]})": jaccard_a,
                f"jaccard with published ({names[1]})": jaccard_b,
                "published closer to": closer if comparable else "n/a (published numbers do not apply)",
                "seeds": ", ".join(str(mine) if mine == theirs else f"{mine}/{theirs}" for mine, theirs in pairs),
            })
    return pd.DataFrame(rows)


def other_metrics(store, compare=None) -> tuple[xr.Dataset, str, str] | None:
    """(metrics, its reading, where it came from) of the other reading, or None when there is none."""
    if compare is not None:
        if not compare.has("metrics"):
            return None
        return compare.dataset("metrics"), store_reading(compare), f"store `{Path(compare.path).resolve()}`"
    for name in ("metrics_code", "metrics_paper"):
        if store.has(name):
            attrs = store.group_attrs(name)
            return store.dataset(name), reading.describe(recorded_items(attrs)), f"group `{name}` of this store"
    return None


def names_for(mine: str, theirs: str) -> tuple[str, str]:
    """Column names for the two readings; distinct even when both stores name the same reading."""
    return (mine, theirs) if mine != theirs else (f"{mine}, this store", f"{theirs}, compared")

"""The reading a store was made under (the papers' text or the authors' code) and the two side by side.

A store's groups record the reading items they read (``repro.reading``) in their settings; a group made
before the items existed computed the paper's reading. The comparison takes the other reading's metrics
from a second store (``repro report --store S --compare S2``) or from a group of this store named
``metrics_code`` / ``metrics_paper`` (copied in, as ``metrics_aliased`` is), and shows per block and
criterion the invariant channels under each reading, their overlap, and which reading the published
channel list is closer to.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import pandas as pd
import xarray as xr

from analyses import figures, stats
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


def comparison(first: xr.Dataset, second: xr.Dataset, names: tuple[str, str], comparable: bool) -> pd.DataFrame:
    """Per block and criterion: invariant counts under both readings, their overlap, and the Jaccard index
    of each with the published list, naming the closer reading (only where the published numbers apply)."""
    rows = []
    blocks = [b for b in stats.blocks_of(first) if b in set(stats.blocks_of(second))]
    for criterion, (published, stimuli) in PUBLISHED_SETS.items():
        for block in blocks:
            a, b = invariant_sets(first, block, criterion), invariant_sets(second, block, criterion)
            listed = list(published.get(block, []))
            jaccard_a = rules.overlap(listed, a)["jaccard"]
            jaccard_b = rules.overlap(listed, b)["jaccard"]
            closer = (names[0] if jaccard_a > jaccard_b else names[1] if jaccard_b > jaccard_a else "equal")
            rows.append({
                "criterion": criterion, "stimuli": stimuli, "block": block,
                f"count ({names[0]})": len(a), f"count ({names[1]})": len(b),
                "shared": len(set(a) & set(b)), "jaccard": rules.overlap(a, b)["jaccard"],
                "published count": len(listed),
                f"jaccard with published ({names[0]})": jaccard_a,
                f"jaccard with published ({names[1]})": jaccard_b,
                "published closer to": closer if comparable else "n/a (published numbers do not apply)",
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

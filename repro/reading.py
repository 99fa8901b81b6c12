"""The two readings of the method: the papers' text (``paper``) and the authors' code (``code``).

docs/method.md lists where the authors' code differs from the papers. Each difference is one or more named
settings in the tables of the stages it affects (so every group records it and groups made under
different readings are never mixed: the store marks them stale). The top-level ``reading`` key sets the
default of every item; an item a profile sets itself keeps its value, so readings can be mixed.

The paper's values are the base profile's (``profiles/paper.toml``); the code's values are below, with
the item number of that list ("Where the authors' code differs from the papers").
"""
from __future__ import annotations

from typing import Any, Mapping

READINGS = ("paper", "code")

# item -> {dotted setting: its value under the code's reading}
CODE_ITEMS: dict[int, dict[str, Any]] = {
    1: {"fz.input_jitter": "previous_output"},  # 3.1's I reuses 3.0's O FZ (jitter 4)
    2: {"metrics.delta_relu": "both"},  # relu(B(S X_I)) - relu(B(X_I)), likewise down
    3: {"metrics.direction": "normalised"},  # up: delta / B(X_B) > 0; down: delta / I(X_I) > 0
    4: {"metrics.mix_edges": "code"},  # O(X_B) <= 0 -> 10, unclamped; clamped only for histograms
    5: {"metrics.top9_relu": "per_image", "metrics.top9_png": True},  # mean of ReLUs, after a PNG round trip
    6: {"ablation.scale_definition": "code", "ablation.resize": "pil"},  # int(224(1 - p)) crops, PIL bilinear
    7: {"metrics.interpreting_criterion": "mix_up"},  # down commented out at the code's HEAD
}
ITEM_KEYS = {key: item for item, keys in CODE_ITEMS.items() for key in keys}


def get(profile: Mapping, dotted: str) -> Any:
    """An item's value; None where the profile lacks it (validation names what is missing)."""
    table, key = dotted.split(".")
    holder = profile.get(table)
    return holder.get(key) if isinstance(holder, Mapping) else None


def _set(profile: dict, dotted: str, value: Any) -> None:
    table, key = dotted.split(".")
    if isinstance(profile.setdefault(table, {}), dict):  # a table given as a scalar is for validation to name
        profile[table][key] = value


def values(reading: str, paper: Mapping) -> dict[str, Any]:
    """Every item's value under ``reading``; ``paper`` is the base profile holding the paper's values."""
    if reading == "code":
        return {key: value for keys in CODE_ITEMS.values() for key, value in keys.items()}
    return {key: get(paper, key) for key in ITEM_KEYS}


def resolve(profile: dict, paper: Mapping, pinned: set[str]) -> dict:
    """Set every item not in ``pinned`` to the value of the profile's ``reading`` (in place)."""
    reading = profile.get("reading", "paper")
    if reading not in READINGS:
        return profile  # validation names the bad value
    for key, value in values(reading, paper).items():
        if key not in pinned:
            _set(profile, key, value)
    return profile


def switch(profile: dict, reading: str, paper: Mapping, pinned: set[str]) -> dict:
    """Change the reading: items that follow the current reading move to the new one's values; items the
    profile set apart from its reading (and those in ``pinned``) stay (in place)."""
    current = values(profile.get("reading", "paper"), paper)
    apart = {key for key, value in current.items() if get(profile, key) != value}
    profile["reading"] = reading
    return resolve(profile, paper, pinned | apart)


def label(profile: Mapping) -> str:
    """``paper``, ``code``, or the reading with the items set apart from it: ``code, except ...``."""
    reading = profile.get("reading", "paper")
    code = values("code", {})
    if reading == "code":
        apart = [f"{key} = {get(profile, key)!r}" for key in ITEM_KEYS if get(profile, key) != code[key]]
    else:
        apart = [f"{key} = {get(profile, key)!r}" for key in ITEM_KEYS if get(profile, key) == code[key]]
    return reading if not apart else f"{reading}, except {', '.join(apart)}"


def items_of(profile: Mapping) -> dict[str, Any]:
    """Every item's value in the profile (for the stores' attrs)."""
    return {key: get(profile, key) for key in ITEM_KEYS}


def describe(items: Mapping[str, Any]) -> str:
    """The reading of some item values (those a store's groups recorded): ``paper``, ``code`` or
    ``mixed (code: ...; paper: ...)``. Every item has two values, so "not the code's" is the paper's."""
    code = values("code", {})
    known = {key: value for key, value in items.items() if key in code}
    as_code = sorted(key for key, value in known.items() if value == code[key])
    as_paper = sorted(key for key in known if key not in as_code)
    if not as_code:
        return "paper"
    if not as_paper:
        return "code"
    return f"mixed (code: {', '.join(as_code)}; paper: {', '.join(as_paper)})"

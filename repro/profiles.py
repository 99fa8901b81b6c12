"""Profiles: TOML files that hold every setting of an experiment.

A profile is named (``paper`` → ``profiles/paper.toml``) or given as a path. A profile may name a
``base`` profile; its tables are merged over the base's. CLI flags override single settings for one run
through ``override(profile, {"model.weights": ...})``.
"""
from __future__ import annotations

import copy
import json
import os
import tomllib
from pathlib import Path
from typing import Any, Mapping

from repro import reading as readings
from repro import resources, settings
from repro.errors import UserError
from repro.hashing import digest

PROFILE_DIR = resources.shipped("profiles")
IMAGES_ENV = "RESIDUAL_STREAM_IMAGES"
# Settings that do not change stored results (where images live, worker counts, where units run, how many FZs
# share one optimization) or that choose the group a result goes to (the FZ objective: `fz` or `fz_channel`);
# left out of the identity hash.
# The top-level ``reading`` only sets the defaults of the reading items, which carry the identity themselves.
NON_RESULT_KEYS = {"description", "reading", "natural.images", "natural.workers", "fz.objective", "fz.batch_images",
                   "run"}
# Read by a stage but not part of what its group's values depend on: the weights are the store's identity
# (their SHA-256), the image folder enters as its listing, and whole-channel grids are a pipeline choice.
NOT_GROUP_SETTINGS = NON_RESULT_KEYS - {"fz.objective"} | {"model.weights", "model.weights_sha256", "fz.channel_grids"}


def available() -> list[str]:
    return sorted(path.stem for path in PROFILE_DIR.glob("*.toml"))


def _path(name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" and candidate.is_file():
        return candidate
    named = PROFILE_DIR / f"{name_or_path}.toml"
    if named.is_file():
        return named
    raise UserError(f"unknown profile {name_or_path!r}; profiles: {', '.join(available())} (or a path to a .toml)")


def _merge(base: dict, top: Mapping) -> dict:
    merged = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load(name_or_path: str) -> settings.Profile:
    """The resolved, typed profile: base merged, path-valued settings made absolute, env defaults applied."""
    path = _path(name_or_path)
    profile = _load_unchecked(name_or_path)
    readings.resolve(profile, _load_unchecked(ROOT_PROFILE), _pinned(path))
    model = profile.get("model", {})
    weights = model.get("weights", "") if isinstance(model, Mapping) else ""
    if isinstance(weights, str) and weights.endswith((".pt", ".pth")) and not Path(weights).is_absolute():
        profile["model"]["weights"] = str(resources.locate(weights))
    natural = profile.setdefault("natural", {})
    if isinstance(natural, dict) and not natural.get("images"):
        natural["images"] = os.environ.get(IMAGES_ENV, "")
    return settings.typed(profile, where=str(path))


ROOT_PROFILE = "paper"  # the base of every profile: it holds every default, the paper reading's included


def _pinned(path: Path) -> set[str]:
    """The reading items a profile file or one of its bases sets itself (the root's values are the defaults)."""
    if path.resolve() == _path(ROOT_PROFILE).resolve():
        return set()
    raw = _read_toml(path)
    here = {key for key in readings.ITEM_KEYS
            if isinstance(raw.get(key.split(".")[0]), Mapping) and key.split(".")[1] in raw[key.split(".")[0]]}
    return here | (_pinned(_path(raw["base"])) if isinstance(raw.get("base"), str) else set())


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"profile {path} is not valid TOML: {error}") from None
    except UnicodeDecodeError as error:
        raise UserError(f"profile {path} is not UTF-8 text (byte {error.start}); TOML files are UTF-8") from None


def _load_unchecked(name: str, _chain: tuple[Path, ...] = ()) -> dict:
    """A profile merged over its bases, not yet validated (``load`` validates the result)."""
    path = _path(name)
    if path.resolve() in _chain:
        cycle = " → ".join(str(p) for p in (*_chain, path.resolve()))
        raise UserError(f"profile {path}: its bases form a cycle ({cycle})")
    raw = _read_toml(path)
    base = raw.pop("base", None)
    if base is not None and not isinstance(base, str):
        raise UserError(f"profile {path}: base must be a profile name, not {base!r}")
    merged = _merge(_load_unchecked(base, (*_chain, path.resolve())), raw) if base else raw
    merged["name"] = raw.get("name", path.stem)
    return merged


def override(profile: Mapping, values: Mapping[str, Any]) -> settings.Profile:
    """A typed copy with dotted keys set (``{"fz.steps": 32}``); None values are ignored.

    ``reading`` switches every reading item that follows the profile's reading (see ``reading.switch``);
    items given in the same call keep the given value.
    """
    updated = as_dict(profile)
    if values.get("reading") is not None:
        if values["reading"] not in readings.READINGS:
            raise UserError(f"settings: reading must be one of {', '.join(readings.READINGS)}, not {values['reading']!r}")
        given = {key for key, value in values.items() if value is not None}
        readings.switch(updated, values["reading"], _load_unchecked(ROOT_PROFILE), given)
    for dotted, value in values.items():
        if value is None or dotted == "reading":
            continue
        *tables, key = dotted.split(".")
        target = updated
        for table in tables:
            target = target.setdefault(table, {})
        target[key] = value
    return settings.typed(updated, where="settings")


def as_dict(profile: Mapping) -> dict:
    """A profile as a plain dict (a copy): the ``record`` of a typed one."""
    return copy.deepcopy(dict(profile.record if isinstance(profile, settings.Profile) else profile))


def with_reading_defaults(profile: Mapping) -> dict:
    """A profile stored before the reading items existed, completed with the paper reading's values (what
    it was computed with)."""
    completed = as_dict(profile)
    completed.setdefault("reading", "paper")
    root = _load_unchecked(ROOT_PROFILE)
    for key in readings.ITEM_KEYS:
        table, name = key.split(".")
        if isinstance(completed.get(table), dict):
            completed[table].setdefault(name, root[table][name])
    return completed


def reading_label(profile: Mapping) -> str:
    """The reading a profile computes under (``paper``, ``code``, or one with items set apart)."""
    return readings.label(with_reading_defaults(profile))


def _result_settings(profile: Mapping, prefix: str = "", left_out=NON_RESULT_KEYS) -> dict:
    kept = {}
    for key, value in profile.items():
        dotted = f"{prefix}{key}"
        if dotted in left_out:
            continue
        kept[key] = _result_settings(value, dotted + ".", left_out) if isinstance(value, Mapping) else value
    return kept


def read_by(profile: Mapping, *tables: str) -> dict:
    """The settings a stage reads from these tables, as its group records them."""
    return {table: _result_settings(profile[table], f"{table}.", NOT_GROUP_SETTINGS) for table in tables}


def identity_hash(profile: Mapping) -> str:
    """Hash of every setting that changes results (not where images live, not worker counts)."""
    return digest(_result_settings(profile))


def recorded(profile: Mapping) -> dict:
    """The profile as a store records it: without the ``[run]`` table, since where units ran is no part of a
    result, and a later stage run on the store (``--profile`` omitted) chooses its own placement."""
    return {key: value for key, value in profile.items() if key != "run"}


def to_json(profile: Mapping) -> str:
    return json.dumps(as_dict(profile), sort_keys=True, indent=2)

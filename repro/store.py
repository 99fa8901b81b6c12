"""The result store: one zarr (v3) store per run, one group per stage, read and written through xarray.

A stage declares its group once as a template (every variable's dims, coords, dtype and chunks, no
data). Work is cut into units; each unit's arrays are written to their region and only then is the unit
named in the group's ``units_done`` attribute (zarr writes metadata atomically), so a killed run never
marks unwritten work done and a rerun skips what is done.

Every store records the profile and weights it was made with; opening it with others is an error
unless the caller asks for a new store.
"""
from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import xarray as xr
import zarr

import repro
from repro import profiles
from repro.errors import UserError

# Consolidated metadata is what lets `xarray.open_zarr` open the store without probing every group.
warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")


def git_commit() -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = result.stdout.strip() if result.returncode == 0 else "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
                           capture_output=True, text=True).stdout.strip()
    return commit + ("-dirty" if dirty and commit != "unknown" else "")


def provenance(profile: Mapping, weights: Mapping, **extra) -> dict:
    """The attrs every stored group carries."""
    import torch
    import torchvision

    return {
        "package_version": repro.__version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "profile_name": profile.get("name", ""),
        "profile_hash": profiles.identity_hash(profile),
        "profile": profiles.to_json(profile),
        "weights": weights.get("weights", ""),
        "weights_sha256": weights.get("weights_sha256", ""),
        "weights_file_sha256": weights.get("weights_file_sha256", ""),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def labels(values: Iterable[str]) -> np.ndarray:
    """String coordinates as variable-length strings (the zarr v3 string type)."""
    return np.array(list(values), dtype=object)


class Store:
    """A run's zarr store."""

    def __init__(self, path: Path):
        self.path = Path(path)

    # ------------------------------------------------------------ opening

    @classmethod
    def create_or_open(cls, path, profile: Mapping, weights: Mapping, *, new: bool = False) -> "Store":
        """Open the run's store, creating it; refuse a store made with another profile or weights."""
        store = cls(path)
        if store.exists():
            made_with = store.attrs
            mismatch = [
                f"{key}: store has {made_with.get(key)!r}, this run has {mine!r}"
                for key, mine in (("profile_hash", profiles.identity_hash(profile)),
                                  ("weights_sha256", weights.get("weights_sha256", "")))
                if made_with.get(key) != mine
            ]
            if mismatch and not new:
                raise UserError(
                    f"store {store.path} was made with another profile or weights ({'; '.join(mismatch)}). "
                    "Pass --new-store to replace it, or choose another --store."
                )
            if not mismatch:
                return store
            shutil.rmtree(store.path)
        elif store.path.exists() and any(store.path.iterdir()):
            raise UserError(f"{store.path} exists and is not a residual-stream store")
        root = zarr.open_group(str(store.path), mode="w", zarr_format=3)
        root.attrs.update(provenance(profile, weights, store_kind="residual-stream"))
        return store

    @classmethod
    def existing(cls, path) -> "Store":
        store = cls(path)
        if not store.exists():
            raise UserError(f"no residual-stream store at {store.path}; run `repro fz` or `repro natural` first")
        return store

    def exists(self) -> bool:
        if not (self.path / "zarr.json").is_file():
            return False
        return zarr.open_group(str(self.path), mode="r", use_consolidated=False).attrs.get("store_kind") == "residual-stream"

    @property
    def attrs(self) -> dict:
        return dict(zarr.open_group(str(self.path), mode="r", use_consolidated=False).attrs)

    @property
    def profile(self) -> dict:
        import json

        return json.loads(self.attrs["profile"])

    @property
    def weights(self) -> dict:
        attrs = self.attrs
        return {key: attrs.get(key, "") for key in ("weights", "weights_sha256", "weights_file_sha256")}

    # ------------------------------------------------------------ groups

    def has(self, group: str) -> bool:
        return (self.path / group / "zarr.json").is_file()

    def declare(self, group: str, template: xr.Dataset, attrs: Mapping, *, signature: str = "") -> None:
        """Write the group's template (metadata only) unless the same template is already there.

        ``signature`` names what the group's shape depends on (for example the image list); a group
        with another signature is replaced, as its units no longer fit.
        """
        if self.has(group) and self.group_attrs(group).get("signature") == signature:
            return
        template = template.copy()
        template.attrs = {**attrs, "signature": signature, "units_done": [], "complete": False}
        template.to_zarr(str(self.path), group=group, mode="w", compute=False, zarr_format=3, consolidated=False)

    def group_attrs(self, group: str) -> dict:
        return dict(zarr.open_group(str(self.path / group), mode="r", use_consolidated=False).attrs)

    def update_attrs(self, group: str, **attrs) -> None:
        zarr.open_group(str(self.path / group), mode="r+", use_consolidated=False).attrs.update(attrs)

    def done(self, group: str) -> set[str]:
        if not self.has(group):
            return set()
        return set(self.group_attrs(group).get("units_done", []))

    def write_unit(self, group: str, unit: str, part: xr.Dataset, region: Mapping[str, slice] | str = "auto") -> None:
        """Write one unit's arrays into their region, then mark the unit done."""
        part = part.drop_attrs()
        if region != "auto":
            part = part.drop_vars([name for name in part.coords if name in region])
        part.to_zarr(str(self.path), group=group, region=region, mode="r+", consolidated=False)
        self.update_attrs(group, units_done=sorted(self.done(group) | {unit}))

    def finish(self, group: str, *, complete: bool = True, **attrs) -> None:
        """Record whether every unit of the group's layout is done; refresh the metadata users open."""
        self.update_attrs(group, complete=complete,
                          finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **attrs)
        zarr.consolidate_metadata(str(self.path))

    def dataset(self, group: str) -> xr.Dataset:
        if not self.has(group):
            raise UserError(f"store {self.path} has no {group!r} group yet")
        return xr.open_zarr(str(self.path), group=group, consolidated=False)

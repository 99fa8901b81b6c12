"""The result store: one zarr (v3) store per run, one group per stage, read and written through xarray.

Identity. The store's identity is what every group shares: the architecture, the weights' SHA-256 (of
the state dict, not the path) and the image size. A run with another identity is refused (``--new-store``
starts a fresh store, after the run's input is validated). Each group records the settings its stage
read (``settings``, with a digest) and the ``version`` of every group it read (``inputs``); a stage run
with other settings replaces only its own group, saying so. A group whose recorded inputs no longer
match the store (an input was rebuilt, removed, or is itself stale) is *stale* (``group_state``).

Layout on disk (every directory is a zarr node, so zarr and xarray list the store without warnings)::

    zarr.json                    root: store_kind, identity, provenance of the first run
    _locks/zarr.json             flock target of the store-wide lock (never rewritten)
    _locks/<group>/zarr.json     flock target of a group's writer lock
    <group>/...                  the group's arrays (zstd + crc32c, so damage is detected on read)
    <group>/_units/<unit>/zarr.json   one done-marker per work unit: its name, region and variables

Crash safety. A group is declared (its template, metadata only) in a staging node and renamed into
place, so it exists only once its declaration is complete. A unit's arrays are written to their region,
then its marker is created by an atomic rename: no shared list is read, modified and written back, and a
killed run never marks unwritten work done. Stray staging nodes and zarr's ``*.partial`` temporaries are
removed when no writer is active.

Concurrency. A stage holds its group's writer lock (``flock``, released by the kernel when the process
dies) from declaration to ``finish``; a second process asking for the same group is refused in one line.
Metadata changes of the store (creation, declaration, consolidation) take the store-wide lock.

Integrity. ``check`` verifies every group's metadata, every array's metadata, every chunk written at
declaration (coordinates, masks: all of them, through their crc32c), every done unit's chunks and every
marker. ``repair`` un-marks damaged units and removes invalid markers (the next run recomputes only them),
marks a group whose declaration-time arrays are damaged for re-declaration (its stage rewrites them from
its template and keeps its units), and removes a group whose metadata is unreadable (its stage remakes it).
``require_intact`` is what a stage calls on the groups it reads before computing from them.

Finishing. A group is complete only when its stage's ``finish`` ran after the last unit (``complete`` in
its attrs); until then it is *unfinished* and a rerun of the stage finishes it. ``--new-store`` empties the
store once, through ``start_fresh``, after the whole run's input is validated and before any stage.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import click
import numpy as np
import xarray as xr
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

import repro
from repro import profiles
from repro.errors import UserError
from repro.hashing import digest

STORE_KIND = "residual-stream"
ARRAYS = "arrays"  # group attr: every array the template declared
DECLARED_ARRAYS = "declared_arrays"  # group attr: the arrays written whole at declaration (coords, masks)
REDECLARE = "redeclare"  # group attr: ``repair`` found declaration-time arrays damaged
LOCKS = "_locks"
UNITS = "_units"
STAGING = "_staging_"
TRASH = "_trash_"
_HELD: dict[str, object] = {}  # group writer locks this process holds, by lock file
GROUP_NODE = json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}})


FAULT_ENV = "REPRO_FAULT_AT"
FAULT_ONCE_ENV = "REPRO_FAULT_ONCE"
FAULT_SIGNAL_ENV = "REPRO_FAULT_SIGNAL"


_FAULT_REACHED: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Kill this process here when ``$REPRO_FAULT_AT`` names this point: how the tests stop a run at an
    exact instant (a group just declared, a unit written but not marked, a group about to be finished)
    instead of by timing. ``NAME@K`` kills at the K-th time this process reaches the point; ``$REPRO_FAULT_SIGNAL``
    names another signal (``INT``: a Ctrl-C at that instant).

    With ``$REPRO_FAULT_ONCE`` naming a file, only the first process to reach the point dies (it creates
    the file): how a test kills exactly one of several workers mid-unit."""
    wanted, _, nth = os.environ.get(FAULT_ENV, "").partition("@")
    if wanted != name:
        return
    _FAULT_REACHED[name] = _FAULT_REACHED.get(name, 0) + 1
    if nth and _FAULT_REACHED[name] != int(nth):
        return
    once = os.environ.get(FAULT_ONCE_ENV)
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os.kill(os.getpid(), getattr(signal, "SIG" + os.environ.get(FAULT_SIGNAL_ENV, "KILL")))


def git_commit() -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
        )
        if result.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() + ("-dirty" if dirty else "")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


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
        "reading": profiles.reading_label(profile),
        "profile_hash": profiles.identity_hash(profile),
        "profile": profiles.to_json(profiles.recorded(profile)),
        "weights": weights.get("weights", ""),
        "weights_sha256": weights.get("weights_sha256", ""),
        "weights_file_sha256": weights.get("weights_file_sha256", ""),
        "created": now(),
        **extra,
    }


def identity(profile: Mapping, weights: Mapping) -> dict:
    """What every group of a store shares."""
    return {"arch": str(profile["model"]["arch"]), "weights_sha256": str(weights.get("weights_sha256", "")),
            "image_size": int(profile["model"]["image_size"])}


def labels(values: Iterable[str]) -> np.ndarray:
    """String coordinates as variable-length strings (the zarr v3 string type)."""
    return np.array(list(values), dtype=object)


def settings_changes(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, as ``key old → new``."""
    changes = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if isinstance(before, Mapping) and isinstance(after, Mapping):
            changes += settings_changes(before, after, f"{prefix}{key}.")
        elif before != after:
            changes.append(f"{prefix}{key} {_short(before)} → {_short(after)}")
    return changes


def _short(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _unit_node(unit: str) -> str:
    """A file-safe node name for a unit (the unit's own name is in the marker)."""
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", unit)[:80]
    return f"{readable}-{hashlib.sha1(unit.encode()).hexdigest()[:8]}"


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _create_exclusive(path: Path, text: str) -> None:
    """Create ``path`` with its full content at once, unless it exists (never replaced: a stable flock target)."""
    if path.exists():
        return
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    temporary.write_text(text)
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        temporary.unlink(missing_ok=True)


def _checksummed(template: xr.Dataset) -> dict:
    """Encoding that adds a crc32c checksum to every array's chunks."""
    return {name: {"compressors": (ZstdCodec(level=0), Crc32cCodec())} for name in template.variables}


@dataclass
class GroupState:
    """What ``repro status`` shows of one group."""
    name: str
    state: str  # complete, partial, stale
    units_done: int
    units_expected: int | None
    why: str = ""


@dataclass
class Damage:
    """One problem ``check`` found; ``scope`` says what ``repair`` does about it: ``unit`` un-marks the unit,
    ``marker`` removes the invalid marker, ``markers-node`` rewrites the metadata of the folder holding the
    markers, ``declaration`` marks the group for re-declaration, ``group`` removes the group (its stage
    remakes it)."""
    group: str
    unit: str
    problem: str
    scope: str = "unit"
    chunk: tuple[str, tuple[int, ...]] | None = None  # (array, chunk coords) of a chunk that does not decode

    def describe(self) -> str:
        where = {"unit": f"unit {self.unit}", "marker": f"marker {self.unit}",
                 "markers-node": "markers"}.get(self.scope, "group")
        return f"{self.group} {where}: {self.problem}"


@dataclass
class Store:
    """A run's zarr store. Reading needs only the path; writing needs the run's identity."""

    path: Path
    run_identity: Mapping | None = None
    root_attrs: Mapping | None = None  # the provenance written when the store is created
    fresh: bool = False  # ``--new-store`` asked: ``start_fresh`` empties the store once
    _locks: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.path = Path(self.path)

    # ------------------------------------------------------------ opening

    @classmethod
    def for_run(cls, path, profile: Mapping, weights: Mapping, *, new: bool = False) -> "Store":
        """The store a stage will write, checked without writing anything; created at the first declaration."""
        store = cls(Path(path), identity(profile, weights), provenance(profile, weights, store_kind=STORE_KIND),
                    fresh=new)
        store.check_path()
        if store.exists() and not new:
            store.check_identity()
        return store

    @classmethod
    def create_or_open(cls, path, profile: Mapping, weights: Mapping, *, new: bool = False) -> "Store":
        """``for_run`` and create the store now (emptied first with ``new``)."""
        store = cls.for_run(path, profile, weights, new=new)
        store.start_fresh()
        store.ensure_root()
        return store

    @classmethod
    def existing(cls, path) -> "Store":
        store = cls(Path(path))
        if store.path.is_file():
            raise UserError(f"{store.path} is a file, not a residual-stream store")
        if not store.exists():
            raise UserError(f"no residual-stream store at {store.path}; run `repro fz` or `repro natural` first")
        return store

    def exists(self) -> bool:
        root = self.path / "zarr.json"
        if not root.is_file():
            return False
        try:
            return json.loads(root.read_text()).get("attributes", {}).get("store_kind") == STORE_KIND
        except (OSError, ValueError):
            return False

    def check_path(self) -> None:
        """Refuse a file, a foreign directory, or a place this process cannot write."""
        if self.path.is_file():
            raise UserError(f"--store {self.path} is a file, not a store directory")
        if self.path.is_dir() and not self.exists():
            foreign = [p.name for p in self.path.iterdir() if p.name != LOCKS and not p.name.startswith(".")]
            if foreign or (self.path / "zarr.json").exists():
                raise UserError(f"{self.path} exists and is not a residual-stream store")
        place = self.path if self.path.exists() else self.path.parent
        if not place.is_dir():
            raise UserError(f"cannot create store {self.path}: {place} is not a directory")

    def check_identity(self) -> None:
        made_with = self.attrs.get("identity") or {}
        mismatch = [f"{key}: store has {made_with.get(key)!r}, this run has {mine!r}"
                    for key, mine in self.run_identity.items() if made_with.get(key) != mine]
        if mismatch:
            raise UserError(f"store {self.path} was made for another model ({'; '.join(mismatch)}). "
                            "Choose another --store, or pass --new-store to start a fresh one.")

    def writable(self) -> bool:
        place = self.path if self.path.exists() else self.path.parent
        return os.access(place, os.W_OK)

    @property
    def attrs(self) -> dict:
        return json.loads((self.path / "zarr.json").read_text()).get("attributes", {})

    @property
    def profile(self) -> dict:
        return json.loads(self.attrs["profile"])

    @property
    def weights(self) -> dict:
        attrs = self.attrs
        return {key: attrs.get(key, "") for key in ("weights", "weights_sha256", "weights_file_sha256")}

    # ------------------------------------------------------------ locks

    def _lock_file(self, name: str) -> Path:
        return self.path / LOCKS / "zarr.json" if name == "" else self.path / LOCKS / name / "zarr.json"

    def _open_lock(self, name: str):
        path = self._lock_file(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        _create_exclusive(path, GROUP_NODE)
        return open(path, "r+b")  # write mode: NFS needs it for an exclusive lock

    @contextlib.contextmanager
    def _store_lock(self) -> Iterator[None]:
        """The store-wide lock for metadata changes (held briefly; waits for another holder)."""
        if "" in self._locks:
            yield
            return
        handle = self._open_lock("")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._locks[""] = handle
            yield
        finally:
            self._locks.pop("", None)
            handle.close()

    def _lock_group(self, group: str) -> None:
        """Hold ``group``'s writer lock until ``finish`` (or process exit); refuse if another process has it.

        Held locks are kept per process (flock treats two opens of one file as two holders), so a run that
        stopped on an error in this process does not lock out the next one."""
        key = str(self._lock_file(group).resolve())
        if key in _HELD:
            self._locks[group] = _HELD[key]
            return
        handle = self._open_lock(group)
        for _ in range(20):  # another process's probe (``_writers_active``) holds it for an instant
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.05)
        else:
            handle.close()
            raise UserError(f"group {group!r} of {self.path} is being written by another process; "
                            "let it finish (or stop it), then rerun")
        self._locks[group] = _HELD[key] = handle

    def release(self, group: str) -> None:
        handle = self._locks.pop(group, None)
        if handle is not None:
            _HELD.pop(str(self._lock_file(group).resolve()), None)
            handle.close()

    def _writers_active(self) -> bool:
        """Whether another process holds any group's writer lock."""
        for lock in (self.path / LOCKS).glob("*/zarr.json"):
            if str(lock.resolve()) in _HELD:
                continue
            with open(lock, "r+b") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return True
        return False

    # ------------------------------------------------------------ creating

    def ensure_root(self) -> None:
        """Create the store (or check it), clean what a killed run left; idempotent and safe to race."""
        if self.run_identity is None:
            raise UserError(f"store {self.path} was opened for reading only")
        self.check_path()
        if not self.writable():
            raise UserError(f"store {self.path} is not writable (read-only file system or permissions)")
        (self.path / LOCKS).mkdir(parents=True, exist_ok=True)
        with self._store_lock():
            if not self.exists():
                attrs = {**(self.root_attrs or {}), "store_kind": STORE_KIND, "identity": dict(self.run_identity)}
                _write_atomic(self.path / "zarr.json", json.dumps(
                    {"zarr_format": 3, "node_type": "group", "attributes": attrs}, default=str))
            else:
                self.check_identity()
            if not self._writers_active():
                self._clean_strays()

    def start_fresh(self) -> None:
        """Empty the store now when ``--new-store`` asked for it (once): called by a command after it has
        validated all of its input and before any stage runs, never by a stage."""
        if not self.fresh:
            return
        self.fresh = False
        if not self.path.exists():
            return
        (self.path / LOCKS).mkdir(parents=True, exist_ok=True)
        with self._store_lock():
            if self._writers_active():
                raise UserError(f"cannot start a fresh store at {self.path}: another process is writing it")
            for entry in self.path.iterdir():
                if entry.name == LOCKS:
                    continue
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        click.echo(f"started a fresh store at {self.path} (--new-store)", err=True)

    def _clean_strays(self) -> None:
        """Staging and trash nodes and zarr's temporaries that a killed run left behind."""
        for entry in self.path.iterdir():
            if entry.name.startswith((STAGING, TRASH)):
                shutil.rmtree(entry, ignore_errors=True)
        for directory, _, files in os.walk(self.path):
            for name in files:
                if name.endswith((".partial", ".tmp")):
                    Path(directory, name).unlink(missing_ok=True)

    # ------------------------------------------------------------ groups

    def has(self, group: str) -> bool:
        return (self.path / group / "zarr.json").is_file()

    def groups(self) -> list[str]:
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir()
                      if (p / "zarr.json").is_file() and not p.name.startswith("_"))

    def group_attrs(self, group: str) -> dict:
        attrs = _group_node_attrs(self.path / group / "zarr.json")
        if attrs is None:
            raise UserError(f"store {self.path}: the metadata of group {group!r} ({group}/zarr.json) is damaged; "
                            f"run `repro check --store {self.path} --repair`, then rerun the stages")
        return attrs

    def declare(self, group: str, template: xr.Dataset, attrs: Mapping, *, settings: Mapping | None = None,
                inputs: Iterable[str] = (), units_expected: int | None = None) -> None:
        """Make ``group`` ready for this run's units; keep it when its settings and inputs are the same.

        ``settings`` are what the stage read (and the layout they imply); ``inputs`` the groups it reads,
        whose current versions are recorded. Otherwise the group is replaced (one line says why), as a
        whole and atomically: a staged copy of the template is renamed into place.
        """
        self._check_space(template, units_expected)
        self.ensure_root()
        self._lock_group(group)
        settings = json.loads(json.dumps(settings or {}, default=str))
        recorded_inputs = {name: self.version(name) for name in inputs}
        with self._store_lock():
            if self.has(group):
                current = self.group_attrs(group)
                why = self._replace_reason(current, settings, recorded_inputs)
                if not why:
                    if current.get(REDECLARE):
                        self._redeclare(group, template, current)
                    return
                click.echo(f"{group}: replacing the stored group ({why})", err=True)
            template = template.copy()
            template.attrs = {**attrs, "settings": settings, "settings_digest": digest(settings),
                              "inputs": recorded_inputs, "version": uuid.uuid4().hex[:16],
                              "units_expected": units_expected, "complete": False, "declared": now(),
                              ARRAYS: sorted(map(str, template.variables)),
                              DECLARED_ARRAYS: declaration_arrays(template)}
            staging = f"{STAGING}{group}_{uuid.uuid4().hex[:8]}"
            with _quiet_zarr():  # every declaration-time chunk written, fill values too: check finds a lost one
                template.to_zarr(str(self.path), group=staging, mode="w", compute=False, zarr_format=3,
                                 consolidated=False, encoding=_checksummed(template), write_empty_chunks=True)
            (self.path / staging / UNITS).mkdir()
            (self.path / staging / UNITS / "zarr.json").write_text(GROUP_NODE)
            fault_point("staged")
            target = self.path / group
            if target.exists():
                trash = self.path / f"{TRASH}{group}_{uuid.uuid4().hex[:8]}"
                os.rename(target, trash)
                os.rename(self.path / staging, target)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.rename(self.path / staging, target)
            fault_point("declared")
            self._consolidate()

    def _redeclare(self, group: str, template: xr.Dataset, current: Mapping) -> None:
        """Rewrite a group's declaration-time arrays from its template in place (``repair`` found them
        damaged); its units' arrays and markers are kept."""
        names = [name for name in _declared_only(current, self.markers(group).values())
                 if name in template.variables]
        with _quiet_zarr():
            for name in names:
                array = zarr.open_array(str(self.path / group / name), mode="r+").with_config(
                    {"write_empty_chunks": True})
                array[...] = template[name].values
        self.update_attrs(group, **{REDECLARE: False})
        click.echo(f"{group}: rewrote its declaration-time arrays ({', '.join(names)})", err=True)

    def remove(self, group: str) -> None:
        """Remove one group whole (renamed out of the store first, so it is never seen half-deleted)."""
        self._lock_group(group)
        try:
            if not (self.path / group).exists():
                return
            trash = self.path / f"{TRASH}{group}_{uuid.uuid4().hex[:8]}"
            with self._store_lock():
                os.rename(self.path / group, trash)
                shutil.rmtree(trash, ignore_errors=True)
                self._consolidate()
        finally:
            self.release(group)

    def _check_space(self, template: xr.Dataset, units_expected: int | None) -> None:
        """Refuse to start when the disk cannot hold even the first unit (its share of the group, uncompressed)."""
        first_unit = template.nbytes / max(1, units_expected or 1)
        free = shutil.disk_usage(self.path if self.path.exists() else self.path.parent).free
        if free < first_unit:
            raise UserError(f"not enough free space for store {self.path}: a unit needs about "
                            f"{first_unit / 2**20:.0f} MiB, {free / 2**20:.0f} MiB are free")

    def _replace_reason(self, current: Mapping, settings: Mapping, inputs: Mapping) -> str:
        if current.get("settings_digest") != digest(settings):
            changes = settings_changes(current.get("settings") or {}, settings)
            shown = "; ".join(changes[:3]) + (f"; {len(changes) - 3} more" if len(changes) > 3 else "")
            return f"settings changed: {shown or 'layout'}"
        if dict(current.get("inputs") or {}) != dict(inputs):
            changed = sorted(name for name in set(inputs) | set(current.get("inputs") or {})
                             if (current.get("inputs") or {}).get(name) != inputs.get(name))
            return f"its inputs changed: {', '.join(changed)} rebuilt since it was made"
        return ""

    def is_current(self, group: str, settings: Mapping, inputs: Iterable[str] = ()) -> bool:
        """Whether ``group`` was made with these settings from the current versions of these inputs."""
        if not self.has(group):
            return False
        settings = json.loads(json.dumps(settings, default=str))
        return not self._replace_reason(self.group_attrs(group), settings,
                                        {name: self.version(name) for name in inputs})

    def is_complete(self, group: str, settings: Mapping, inputs: Iterable[str] = ()) -> bool:
        """Whether ``group`` is current (``is_current``) and its stage finished it: a stage's only shortcut."""
        return self.is_current(group, settings, inputs) and bool(self.group_attrs(group).get("complete"))

    def version(self, group: str) -> str | None:
        return self.group_attrs(group).get("version") if self.has(group) else None

    def update_attrs(self, group: str, **attrs) -> None:
        path = self.path / group / "zarr.json"
        node = json.loads(path.read_text())
        node.setdefault("attributes", {}).update(json.loads(json.dumps(attrs, default=str)))
        _write_atomic(path, json.dumps(node))

    # ------------------------------------------------------------ units

    def markers(self, group: str) -> dict[str, dict]:
        """Each done unit's marker: its name, region (dim → [start, stop]) and variables."""
        return {attrs["unit"]: attrs for _, attrs in self._marker_nodes(group) if attrs is not None}

    def _marker_nodes(self, group: str) -> Iterator[tuple[Path, dict | None]]:
        """Every node under ``_units`` with its marker, or None where the node holds no valid marker (a
        marker is written whole by a rename, so anything else is damage: it never counts as done)."""
        units = self.path / group / UNITS
        if not units.is_dir():
            return
        for node in sorted(units.iterdir()):
            if node.is_dir():
                yield node, _valid_marker(node)

    def done(self, group: str) -> set[str]:
        if not self.has(group):
            return set()
        return set(self.markers(group))

    def write_unit(self, group: str, unit: str, part: xr.Dataset, region: Mapping[str, slice] | str = "auto") -> None:
        """Write one unit's arrays into their region, then create its done-marker."""
        part = part.drop_attrs()
        stored = xr.open_zarr(str(self.path), group=group, consolidated=False)  # metadata only
        region = _region(stored, group, part) if region == "auto" else dict(region)
        part = part.drop_vars([name for name in part.coords if name in region])
        with _quiet_zarr():
            part.to_zarr(str(self.path), group=group, region=region, mode="r+", consolidated=False,
                         write_empty_chunks=True)
        fault_point("unit-written")
        marker = {"unit": unit, "variables": sorted(part.data_vars), "written": now(),
                  "region": {dim: list(piece.indices(stored.sizes[dim])[:2]) for dim, piece in region.items()}}
        node = self.path / group / UNITS / _unit_node(unit)
        node.mkdir(parents=True, exist_ok=True)
        _write_atomic(node / "zarr.json", json.dumps({"zarr_format": 3, "node_type": "group", "attributes": marker}))
        fault_point("unit-marked")

    def finish(self, group: str, *, complete: bool = True, **attrs) -> None:
        """Record whether every unit of the group's layout is done; refresh the metadata users open."""
        fault_point("finishing")
        self.update_attrs(group, complete=complete, finished=now(), **attrs)
        with self._store_lock():
            self._consolidate()
        self.release(group)

    def _consolidate(self) -> None:
        with _quiet_zarr():
            zarr.consolidate_metadata(str(self.path))

    def dataset(self, group: str) -> xr.Dataset:
        if not self.has(group):
            raise UserError(f"store {self.path} has no {group!r} group yet")
        try:
            return xr.open_zarr(str(self.path), group=group, consolidated=False)
        except (ValueError, KeyError, OSError) as error:  # unparsable or missing metadata of a node below it
            raise UserError(f"store {self.path}: group {group!r} does not open ({_first_line(error)}); "
                            f"run `repro check --store {self.path} --repair`") from None

    # ------------------------------------------------------------ state and integrity

    def group_state(self, group: str, _seen: frozenset = frozenset()) -> GroupState:
        attrs = _group_node_attrs(self.path / group / "zarr.json")
        if attrs is None:
            return GroupState(group, "damaged", 0, None, "its metadata is unreadable: run `repro check --repair`")
        markers = self.markers(group) if self.has(group) else {}
        done, expected = len(markers), attrs.get("units_expected")
        why = self._stale_reason(group, attrs, _seen | {group})
        if why:
            return GroupState(group, "stale", done, expected, why)
        if attrs.get(REDECLARE):
            return GroupState(group, "damaged", done, expected, "repaired; rerun its stage to rewrite it")
        if attrs.get("complete"):
            return GroupState(group, "complete", done, expected)
        finished_after = attrs.get("finished", "") >= max((m.get("written", "") for m in markers.values()), default="")
        if expected and done >= expected and not finished_after:
            return GroupState(group, "unfinished", done, expected, "every unit is done but the stage did not "
                              "finish; rerun it")
        # A stage that finished its group incomplete says why (e.g. metrics of channels whose FZs are missing).
        return GroupState(group, "partial", done, expected, attrs.get("incomplete", ""))

    def _stale_reason(self, group: str, attrs: Mapping, seen: frozenset) -> str:
        for name, version in sorted((attrs.get("inputs") or {}).items()):
            if not self.has(name):
                return f"its input {name!r} is gone"
            if (_group_node_attrs(self.path / name / "zarr.json") or {}).get("version") != version:
                return f"{name!r} was rebuilt after {group!r} was made"
            if name not in seen and self.group_state(name, seen).state == "stale":
                return f"its input {name!r} is stale"
        return ""

    def status(self) -> list[GroupState]:
        return [self.group_state(group) for group in self.groups()]

    def check(self, groups: Iterable[str] | None = None, *, units: bool = True) -> list[Damage]:
        """Every problem in these groups (default: all): unreadable group or array metadata, a missing or
        undecodable chunk of a declaration-time array, of a done unit's region (``units``), or an invalid
        marker."""
        damage = []
        if groups is None:  # a group folder that lost its zarr.json is no longer listed as a group
            damage += [Damage(path.name, "", "its metadata (zarr.json) is missing", "group")
                       for path in sorted(self.path.iterdir())
                       if path.is_dir() and not path.name.startswith(("_", ".")) and not (path / "zarr.json").exists()]
        for group in self.groups() if groups is None else groups:  # an empty list checks nothing
            if self.has(group):
                damage += self._group_damage(group, units)
        return damage

    def _group_damage(self, group: str, units: bool = True) -> list[Damage]:
        attrs = _group_node_attrs(self.path / group / "zarr.json")
        if attrs is None:
            return [Damage(group, "", f"its metadata ({group}/zarr.json) is unreadable", "group")]
        with _quiet_zarr():
            try:
                root = zarr.open_group(str(self.path / group), mode="r", use_consolidated=False)
            except Exception as error:
                return [Damage(group, "", f"it does not open ({_first_line(error)})", "group")]
            arrays = {}
            for name in attrs.get(ARRAYS) or sorted(root.array_keys()):
                try:
                    arrays[name] = root[name]
                except Exception as error:  # missing or unparsable zarr.json
                    return [Damage(group, "", f"array {name}'s metadata is missing or unreadable "
                                   f"({_first_line(error)})", "group")]
        damage = []
        markers_node = self.path / group / UNITS / "zarr.json"
        if markers_node.exists() and _group_node_attrs(markers_node) is None:
            damage.append(Damage(group, UNITS, f"its marker folder's metadata ({group}/{UNITS}/zarr.json) is "
                                 "unreadable", "markers-node"))
        nodes = list(self._marker_nodes(group))
        if not attrs.get(REDECLARE):
            for name in _declared_only(attrs, [marker for _, marker in nodes if marker]):
                problem, _ = self._chunks_problem(group, arrays[name], {})
                if problem:
                    damage.append(Damage(group, "", f"declaration-time {problem}", "declaration"))
                    break
        for node, marker in nodes if units else ():
            if marker is None:
                damage.append(Damage(group, node.name, "its marker is not a valid marker", "marker"))
                continue
            outside = _region_problem(marker["region"], arrays.values())
            if outside:
                damage.append(Damage(group, marker["unit"], outside))
                continue
            for name in marker["variables"]:
                problem, chunk = (self._chunks_problem(group, arrays[name], marker["region"]) if name in arrays
                                  else (f"array {name} is missing", None))
                if problem:
                    damage.append(Damage(group, marker["unit"], problem, chunk=chunk and (name, chunk)))
                    break
        return damage

    def _chunks_problem(self, group: str, array: zarr.Array,
                        region: Mapping[str, list[int]]) -> tuple[str, tuple[int, ...] | None]:
        """The first chunk of ``array`` in ``region`` (dim → [start, stop]; all of it when empty) that is
        missing or does not decode (crc32c), as words with its chunk coords; ("", None) when all are sound."""
        name = array.path.rsplit("/", 1)[-1]
        for coords in _chunks_of(array, region):
            key = array.metadata.encode_chunk_key(coords)
            if not (self.path / group / name / key).is_file():
                return f"chunk {name}/{key} is missing", None
            selection = tuple(slice(c * n, min((c + 1) * n, size))
                              for c, n, size in zip(coords, array.chunks, array.shape))
            try:
                array[selection]
            except Exception as error:  # the codecs' own errors: checksum, truncated stream, ...
                return f"chunk {name}/{key} does not decode ({_first_line(error)})", tuple(coords)
        return "", None

    def _drop_chunk(self, group: str, name: str, coords: tuple[int, ...]) -> None:
        """Delete a chunk that does not decode and un-mark every unit that wrote part of it: a unit filling
        part of a chunk reads the rest first, so its rerun must start from the fill value, and so must the
        other units sharing the chunk."""
        with _quiet_zarr():
            array = zarr.open_array(str(self.path / group / name), mode="r")
        (self.path / group / name / array.metadata.encode_chunk_key(coords)).unlink(missing_ok=True)
        self.unmark(group, [unit for unit, marker in self.markers(group).items()
                            if name in marker["variables"] and coords in set(_chunks_of(array, marker["region"]))])

    def unmark(self, group: str, units: Iterable[str]) -> None:
        """Remove these units' markers (their arrays stay; a rerun writes them again)."""
        for unit in units:
            shutil.rmtree(self.path / group / UNITS / _unit_node(unit), ignore_errors=True)

    def repair(self, damage: Iterable[Damage]) -> None:
        """Un-mark damaged units, remove invalid markers, mark groups for re-declaration, remove groups
        whose metadata is unreadable: the next run of each stage then ends as an undamaged run would."""
        damage = list(damage)
        for group in dict.fromkeys(item.group for item in damage):
            items = [item for item in damage if item.group == group]
            self._lock_group(group)
            try:
                if any(item.scope == "group" for item in items):
                    self.remove(group)
                    continue
                for item in items:
                    if item.scope in ("unit", "marker"):
                        node = item.unit if item.scope == "marker" else _unit_node(item.unit)
                        shutil.rmtree(self.path / group / UNITS / node, ignore_errors=True)
                    if item.chunk:
                        self._drop_chunk(group, *item.chunk)
                    if item.scope == "markers-node":  # an empty group node: the markers below it are kept
                        (self.path / group / UNITS).mkdir(exist_ok=True)
                        _write_atomic(self.path / group / UNITS / "zarr.json", GROUP_NODE)
                flags = {REDECLARE: True} if any(item.scope == "declaration" for item in items) else {}
                if any(item.scope != "markers-node" for item in items):
                    self.update_attrs(group, complete=False, **flags)
            finally:
                self.release(group)

    def require_intact(self, groups: Iterable[str], *, units: bool = True) -> None:
        """Refuse to compute from an input group with damaged metadata, coordinates or masks, or (``units``)
        a missing or damaged chunk of a done unit. Without ``units`` it reads only the small arrays: what a
        stage checks before it opens its inputs at all."""
        groups = [group for group in groups if self.has(group)]
        damage = self.check(groups, units=units)
        if damage:
            shown = "; ".join(item.describe() for item in damage[:2]) + (" ..." if len(damage) > 2 else "")
            raise UserError(f"store {self.path} is damaged ({shown}); "
                            f"run `repro check --store {self.path} --repair`, then rerun the stages")
        pending = [group for group in groups if self.group_attrs(group).get(REDECLARE)]
        if pending:
            raise UserError(f"store {self.path}: group {pending[0]!r} was repaired and not yet rewritten; "
                            "rerun the stage that makes it first")


def _region(stored: xr.Dataset, group: str, part: xr.Dataset) -> dict[str, slice]:
    """The region a part with coords fills (each labelled dim must be contiguous in the group)."""
    region = {}
    for dim in part.dims:
        if dim not in part.coords:
            region[dim] = slice(None)
            continue
        index = stored.indexes[dim].get_indexer(part[dim].values)
        if (index < 0).any() or (len(index) and not (np.diff(index) == 1).all()):
            raise ValueError(f"{group}: the part's {dim} labels are not a contiguous run of the group's")
        region[dim] = slice(int(index[0]), int(index[-1]) + 1)
    return region


def _chunks_of(array: zarr.Array, region: Mapping[str, list[int]]) -> Iterator[tuple[int, ...]]:
    """Chunk coordinates a unit's region covers (dims outside the region: all of them)."""
    dims = array.metadata.dimension_names or ()
    ranges = []
    for dim, chunk, size in zip(dims, array.chunks, array.shape):
        start, stop = region.get(dim, [0, size])
        ranges.append(range(start // chunk, -(-stop // chunk)) if stop > start else range(0))
    return itertools.product(*ranges)


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:80]


def _group_node_attrs(path: Path) -> dict | None:
    """A group node's attributes, or None when its zarr.json is missing or not a group's metadata."""
    try:
        node = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(node, dict) or node.get("node_type") != "group":
        return None
    if not isinstance(node.get("attributes", {}), dict):
        return None
    return node.get("attributes", {})


def _valid_marker(node: Path) -> dict | None:
    """The marker in a unit node, or None unless it is whole: a unit name matching the node's, a list of
    variable names and a region of [start, stop] pairs."""
    attrs = _group_node_attrs(node / "zarr.json")
    if not attrs:
        return None
    unit, variables, region = attrs.get("unit"), attrs.get("variables"), attrs.get("region")
    if not isinstance(unit, str) or _unit_node(unit) != node.name:
        return None
    if not isinstance(variables, list) or not all(isinstance(name, str) for name in variables):
        return None
    if not isinstance(region, dict) or not all(
            isinstance(span, list) and len(span) == 2 and all(type(i) is int and i >= 0 for i in span)
            for span in region.values()):
        return None
    return attrs


def _region_problem(region: Mapping[str, list[int]], arrays: Iterable[zarr.Array]) -> str:
    """Why a marker's region cannot be the region its unit wrote (a dim the group's arrays lack, or a span
    outside the dim), else "": a damaged name or bound would mark other values done."""
    sizes = {}
    for array in arrays:
        sizes.update(zip(array.metadata.dimension_names or (), array.shape))
    for dim, (start, stop) in region.items():
        if dim not in sizes:
            return f"its marker's region names {dim!r}, which is not a dim of the group"
        if not start <= stop <= sizes[dim]:
            return f"its marker's region {dim} [{start}, {stop}] lies outside the dim's 0-{sizes[dim]}"
    return ""


def _declared_only(attrs: Mapping, markers: Iterable[Mapping]) -> list[str]:
    """The group's declaration-time arrays no unit writes to (a unit's own arrays are checked by its marker)."""
    written = {name for marker in markers for name in marker["variables"]}
    return [name for name in attrs.get(DECLARED_ARRAYS, []) if name not in written]


def declaration_arrays(template: xr.Dataset) -> list[str]:
    """The template's arrays written at declaration: those held in memory (coordinates, masks), not the
    lazy placeholders that units fill."""
    return sorted(str(name) for name, variable in template.variables.items() if not _is_lazy(variable))


def _is_lazy(variable: xr.Variable) -> bool:
    return hasattr(variable.data, "dask") or type(variable.data).__module__.startswith("dask")


@contextlib.contextmanager
def _quiet_zarr() -> Iterator[None]:
    """zarr warns that consolidated metadata is not in the v3 spec; this store uses it on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        warnings.filterwarnings("ignore", message="Object at .* is not recognized")
        yield


def disk_error(error: OSError, where: Path) -> UserError | None:
    """A one-line message for the OS errors a user fixes outside the program."""
    messages = {errno.ENOSPC: "no space left on the device", errno.EROFS: "read-only file system",
                errno.EACCES: "permission denied", errno.EDQUOT: "disk quota exceeded"}
    if error.errno in messages:
        return UserError(f"{messages[error.errno]} at {error.filename or where}; finished units are kept, "
                         "fix it and rerun to resume")
    return None

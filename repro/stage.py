"""One contract for every stage that computes into the store, and one runner that keeps its books.

A stage is a computation: which groups it writes (their layout, attributes and identity), which groups it
reads, the units still to do, how to compute one unit into parts, and what to record when it ends. Everything
else is ``run_stage``'s, the same for every stage:

* identity and staleness: a group is remade when the settings it records or the versions of the groups it
  reads changed (``Store.declare``); a stage whose groups are complete and current is skipped;
* ``--new-store`` empties the store once, after the stage's input was validated (``Store.start_fresh``);
* declaration, then units in waves: ``Stage.units(done)`` gives the units still to do given the done ones
  (a wave may depend on the waves before it, as the ablation's screening rounds do), until none is left;
* each unit runs on the executor (in this process, or on Dask workers) or, marked ``here``, in this process
  on the stage's own model; its parts are written as they come (``Store.write_unit``: the arrays, then the
  unit's done-marker), so a killed run resumes with the units that were not marked;
* ``finish``: the stage's closing attributes, then each group's ``complete`` flag (every unit of its layout
  done) and the store's consolidated metadata.

Unit names are the markers' names, one scheme per stage; ``Group.units`` lists those that complete a group.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence

import click
import xarray as xr

from repro import device as devices
from repro.executor import Serial
from repro.store import Store


@dataclass(frozen=True)
class Part:
    """One unit's arrays for one group, placed by its coordinate labels (``region="auto"``) or a region."""

    group: str
    unit: str
    data: xr.Dataset
    region: Mapping[str, slice] | str = "auto"


@dataclass(frozen=True)
class Group:
    """A group a stage writes: its layout, attributes, what its values depend on, and every unit it needs."""

    name: str
    template: xr.Dataset  # chunked so that units running side by side never write one chunk
    attrs: Mapping[str, Any]
    settings: Mapping[str, Any]
    units: frozenset[str]
    count_units: bool = True  # False: the group has units besides ``units`` (how many is not known ahead)


@dataclass(frozen=True)
class Work:
    """What every unit of a run shares, sent to each worker once."""

    compute: Callable[..., Iterator[Part]]
    context: Any
    store_path: str


class Stage:
    """A computation over the store. Subclasses set ``title`` and implement ``groups``, ``units`` and
    ``compute``; ``inputs``, ``context``, ``finish`` and ``here_model`` have defaults."""

    title: str  # the progress bar's and messages' name
    uses_model: ClassVar[bool] = True  # False: workers build no model for this stage's units
    profile: Mapping  # a stage that uses a model keeps its profile: Dask workers build the model from its [model]

    def inputs(self) -> list[str]:
        """The groups this stage reads: a newer version of one makes its groups stale."""
        return []

    def groups(self) -> list[Group]:
        raise NotImplementedError

    def units(self, done: Mapping[str, set[str]]) -> Sequence:
        """The units still to do, given each group's done units; empty when none is left."""
        raise NotImplementedError

    def context(self) -> Any:
        return None

    @staticmethod
    def compute(model, context, unit) -> Iterator[Part]:
        """One unit: yields its parts (each written before the next is computed); may return a small result."""
        raise NotImplementedError

    def finish(self, results: list) -> Mapping[str, Mapping[str, Any]]:
        """Closing attributes by group, from this run's units' results (wave by wave, within a wave the
        executor's units before those run here); may write closing units."""
        return {}

    # The model a unit uses, placed on the run's device; Dask workers call it on the model they build, so it
    # is a module-level function (pickled by name), never a bound method.
    prepare: ClassVar[Callable] = staticmethod(devices.place)

    def compute_here(self, model, unit) -> Iterator[Part]:
        """A unit marked ``here``: computed in this process, where the stage's own objects live."""
        return self.compute(model, self.context(), unit)

    def here_model(self, model, device):
        """The model for units marked ``here`` (run in this process)."""
        return self.prepare(model, device)

    def complete(self, store: Store, group: Group) -> bool:
        """Whether every unit the group needs is done (by name; a stage whose units are regions may say)."""
        return group.units <= store.done(group.name)

    def already_complete(self, store: Store) -> str:
        return f"{self.title}: already complete in {store.path}"


def compute_unit(model, work: Work, unit):
    """Run one unit wherever it was sent: write its parts as they come; return its small result."""
    return write_parts(Store(Path(work.store_path)), work.compute(model, work.context, unit))


def write_parts(store: Store, parts: Iterator[Part]):
    """Write each part as it comes (its arrays, then its unit's marker); return the unit's small result."""
    while True:
        try:
            part = next(parts)
        except StopIteration as stop:
            return stop.value
        store.write_unit(part.group, part.unit, part.data, region=part.region)


def done_units(store: Store, groups: Sequence[Group]) -> dict[str, set[str]]:
    return {group.name: store.done(group.name) for group in groups}


def is_complete(stage: Stage, store: Store, groups: Sequence[Group], inputs: Sequence[str]) -> bool:
    return all(store.is_complete(group.name, group.settings, inputs) and stage.complete(store, group)
               for group in groups)


def run_stage(stage: Stage, store: Store, model, weights: Mapping, *, executor=None, device=None) -> bool:
    """Run (or resume) ``stage`` into ``store``; False when it was already complete and nothing ran."""
    executor = executor or Serial()
    inputs, groups = stage.inputs(), stage.groups()
    store.start_fresh()  # the stage's input is valid (it was checked when the stage was made)
    if is_complete(stage, store, groups, inputs):
        click.echo(stage.already_complete(store), err=True)
        return False
    store.require_intact(inputs)
    for group in groups:
        store.declare(group.name, group.template, group.attrs, settings=group.settings, inputs=inputs,
                      units_expected=len(group.units) if group.count_units else None)
    device = devices.resolve(device)
    work = Work(stage.compute, stage.context(), str(store.path))
    results, done, checked = [], done_units(store, groups), False
    placed, local, local_made = None, None, False  # each made once, at the first wave that needs it
    while True:
        wave = list(stage.units(done))
        if not wave:
            break
        remote = [unit for unit in wave if not getattr(unit, "here", False)]
        if remote and not checked:
            executor.check_store(store.path, groups[0].name)
            checked = True
        if remote and stage.uses_model and isinstance(executor, Serial) and placed is None:
            placed = stage.prepare(model, device)  # in this process: once for every wave
        results += executor.map(compute_unit, remote, context=work, model=placed if placed is not None else
                                (model if stage.uses_model else None), device=device,
                                prepare=stage.prepare if stage.uses_model and placed is None else None,
                                model_settings=stage_model_settings(stage), desc=stage.title,
                                weights_sha256=weights.get("weights_sha256", ""))
        here = [unit for unit in wave if getattr(unit, "here", False)]
        if here and not local_made:
            local, local_made = stage.here_model(model, device), True
        results += [write_parts(store, stage.compute_here(local, unit)) for unit in here]
        now = done_units(store, groups)
        if now == done:  # a wave that marks nothing would repeat forever: the stage's units() is wrong
            raise RuntimeError(f"{stage.title}: a wave of {len(wave)} unit(s) marked none done ({wave[:3]}...)")
        done = now
    closing = stage.finish(results)
    for group in groups:
        store.finish(group.name, complete=stage.complete(store, group), **closing.get(group.name, {}))
    return True


def stage_model_settings(stage: Stage) -> Mapping | None:
    """The model settings workers build their model from (the stage's profile's [model] table)."""
    if not stage.uses_model:
        return None
    if getattr(stage, "profile", None) is None:
        raise TypeError(f"stage {type(stage).__name__} uses a model but keeps no profile to build it from")
    return stage.profile["model"]

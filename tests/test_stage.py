"""The stage contract: a new computation written as one small Stage gets resume, Dask, staleness and the
store's bookkeeping from ``run_stage``, and the registry is what the pipeline and the CLI are made from."""
import sys
from dataclasses import dataclass

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

from repro import profiles, stages
from repro.cli import main
from repro.stage import Group, Part, Stage, run_stage
from repro.store import Store, provenance

RECORD = {"weights": "random:0", "weights_sha256": "0" * 64}
SIZE, CHUNK = 6, 2


@dataclass(frozen=True)
class Powers:
    exponent: int
    fail_after: int = -1  # a unit index after whose parts the unit raises (a run killed mid-stage)


class PowersStage(Stage):
    """i ** exponent for i in 0..5, two per unit: the whole stage in a few lines."""

    title = "powers"
    uses_model = False

    def __init__(self, powers: Powers, reads: tuple[str, ...] = ()):
        self.powers, self.reads = powers, reads

    def inputs(self):
        return list(self.reads)

    def groups(self):
        # chunked by unit: units on different workers never write one chunk
        values = da.full(SIZE, np.nan, chunks=CHUNK)
        template = xr.Dataset({"value": ("i", values)}, coords={"i": np.arange(SIZE)})
        units = frozenset(f"i{start}" for start in range(0, SIZE, CHUNK))
        return [Group("powers", template, {"stage": "powers"}, {"exponent": self.powers.exponent}, units)]

    def units(self, done):
        return [start for start in range(0, SIZE, CHUNK) if f"i{start}" not in done["powers"]]

    def context(self):
        return self.powers

    @staticmethod
    def compute(model, powers: Powers, start: int):
        i = np.arange(start, start + CHUNK)
        yield Part("powers", f"i{start}", xr.Dataset({"value": ("i", i.astype(float) ** powers.exponent)},
                                                    coords={"i": i}))
        if start == powers.fail_after:
            raise RuntimeError("killed")
        return start


def new_store(path) -> Store:
    profile = profiles.load("tiny")
    return Store.create_or_open(path, profile, RECORD)


def values(store: Store) -> list[float]:
    return store.dataset("powers")["value"].values.tolist()


def test_a_new_stage_runs_resumes_and_is_skipped_when_complete(tmp_path, capsys):
    store = new_store(tmp_path / "s.zarr")
    with pytest.raises(RuntimeError, match="killed"):
        run_stage(PowersStage(Powers(2, fail_after=2)), store, None, RECORD)
    assert store.done("powers") == {"i0", "i2"} and not store.group_attrs("powers")["complete"]
    assert store.group_state("powers").state == "partial"
    run_stage(PowersStage(Powers(2)), store, None, RECORD)
    assert values(store) == [0, 1, 4, 9, 16, 25] and store.group_attrs("powers")["complete"]
    assert run_stage(PowersStage(Powers(2)), store, None, RECORD) is False
    assert "powers: already complete" in capsys.readouterr().err


def test_a_changed_setting_or_input_remakes_the_group(tmp_path):
    store = new_store(tmp_path / "s.zarr")
    run_stage(PowersStage(Powers(2)), store, None, RECORD)
    run_stage(PowersStage(Powers(3)), store, None, RECORD)  # another exponent: the group is remade
    assert values(store) == [0, 1, 8, 27, 64, 125]
    # A stage reading another group goes stale when that group is remade, and its rerun remakes it.
    store.declare("base", xr.Dataset({"x": ("j", np.zeros(2))}), provenance(profiles.load("tiny"), RECORD),
                  settings={"version": 1})
    store.finish("base")
    reader = PowersStage(Powers(2), reads=("base",))
    run_stage(reader, store, None, RECORD)
    store.declare("base", xr.Dataset({"x": ("j", np.zeros(3))}), provenance(profiles.load("tiny"), RECORD),
                  settings={"version": 2})
    store.finish("base")
    assert store.group_state("powers").state == "stale"
    assert run_stage(reader, store, None, RECORD) is True
    assert store.group_state("powers").state == "complete" and values(store) == [0, 1, 4, 9, 16, 25]


def test_a_new_stage_on_dask_workers_equals_the_serial_run(tmp_path, scheduler):
    import cloudpickle

    from repro.executor import DaskExecutor

    address, client = scheduler
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    try:
        serial, workers = new_store(tmp_path / "serial.zarr"), new_store(tmp_path / "workers.zarr")
        run_stage(PowersStage(Powers(2)), serial, None, RECORD)
        run_stage(PowersStage(Powers(2)), workers, None, RECORD, executor=DaskExecutor(client))
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert values(serial) == values(workers) and workers.group_attrs("powers")["complete"]


def test_the_pipeline_and_the_commands_come_from_the_registry():
    assert {step.stage for step in stages.PIPELINE} == set(stages.STAGES)
    listed = CliRunner().invoke(main, ["--help"]).output
    for name, entry in stages.STAGES.items():
        assert name in listed
        shown = CliRunner().invoke(main, [name, "--help"]).output
        assert all(option.flags[0] in shown for option in entry.options)
        assert ("--profile" in shown) == entry.takes_profile

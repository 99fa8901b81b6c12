"""Scale-out on Dask: stores made on workers equal the serial ones, array for array; a worker killed
mid-unit changes nothing; a cluster that cannot be reached, or cannot see the store, is one line, exit 2.

One LocalCluster of two worker processes (conftest's ``scheduler``) serves the tests through
``--scheduler``; the fault test starts its own with ``--local-workers 2``, since its workers must carry
the fault variables. The whole pipeline on workers is compared in test_pipeline.py."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr
from click.testing import CliRunner

from repro import executor, profiles
from repro.cli import main
from repro.errors import UserError
from repro.store import FAULT_ENV, FAULT_ONCE_ENV, Store

from test_natural import write_profile

pytestmark = pytest.mark.slow
REPRO = Path(sys.executable).parent / "repro"


def assert_equal_stores(first: Path, second: Path, groups=None) -> None:
    a, b = Store(first), Store(second)
    groups = groups or a.groups()
    assert groups and set(groups) <= set(b.groups())
    for group in groups:
        xr.testing.assert_identical(a.dataset(group).load().drop_attrs(), b.dataset(group).load().drop_attrs())
        assert a.done(group) == b.done(group), group
        for key in ("complete", "settings_digest"):
            assert a.group_attrs(group).get(key) == b.group_attrs(group).get(key), (group, key)
    assert not b.check()


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_natural_shards_spread_over_workers_merge_to_the_serial_top_k(tmp_path, image_folder, scheduler):
    address, _ = scheduler
    profile = write_profile(tmp_path / "profile.toml", image_folder)  # 12 images, 3 shards
    invoke("natural", "--profile", profile, "--store", tmp_path / "serial.zarr")
    invoke("natural", "--profile", profile, "--store", tmp_path / "workers.zarr", "--scheduler", address)
    assert_equal_stores(tmp_path / "serial.zarr", tmp_path / "workers.zarr", ["natural", "image_cache"])
    assert len(Store(tmp_path / "workers.zarr").done("natural")) == 3 + 1  # shards and the merged top-k


def test_a_worker_killed_mid_unit_leaves_the_store_equal(tmp_path):
    profile = tmp_path / "tiny-here.toml"
    profile.write_text('base = "tiny"\nname = "tiny"\n')
    arguments = ["fz", "--profile", profile, "--blocks", "1.1", "--store"]
    invoke(*arguments, tmp_path / "serial.zarr")
    token = tmp_path / "killed-once"
    environment = {**os.environ, FAULT_ENV: "unit-written", FAULT_ONCE_ENV: str(token)}
    run = subprocess.run([str(REPRO), *map(str, arguments), str(tmp_path / "workers.zarr"), "--local-workers", "2"],
                         env=environment, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert token.exists()  # one worker died with a unit's arrays written and its marker not
    assert_equal_stores(tmp_path / "serial.zarr", tmp_path / "workers.zarr", ["fz"])


def test_an_unreachable_scheduler_is_one_line_exit_2(tmp_path):
    result = CliRunner().invoke(main, ["fz", "--profile", "tiny", "--store", str(tmp_path / "s.zarr"),
                                       "--scheduler", "tcp://127.0.0.1:9"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in errors[0]


class BlindClient:
    """A cluster client whose one worker reads another file system than this process."""

    class scheduler:
        address = "tcp://10.0.0.1:8786"

    def run(self, function, *args):
        return {"tcp://10.0.0.2:40000": function("/elsewhere/store.zarr", *args[1:])}


def test_a_store_the_workers_cannot_see_is_one_line(tmp_path):
    store = Store.create_or_open(tmp_path / "s.zarr", profiles.load("tiny"), {"weights_sha256": "x"})
    store.declare("fz", xr.Dataset({"v": ("i", [1])}), {})
    with pytest.raises(UserError, match=r"not visible from 1 Dask worker\(s\).*share"):
        executor.DaskExecutor(BlindClient()).check_store(store.path, "fz")
    store.finish("fz")


def test_placement_comes_from_options_then_environment_then_profile(monkeypatch):
    profile = profiles.override(profiles.load("tiny"), {"run.local_workers": 3})
    monkeypatch.delenv(executor.LOCAL_WORKERS_ENV, raising=False)
    monkeypatch.delenv(executor.SCHEDULER_ENV, raising=False)
    assert executor.placement(profile).local_workers == 3
    # An option replaces the profile's choice whole: a scheduler is not mixed with its local workers.
    assert executor.placement(profile, scheduler="tcp://head:8786") == executor.Placement(0, "tcp://head:8786")
    monkeypatch.setenv(executor.LOCAL_WORKERS_ENV, "2")
    assert executor.placement(profile).local_workers == 2
    assert executor.placement(profile, local_workers=0).distributed is False
    assert executor.placement(profiles.load("paper"), local_workers=0).local_workers == 0
    monkeypatch.setenv(executor.LOCAL_WORKERS_ENV, "two")
    with pytest.raises(UserError, match="expected a number"):
        executor.placement(profile)
    # Where units run is never part of a result: the identity hash and group settings ignore it.
    assert profiles.identity_hash(profile) == profiles.identity_hash(profiles.load("tiny"))


def test_workers_compute_on_the_runs_kind_of_device(monkeypatch):
    import torch

    profile = profiles.load("tiny")
    assert executor.placement(profile, local_workers=2, device=torch.device("cpu")).device == "cpu"
    assert executor.placement(profile, local_workers=2, device="cuda:1").device == "cuda"
    # A worker builds the model once per preparation and device, and prepares it on its own device.
    seen = []

    def prepare(model, device):
        seen.append(device)
        return model

    monkeypatch.setattr(executor, "_MODELS", {})
    first = executor.worker_model(profile["model"], "", prepare, "cpu")
    assert executor.worker_model(profile["model"], "", prepare, "cpu") is first and seen == [torch.device("cpu")]
    assert next(first.parameters()).device == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            executor.worker_model(profile["model"], "", prepare, "cuda")
    # In process, the stage's model is prepared on the stage's device before the first unit.
    results = executor.Serial().map(lambda model, context, unit: (model, context, unit), [1, 2], context="c",
                                    model=first, device=torch.device("cpu"), prepare=prepare)
    assert [unit for _, _, unit in results] == [1, 2] and seen[-1] == torch.device("cpu")


def test_each_local_gpu_worker_sees_one_gpu():
    assert executor.gpu_worker_env(2, 2, None) == {"gpu-0": {"CUDA_VISIBLE_DEVICES": "0"},
                                                    "gpu-1": {"CUDA_VISIBLE_DEVICES": "1"}}
    assert executor.gpu_worker_env(4, 2, "3,5") == {"gpu-0": {"CUDA_VISIBLE_DEVICES": "3"},
                                                     "gpu-1": {"CUDA_VISIBLE_DEVICES": "5"}}
    assert list(executor.gpu_worker_env(1, 8, "")) == ["gpu-0"]


def test_the_run_table_is_typed_and_never_recorded(tmp_path):
    with pytest.raises(UserError, match="run.local_workers must be 0 or more"):
        profiles.override(profiles.load("tiny"), {"run.local_workers": -1})
    with pytest.raises(UserError, match="unknown setting run.workers"):
        profiles.override(profiles.load("tiny"), {"run.workers": 2})
    placed = profiles.override(profiles.load("tiny"), {"run.scheduler": "tcp://head:8786"})
    store = Store.create_or_open(tmp_path / "s.zarr", placed, {"weights_sha256": "x"})
    store.declare("fz", xr.Dataset({"v": ("i", [1])}), {})
    store.finish("fz")
    assert "run" not in Store(tmp_path / "s.zarr").profile  # a later stage on the store chooses its own
    assert executor.placement(Store(tmp_path / "s.zarr").profile, device="cpu").distributed is False

"""The FZ stage in this process against the same stage on N local Dask workers.

    python benchmarks/scaleout.py [--profile tiny] [--workers 2] [--steps N]

Every run makes the same store (checked array for array against the serial one). Reported per worker
count: the cluster's start-up (worker processes, imports), the stage's wall time and units/s once the
cluster is up (the first units also build each worker's model), the ratio serial time / distributed
time, and the Dask overhead per unit: the round trip of a unit that does nothing, submitted, scheduled,
run and collected the way the stage's units are. Recorded in ``benchmarks/results/scaleout.json`` with
the machine's load, since on a small shared machine the workers compete with everything else.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import xarray as xr

from repro import fz, profiles
from repro.executor import DaskExecutor, Placement, Serial
from repro.model import ModelSpec, load_model
from repro.store import Store


def nothing(model, context, unit) -> int:
    return unit


def timed(function):
    start = time.perf_counter()
    value = function()
    return time.perf_counter() - start, value


def run_stage(path: Path, profile, model, record, executor) -> float:
    store = Store.for_run(path, profile, record)
    seconds, _ = timed(lambda: fz.run(store, model, record, profile, executor=executor))
    return seconds


def same_store(first: Path, second: Path) -> bool:
    a, b = Store(first), Store(second)
    xr.testing.assert_identical(a.dataset("fz").load().drop_attrs(), b.dataset("fz").load().drop_attrs())
    return a.done("fz") == b.done("fz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--workers", default="2", help="worker counts, e.g. 1,2,4")
    parser.add_argument("--steps", type=int, help="FZ steps (default: the profile's)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one thread per worker process too: the comparison is per process
    profile = profiles.override(profiles.load(args.profile), {"fz.steps": args.steps})
    model, record = load_model(ModelSpec.from_profile(profile["model"]))
    results = {"profile": args.profile, "steps": int(profile["fz"]["steps"]), "cpu_count": os.cpu_count(),
               "load_average_1min_before": os.getloadavg()[0], "runs": []}
    with tempfile.TemporaryDirectory() as scratch:
        serial_path = Path(scratch) / "serial.zarr"
        serial = run_stage(serial_path, profile, model, record, Serial())
        units = len(Store(serial_path).done("fz"))
        results.update(units=units, serial_s=serial, serial_units_per_s=units / serial)
        print(f"{args.profile} FZ stage, {units} units of {results['steps']} steps, load {os.getloadavg()[0]:.2f}")
        print(f"  in-process: {serial:6.1f} s  {units / serial:6.2f} units/s")
        for workers in (int(n) for n in args.workers.split(",")):
            startup, executor = timed(lambda: DaskExecutor.start(Placement(local_workers=workers)))
            with executor:
                path = Path(scratch) / f"workers{workers}.zarr"
                seconds = run_stage(path, profile, model, record, executor)
                round_trip, _ = timed(lambda: executor.map(nothing, list(range(units)), context=None, model=None,
                                                           desc="no-op units"))
            equal = same_store(serial_path, path)
            run = {"workers": workers, "startup_s": startup, "stage_s": seconds, "units_per_s": units / seconds,
                   "ratio_serial_over_workers": serial / seconds, "overhead_per_unit_s": round_trip / units,
                   "store_equals_serial": equal, "load_average_1min": os.getloadavg()[0]}
            results["runs"].append(run)
            print(f"  {workers} worker(s): {seconds:6.1f} s  {units / seconds:6.2f} units/s  ratio {serial / seconds:.2f}"
                  f"  start-up {startup:.1f} s  Dask overhead {1000 * round_trip / units:.0f} ms/unit"
                  f"  store equal: {equal}  load {run['load_average_1min']:.2f}")
    out = Path(__file__).parent / "results" / "scaleout.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

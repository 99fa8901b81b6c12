"""What the toy network's stage widths cost the FZ stage: seconds per optimization step of every FZ of the
studied blocks (all channels, all seeds, each job as the stage batches it), for several stage widths and
forward sizes, measured side by side on random weights at the toy's image size.

    python benchmarks/fz_widths.py [--steps 6] [--repeats 3] [--seeds 3] [--ways 16-32-64-128:96,16-16-16-64:48]

A way is ``widths:micro_batch[:blocks]`` (blocks comma-free, e.g. ``2.0+2.1+3.0+3.1``; default: the toy
profile's). Each repeat times every way once, in turn (interleaved); medians are printed with the load and
the time relative to the first way. A random network costs what a trained one of its shape costs.
``--seeds 1`` times what the aliased comparison makes (one seed). Writes benchmarks/results/fz_widths.json
(``fz_widths-TAG.json`` with ``--tag TAG``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from repro import fz, profiles
from repro.fz_engine import fz_names, optimize
from repro.model import ModelSpec, load_model

RESULTS = Path(__file__).resolve().parent / "results"


def way_profile(base, text: str, seeds: int):
    widths, micro, *blocks = text.split(":")
    changes = {"model.weights": "random:0", "model.weights_sha256": "", "fz.seeds": list(range(seeds)),
               "model.widths": [int(w) for w in widths.split("-")], "fz.micro_batch": int(micro)}
    if blocks:
        changes["model.blocks"] = blocks[0].split("+")
    return profiles.override(base, changes)


def stage_step_seconds(profile, steps: int) -> tuple[float, int, int]:
    """Seconds per step of the whole FZ stage (every job, all seeds), its FZ count and forwards per step."""
    model, _ = load_model(ModelSpec.from_profile(profile["model"]))
    prepared = fz.prepare(model)
    jobs = fz.plan(prepared, profile, fz.select(prepared, profile, None))
    seeds, micro = list(profile["fz"]["seeds"]), int(profile["fz"]["micro_batch"])
    seconds, count, forwards = 0.0, 0, 0
    for job in jobs:
        names = fz_names(profile, job.block, job.tap, job.channels, seeds, jitter=job.jitter)
        began = time.perf_counter()
        optimize(prepared, profile, names, steps=steps, trace_every=steps)
        seconds += time.perf_counter() - began
        count, forwards = count + len(names), forwards + -(-len(names) // micro)
    return seconds / steps, count, forwards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, help="FZ seeds per neuron (default: the toy profile's)")
    parser.add_argument("--tag", default="", help="name the result fz_widths-TAG.json")
    parser.add_argument("--ways", default="16-32-64-128:96,16-16-16-64:48,16-16-32-64:48,8-16-32-64:48:2.0+2.1+3.0+3.1")
    args = parser.parse_args()
    base = profiles.load("toy")
    seeds = args.seeds or len(base["fz"]["seeds"])
    ways = args.ways.split(",")
    load_before = os.getloadavg()
    times = {way: [] for way in ways}
    shape = {}
    for _ in range(args.repeats):
        for way in ways:
            seconds, count, forwards = stage_step_seconds(way_profile(base, way, seeds), args.steps)
            times[way].append(seconds)
            shape[way] = (count, forwards)
    load_after = os.getloadavg()
    first = statistics.median(times[ways[0]])
    print(f"toy FZ stage at {base['model']['image_size']} px, {seeds} seeds, {args.steps} steps, {args.repeats} interleaved repeats, "
          f"torch threads {torch.get_num_threads()}, load before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    rows = []
    for way in ways:
        median = statistics.median(times[way])
        count, forwards = shape[way]
        rows.append({"way": way, "seconds_per_step": round(median, 4), "fzs": count, "forwards_per_step": forwards,
                     "relative_to_first": round(median / first, 3), "repeats": [round(t, 4) for t in times[way]]})
        print(f"  {way:<36} {median:6.3f} s/step  {count:5d} FZs  {forwards:3d} forwards/step  "
              f"{median / first:5.2f}x the time of {ways[0]}")
    RESULTS.mkdir(exist_ok=True)
    record = {"command": f"python benchmarks/fz_widths.py --steps {args.steps} --repeats {args.repeats} --seeds {seeds} "
                         f"--ways {args.ways}" + (f" --tag {args.tag}" if args.tag else ""), "seeds": seeds, "threads": torch.get_num_threads(), "load_before": load_before, "load_after": load_after, "ways": rows}
    name = "fz_widths" + (f"-{args.tag}" if args.tag else "")
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()

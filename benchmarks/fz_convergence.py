"""How converged are a profile's FZs? Center activation at the profile's steps against 4x the steps.

For every FZ job of the profile (each tensor at its jitter, so every tap is covered), a subset of channels
is optimized for ``4 * steps`` steps with the profile's recipe (optionally another lr); the image after
``steps`` steps is kept on the way (Adam's trajectory does not depend on how many steps follow, so it is
exactly the image a ``steps``-step run saves). Both images are saved as uint8 and measured as the stages
measure them (``fz.measure``: the tap's true center value). Per tap the figure is the median over channels
(and seeds) of activation(steps) / activation(4 * steps), over channels whose 4x activation is positive.

    python benchmarks/fz_convergence.py --profile toy                      # the profile's recipe
    python benchmarks/fz_convergence.py --profile toy --steps 128 --lr 0.1 --channels 16 --seeds 0 1 2

Writes a JSON record and a markdown table under benchmarks/results/ (the name carries profile, steps, lr).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from repro import fz, profiles
from repro.model import ModelSpec, load_model

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 0.9


def spread(values: np.ndarray, count: int) -> list[int]:
    """``count`` channels evenly spread over ``values`` (all when fewer)."""
    values = list(values)
    if len(values) <= count:
        return values
    return [values[int(i)] for i in np.linspace(0, len(values) - 1, count).round()]


def converge_job(model, profile, job: fz.Job, channels: list[int], seeds: list[int], steps: int) -> dict:
    """Activation at ``steps`` and at ``4 * steps`` for the channels of one job, per seed."""
    early, late = [], []
    for seed in seeds:
        result = fz.visualize(model, profile, job.block, job.tap, channels, jitter=job.jitter,
                              seed=fz.chunk_seed(seed, job.block, job.tap, job.jitter, 0), steps=4 * steps,
                              snapshot_at=[steps])
        early.append(fz.measure(model, profile, job.block, job.tap, fz.to_uint8(result.snapshots[steps]), channels))
        late.append(fz.measure(model, profile, job.block, job.tap, fz.to_uint8(result.images), channels))
    early, late = np.concatenate(early), np.concatenate(late)
    reached = late > 0
    ratios = early[reached] / late[reached]
    return {"labels": [f"{b} {t}" for b, t in job.labels], "jitter": job.jitter, "channels": channels,
            "median_ratio": float(np.median(ratios)) if len(ratios) else float("nan"),
            "ratio_q25": float(np.quantile(ratios, 0.25)) if len(ratios) else float("nan"),
            "ratio_of_medians": float(np.median(early) / np.median(late)) if np.median(late) > 0 else float("nan"),
            "fzs": int(len(early)), "positive_at_4x": int(reached.sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="toy")
    parser.add_argument("--steps", type=int, help="the steps to judge (default: the profile's fz.steps)")
    parser.add_argument("--lr", type=float, help="Adam's learning rate (default: the profile's fz.lr)")
    parser.add_argument("--channels", type=int, default=16, help="channels per job, evenly spread")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--blocks", nargs="+", help="only these blocks (default: the profile's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    profile = profiles.load(args.profile)
    overrides = {key: value for key, value in (("fz.steps", args.steps), ("fz.lr", args.lr)) if value is not None}
    profile = profiles.override(profile, overrides) if overrides else profile
    steps, lr = int(profile["fz"]["steps"]), float(profile["fz"]["lr"])
    model, _ = load_model(ModelSpec.from_profile(profile["model"]))
    engine = fz.prepare(model)
    jobs = fz.plan(engine, profile, fz.select(engine, profile, args.blocks))
    load_before = os.getloadavg()
    started = time.perf_counter()
    rows = []
    for job in jobs:
        began = time.perf_counter()
        row = converge_job(engine, profile, job, spread(job.channels, args.channels), args.seeds, steps)
        row["seconds"] = round(time.perf_counter() - began, 1)
        rows.append(row)
        print(f"{' = '.join(row['labels']):>12}  jitter {job.jitter:2d}  median a({steps})/a({4 * steps}) "
              f"{row['median_ratio']:.3f}  (q25 {row['ratio_q25']:.3f}, {row['fzs']} FZs, {row['seconds']} s)",
              flush=True)
    record = {"profile": args.profile, "steps": steps, "lr": lr, "steps_compared": 4 * steps,
              "channels_per_job": args.channels, "seeds": args.seeds, "threads": args.threads,
              "load_before": load_before, "load_after": os.getloadavg(),
              "seconds": round(time.perf_counter() - started, 1), "target": TARGET,
              "worst_tap_median": min(row["median_ratio"] for row in rows), "jobs": rows,
              "command": "python benchmarks/fz_convergence.py --profile {} --steps {} --lr {} --channels {} --seeds {}"
                         .format(args.profile, steps, lr, args.channels, " ".join(map(str, args.seeds)))}
    RESULTS.mkdir(exist_ok=True)
    stem = f"fz_convergence-{args.profile}-steps{steps}-lr{lr:g}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [f"# FZ convergence: {args.profile}, {steps} vs {4 * steps} steps, lr {lr:g}", "",
             f"`{record['command']}`; load average before {load_before[0]:.2f}, after {record['load_after'][0]:.2f}; "
             f"{record['seconds']} s.", "",
             "| taps | jitter | median a(n)/a(4n) | q25 | FZs |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {' = '.join(r['labels'])} | {r['jitter']} | {r['median_ratio']:.3f} | {r['ratio_q25']:.3f} | {r['fzs']} |"
              for r in rows]
    lines += ["", f"Worst tap: {record['worst_tap_median']:.3f} (target ≥ {TARGET})."]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"worst tap median {record['worst_tap_median']:.3f}; written {RESULTS / stem}.json/.md")


if __name__ == "__main__":
    main()

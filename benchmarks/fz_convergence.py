"""How converged are a profile's FZs? Center activation at the profile's steps against 4x the steps.

For every FZ job of the profile (each tensor at its jitter, so every tap is covered), a subset of channels
is optimized by the stage's engine (``repro.fz_engine.optimize``, FZs by name) for ``4 * steps`` steps with
the profile's recipe (optionally another lr); the images after ``steps / 4``, ``steps / 2``, ``steps`` and
``2 * steps`` steps are kept on the way (an FZ's trajectory does not depend on how many steps follow, so each
is exactly the image a run of that many steps saves). Every image is saved as uint8 and measured as the
stages measure it (``fz.measure``: the tap's true center value). Per tap the figure is the median over
channels (and seeds) of activation(n) / activation(4 n), over channels whose 4 n activation is positive, for
n = steps (the verdict) and for n = steps / 4 and steps / 2 (the trend).

The forwards run at the job's size (``fz.micro_batch`` = the number of FZs), which changes the names'
recipe digest and so their draws, not the recipe.

    python benchmarks/fz_convergence.py --profile toy                      # the profile's recipe
    python benchmarks/fz_convergence.py --profile toy --steps 1024 --channels 4 --blocks 3.0 3.1

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
from repro.fz_engine import fz_names, optimize
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
    """Activations after steps/4, steps/2, steps, 2 steps and 4 steps for the channels of one job, all seeds."""
    chosen = profiles.override(profile, {"fz.micro_batch": len(channels) * len(seeds)})
    names = fz_names(chosen, job.block, job.tap, channels, seeds, jitter=job.jitter)
    marks = [steps // 4, steps // 2, steps, 2 * steps]
    result = optimize(model, chosen, names, steps=4 * steps, snapshot_at=marks)
    images = {**result.snapshots, 4 * steps: result.images}
    rows = list(channels) * len(seeds)
    activation = {n: np.asarray(fz.measure(model, profile, job.block, job.tap, fz.to_uint8(images[n]), rows))
                  for n in images}
    late = activation[4 * steps]
    reached = late > 0

    def ratio(early: int, final: int) -> np.ndarray:
        keep = activation[final] > 0
        return activation[early][keep] / activation[final][keep]

    trend = {f"{n}/{4 * n}": float(np.median(ratio(n, 4 * n))) for n in (steps // 4, steps // 2, steps)}
    ratios = ratio(steps, 4 * steps)
    return {"labels": [f"{b} {t}" for b, t in job.labels], "jitter": job.jitter, "channels": channels,
            "median_ratio": float(np.median(ratios)) if len(ratios) else float("nan"),
            "ratio_q25": float(np.quantile(ratios, 0.25)) if len(ratios) else float("nan"),
            "trend": trend, "median_activation": {str(n): float(np.median(a)) for n, a in activation.items()},
            "fzs": int(len(late)), "positive_at_4x": int(reached.sum())}


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
        trend = "  ".join(f"{k} {v:.3f}" for k, v in row["trend"].items())
        print(f"{' = '.join(row['labels']):>12}  jitter {job.jitter:2d}  median a(n)/a(4n): {trend}  "
              f"(q25 at n={steps}: {row['ratio_q25']:.3f}, {row['fzs']} FZs, {row['seconds']} s)", flush=True)
    record = {"profile": args.profile, "steps": steps, "lr": lr, "steps_compared": 4 * steps,
              "channels_per_job": args.channels, "seeds": args.seeds, "threads": args.threads,
              "load_before": load_before, "load_after": os.getloadavg(),
              "seconds": round(time.perf_counter() - started, 1), "target": TARGET,
              "worst_tap_median": min(row["median_ratio"] for row in rows), "jobs": rows,
              "command": "python benchmarks/fz_convergence.py --profile {} --steps {} --lr {} --channels {} --seeds {}{}"
                         .format(args.profile, steps, lr, args.channels, " ".join(map(str, args.seeds)),
                                 f" --blocks {' '.join(args.blocks)}" if args.blocks else "")}
    RESULTS.mkdir(exist_ok=True)
    # A profile given as a path is named by its file (results/fz_convergence-toy_narrow-...).
    stem = f"fz_convergence-{Path(args.profile).stem}-steps{steps}-lr{lr:g}" + (f"-blocks{'-'.join(args.blocks)}" if args.blocks else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [f"# FZ convergence: {Path(args.profile).stem}, {steps} vs {4 * steps} steps, lr {lr:g}", "",
             f"`{record['command']}`; load average before {load_before[0]:.2f}, after {record['load_after'][0]:.2f}; "
             f"{record['seconds']} s.", "",
             f"| taps | jitter | {' | '.join(f'median a({k})' for k in rows[0]['trend'])} | q25 (n={steps}) | FZs |",
             "| --- | --- | " + "--- | " * len(rows[0]["trend"]) + "--- | --- |"]
    lines += [f"| {' = '.join(r['labels'])} | {r['jitter']} | {' | '.join(f'{v:.3f}' for v in r['trend'].values())} "
              f"| {r['ratio_q25']:.3f} | {r['fzs']} |" for r in rows]
    lines += ["", f"Worst tap: {record['worst_tap_median']:.3f} (target ≥ {TARGET})."]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"worst tap median {record['worst_tap_median']:.3f}; written {RESULTS / stem}.json/.md")


if __name__ == "__main__":
    main()

"""bfloat16 autocast against float32 on a profile's FZ recipe: speed, and the FZs' float32-measured activations.

For a few taps, the same channels and seed are optimized with ``fz.precision`` float32 and bfloat16 (and
channels_last, with and without bf16), each ``--repeats`` times, interleaved; the time is the median. Each FZ set
is measured as the stages measure FZs (``fz.measure``: the tap's true center value, in float32, on the saved
uint8 image). The gap is the relative difference of the mean over channels from the float32 FZs'; the per-channel
ratio is the median of bf16 / float32 over channels.

    python benchmarks/fz_precision.py --profile toy --taps 2.0:I,3.0:B,3.1:O --channels 32

Writes benchmarks/results/fz_precision-<profile>.json and .md.
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
VARIANTS = {"float32": ({}, False), "bfloat16": ({"autocast_dtype": torch.bfloat16}, False),
            "channels_last": ({"channels_last": True}, True),
            "bfloat16 + channels_last": ({"autocast_dtype": torch.bfloat16, "channels_last": True}, True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="toy")
    parser.add_argument("--taps", default="2.0:I,3.0:B,3.1:O")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--steps", type=int, help="default: the profile's fz.steps")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    profile = profiles.override(profiles.load(args.profile), {"fz.precision": "float32"})
    steps = args.steps or int(profile["fz"]["steps"])
    model, _ = load_model(ModelSpec.from_profile(profile["model"]))
    float32_model, last_model = fz.prepare(model, "cpu"), fz.prepare(model, "cpu", channels_last=True)
    channels = list(range(args.channels))
    load_before, rows = os.getloadavg(), []
    for item in args.taps.split(","):
        block, tap = item.split(":")
        jitter = fz.tap_jitter(float32_model, profile, block, tap)
        seconds, activations = {name: [] for name in VARIANTS}, {}
        for _ in range(args.repeats):
            for name, (options, last) in VARIANTS.items():
                started = time.perf_counter()
                result = fz.visualize(last_model if last else float32_model, profile, block, tap, channels,
                                      jitter=jitter, seed=fz.chunk_seed(0, block, tap, jitter, 0), steps=steps, **options)
                seconds[name].append(time.perf_counter() - started)
                activations[name] = fz.measure(float32_model, profile, block, tap, fz.to_uint8(result.images), channels)
        base, reference = float(np.median(seconds["float32"])), activations["float32"]
        for name in VARIANTS:
            median = float(np.median(seconds[name]))
            gap = float(abs(activations[name].mean() - reference.mean()) / abs(reference.mean()))
            rows.append({"tap": f"{block} {tap}", "variant": name, "seconds": seconds[name], "median_s": median,
                         "speedup": base / median, "gap": gap,
                         "per_channel_ratio": float(np.median(activations[name] / reference))})
            print(f"{block} {tap} {name:25} {median:6.1f} s  x{base / median:.2f}  gap {gap:.1%}  "
                  f"per-channel ratio {rows[-1]['per_channel_ratio']:.3f}", flush=True)
    command = (f"python benchmarks/fz_precision.py --profile {args.profile} --taps {args.taps} "
               f"--channels {args.channels} --steps {steps} --repeats {args.repeats} --threads {args.threads}")
    record = {"command": command, "steps": steps, "load_before": load_before, "load_after": os.getloadavg(), "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"fz_precision-{args.profile}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [f"# bfloat16 autocast against float32: profile {args.profile}, {steps} steps", "",
             f"`{command}`; 1-minute load average {load_before[0]:.1f} before, {record['load_after'][0]:.1f} after "
             "(time varies with load; the variants are interleaved).", "",
             "| tap | variant | median s | speed-up | gap of mean activation | median per-channel ratio |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['tap']} | {r['variant']} | {r['median_s']:.1f} | {r['speedup']:.2f}x | {r['gap']:.1%} | "
              f"{r['per_channel_ratio']:.3f} |" for r in rows]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

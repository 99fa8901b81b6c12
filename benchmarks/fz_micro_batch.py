"""What a fixed forward size costs: FZ-steps per second of the engine (``repro.fz_engine.optimize``) at
``fz.micro_batch`` 16, 32 and 64, against Lucent's chain as the stage ran it before (``repro.fz.visualize``,
one draw for the batch), on the toy network, one batch of 64 FZs of one tap, measured side by side.

    python benchmarks/fz_micro_batch.py [--steps 8] [--repeats 5] [--taps 2.1:B,3.1:B]

Each repeat runs every way once, in turn (interleaved); the medians are printed with the machine's load.
The toy profile's precision (bfloat16) as the stage runs it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from repro import fz, profiles
from repro.fz_engine import fz_names, optimize
from repro.model import ModelSpec, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fzs", type=int, default=64)
    parser.add_argument("--taps", default="2.1:B,3.1:B")
    parser.add_argument("--ways", default="staged:drawn:16,staged:canvas:64,fused:canvas:64",
                        help="engine ways to time, each resample:forward_size:micro_batch")
    args = parser.parse_args()
    profile = profiles.override(profiles.load("toy"), {"fz.steps": args.steps})
    model, _ = load_model(ModelSpec.from_profile(profile["model"]))
    prepared = fz.prepare(model)
    print(f"toy network, {args.fzs} FZs, {args.steps} steps, {args.repeats} interleaved repeats, "
          f"torch threads {torch.get_num_threads()}, load before {os.getloadavg()}")
    for label in args.taps.split(","):
        block, tap = label.split(":")
        jitter = fz.jitter_of(profile, block, tap)
        channels = list(range(min(args.fzs, fz.select(model, profile, [block]).layout.width(block))))
        seeds = range(-(-args.fzs // len(channels)))
        ways = {"Lucent's chain (visualize)": lambda: fz.visualize(
            prepared, profile, block, tap, (channels * len(seeds))[:args.fzs], jitter=jitter, seed=0)}
        for way in args.ways.split(","):
            resample, forward_size, micro = way.split(":")
            chosen = profiles.override(profile, {"fz.micro_batch": int(micro), "fz.resample": resample,
                                                 "fz.forward_size": forward_size})
            names = fz_names(chosen, block, tap, channels, seeds, jitter=jitter)[:args.fzs]
            ways[f"engine {resample}, {forward_size}, micro {micro}"] = (
                lambda chosen=chosen, names=names: optimize(prepared, chosen, names))
        times = {way: [] for way in ways}
        for _ in range(args.repeats):
            for way, run in ways.items():
                started = time.perf_counter()
                run()
                times[way].append(time.perf_counter() - started)
        base = statistics.median(times["Lucent's chain (visualize)"])
        print(f"\n{block} {tap} (jitter {jitter})")
        for way, seconds in times.items():
            median = statistics.median(seconds)
            print(f"  {way:<34} {args.fzs * args.steps / median:7.1f} FZ-steps/s   {median / base:5.2f}x the time of "
                  f"Lucent's chain")
    print(f"\nload after {os.getloadavg()}")


if __name__ == "__main__":
    main()

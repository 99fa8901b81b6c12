"""FZ step time per family of blocks: seconds per optimization step of a batch of FZs (its forward, backward
and Adam update, transforms included) with ``repro.fz_engine.optimize``, random weights, on this machine.

    python benchmarks/fz_families.py [--fzs 8] [--steps 3] [--tiny-steps 30] [--repeats 2] [--sizes tiny,full]

Each case is a profile and one tap at mid depth, at the profile's image size, resample, forward size,
precision and jitter, with ``fz.micro_batch`` set to the batch (so every forward runs exactly the batch, no
blank filler). One warm-up step, then the median of ``--repeats`` runs of ``--steps`` steps.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from repro import fz, profiles
from repro.fz_engine import fz_names, optimize
from repro.model import ModelSpec, family_of, load_model

# (size, profile, block, tap): a tap at mid depth of each family, tiny and full.
CASES = (
    ("tiny", "tiny", "3.1", "B"),
    ("tiny", "tiny_convnext", "3.1", "B"),
    ("tiny", "tiny_vit", "1.attn", "B"),
    ("full", "paper", "3.1", "B"),
    ("full", "convnext_tiny", "3.8", "B"),
    ("full", "vit_b_16", "7.mlp", "B"),
)


def step_seconds(profile_name: str, block: str, tap: str, fzs: int, steps: int, repeats: int) -> dict:
    profile = profiles.override(profiles.load(profile_name), {"model.weights": "random:0", "fz.micro_batch": fzs})
    model, _ = load_model(ModelSpec.from_profile(profile["model"]))
    prepared = fz.prepare(model)
    jitter = fz.jitter_of(profile, block, tap)
    names = fz_names(profile, block, tap, list(range(fzs)), [0], jitter=jitter)
    optimize(prepared, profile, names, steps=1)  # warm-up: allocations, kernels chosen
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        optimize(prepared, profile, names, steps=steps)
        times.append((time.perf_counter() - started) / steps)
    return {"family": family_of(model).name, "arch": profile["model"]["arch"], "px": profile["model"]["image_size"],
            "jitter": jitter, "precision": profile["fz"]["precision"], "seconds": statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fzs", type=int, default=8, help="FZs per batch")
    parser.add_argument("--steps", type=int, default=3, help="steps per run at the full sizes")
    parser.add_argument("--tiny-steps", type=int, default=30, help="steps per run at the tiny sizes")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sizes", default="tiny,full")
    args = parser.parse_args()
    sizes = args.sizes.split(",")
    print(f"{args.fzs} FZs per batch, {args.tiny_steps} (tiny) or {args.steps} (full) steps x {args.repeats} "
          f"repeats, torch threads "
          f"{torch.get_num_threads()}, load average before {os.getloadavg()}\n")
    print("| size | profile | family | arch | px | tap | jitter | precision | s per step | s per FZ-step |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size, name, block, tap in CASES:
        if size not in sizes:
            continue
        steps = args.tiny_steps if size == "tiny" else args.steps
        r = step_seconds(name, block, tap, args.fzs, steps, args.repeats)
        print(f"| {size} | {name} | {r['family']} | {r['arch']} | {r['px']} | {block}:{tap} | {r['jitter']} | "
              f"{r['precision']} | {r['seconds']:.3f} | {r['seconds'] / args.fzs:.4f} |", flush=True)
    print(f"\nload average after {os.getloadavg()}")


if __name__ == "__main__":
    main()

"""Does a larger or decaying learning rate reach the papers' lr-0.05 optimum in fewer steps?

For a few taps, 8 channels (0, 4, ..., 28) are optimized with the profile's recipe (float32) at lr 0.05 for
``--reference-steps`` steps (the reference), and with other constant or cosine-decayed learning rates for
fewer steps. Each FZ is measured as the stages measure them (``fz.measure``); the figure is the median over
channels of activation / reference activation. A recipe that converges faster "to the same optimum" reaches
a ratio near 1 in few steps; one that plateaus lower does not.

    python benchmarks/fz_lr.py --profile toy --taps 3.0:B,2.0:I

Writes benchmarks/results/fz_lr-<profile>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from repro import fz, profiles
from repro.model import ModelSpec, load_model
from repro.optvis import param as lucent_param
from repro.optvis import transform as lucent_transform

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = [(0.5, 128, "cosine"), (0.2, 128, "cosine"), (0.5, 256, "cosine"), (0.2, 256, "cosine"),
            (0.05, 256, "constant"), (0.5, 128, "constant"), (0.5, 512, "constant")]


def optimize(model, profile, block: str, tap: str, channels: list[int], lr: float, steps: int, schedule: str):
    """The profile's FZ recipe with Adam at ``lr``, constant or cosine-decayed to 2 % of it over ``steps``."""
    jitter = fz.tap_jitter(model, profile, block, tap)
    index = torch.as_tensor(channels)
    with fz.seeded(fz.chunk_seed(0, block, tap, jitter, 0)):
        params, image_f = lucent_param.image(int(profile["model"]["image_size"]), batch=len(channels),
                                             decorrelate=True, fft=True)
        optimizer = torch.optim.Adam(params, lr=lr)
        decay = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=lr * 0.02)
                 if schedule == "cosine" else None)
        transform = lucent_transform.compose(fz.transforms(profile, jitter) + [fz.normalizer(profile)])
        for _ in range(steps):
            optimizer.zero_grad()
            (-fz.tap_values(model, transform(image_f()), block, tap, index).sum()).backward()
            optimizer.step()
            if decay is not None:
                decay.step()
        images = fz.to_uint8(image_f().detach())
    return fz.measure(model, profile, block, tap, images, channels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="toy")
    parser.add_argument("--taps", default="3.0:B,2.0:I")
    parser.add_argument("--reference-steps", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    profile = profiles.override(profiles.load(args.profile), {"fz.precision": "float32"})
    model, _ = load_model(ModelSpec.from_profile(profile["model"]))
    engine = fz.prepare(model, "cpu")
    channels, rows, load_before = list(range(0, 32, 4)), [], os.getloadavg()
    for item in args.taps.split(","):
        block, tap = item.split(":")
        reference = optimize(engine, profile, block, tap, channels, 0.05, args.reference_steps, "constant")
        for lr, steps, schedule in VARIANTS:
            reached = optimize(engine, profile, block, tap, channels, lr, steps, schedule)
            rows.append({"tap": item, "lr": lr, "steps": steps, "schedule": schedule,
                         "median_ratio": float(np.median(reached / reference))})
            print(f"{block} {tap} lr {lr} {schedule} {steps} steps: {rows[-1]['median_ratio']:.3f} of lr 0.05 "
                  f"at {args.reference_steps}", flush=True)
    command = f"python benchmarks/fz_lr.py --profile {args.profile} --taps {args.taps} --reference-steps {args.reference_steps}"
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"fz_lr-{args.profile}"
    stem.with_suffix(".json").write_text(json.dumps({"command": command, "load_before": load_before, "rows": rows}, indent=1) + "\n")
    lines = [f"# Learning rate and schedule against lr 0.05 at {args.reference_steps} steps: {args.profile}", "",
             f"`{command}`", "", "| tap | lr | schedule | steps | median activation / reference |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['tap']} | {r['lr']} | {r['schedule']} | {r['steps']} | {r['median_ratio']:.3f} |" for r in rows]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""Per-image FZ transforms (``repro.fz_transforms``, ``repro.fz_engine``) against Lucent's chain.

(a) ``timing``: one step's transform at batch 64 on the toy profile's sizes (64 px; jitter 0: scale and
    rotation; jitter 4: pad, jitter, scale, rotation, jitter, crop), forward and backward (the gradient
    reaches the image, as in an FZ step). Lucent: ``repro.fz.transforms`` composed, one draw for the batch;
    per-image: ``draw`` (one generator per image) + ``apply``, fused (one resample) and staged (Lucent's
    two to four). Interleaved repeats, medians.
(b) ``distribution``: the FZs' activations, new engine against Lucent at batch 1 (``repro.fz.visualize``
    one channel at a time: Lucent's param.image, transforms and Adam), same recipe and steps, float32, on
    the toy network. Per tap, the first ``--fzs`` channels: Lucent with seed 0 and with seed 1 (the
    seed-to-seed spread of Lucent itself, the yardstick) and the engine with seed 0, fused and staged. Activation: the tap's
    center value on the saved uint8 image (``repro.fz.measure``), as the stage stores it. Reports quantiles,
    two-sample KS tests (engine vs Lucent, Lucent vs Lucent) and per-channel ratios.

    python benchmarks/fz_transforms.py timing --repeats 15
    python benchmarks/fz_transforms.py distribution --steps 256 --fzs 32 --taps 2.1:B
    # rotation only: one resample in Lucent's chain too
    python benchmarks/fz_transforms.py distribution --steps 256 --fzs 32 --taps 2.1:B --override 'fz.random_scale=[1.0]'
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from repro import fz, fz_engine, profiles
from repro import fz_transforms as ft
from repro.device import lucent_on
from repro.model import ModelSpec, load_model
from repro.optvis import transform as lucent_transform

CPU = torch.device("cpu")


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def lucent_step(profile, jitter):
    chain = lucent_transform.compose(fz.transforms(profile, jitter))
    return lambda images: chain(images)


def engine_step(profile, jitter, batch, resample):
    schedule = ft.Schedule.from_profile(profile, jitter)
    generators = [ft.fz_generator(f"benchmark/{i}") for i in range(batch)]
    return lambda images: ft.apply(images, schedule, ft.draw(schedule, generators), resample).canvas


def timing(args) -> dict:
    profile = profiles.load("toy")
    size = int(profile["model"]["image_size"])
    results = {"load_before": load_average(), "batch": args.batch, "image_size": size, "repeats": args.repeats,
               "threads": torch.get_num_threads(), "jitters": {}}
    for jitter in (0, 4):
        ways = {"lucent": lucent_step(profile, jitter),
                **{f"per_image_{mode}": engine_step(profile, jitter, args.batch, mode) for mode in ft.RESAMPLES}}
        seconds = {way: {"forward": [], "forward_backward": []} for way in ways}
        images = torch.rand(args.batch, 3, size, size, requires_grad=True)
        with lucent_on(CPU):
            for way, step in ways.items():  # warm-up
                step(images).sum().backward()
            for _ in range(args.repeats):
                for way, step in ways.items():  # interleaved
                    start = time.perf_counter()
                    with torch.no_grad():
                        step(images)
                    seconds[way]["forward"].append(time.perf_counter() - start)
                    start = time.perf_counter()
                    images.grad = None
                    step(images).sum().backward()
                    seconds[way]["forward_backward"].append(time.perf_counter() - start)
        results["jitters"][jitter] = {way: {kind: statistics.median(values) * 1e3 for kind, values in kinds.items()}
                                      for way, kinds in seconds.items()}
    results["load_after"] = load_average()
    return results


def toy_model(profile):
    model, _ = load_model(ModelSpec.from_profile(profile["model"]))
    return fz.prepare(model, CPU)


def quantiles(values: np.ndarray) -> dict:
    return {f"q{int(q * 100):02d}": float(np.quantile(values, q)) for q in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)}


def distribution(args) -> dict:
    overrides = {"fz.precision": "float32", **{key: json.loads(value) for key, value in
                                                 (item.split("=", 1) for item in args.override)}}
    profile = profiles.override(profiles.load("toy"), overrides)
    model = toy_model(profile)
    results = {"load_before": load_average(), "steps": args.steps, "fzs": args.fzs, "overrides": overrides,
               "taps": {}}
    for label in args.taps:
        block, tap = label.split(":")
        jitter = fz.jitter_of(profile, block, tap)
        channels = list(range(args.fzs))
        activations, seconds = {}, {}
        for seed in (0, 1):
            start = time.perf_counter()
            images = torch.cat([fz.visualize(model, profile, block, tap, [c], jitter=jitter, seed=seed,
                                             steps=args.steps, autocast_dtype=None).images for c in channels])
            seconds[f"lucent_seed{seed}"] = time.perf_counter() - start
            activations[f"lucent_seed{seed}"] = fz.measure(model, profile, block, tap, fz.to_uint8(images), channels)
        for mode in args.resamples:
            start = time.perf_counter()
            names = fz_engine.fz_names(profile, block, tap, channels, [0], jitter=jitter, resample=mode)
            result = fz_engine.optimize(model, profile, names, steps=args.steps, resample=mode)
            seconds[f"engine_{mode}_seed0"] = time.perf_counter() - start
            activations[f"engine_{mode}_seed0"] = fz.measure(model, profile, block, tap, fz.to_uint8(result.images),
                                                             channels)
        lucent0, lucent1 = activations["lucent_seed0"], activations["lucent_seed1"]
        entry = {"jitter": jitter, "seconds": seconds,
                 "quantiles": {way: quantiles(values) for way, values in activations.items()}}
        # Per channel: an engine's FZ against Lucent's, and Lucent's second seed against its first (the yardstick).
        for way in ["lucent_seed1"] + [f"engine_{mode}_seed0" for mode in args.resamples]:
            values = activations[way]
            for reference, against in (("lucent0", lucent0), ("lucent1", lucent1)):
                if way == "lucent_seed1" and reference == "lucent1":
                    continue
                entry[f"{way}_vs_{reference}"] = {
                    "ks_statistic": float(stats.ks_2samp(values, against).statistic),
                    "ks_pvalue": float(stats.ks_2samp(values, against).pvalue),
                    "median_ratio": float(np.median(values / against)),
                    "wilcoxon_pvalue": float(stats.wilcoxon(values, against).pvalue)}
        entry["activations"] = {way: values.tolist() for way, values in activations.items()}
        results["taps"][label] = entry
        print(json.dumps({label: {k: v for k, v in results["taps"][label].items() if k != "activations"}}, indent=1),
              flush=True)
    results["load_after"] = load_average()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["timing", "distribution"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--fzs", type=int, default=32)
    parser.add_argument("--taps", nargs="+", default=["2.1:B", "3.1:B"])
    parser.add_argument("--resamples", nargs="+", default=list(ft.RESAMPLES), choices=ft.RESAMPLES)
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=JSON",
                        help='profile settings for both sides, e.g. fz.random_scale=[1.0] (distribution)')
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    results = timing(args) if args.part == "timing" else distribution(args)
    text = json.dumps(results, indent=1)
    print(text if args.part == "timing" else json.dumps({k: v for k, v in results.items() if k != "taps"}))
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

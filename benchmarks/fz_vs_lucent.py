"""The FZ engine against Lucent's ``render_vis`` run the way the authors ran it, on the same FZs.

Lucent (the authors' way): one channel at a time, the full resnet18 with unfrozen weights, the objective
``objectives.neuron("layer1_1_bn2", c)``, the paper's transforms and normalisation, Adam lr 0.05. Each
channel gets a fresh copy of the model (Lucent's hooks stay on a model after ``render_vis``; the authors
ran one process per channel). Copying and process start-up are not timed, which favours Lucent.

The engine (``repro.fz``): all channels of the tap in one batch (chunked by ``fz.channel_batch``), the
forward stopped after the tap, frozen weights, true tap values. Same recipe, same number of steps.

Three ways side by side (the default mode), FZ-steps per second, each run interleaved ``--repeats`` times:
Lucent's ``render_vis`` as above (float32: Lucent has no autocast); the Lucent chain on a batch with one draw
for the batch (``repro.fz.visualize``, the engine before FZs were made by name); and the per-name engine
(``repro.fz_engine.optimize``) under the profile's own recipe (resample, forward size, micro batch,
precision). Beside them: FLOPs per FZ-step of the engine (``torch.utils.flop_counter``, forward and backward
of the cut network) and the GFLOP/s it achieves, against this machine's measured rate for a plain 3x3
convolution at the engine's precision.

    # toy profile (its weights, 64 px) and the paper profile (random weights, 224 px; few steps)
    python benchmarks/fz_vs_lucent.py --profile toy --taps 1.1:B,2.1:B,3.1:B --channels 32 --steps 16
    python benchmarks/fz_vs_lucent.py --profile paper --taps 1.1:B,3.1:B --channels 8 --steps 4

Random resnet18 weights, 224 px (the paper profile), so nothing is downloaded. Other modes:

    # CPU comparison: 16 channels of 1.1 B and 3.1 B, 32 steps each way, time and ratio per tap
    python benchmarks/fz_vs_lucent.py --autocast bf16
    # a GPU machine: the whole tap 3.1 B (256 channels, 2560 steps) and an extrapolation of the paper's sweep
    python benchmarks/fz_vs_lucent.py --device cuda --full-tap
    # bf16 autocast and channels_last, checked against float32 FZs of the same seeds
    python benchmarks/fz_vs_lucent.py --device cuda --autocast bf16 --channels-last

The bf16 / channels_last check: each FZ's tap value measured in float32 on its saved uint8 image; the mean
over channels must be within ``--tolerance`` (relative) of the float32 FZs' mean.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from lucent.optvis import objectives, render
from lucent.optvis import param as lucent_param

from repro import device as devices
from repro import fz, profiles
from repro.fz_engine import PRECISIONS, fz_names, optimize
from repro.model import ModelSpec, load_model

PAPER_FZ_COUNT = 4672  # the paper's sweep: 7 blocks x 3 taps, a tensor shared by two taps counted once


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, function: Callable[[], object]) -> tuple[float, object]:
    synchronize(device)
    start = time.perf_counter()
    result = function()
    synchronize(device)
    return time.perf_counter() - start, result


def lucent_layer(block: str, tap: str) -> str:
    """Lucent's hook name for a tap that is a module's output (the ones the authors could name)."""
    stage, index = block.split(".")
    if tap == "B":
        return f"layer{stage}_{index}_bn2"
    if tap == "I" and index == "0" and stage != "1":
        return f"layer{stage}_0_downsample_1"
    raise SystemExit(f"tap {block} {tap} is no module output; Lucent comparisons take B taps and I of 2.0/3.0/4.0")


def lucent_fzs(model, profile, block, tap, channels, steps, device) -> float:
    """Seconds for Lucent to make one FZ per channel, one channel at a time (model copies untimed)."""
    size = int(profile["model"]["image_size"])
    transforms = fz.transforms(profile, fz.jitter_of(profile, block, tap))
    total = 0.0
    for channel in channels:
        unfrozen = copy.deepcopy(model).to(device).eval().requires_grad_(True)
        with devices.lucent_on(device):
            seconds, _ = timed(device, lambda: render.render_vis(
                unfrozen, objectives.neuron(lucent_layer(block, tap), channel),
                param_f=lambda: lucent_param.image(size, decorrelate=True, fft=True),
                optimizer=lambda params: torch.optim.Adam(params, lr=float(profile["fz"]["lr"])),
                transforms=list(transforms), thresholds=(steps,), show_image=False, progress=False))
        total += seconds
    return total


def engine_fzs(prepared, profile, block, tap, channels, steps, device, **options) -> tuple[float, np.ndarray]:
    """Seconds for the engine to make the FZs, and the images (uint8) it made."""
    jitter = fz.jitter_of(profile, block, tap)
    batch = int(profile["fz"]["channel_batch"])
    images, seconds = [], 0.0
    for k in range(0, len(channels), batch):
        chunk = channels[k:k + batch]
        seed = fz.chunk_seed(int(profile["fz"]["seeds"][0]), block, tap, jitter, k // batch)
        elapsed, result = timed(device, lambda: fz.visualize(prepared, profile, block, tap, chunk, jitter=jitter,
                                                             seed=seed, steps=steps, **options))
        seconds += elapsed
        images.append(fz.to_uint8(result.images))
    return seconds, np.concatenate(images)


def named_engine_fzs(prepared, profile, block, tap, channels, steps, device) -> tuple[float, int]:
    """Seconds for the per-name engine to make one FZ per channel and seed of the profile, as the stage packs
    a tap's seeds into one batch, and the number of FZs made."""
    names = fz_names(profile, block, tap, channels, profile["fz"]["seeds"], jitter=fz.jitter_of(profile, block, tap))
    seconds, _ = timed(device, lambda: optimize(prepared, profile, names, steps=steps))
    return seconds, len(names)


def flops_per_fz_step(prepared, profile, block, tap, channels) -> float:
    """FLOPs of one engine step per FZ (the cut network's forward and backward; blank fill images included,
    as they are computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    names = fz_names(profile, block, tap, channels, profile["fz"]["seeds"], jitter=fz.jitter_of(profile, block, tap))
    with FlopCounterMode(display=False) as counter:
        optimize(prepared, profile, names, steps=1)
    return counter.get_total_flops() / len(names)


def conv_rate(device, dtype, repeats: int = 10) -> float:
    """GFLOP/s of a plain 3x3 convolution (64 -> 64 channels, 32 images of 32 x 32) forward and backward
    under autocast at ``dtype`` (None: float32): what this machine's convolutions reach."""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).to(device)
    x = torch.randn(32, 64, 32, 32, device=device, requires_grad=True)
    flops = 3 * 2 * 32 * 64 * 32 * 32 * 64 * 9  # forward, and backward for input and weight

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            conv(x).float().sum().backward()

    step()
    seconds = [timed(device, step)[0] for _ in range(repeats)]
    return flops / float(np.median(seconds)) / 1e9


def three_ways(args, model, profile, device) -> None:
    """Lucent's render_vis and the one-draw chain (one FZ per channel), and the per-name engine (one per
    channel and seed of the profile, packed as the stage packs them), interleaved, per tap."""
    prepared = fz.prepare(model, device)
    dtype = PRECISIONS[profile["fz"]["precision"]]
    rate = conv_rate(device, dtype)
    load_before = os.getloadavg()
    print(f"{args.profile}: {args.channels} channels x {args.steps} steps per tap, {profile['model']['image_size']} px,"
          f" device {device}, {torch.get_num_threads()} threads, medians of {args.repeats} interleaved runs; "
          f"engine recipe: {profile['fz']['resample']}, forward size {profile['fz']['forward_size']}, micro batch "
          f"{profile['fz']['micro_batch']}, {profile['fz']['precision']}; 3x3 conv rate {rate:.0f} GFLOP/s; "
          f"load {load_before}")
    # Each way: (seconds, FZs made) for the channels.
    ways = {"lucent": lambda b, t, c, n: (lucent_fzs(model, profile, b, t, c, n, device), len(c)),
            "chain": lambda b, t, c, n: (engine_fzs(prepared, profile, b, t, c, n, device)[0], len(c)),
            "engine": lambda b, t, c, n: named_engine_fzs(prepared, profile, b, t, c, n, device)}
    rows = []
    for block, tap in parse_taps(args.taps):
        channels = list(range(args.channels))
        for way in ways.values():  # kernel set-up charged to neither side
            way(block, tap, channels[:1], 1)
        times, made = {name: [] for name in ways}, {}
        for _ in range(args.repeats):
            for name, way in ways.items():
                seconds, made[name] = way(block, tap, channels, args.steps)
                times[name].append(seconds)
        rate_of = {name: made[name] * args.steps / float(np.median(values)) for name, values in times.items()}
        flops = flops_per_fz_step(prepared, profile, block, tap, channels)
        row = {"block": block, "tap": tap, "seconds": times, "fzs": made, "fz_steps_per_second": rate_of,
               "engine_vs_lucent": rate_of["engine"] / rate_of["lucent"],
               "engine_vs_chain": rate_of["engine"] / rate_of["chain"], "gflop_per_fz_step": flops / 1e9,
               "engine_gflop_per_second": flops * rate_of["engine"] / 1e9}
        rows.append(row)
        print(f"{block} {tap}: FZ-steps/s lucent {rate_of['lucent']:.1f}, chain {rate_of['chain']:.1f}, engine "
              f"{rate_of['engine']:.1f} ({row['engine_vs_lucent']:.2f}x Lucent, {row['engine_vs_chain']:.2f}x the chain);"
              f" {flops / 1e9:.3f} GFLOP per FZ-step, {row['engine_gflop_per_second']:.0f} GFLOP/s "
              f"({row['engine_gflop_per_second'] / rate:.0%} of the conv rate)", flush=True)
    if args.json:
        args.json.write_text(json.dumps({
            "mode": "three_ways", "profile": args.profile, "taps": rows, "conv_gflop_per_second": rate,
            "load_before": load_before, "load_after": os.getloadavg(),
            "recipe": {key: profile["fz"][key] for key in ("resample", "forward_size", "micro_batch", "precision")},
            "settings": {k: str(v) for k, v in vars(args).items()}}, indent=1) + "\n")


def parse_taps(text: str) -> list[tuple[str, str]]:
    return [tuple(item.split(":")) for item in text.split(",")]


def amp_options(args) -> dict:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.autocast)
    return {"autocast_dtype": dtype, "channels_last": args.channels_last}


def compare(args, model, profile, device) -> None:
    """Lucent vs the engine (float32, and the fast options if asked) per tap, ``--repeats`` times each,
    interleaved so load changes hit both sides alike; the figures are the medians."""
    prepared = fz.prepare(model, device)
    fast_model = fz.prepare(model, device, channels_last=args.channels_last)
    fast = args.autocast or args.channels_last
    print(f"{args.channels} channels x {args.steps} steps per tap, {profile['model']['image_size']} px, "
          f"device {device}, {torch.get_num_threads()} CPU threads, median of {args.repeats} runs")
    print(f"{'tap':8} {'lucent s':>10} {'engine s':>10} {'ratio':>7}" + (f" {'fast s':>8} {'ratio':>7}" if fast else ""))
    rows, all_faster, all_within = [], True, True
    for block, tap in parse_taps(args.taps):
        channels = list(range(args.channels))
        # One untimed step each first, so kernel set-up is not charged to either side.
        lucent_fzs(model, profile, block, tap, channels[:1], 1, device)
        engine_fzs(prepared, profile, block, tap, channels, 1, device)
        times = {"lucent": [], "engine": [], "fast": []}
        for _ in range(args.repeats):
            times["lucent"].append(lucent_fzs(model, profile, block, tap, channels, args.steps, device))
            seconds, images = engine_fzs(prepared, profile, block, tap, channels, args.steps, device)
            times["engine"].append(seconds)
            if fast:
                seconds, fast_images = engine_fzs(fast_model, profile, block, tap, channels, args.steps, device,
                                                  **amp_options(args))
                times["fast"].append(seconds)
        median = {side: float(np.median(values)) if values else None for side, values in times.items()}
        ratio = median["lucent"] / median["engine"]
        all_faster &= ratio >= 1.0
        line = f"{block} {tap:4} {median['lucent']:10.1f} {median['engine']:10.1f} {ratio:6.2f}x"
        row = {"block": block, "tap": tap, "seconds": times, "median": median, "ratio_vs_lucent": ratio}
        if fast:
            row["fast_ratio_vs_lucent"] = median["lucent"] / median["fast"]
            line += f" {median['fast']:8.1f} {row['fast_ratio_vs_lucent']:6.2f}x"
        print(line, flush=True)
        if fast:
            row["gap"] = activation_gap(prepared, profile, block, tap, channels, images, fast_images)
            within = row["gap"] <= args.tolerance
            all_within &= within
            print(f"  {fast_label(args)}: mean tap value on saved FZs within {row['gap']:.1%} of float32's "
                  f"({'within' if within else 'OUTSIDE'} the {args.tolerance:.0%} tolerance)")
        rows.append(row)
    print("engine never slower: " + ("yes" if all_faster else "NO"))
    if fast:
        print("fast options within tolerance: " + ("yes" if all_within else "NO"))
    if args.json:
        args.json.write_text(json.dumps({"mode": "compare", "taps": rows, "load_average": os.getloadavg(),
                                         "settings": {k: str(v) for k, v in vars(args).items()}}, indent=1) + "\n")


def fast_label(args) -> str:
    return (args.autocast or "float32") + (" channels_last" if args.channels_last else "")


def activation_gap(float32_model, profile, block, tap, channels, reference_images, images) -> float:
    """Relative gap between the mean float32-measured tap values of two FZ sets of the same seeds."""
    reached = fz.measure(float32_model, profile, block, tap, images, channels)
    reference = fz.measure(float32_model, profile, block, tap, reference_images, channels)
    return float(abs(reached.mean() - reference.mean()) / max(abs(reference.mean()), 1e-6))


def per_step_seconds(prepared, profile, job, device, probe_steps, **options) -> float:
    """Seconds per step of one full chunk of this job (after one warm-up step)."""
    chunk = fz.chunks(job, int(profile["fz"]["channel_batch"]))[0]
    run = lambda steps: fz.visualize(prepared, profile, job.block, job.tap, chunk, jitter=job.jitter, seed=0,
                                     steps=steps, **options)
    run(1)
    seconds, _ = timed(device, lambda: run(probe_steps))
    return seconds / probe_steps


def full_tap(args, model, profile, device) -> None:
    """Tap 3.1 B in full, then the paper's whole sweep extrapolated from short probes of every tap."""
    options = amp_options(args)
    prepared = fz.prepare(model, device, channels_last=args.channels_last)
    steps = int(profile["fz"]["steps"])  # the sweep estimate is always for the paper's steps
    width, tap_steps = args.channels or 256, args.steps or steps
    seconds, _ = engine_fzs(prepared, profile, "3.1", "B", list(range(width)), tap_steps, device, **options)
    print(f"3.1 B: {width} FZs x {tap_steps} steps in {seconds:.1f} s ({seconds / width:.2f} s per FZ), "
          f"channel_batch {profile['fz']['channel_batch']}, device {device}")
    if args.autocast or args.channels_last:
        print("(fast options on; the float32 comparison runs in the default mode)")
    jobs = fz.plan(model, profile, fz.select(model, profile))
    batch = int(profile["fz"]["channel_batch"])
    sweep = 0.0
    for job in jobs:
        per_step = per_step_seconds(prepared, profile, job, device, args.probe_steps, **options)
        estimate = per_step * steps * len(fz.chunks(job, batch))
        sweep += estimate
        print(f"  {job.title:14} jitter {job.jitter:2d}: {len(job.channels):3d} FZs ~ {estimate / 60:6.1f} min")
    count = sum(len(job.channels) for job in jobs)
    print(f"engine, whole sweep ({count} FZs; the paper's {PAPER_FZ_COUNT} plus 256 because 3.0 O and 3.1 I "
          f"differ in jitter): ~{sweep / 3600:.2f} h")
    lucent_step = lucent_fzs(model, profile, "3.1", "B", [0], args.probe_steps, device) / args.probe_steps
    lucent_sweep = lucent_step * steps * PAPER_FZ_COUNT
    print(f"Lucent one channel at a time (full model every time, so the same cost for any tap): "
          f"{lucent_step * 1000:.0f} ms/step -> {PAPER_FZ_COUNT} FZs ~{lucent_sweep / 3600:.1f} h")
    if args.json:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        args.json.write_text(json.dumps({
            "device": name, "paper_sweep_minutes": sweep / 60, "speedup_vs_lucent": lucent_sweep / sweep,
            "full_tap_seconds": seconds, "full_tap": {"block": "3.1", "tap": "B", "channels": width, "steps": tap_steps},
            "lucent_seconds_per_step": lucent_step, "lucent_extrapolation": "one channel timed for --probe-steps "
            "steps, times steps times the paper's FZ count (the full model runs for every tap alike)",
            "settings": {key: str(value) for key, value in vars(args).items()}}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="paper", help="paper (random weights, 224 px) or toy (its weights)")
    parser.add_argument("--taps", default="1.1:B,3.1:B", help="BLOCK:TAP list (B taps, or I of a downsample block)")
    parser.add_argument("--channels", type=int, help="channels per tap, 0..N-1 (default 16; --full-tap: 256)")
    parser.add_argument("--steps", type=int, help="steps per FZ (default 32; --full-tap: the profile's 2560)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--channel-batch", type=int, help="the engine's chunk size (default: the profile's)")
    parser.add_argument("--full-tap", action="store_true", help="3.1 B whole (256 x 2560 steps) + sweep estimate")
    parser.add_argument("--probe-steps", type=int, default=20, help="steps per probe of the sweep estimate")
    parser.add_argument("--autocast", choices=["bf16", "fp16"], help="engine under autocast at this precision")
    parser.add_argument("--channels-last", action="store_true", help="engine with channels_last model and input")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side and tap (the median is quoted)")
    parser.add_argument("--tolerance", type=float, default=0.10,
                        help="relative gap allowed between fast-option and float32 mean tap values")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = profiles.load(args.profile)
    overrides = {"fz.channel_batch": args.channel_batch}
    if args.profile == "paper":
        overrides["model.weights"] = "random:0"  # nothing downloads
    profile = profiles.override(base, overrides)
    model, _ = load_model(ModelSpec.from_profile(profile["model"]))
    device = torch.device(args.device)
    if args.full_tap:
        full_tap(args, model, profile, device)
    elif args.autocast or args.channels_last:
        args.channels, args.steps = args.channels or 16, args.steps or 32
        compare(args, model, profile, device)
    else:
        args.channels, args.steps = args.channels or 16, args.steps or 32
        three_ways(args, model, profile, device)


if __name__ == "__main__":
    main()

"""FZ engine rates on one device, Lucent beside it, and the paper's sweep extrapolated from them.

Random resnet18 weights, the paper profile (224 px, 2560 steps, lr 0.05), so nothing is downloaded:

    python benchmarks/device/fz_sweep.py --device cuda --json OUT/fz_vs_lucent.json

1. Whole taps: 4.1 B (512 channels) and 1.1 B (64 channels), every chunk of ``fz.channel_batch`` images
   run for ``--tap-steps`` steps, in float32 and under bf16 autocast; seconds per step, and the bf16 FZs'
   mean tap value (measured in float32 on the saved images) against the float32 FZs' of the same seeds.
2. Lucent's ``render_vis`` (one channel at a time, full unfrozen model) for a few objectives: s per step.
3. The sweep: every job of the paper's blocks and taps (center neuron and whole channel), one chunk probed
   for ``--probe-steps`` steps after a warm-up step, times the chunks and the profile's steps. The paper's
   method is one FZ per neuron, so ``paper_sweep_minutes`` is one seed of both objectives.
4. When that is over ``--tune-over`` minutes: a small search over channel batch, bf16 autocast (only when
   step 1 found its values within ``--tolerance`` of float32's) and channels_last (precision and layout on two probe taps, then the batch on every tap wider than the
   default batch); the best setting's sweep is measured on every job like the default one.

Peak device memory (``torch.cuda.max_memory_allocated``) is recorded per part; none on the CPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fz_vs_lucent import activation_gap, engine_fzs, lucent_fzs  # noqa: E402
from fz_vs_lucent import per_step_seconds as probe  # noqa: E402

from repro import device as devices  # noqa: E402
from repro import fz, profiles  # noqa: E402
from repro.model import ModelSpec, load_model  # noqa: E402

PRECISION = {"float32": None, "bf16": torch.bfloat16}


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def with_settings(profile: dict, **fz_settings) -> dict:
    return profiles.override(profile, {f"fz.{key}": value for key, value in fz_settings.items()})


def whole_taps(args, model, profile, device) -> list[dict]:
    """Each whole tap in float32 and bf16: seconds per step over all its chunks, the bf16 value gap."""
    rows = []
    for block, width in zip(("4.1", "1.1"), args.tap_channels):
        channels = list(range(width))
        prepared = fz.prepare(model, device)
        engine_fzs(prepared, profile, block, "B", channels[:int(profile["fz"]["channel_batch"])], 1, device)
        images = {}
        for name, dtype in PRECISION.items():
            reset_peak(device)
            seconds, images[name] = engine_fzs(prepared, profile, block, "B", channels, args.tap_steps, device,
                                               autocast_dtype=dtype)
            rows.append({"block": block, "tap": "B", "channels": width, "precision": name,
                         "steps": args.tap_steps, "seconds": seconds, "seconds_per_step": seconds / args.tap_steps,
                         "fz_steps_per_second": width * args.tap_steps / seconds, "peak_memory_gib": peak_gib(device)})
            print(f"whole tap {block} B, {width} channels, {name}: {seconds / args.tap_steps * 1000:.1f} ms per step "
                  f"({width * args.tap_steps / seconds:.0f} FZ-steps/s)", flush=True)
        gap = activation_gap(prepared, profile, block, "B", channels, images["float32"], images["bf16"])
        rows[-1]["value_gap_vs_float32"] = gap
        print(f"  bf16 FZs' mean tap value within {gap:.1%} of float32's", flush=True)
    return rows


def lucent_rates(args, model, profile, device) -> list[dict]:
    rows = []
    for item in args.lucent:
        block, tap, channel = item.split(":")
        lucent_fzs(model, profile, block, tap, [int(channel)], 1, device)  # warm-up
        seconds = lucent_fzs(model, profile, block, tap, [int(channel)], args.lucent_steps, device)
        rows.append({"block": block, "tap": tap, "channel": int(channel), "steps": args.lucent_steps,
                     "seconds_per_step": seconds / args.lucent_steps})
        print(f"lucent render_vis {block} {tap} channel {channel}: {seconds / args.lucent_steps * 1000:.1f} ms per step",
              flush=True)
    return rows


def sweep(args, model, profile, device, jobs, *, precision="float32", channels_last=False,
          objectives=("neuron", "channel")) -> dict:
    """Minutes of the paper's sweep (one seed) under one setting, per job and objective."""
    prepared = fz.prepare(model, device, channels_last=channels_last)
    batch = int(profile["fz"]["channel_batch"])
    steps = int(profile["fz"]["steps"])
    options = {"autocast_dtype": PRECISION[precision], "channels_last": channels_last}
    reset_peak(device)
    rows, total = [], 0.0
    for objective in objectives:
        probed = with_settings(profile, objective=objective)
        for job in jobs:
            per_step = probe(prepared, probed, job, device, args.probe_steps, **options)
            minutes = per_step * steps * len(fz.chunks(job, batch)) / 60
            total += minutes
            rows.append({"job": job.title, "objective": objective, "jitter": job.jitter, "fzs": len(job.channels),
                         "chunks": len(fz.chunks(job, batch)), "seconds_per_step": per_step, "minutes": minutes})
    fzs = sum(len(job.channels) for job in jobs) * len(objectives)
    return {"channel_batch": batch, "precision": precision, "channels_last": channels_last, "steps": steps,
            "fzs": fzs, "minutes": total, "jobs": rows, "peak_memory_gib": peak_gib(device)}


def tune(args, model, profile, device, jobs, whole: list[dict], deadline: float) -> dict:
    """Precision and layout on two probe taps at the default batch, then the batch on the wide taps."""
    steps = int(profile["fz"]["steps"])
    tried = []
    probe_jobs = [job for job in jobs if job.labels[0] in {("1.1", "B"), ("4.1", "B")}] or jobs[:1]
    best_mode, best_cost = ("float32", False), None
    # bf16 only where the whole taps' bf16 FZs reached float32's values within the tolerance.
    gaps = [row["value_gap_vs_float32"] for row in whole if "value_gap_vs_float32" in row]
    allowed = [p for p in PRECISION if p == "float32" or (gaps and max(gaps) <= args.tolerance)]
    for precision in allowed:
        for channels_last in (False, True):
            if time.monotonic() > deadline:
                break
            prepared = fz.prepare(model, device, channels_last=channels_last)
            cost = sum(probe(prepared, profile, job, device, args.probe_steps, autocast_dtype=PRECISION[precision],
                             channels_last=channels_last) for job in probe_jobs)
            tried.append({"stage": "precision and layout", "precision": precision, "channels_last": channels_last,
                          "probe_jobs": [job.title for job in probe_jobs], "seconds_per_step": cost})
            if best_cost is None or cost < best_cost:
                best_mode, best_cost = (precision, channels_last), cost
    precision, channels_last = best_mode
    prepared = fz.prepare(model, device, channels_last=channels_last)
    default_batch = int(profile["fz"]["channel_batch"])
    wide = [job for job in jobs if len(job.channels) > default_batch]
    best_batch, best_minutes = default_batch, None
    for batch in [default_batch] + [b for b in args.batches if b > default_batch]:
        if time.monotonic() > deadline or not wide:
            break
        batched = with_settings(profile, channel_batch=batch)
        reset_peak(device)
        try:
            minutes = sum(probe(prepared, batched, job, device, args.probe_steps, autocast_dtype=PRECISION[precision],
                                channels_last=channels_last) * steps * len(fz.chunks(job, batch)) / 60 for job in wide)
        except torch.OutOfMemoryError:
            tried.append({"stage": "batch", "channel_batch": batch, "out_of_memory": True})
            torch.cuda.empty_cache()
            break
        tried.append({"stage": "batch", "channel_batch": batch, "precision": precision,
                      "channels_last": channels_last, "wide_taps_minutes": minutes, "peak_memory_gib": peak_gib(device)})
        if best_minutes is None or minutes < best_minutes:
            best_batch, best_minutes = batch, minutes
    return {"tried": tried, "bf16_allowed": "bf16" in allowed, "chosen": {"channel_batch": best_batch, "precision": precision,
                                       "channels_last": channels_last}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=224, help="image size (224: the paper's)")
    parser.add_argument("--tap-channels", default="512,64", help="channels of the whole taps 4.1 B and 1.1 B")
    parser.add_argument("--tap-steps", type=int, default=20, help="steps timed on each whole tap")
    parser.add_argument("--probe-steps", type=int, default=5, help="steps timed per probe of the sweep")
    parser.add_argument("--lucent", default="1.1:B:0,3.1:B:0,4.1:B:0", help="BLOCK:TAP:CHANNEL objectives")
    parser.add_argument("--lucent-steps", type=int, default=10)
    parser.add_argument("--channel-batch", type=int, help="the engine's chunk (default: the profile's, 64)")
    parser.add_argument("--tune-over", type=float, default=15.0, help="tune when the sweep takes longer (min)")
    parser.add_argument("--batches", default="128,256,512", help="channel batches the tuning tries")
    parser.add_argument("--tolerance", type=float, default=0.10,
                        help="bf16 is tuned over only when its whole-tap FZ values are within this of float32's")
    parser.add_argument("--budget-s", type=float, default=1e9, help="stop tuning after this many seconds")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    deadline = time.monotonic() + args.budget_s
    args.tap_channels = [int(n) for n in args.tap_channels.split(",")]
    args.batches = [int(n) for n in args.batches.split(",") if n]
    args.lucent = [item for item in args.lucent.split(",") if item]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = devices.resolve(args.device)
    overrides = {"model.weights": "random:0", "model.image_size": args.size}
    if args.channel_batch:
        overrides["fz.channel_batch"] = args.channel_batch
    profile = profiles.override(profiles.load("paper"), overrides)
    model, _ = load_model(ModelSpec.from_profile(profile["model"]))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"fz_sweep on {name}, torch {torch.__version__}, {args.size} px, channel_batch "
          f"{profile['fz']['channel_batch']}, {torch.get_num_threads()} CPU threads", flush=True)
    record = {"device": name, "torch": torch.__version__, "settings": {key: str(value) for key, value in vars(args).items()}}

    def write() -> None:
        if args.json:
            args.json.write_text(json.dumps(record, indent=1, default=str) + "\n")

    record["whole_taps"] = whole_taps(args, model, profile, device)
    write()
    record["lucent"] = lucent_rates(args, model, profile, device)
    write()
    jobs = fz.plan(model, profile, fz.select(model, profile))
    started = time.monotonic()
    default = sweep(args, model, profile, device, jobs)
    sweep_seconds = time.monotonic() - started
    lucent_step = float(np.mean([row["seconds_per_step"] for row in record["lucent"]])) if record["lucent"] else None
    lucent_minutes = lucent_step * default["steps"] * default["fzs"] / 60 if lucent_step else None
    record["sweep_default"] = default
    count = sum(len(job.channels) for job in jobs)
    print(f"paper sweep, one seed, {count} FZs per objective x 2 objectives: ~{default['minutes']:.1f} min "
          f"(channel_batch {default['channel_batch']}, float32; probed in {sweep_seconds:.0f} s)", flush=True)

    def conclude(best: dict) -> None:
        """The headline figures from the best sweep so far, written at once (a later part may be cut off)."""
        peaks = [row.get("peak_memory_gib") for row in record["whole_taps"]] + [default["peak_memory_gib"]]
        peaks += [row.get("peak_memory_gib") for row in record.get("tuning", {}).get("tried", [])]
        peaks += [record.get("sweep_tuned", {}).get("peak_memory_gib")]
        peaks = [p for p in peaks if p is not None]
        record.update({
            "paper_sweep_minutes": best["minutes"],
            "paper_sweep_minutes_default_settings": default["minutes"],
            "paper_sweep_minutes_all_profile_seeds": best["minutes"] * len(profile["fz"]["seeds"]),
            "speedup_vs_lucent": lucent_minutes / best["minutes"] if lucent_minutes else None,
            "lucent_sweep_minutes": lucent_minutes,
            "peak_memory_gib": max(peaks) if peaks else None,
            "sweep_settings": {"fz.channel_batch": best["channel_batch"], "precision": best["precision"],
                               "channels_last": best["channels_last"], "fz.steps": best["steps"],
                               "image_size": args.size, "fzs": best["fzs"], "seeds": 1},
            "extrapolation": "per job and objective: seconds per step of one full chunk (probe) x chunks x "
                             "fz.steps; Lucent: mean seconds per step of its objectives x fz.steps x the same FZ count",
        })
        write()

    conclude(default)
    best = default
    if default["minutes"] > args.tune_over and time.monotonic() < deadline:
        record["tuning"] = tune(args, model, profile, device, jobs, record["whole_taps"], deadline)
        chosen = record["tuning"]["chosen"]
        if chosen == {"channel_batch": default["channel_batch"], "precision": "float32", "channels_last": False}:
            record["tuning"]["note"] = "the default setting was the fastest tried"
        elif deadline - time.monotonic() < 1.5 * sweep_seconds:
            record["tuning"]["note"] = "no time left in --budget-s to measure the chosen setting's sweep"
        else:
            tuned = sweep(args, model, with_settings(profile, channel_batch=chosen["channel_batch"]), device, jobs,
                          precision=chosen["precision"], channels_last=chosen["channels_last"])
            record["sweep_tuned"] = tuned
            print(f"tuned ({chosen}): ~{tuned['minutes']:.1f} min", flush=True)
            if tuned["minutes"] < default["minutes"]:
                best = tuned
        conclude(best)
    if lucent_minutes:
        print(f"sweep ~{best['minutes']:.1f} min; Lucent one channel at a time ~{lucent_minutes:.0f} min: "
              f"{lucent_minutes / best['minutes']:.1f}x; peak memory {record['peak_memory_gib']}", flush=True)

if __name__ == "__main__":
    main()

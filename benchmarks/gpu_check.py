"""Every stage on a GPU against the same stage on the CPU, same seeds: prints pass/fail per stage.

Random resnet18 weights (nothing to download) at the paper's 224 px, a small ImageFolder of smooth random
JPEGs generated here, the paper profile otherwise (fewer blocks and steps so the CPU side stays short):

    python benchmarks/gpu_check.py --device cuda --out benchmarks/results/gpu_check_cuda.txt

What is compared, and how closely (the tolerances are part of the result):
* FZ engine: the FZs of the same channels and seeds on both devices, each measured in float32 on the CPU
  on its saved uint8 image. FZs are iterated optimisations, so float rounding moves the trajectories;
  the check is that the mean tap value agrees within --fz-tolerance (relative) and the per-channel values
  correlate (Pearson r >= 0.9). The CPU side runs in a child process with CUDA hidden, because Lucent's
  colour decorrelation always runs on CUDA when CUDA exists. A whole tap (3.1 B, 256 channels) on the
  GPU must raise its objective for every channel.
* natural: activations within rtol 1e-3 / atol 1e-4, top-9 images equal for >= 99 % of the channels.
* metrics (from the GPU's FZs, copied into the CPU store): mix and deltas within rtol 1e-3 / atol 1e-4,
  criteria equal for >= 99 % of the channels.
* ablate (given channel sets): top-1 accuracies within one image.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from repro import ablate, fz, metrics, natural, profiles
from repro import device as devices
from repro.model import ModelSpec, load_model
from repro.store import Store

FZ_TAPS = (("1.1", "B"), ("3.1", "B"))


def image_folder(root: Path, count: int, size: int, seed: int = 0) -> Path:
    """``count`` smooth random JPEGs in four classes (upsampled noise: natural-image-like statistics)."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        folder = root / f"n{index % 4:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        picture = Image.fromarray(coarse).resize((size + 32, size + 16), Image.BICUBIC)
        picture.save(folder / f"{index:05d}.JPEG", quality=90)
    return root


def check_profile(args, images: Path) -> dict:
    scale = args.size / 224  # --size below 224 shrinks every pixel setting with it (a quick trial run)
    seeds = {"fz.seeds": list(range(args.seeds))} if args.seeds else {}
    return profiles.override(profiles.load("paper"), {**seeds,
        "model.weights": "random:0", "model.blocks": ["1.1", "2.1"], "fz.steps": args.steps,
        "model.image_size": args.size, "natural.resize": round(256 * scale), "natural.crop": args.size,
        "stimulus.crop": args.size // 2, "stimulus.shrink": args.size // 2, "stimulus.pad": args.size // 4,
        "natural.images": str(images), "natural.batch_size": 20, "natural.shard_size": 20, "natural.workers": 2,
        "ablation.blocks": ["2.1"], "ablation.trials": 2, "ablation.max_draws": 6, "ablation.batch_size": 20,
    })


def fz_images(model, profile, device: torch.device, channels: list[int]) -> dict:
    prepared = fz.prepare(model, device)
    out = {}
    for block, tap in FZ_TAPS:
        result = fz.visualize(prepared, profile, block, tap, channels, jitter=fz.jitter_of(profile, block, tap), seed=0)
        out[f"{block}:{tap}"] = fz.to_uint8(result.images)
    return out


def reference_fz_part(args) -> None:
    """Child process (CUDA hidden): the CPU FZs, saved for the parent."""
    profile = check_profile(args, Path(args.images_dir))
    model, _ = load_model(ModelSpec.from_profile(profile["model"]))
    np.savez(args.save_to, **fz_images(model, profile, torch.device("cpu"), list(range(args.channels))))


def check_fz(args, model, profile, device, work: Path) -> tuple[bool, str]:
    channels = list(range(args.channels))
    tested = fz_images(model, profile, device, channels)
    saved = work / "reference_fz.npz"
    command = [sys.executable, __file__, "--part", "fz-reference", "--save-to", str(saved),
               "--images-dir", str(work / "images"), "--steps", str(args.steps), "--channels", str(args.channels),
               "--size", str(args.size)] + (["--seeds", str(args.seeds)] if args.seeds else [])
    subprocess.run(command, check=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    reference = np.load(saved)
    notes, ok = [], True
    for block, tap in FZ_TAPS:  # both measured by the CPU model, in float32
        key = f"{block}:{tap}"
        ours = fz.measure(model, profile, block, tap, tested[key], channels)
        theirs = fz.measure(model, profile, block, tap, reference[key], channels)
        gap = abs(ours.mean() - theirs.mean()) / max(abs(theirs.mean()), 1e-6)
        r = float(np.corrcoef(ours, theirs)[0, 1])
        ok &= gap <= args.fz_tolerance and r >= 0.9
        notes.append(f"{key} mean {ours.mean():.3f} vs {theirs.mean():.3f} (gap {gap:.1%}), r {r:.3f}")
    prepared = fz.prepare(model, device)
    whole = fz.visualize(prepared, profile, "3.1", "B", list(range(args.whole_tap)),
                         jitter=fz.jitter_of(profile, "3.1", "B"), seed=0)
    raised = float((whole.final_objective > whole.initial_objective).float().mean())
    ok &= raised >= 0.95  # the last step's objective is under its own random transform draw
    notes.append(f"3.1 B whole tap: objective raised for {raised:.0%} of {args.whole_tap} channels")
    return ok, "; ".join(notes)


def close(a, b, rtol=1e-3, atol=1e-4) -> bool:
    return bool(np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=rtol, atol=atol, equal_nan=True))


def run_stages(args, model, record, profile, device, store_path: Path, fz_from: Path | None) -> Store:
    store = Store.for_run(store_path, profile, record)
    natural.run(store, model, record, profile, device=device)
    if fz_from is None:
        fz.run(store, model, record, profile, device=device)
    else:
        shutil.copytree(fz_from / "fz", store_path / "fz")
    metrics.run(store, model, record, profile, device=device)
    ablate.run(store, model, record, profile, channel_sets={"2.1": list(range(0, 128, 4))}, device=device)
    return store


def compare_stores(tested: Store, reference: Store) -> list[tuple[str, bool, str]]:
    results = []
    a, b = tested.dataset("natural").load(), reference.dataset("natural").load()
    same_top = float((a.top_images == b.top_images).all("rank").mean())
    results.append(("natural", close(a.activation, b.activation) and same_top >= 0.99,
                    f"max |diff| {float(abs(a.activation - b.activation).max()):.2e}, top-9 equal {same_top:.1%}"))
    a, b = tested.dataset("metrics").load(), reference.dataset("metrics").load()
    numbers = all(close(a[name], b[name]) for name in ("mix", "up_delta", "down_delta", "scale_metric"))
    flags = float((a.invariant_interpreting == b.invariant_interpreting).mean())
    results.append(("metrics", numbers and flags >= 0.99,
                    f"mix max |diff| {float(abs(a.mix - b.mix).max()):.2e}, criteria equal {flags:.1%}"))
    a, b = tested.dataset("ablation").load(), reference.dataset("ablation").load()
    one_image = 100.0 / tested.dataset("image_cache").sizes["image"] + 1e-9
    gap = float(abs(a.accuracy - b.accuracy).max())
    results.append(("ablate", gap <= one_image, f"max top-1 gap {gap:.2f} points (one image = {one_image:.2f})"))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=40, help="generated JPEGs")
    parser.add_argument("--steps", type=int, default=16, help="FZ steps (both devices)")
    parser.add_argument("--channels", type=int, default=16, help="channels per tap in the FZ comparison")
    parser.add_argument("--fz-tolerance", type=float, default=0.05)
    parser.add_argument("--size", type=int, default=224, help="image size (224: the paper's)")
    parser.add_argument("--whole-tap", type=int, default=256, help="channels of the whole-tap run (3.1 B has 256)")
    parser.add_argument("--seeds", type=int, help="FZ seeds of the stage runs (default: the profile's three)")
    parser.add_argument("--out", type=Path, help="also write the report here (and a .json beside it)")
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--save-to", help=argparse.SUPPRESS)
    parser.add_argument("--images-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part == "fz-reference":
        reference_fz_part(args)
        return
    device = devices.resolve(args.device)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        images = image_folder(work / "images", args.images, args.size)
        profile = check_profile(args, images)
        model, record = load_model(ModelSpec.from_profile(profile["model"]))
        results = [("fz", *check_fz(args, model, profile, device, work))]
        tested = run_stages(args, model, record, profile, device, work / "tested.zarr", None)
        reference = run_stages(args, model, record, profile, torch.device("cpu"), work / "cpu.zarr", work / "tested.zarr")
        results += compare_stores(tested, reference)
    lines = [f"gpu_check: {device} against cpu, torch {torch.__version__}, "
             f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'no GPU'}"]
    lines += [f"{'PASS' if ok else 'FAIL'}  {stage:8} {detail}" for stage, ok, detail in results]
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(
            {"device": str(device), "results": [{"stage": s, "pass": ok, "detail": d} for s, ok, d in results],
             "settings": vars(args) | {"out": str(args.out)}}, indent=2, default=str))
    sys.exit(0 if all(ok for _, ok, _ in results) else 1)


if __name__ == "__main__":
    main()

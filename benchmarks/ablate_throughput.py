"""Throughput of the ablation loop against a plain model forward on the same cached images.

Both loops read the same uint8 squares from an image cache in a temporary store, crop and resize them to
the same scale and normalize them (``ablate.scaled_inputs``); the plain loop then calls ``model(x)``, the ablation loop
(``repro.ablate.evaluate``) evaluates every condition of one block (none, invariant, ``trials`` random
sets) in one fanned-out forward. Reported: images/s of each loop and the cost of one condition-image
relative to one plain image (target: at most 1.5).

    python benchmarks/ablate_throughput.py --images 200 --trials 10 --block 2.1 --scale 0.1
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torchvision.transforms.v2 import functional as TF

from repro import ablate, images, profiles
from repro.model import ModelSpec, block_widths, load_model
from repro.store import Store, labels


def cached_images(store: Store, n_images: int, resize: int, seed: int = 0) -> ablate.CachedImages:
    """Smooth random ``resize`` px squares with random labels, written to the store's image cache in
    ``repro.images``'s layout and opened as the ablation opens it."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.integers(0, 256, size=(n_images, 3, 8, 8), dtype=np.uint8))
    squares = TF.resize(coarse, [resize, resize], antialias=True).permute(0, 2, 3, 1).numpy()
    side = np.full(n_images, resize, dtype=np.int32)
    xr.Dataset(
        {"pixels": (("image", "y", "x", "rgb"), squares), "resized_height": (("image",), side),
         "resized_width": (("image",), side), "corrupt": (("image",), np.zeros(n_images, bool))},
        coords={"image": np.arange(n_images), "path": ("image", labels(f"n{i % 1000:08d}/val_{i:08d}.JPEG"
                                                                           for i in range(n_images))),
                "label": ("image", rng.integers(0, 1000, n_images))},
    ).to_zarr(str(store.path), group=images.CACHE_GROUP, mode="w", consolidated=False,
              encoding={"pixels": {"chunks": (50, resize, resize, 3)}})
    store.update_attrs(images.CACHE_GROUP, complete=True)
    return ablate.open_image_cache(store, ablate.Settings.from_profile(store.profile))


def timed(function, device: str = "cpu") -> float:
    start = time.perf_counter()
    function()
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def plain_pass(model, batches, crop_px, out_px, profile, device) -> None:
    with torch.inference_mode():
        for batch in batches:
            model(ablate.scaled_inputs(batch, crop_px, out_px, profile, device)).cpu()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--block", default="2.1")
    parser.add_argument("--trials", type=int, default=10, help="random sets: conditions = trials + 2")
    parser.add_argument("--set-size", type=int, default=23, help="channels per ablated set (2.1 has 23 in the paper)")
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    profile = profiles.override(profiles.load("paper"), {"model.weights": "random:0"})
    model, record = load_model(ModelSpec.from_profile(profile["model"]))
    model.to(args.device)
    settings = ablate.Settings.from_profile(profile)
    crop_px, out_px = settings.crop_px(args.scale), settings.natural.crop
    width = block_widths(model)[args.block]
    rng = np.random.default_rng(0)
    sets = [[], *(rng.choice(width, args.set_size, replace=False).tolist() for _ in range(args.trials + 1))]
    job = ablate.Job(args.block, ablate.condition_masks(sets, width), torch.rand(width))

    with tempfile.TemporaryDirectory() as folder:
        store = Store.create_or_open(Path(folder) / "bench.zarr", profile, record)
        cache = cached_images(store, args.images, settings.natural.resize)
        plain_pass(model, [cache.read(0, args.batch_size)], crop_px, out_px, profile, args.device)  # warm-up
        plain_s = timed(lambda: plain_pass(model, cache.batches(args.batch_size), crop_px, out_px, profile,
                                            args.device), args.device)
        ablation_s = timed(lambda: ablate.evaluate(model, cache.batches(args.batch_size), [job], crop_px, out_px,
                                                   profile, total=cache.count, desc="ablation"), args.device)

    conditions = len(sets)
    plain_ips = args.images / plain_s
    ablation_ips = args.images / ablation_s
    per_condition_ips = ablation_ips * conditions
    print(f"resnet18 (random init), {args.images} cached {settings.natural.resize} px images, batch {args.batch_size}, "
          f"scale {args.scale:.0%} ({crop_px} px -> {out_px} px), block {args.block}, {conditions} conditions, "
          f"{args.device}, {torch.get_num_threads()} torch threads")
    print(f"plain forward:   {plain_ips:8.2f} images/s  ({plain_s:.1f} s)")
    print(f"ablation loop:   {ablation_ips:8.2f} images/s with all {conditions} conditions  ({ablation_s:.1f} s)")
    print(f"                 {per_condition_ips:8.2f} condition-images/s")
    print(f"cost of one condition-image / one plain image: {plain_ips / per_condition_ips:.2f}x (target <= 1.5x)")
    if args.json:
        args.json.write_text(json.dumps({
            "device": args.device, "images": args.images, "batch_size": args.batch_size, "block": args.block,
            "conditions": conditions, "scale": args.scale, "plain_images_per_s": plain_ips,
            "ablation_images_per_s": ablation_ips, "condition_images_per_s": per_condition_ips,
            "condition_cost_vs_plain": plain_ips / per_condition_ips, "torch_threads": torch.get_num_threads(),
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if str(args.device).startswith("cuda")
            else None}, indent=1) + "\n")


if __name__ == "__main__":
    main()

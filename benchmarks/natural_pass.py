"""Natural-image stage: one pass for every tap against one full pass per tap (the authors' way).

    python benchmarks/natural_pass.py [--images 200] [--size 224] [--threads N] [--workers 0]

Both variants read the same generated ImageFolder (JPEGs about SIZE px, varied aspect ratios) with a
random-init resnet18 and the paper profile's eval transform, blocks and taps (7 blocks x 3 taps):

* one pass: ``repro.natural.run`` into a temporary store: each image decoded once, one forward stopped
  after the last block read, center neurons of every tap, the activation cube, the running top-9 and the
  decoded-image cache written shard by shard.
* per tap: for each of the 21 taps, a DataLoader with the eval transform (decoding every image again)
  and a full forward with a forward hook that clones the tap, keeping its center neurons; then each
  channel's top-9 by a full sort.

Each variant runs in its own process, so its peak resident memory (``ru_maxrss``) is its own; the
increase over the process's peak before the pass (imports and model loaded) is printed too.
Images/s = images / wall time of the whole variant (for the per-tap variant, all 21 passes); imports and
model loading are not timed.

    python benchmarks/natural_pass.py --memory 2000,20000 [--size 40]

Memory flat in the number of images: the one-pass variant alone at each count, its peak RSS, and the
growth per image between the smallest and largest count, recorded in
``benchmarks/results/natural_memory.json``. The network is the paper's resnet18 at the paper's shard
size (1,000 images) and every tap's full width, on small images (``natural.resize`` 37, ``crop`` 32) so
that tens of thousands of images pass in minutes; what grows with the image count does not depend on
the image size, what a shard holds does.

    python benchmarks/natural_pass.py --one-pass-only --device cuda --images 20000 --workers 12 \
        --batch-size 100 --shard-size 1000 --make-jobs 16 --decode-check 5000 --json OUT/natural_pass.json

A GPU machine: the one pass alone on the device, and whether it is decode-bound: the same DataLoader
(decoding and caching squares, the same workers) timed alone on the first N images, and the model alone
(the eval transform from cached squares and the forward to the last block read) on batches already in
memory. The pass is decode-bound when the loader alone is slower than the model alone.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_TAPS = 21


def make_folder(root: Path, count: int, size: int, seed: int = 0, jobs: int = 1) -> Path:
    """``count`` JPEGs in 10 class folders, short side ``size``, long side up to 1.5 x ``size``.

    ``jobs`` > 1 writes blocks of 1,000 images in that many processes, each block from its own seed (so
    the pictures differ from a one-process folder's)."""
    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        blocks = [(root, start, min(start + 1000, count), size, (seed, start)) for start in range(0, count, 1000)]
        with ProcessPoolExecutor(jobs) as pool:
            list(pool.map(_make_block, blocks))
        return root
    return _make_block((root, 0, count, size, seed))


def _make_block(task) -> Path:
    from PIL import Image

    root, first, stop, size, seed = task
    rng = np.random.default_rng(seed)
    for index in range(first, stop):
        folder = root / f"n{index % 10:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        long_side = int(size * rng.uniform(1.0, 1.5))
        width, height = (long_side, size) if index % 2 else (size, long_side)
        coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
        noisy = np.clip(np.asarray(image, dtype=np.int16) + rng.integers(-15, 16, (height, width, 3)), 0, 255)
        Image.fromarray(noisy.astype(np.uint8)).save(folder / f"img{index:05d}.JPEG", quality=90)
    return root


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def bench_profile(images: Path, workers: int, small: bool = False, batch_size: int | None = None,
                  shard_size: int | None = None) -> dict:
    from repro import profiles

    if small:  # the paper's shards and widths, small images
        overrides = {"natural.batch_size": 100, "natural.shard_size": 1000, "natural.resize": 37, "natural.crop": 32}
    else:
        overrides = {"natural.batch_size": batch_size or 50, "natural.shard_size": shard_size or 100}
    return profiles.override(profiles.load("paper"), {
        "model.weights": "random:0", "natural.images": str(images), "natural.workers": workers, **overrides})


def one_pass(model, record, profile: dict, scratch: Path, device: str = "cpu") -> None:
    from repro import natural
    from repro.store import Store

    store = Store.create_or_open(scratch / "bench.zarr", profile, record)
    natural.run(store, model, record, profile, device=device)


def decode_check(model, profile: dict, count: int, device) -> dict:
    """Images/s of the stage's loader alone (first ``count`` images) and of the model alone on its batches."""
    import torch
    from torch.utils.data import DataLoader

    from repro import images as imgs
    from repro import natural
    from repro.model import tap_layout

    settings = profile.natural
    found = imgs.find_images(settings.images)
    count = min(count, len(found))
    batches = natural._batches([(0, count)], settings.batch_size)
    loader = DataLoader(imgs.DecodedSquares(found, settings.resize), batch_sampler=batches,
                        num_workers=settings.workers)
    start = time.perf_counter()
    kept = []
    for _, squares, heights, widths, *_ in loader:
        if len(kept) < 3:
            kept.append((squares, heights, widths))
    loader_s = time.perf_counter() - start
    layout = tap_layout(model, profile["model"]["blocks"])
    placed = model.to(device).eval()
    rounds = max(1, min(20, count // settings.batch_size))

    def forward(squares, heights, widths):
        batch = natural.batch_center_values(placed, profile, layout, squares, heights, widths)
        return batch

    with torch.inference_mode():
        forward(*kept[0])  # warm-up
        start = time.perf_counter()
        for k in range(rounds):
            forward(*kept[k % len(kept)])
        model_s = time.perf_counter() - start
    loader_ips, model_ips = count / loader_s, rounds * settings.batch_size / model_s
    return {"loader_images": count, "loader_images_per_s": loader_ips, "model_images_per_s": model_ips,
            "loader_workers": settings.workers, "decode_bound": loader_ips < model_ips}


def tap_modules(model, blocks):
    """(block, tap, module, hook kind) the way a hook-based extractor reads each tap."""
    named = [(f"{stage}.{i}", block) for stage in range(1, 5) for i, block in enumerate(getattr(model, f"layer{stage}"))]
    where = {}
    for position, (name, block) in enumerate(named):
        where[(name, "B")] = (block.bn2, "output")
        where[(name, "O")] = (block.relu, "last input")  # the ReLU's last call gets bn2 + identity
        if block.downsample is not None:
            where[(name, "I")] = (block.downsample, "output")
        else:
            where[(name, "I")] = (named[position - 1][1].relu, "last input")
    return [(block, tap, *where[(block, tap)]) for block in blocks for tap in "IBO"]


def per_tap(model, record, profile: dict, scratch: Path) -> None:
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets

    from repro.images import eval_transform

    folder = datasets.ImageFolder(profile["natural"]["images"], transform=eval_transform(profile))
    for block, tap, module, kind in tap_modules(model, profile["model"]["blocks"]):
        captured = []

        def keep(tensor):
            captured.append(tensor[:, :, tensor.shape[2] // 2, tensor.shape[3] // 2].clone())

        if kind == "output":
            handle = module.register_forward_hook(lambda m, args, output: keep(output))
        else:
            handle = module.register_forward_pre_hook(lambda m, args: keep(args[0]))
        loader = DataLoader(folder, batch_size=50, num_workers=profile["natural"]["workers"])
        centers = []
        with torch.inference_mode():
            for batch, _ in loader:
                captured.clear()
                model(batch)
                centers.append(captured[-1])
        handle.remove()
        values = torch.cat(centers).numpy().T  # [channel, image]
        index = np.broadcast_to(np.arange(values.shape[1]), values.shape)
        np.lexsort((index, -values), axis=-1)[:, :profile["natural"]["top_k"]]


def run_variant(variant: str, images: Path, workers: int, threads: int | None, small: bool = False,
                device: str = "cpu", batch_size: int | None = None, shard_size: int | None = None,
                decode_images: int = 0) -> None:
    import torch
    import torchvision.datasets  # noqa: F401  (imports are not timed)

    import repro.natural  # noqa: F401
    from repro.model import ModelSpec, load_model

    if threads:
        torch.set_num_threads(threads)
    profile = bench_profile(images, workers, small, batch_size, shard_size)
    model, record = load_model(ModelSpec.from_profile(profile["model"]))
    with tempfile.TemporaryDirectory() as scratch:
        before = peak_rss_mib()
        start = time.perf_counter()
        if variant == "one-pass":
            one_pass(model, record, profile, Path(scratch), device)
        else:
            per_tap(model, record, profile, Path(scratch))
        seconds = time.perf_counter() - start
    result = {"variant": variant, "seconds": seconds, "peak_rss_mib": peak_rss_mib(),
              "rss_increase_mib": peak_rss_mib() - before, "threads": torch.get_num_threads(), "device": device}
    if device.startswith("cuda"):
        result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if decode_images and variant == "one-pass":
        result["decode_check"] = decode_check(model, profile, decode_images, device)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of both variants")
    parser.add_argument("--memory", help="image counts, e.g. 2000,20000: peak RSS of the one pass at each")
    parser.add_argument("--device", default="cpu", help="the one pass's device (the per-tap variant runs on the CPU)")
    parser.add_argument("--one-pass-only", action="store_true", help="time the one pass alone")
    parser.add_argument("--batch-size", type=int, help="natural.batch_size (default 50)")
    parser.add_argument("--shard-size", type=int, help="natural.shard_size (default 100)")
    parser.add_argument("--make-jobs", type=int, default=1, help="processes writing the JPEGs")
    parser.add_argument("--decode-check", type=int, default=0, metavar="N",
                        help="also time the loader alone on N images and the model alone")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--variant", choices=["one-pass", "per-tap"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--small", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        run_variant(args.variant, args.folder, args.workers, args.threads, args.small, args.device,
                    args.batch_size, args.shard_size, args.decode_check)
        return
    if args.memory:
        memory(sorted(int(n) for n in args.memory.split(",")), args.size, args.workers, args.threads)
        return
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        folder = make_folder(Path(scratch) / "val", args.images, args.size, jobs=args.make_jobs)
        make_s = time.perf_counter() - start
        results = {}
        for variant in ("one-pass",) if args.one_pass_only else ("one-pass", "per-tap"):
            command = [sys.executable, __file__, "--variant", variant, "--folder", str(folder),
                       "--workers", str(args.workers), "--device", args.device,
                       "--decode-check", str(args.decode_check)]
            command += ["--threads", str(args.threads)] if args.threads else []
            command += ["--batch-size", str(args.batch_size)] if args.batch_size else []
            command += ["--shard-size", str(args.shard_size)] if args.shard_size else []
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[variant] = json.loads(output.strip().splitlines()[-1])
    print(f"{args.images} images of about {args.size} px (written in {make_s:.1f} s), random-init resnet18, "
          f"7 blocks x 3 taps, {results['one-pass']['threads']} torch thread(s), {args.workers} DataLoader "
          f"worker(s), one pass on {args.device}")
    for variant, result in results.items():
        result["images_per_s"] = args.images / result["seconds"]
        print(f"  {variant:9s} {result['images_per_s']:8.2f} images/s  ({result['seconds']:.1f} s)  "
              f"peak RSS {result['peak_rss_mib']:.0f} MiB (+{result['rss_increase_mib']:.0f} MiB during the pass)")
    check = results["one-pass"].get("decode_check")
    if check:
        print(f"  loader alone {check['loader_images_per_s']:.1f} images/s ({check['loader_workers']} workers), "
              f"model alone {check['model_images_per_s']:.1f} images/s: "
              f"{'decode-bound' if check['decode_bound'] else 'model-bound'}")
    if "per-tap" in results:
        speedup = results["per-tap"]["seconds"] / results["one-pass"]["seconds"]
        print(f"  one pass is {speedup:.1f}x faster than one pass per tap")
    if args.json:
        args.json.write_text(json.dumps({"images": args.images, "size": args.size, "workers": args.workers,
                                         "device": args.device, "make_folder_seconds": make_s,
                                         "results": results}, indent=1) + "\n")


def memory(counts: list[int], size: int, workers: int, threads: int | None) -> None:
    """Peak RSS of the one pass at each image count (folders of the largest count's first N images)."""
    import os

    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for count in counts:
            folder = make_folder(Path(scratch) / f"val{count}", count, size)
            command = [sys.executable, __file__, "--variant", "one-pass", "--folder", str(folder), "--small",
                       "--workers", str(workers)] + (["--threads", str(threads)] if threads else [])
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            result = json.loads(output.strip().splitlines()[-1])
            results.append({"images": count, **result})
            print(f"  {count:6d} images: peak RSS {result['peak_rss_mib']:.0f} MiB "
                  f"(+{result['rss_increase_mib']:.0f} MiB during the pass), {result['seconds']:.0f} s")
    first, last = results[0], results[-1]
    per_image_kib = (last["peak_rss_mib"] - first["peak_rss_mib"]) * 1024 / (last["images"] - first["images"])
    print(f"  growth between {first['images']} and {last['images']} images: {per_image_kib:.2f} KiB per image")
    record = {"what": "peak RSS of `repro natural` (paper resnet18, random weights, shard 1000, 37/32 px)",
              "load_average_1min": os.getloadavg()[0], "results": results, "growth_kib_per_image": per_image_kib}
    out = Path(__file__).parent / "results" / "natural_memory.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

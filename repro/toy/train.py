"""Train the toy world's ResNet-18 on the CPU, from the profile's ``[toy]`` settings alone.

The splits are generated into memory (uint8) once; each step augments its batch on tensors (a random resized
crop and a flip per image), normalizes with the profile's mean and std, and takes one optimizer step
(AdamW or SGD) on a warmup-then-cosine schedule. The first epochs may run at a lower resolution (cheaper steps
while the shapes are learned); the last ones run at full size. Seeds fix the initialization, the batch order
and the augmentation, and torch's deterministic algorithms are requested, so a rerun on the same software
and thread count gives the same weights.
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.transforms import v2

from repro.errors import UserError
from repro.images import normalize as normalize_image
from repro.model import ModelSpec, file_sha256, load_model
from repro.toy.data import GENERATOR_VERSION, ToySplit, ToyWorld, generate

HELDOUT = "heldout"
TRAIN = "train"
# Accuracy is also reported per band of object size (pixels), to show how recognition depends on scale.
SCALE_BANDS = 4


@dataclass(frozen=True)
class TrainSettings:
    seed: int = 0
    threads: int = 2
    optimizer: str = "adamw"
    epochs: int = 8
    # The first low_res_epochs see the images resized to low_res_size: cheaper steps while the shapes are learned.
    low_res_epochs: int = 6
    low_res_size: int = 32
    batch_size: int = 64
    lr: float = 0.003
    momentum: float = 0.9  # SGD's momentum; AdamW's beta1
    weight_decay: float = 0.05
    warmup_epochs: float = 0.3
    label_smoothing: float = 0.0
    crop_scale: tuple[float, float] = (0.85, 1.0)
    crop_ratio: tuple[float, float] = (0.85, 1.18)
    flip: bool = True
    eval_batch_size: int = 250

    @classmethod
    def from_profile(cls, train: Mapping) -> "TrainSettings":
        known = cls.__dataclass_fields__
        unknown = sorted(set(train) - set(known))
        if unknown:
            raise UserError(f"unknown toy.train settings: {', '.join(unknown)}")
        values = {key: tuple(value) if isinstance(value, list) else value for key, value in train.items()}
        return cls(**values)


def toy_settings(profile: Mapping) -> Mapping:
    if "toy" not in profile:
        raise UserError(f"profile {profile.get('name', '')!r} has no [toy] table")
    return profile["toy"]


def world_of(profile: Mapping) -> ToyWorld:
    world = ToyWorld.from_profile(toy_settings(profile))
    classes = int(profile["model"].get("num_classes", 0))
    if classes != len(world.classes):
        raise UserError(f"model.num_classes is {classes} but toy.classes lists {len(world.classes)} classes")
    return world


def heldout_split(profile: Mapping, workers: int = 1) -> ToySplit:
    """The held-out split the profile names, regenerated from its seed."""
    toy = toy_settings(profile)
    return generate(world_of(profile), int(toy["seed"]), HELDOUT, int(toy["heldout_per_class"]), workers)


# ---------------------------------------------------------------- tensors


def as_tensors(split: ToySplit) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 3, H, W] and int64 labels."""
    images = torch.from_numpy(np.ascontiguousarray(split.images.transpose(0, 3, 1, 2)))
    return images, torch.from_numpy(split.labels)


def normalizer(profile: Mapping) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 [N, 3, H, W] → float, scaled to [0, 1] and normalized with the profile's mean and std."""
    return lambda pixels: normalize_image(pixels.float() / 255, profile)


def augmenter(settings: TrainSettings, size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-image random resized crop and flip of a uint8 batch (torch's global generator draws them)."""
    steps = [v2.RandomResizedCrop(size, scale=settings.crop_scale, ratio=settings.crop_ratio, antialias=True)]
    if settings.flip:
        steps.append(v2.RandomHorizontalFlip())
    transform = v2.Compose(steps)
    return lambda batch: torch.stack([transform(image) for image in batch])


# ---------------------------------------------------------------- model and schedule


def fresh_model(profile: Mapping, seed: int) -> nn.Module:
    """The profile's architecture, initialized under ``seed``, ready to train."""
    spec = ModelSpec.from_profile({**profile["model"], "weights": f"random:{seed}", "weights_sha256": ""})
    model, _ = load_model(spec)
    return model.train().requires_grad_(True)


def schedule(settings: TrainSettings, steps_per_epoch: int) -> Callable[[int], float]:
    """Learning-rate factor per step: linear warmup, then cosine decay to zero."""
    total = settings.epochs * steps_per_epoch
    warmup = max(1, round(settings.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return factor


def optimizer_for(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum, or AdamW; no weight decay on BN parameters and biases."""
    decayed = [p for p in model.parameters() if p.ndim > 1]
    plain = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decayed, "weight_decay": settings.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    if settings.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum, nesterov=True)
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=settings.lr, betas=(settings.momentum, 0.999))
    raise UserError(f"toy.train.optimizer {settings.optimizer!r}: expected sgd or adamw")


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, normalize, batch_size: int) -> torch.Tensor:
    model.eval()
    predictions = [model(normalize(images[start:start + batch_size]).contiguous(memory_format=torch.channels_last))
                   .argmax(1) for start in range(0, len(images), batch_size)]
    return torch.cat(predictions)


def accuracy_by_scale(correct: np.ndarray, scales: np.ndarray, low: float, high: float) -> list[dict]:
    """Top-1 in log-spaced bands of object size: the same number of octaves per band."""
    edges = np.exp(np.linspace(np.log(low), np.log(high), SCALE_BANDS + 1))
    bands = []
    for lower, upper in zip(edges[:-1], edges[1:]):
        inside = (scales >= lower) & (scales <= upper)
        bands.append({"scale_px": [round(float(lower), 1), round(float(upper), 1)], "images": int(inside.sum()),
                      "accuracy": round(float(correct[inside].mean()), 4) if inside.any() else None})
    return bands


def evaluate(model: nn.Module, split: ToySplit, profile: Mapping, batch_size: int) -> dict:
    images, labels = as_tensors(split)
    correct = (predict(model, images, normalizer(profile), batch_size) == labels).numpy()
    world = split.world
    return {"accuracy": round(float(correct.mean()), 4), "images": int(len(correct)),
            "by_scale": accuracy_by_scale(correct, split.scales, world.scale_min, world.scale_max)}


# ---------------------------------------------------------------- training


@contextmanager
def _deterministic(settings: TrainSettings):
    """Seeded, deterministic algorithms, the profile's thread count; torch's global settings restored after."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def epoch_sizes(settings: TrainSettings, image_size: int) -> list[int]:
    """The image size of each epoch."""
    low = min(settings.low_res_epochs, settings.epochs)
    return [settings.low_res_size] * low + [image_size] * (settings.epochs - low)


def train_model(profile: Mapping, train: ToySplit, progress: Callable | None = None,
                on_epoch: Callable | None = None) -> nn.Module:
    """Train a fresh model on ``train``; ``progress(step, total, loss)`` is called after every step and
    ``on_epoch(epoch, model)`` after every epoch."""
    settings = TrainSettings.from_profile(toy_settings(profile).get("train", {}))
    with _deterministic(settings):
        return _train(profile, settings, train, progress, on_epoch)


def _descend(loss: torch.Tensor, optimizer: torch.optim.Optimizer, lr_schedule) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    lr_schedule.step()


def _train(profile: Mapping, settings: TrainSettings, train: ToySplit, progress: Callable | None,
           on_epoch: Callable | None) -> nn.Module:
    model = fresh_model(profile, settings.seed).to(memory_format=torch.channels_last)
    images, labels = as_tensors(train)
    normalize = normalizer(profile)
    steps_per_epoch = len(images) // settings.batch_size  # the last partial batch is dropped
    if steps_per_epoch == 0:
        raise UserError(f"toy training needs at least batch_size={settings.batch_size} images, got {len(images)}")
    optimizer = optimizer_for(model, settings)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(settings, steps_per_epoch))
    order_generator = torch.Generator().manual_seed(settings.seed)
    total, step = settings.epochs * steps_per_epoch, 0
    for epoch, size in enumerate(epoch_sizes(settings, train.world.image_size)):
        model.train()
        augment = augmenter(settings, size)
        order = torch.randperm(len(images), generator=order_generator)
        for start in range(0, steps_per_epoch * settings.batch_size, settings.batch_size):
            chosen = order[start:start + settings.batch_size]
            batch = normalize(augment(images[chosen])).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(batch), labels[chosen], label_smoothing=settings.label_smoothing)
            _descend(loss, optimizer, lr_schedule)
            step += 1
            if progress:
                progress(step, total, loss.item())
        if on_epoch:
            on_epoch(epoch, model)
    return model.eval().requires_grad_(False)


def save_weights(model: nn.Module, path: Path) -> str:
    """A plain state_dict (contiguous tensors); returns the file's SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, path)
    return file_sha256(path)


def run(profile: Mapping, out: Path, progress: Callable | None = None, command: str = "") -> dict:
    """Generate the splits, train, evaluate on the held-out split, save weights and their record (OUT.json)."""
    toy = toy_settings(profile)
    world, seed, workers = world_of(profile), int(toy["seed"]), int(toy.get("workers", 1))
    started = time.perf_counter()
    train = generate(world, seed, TRAIN, int(toy["train_per_class"]), workers)
    heldout = heldout_split(profile, workers)
    generated, cpu_before = time.perf_counter(), time.process_time()
    model = train_model(profile, train, progress)
    trained, cpu_after = time.perf_counter(), time.process_time()
    settings = TrainSettings.from_profile(toy.get("train", {}))
    result = evaluate(model, heldout, profile, settings.eval_batch_size)
    sha = save_weights(model, Path(out))
    seconds = {"generate_seconds": round(generated - started, 1), "train_seconds": round(trained - generated, 1),
               "train_cpu_seconds": round(cpu_after - cpu_before, 1)}
    record = training_record(profile, train, result, Path(out), sha, command, seconds)
    Path(out).with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def training_record(profile: Mapping, train: ToySplit, result: dict, out: Path, sha: str, command: str,
                    seconds: dict) -> dict:
    """What was trained, how, on what, and how well: the weights file's companion JSON."""
    toy, world = toy_settings(profile), train.world
    settings = TrainSettings.from_profile(toy.get("train", {}))
    return {
        "command": command,
        "profile": profile.get("name", ""),
        "weights": out.name,
        "sha256": sha,
        "bytes": out.stat().st_size,
        "heldout_accuracy": result["accuracy"],
        "heldout_images": result["images"],
        "heldout_accuracy_by_scale": result["by_scale"],
        "train_images": int(len(train.labels)),
        "seed": int(toy["seed"]),
        "train_seed": settings.seed,
        "epochs": settings.epochs,
        "train_settings": {key: list(value) if isinstance(value, tuple) else value
                           for key, value in settings.__dict__.items()},
        "world": {"classes": list(world.folders), "image_size": world.image_size,
                  "scale_px": [world.scale_min, world.scale_max], "max_tilt_deg": world.max_tilt_deg,
                  "generator_version": GENERATOR_VERSION},
        "model": {key: profile["model"][key] for key in ("arch", "widths", "stem", "num_classes", "image_size")},
        **seconds,
        "threads": settings.threads,
        # Speed only: with OMP_WAIT_POLICY=PASSIVE, OpenMP threads sleep rather than spin on a busy machine.
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }

"""The FZ optimization loop on named FZs: each FZ's pixels are a function of its name (``FZName``).

The recipe is the papers' (docs/method.md, "Feature visualization"): Lucent's ``param.image`` (FFT,
decorrelated colour), Adam at ``fz.lr`` over the batch's parameters, the transform chain of the tap's
jitter, the profile's normalisation, and the objective. What differs from ``repro.fz.visualize`` is where
the randomness comes from: every FZ draws its initial parameters and each step's transforms from its own
generator (``repro.fz_transforms``), and the chain is applied to the whole batch at once, as Lucent's
sequence of resamples (``resample="staged"``, the default: Lucent's chain to float rounding) or as one
fused resample (``"fused"``: faster, but Lucent's repeated interpolation is gone, which shifts the FZs'
activations by about 5 %; benchmarks/results/fz_transforms.md).

The batch is one tap at one jitter and objective; channels and seeds may be mixed. Adam is elementwise and
the loss is the sum of the per-image objectives, so an FZ follows the trajectory it follows alone; only
the arithmetic of batched convolutions may differ in the last bits between batch sizes. Without padding
the chain's output size depends on the scale draw, so the forward runs once per distinct size.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from repro import device as devices
from repro import model as taps_model
from repro.fz_transforms import FZName, Schedule, apply, draw, fz_generator, image_parameterization, recipe_digest
from repro.images import normalize
from repro.objectives import OBJECTIVES

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}


def fz_names(profile: Mapping, block: str, tap: str, channels: Sequence[int], seeds: Sequence[int], *,
             jitter: int, objective: str | None = None, resample: str | None = None) -> list[FZName]:
    """The names of one tap's FZs, seed-major: (seed, channel) for every seed and channel."""
    objective = objective or profile["fz"]["objective"]
    recipe = recipe_digest(profile, resample)
    return [FZName(int(seed), block, tap, int(channel), int(jitter), objective, recipe)
            for seed in seeds for channel in channels]


def micro_batches(transformed, size: int):
    """(indices, images) forwards of exactly ``size`` images each, one output size per forward, the last of
    each size filled with zero images (whose values are dropped). A convolution's last bits depend on its
    batch size, and Adam carries them into visible differences within a few hundred steps; at one fixed size
    an image's arithmetic does not depend on which images share its forward (or on their order), so an FZ
    is the same whatever batch it is optimized in."""
    for index, images in transformed.groups():
        for start in range(0, len(index), size):
            rows, part = index[start:start + size], images[start:start + size]
            if len(rows) < size:
                part = torch.cat([part, part.new_zeros((size - len(rows), *part.shape[1:]))])
            yield rows, part


def map_extent(model: torch.nn.Module, profile: Mapping, label: tuple[str, str], size: int,
               aliased: bool) -> tuple[int, int]:
    """The tap's map height and width for an image of ``size`` px (one blank forward)."""
    device = next(model.parameters()).device
    with torch.no_grad():
        taps, _ = taps_model.run(model, torch.zeros(1, 3, size, size, device=device), [label], stop=True,
                                 aliased=aliased)
    return tuple(taps[label].shape[-2:])


def own_map_values(chosen, maps: torch.Tensor, channels: torch.Tensor, extents: Sequence[tuple[int, int]]):
    """The objective of each image on its own map: the canvas forward's map cropped to the extent the image's
    drawn size gives (the feature grid starts at the top left corner either way), so the center neuron is the
    one Lucent's forward of the drawn image reads."""
    values = torch.zeros(len(channels), device=maps.device)
    for shape in sorted(set(extents)):
        rows = torch.tensor([i for i, e in enumerate(extents) if e == shape], device=maps.device)
        own = maps.index_select(0, rows)[:, :, :shape[0], :shape[1]]
        read = taps_model.center_of(own) if chosen.center else own
        values = values.index_copy(0, rows, chosen.value(read, channels.index_select(0, rows)).float())
    return values


@dataclass
class EngineResult:
    images: torch.Tensor  # [n, 3, H, W] in [0, 1], on the CPU
    initial_objective: torch.Tensor  # [n]: at the first step, on the initial image under that step's draw
    final_objective: torch.Tensor  # [n]: at the last step
    trace: torch.Tensor  # [n, steps // trace_every]: after steps k, 2k, ... (1-based)
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)  # step → images after that many steps


def _one_tap(names: Sequence[FZName], profile: Mapping, resample: str) -> FZName:
    first = names[0]
    for name in names:
        if (name.block, name.tap, name.jitter, name.objective) != (first.block, first.tap, first.jitter, first.objective):
            raise ValueError(f"one tap, jitter and objective per batch: {first.text} and {name.text}")
    digest = recipe_digest(profile, resample)
    if any(name.recipe != digest for name in names):
        raise ValueError(f"names made for another recipe than this profile's with resample={resample} ({digest})")
    return first


def optimize(model: torch.nn.Module, profile: Mapping, names: Sequence[FZName], *, steps: int | None = None,
             precision: str | None = None, trace_every: int | None = None, resample: str | None = None,
             snapshot_at: Sequence[int] = ()) -> EngineResult:
    """Optimize the named FZs together; ``model`` frozen and in eval mode (``repro.fz.prepare``).

    ``steps``, ``precision`` (autocast dtype of the network's forward and backward) and ``trace_every``
    default to the profile's. ``resample`` (default ``fz.resample``): the chain as one fused resample or as
    Lucent's sequence (``repro.fz_transforms.apply``); it is part of the names' recipe. ``snapshot_at``: keep
    the images after these many steps too (a run's trajectory does not depend on how many steps follow).
    """
    if not names:
        raise ValueError("no FZs to optimize")
    resample = resample or profile["fz"]["resample"]
    settings = profile["fz"]
    first = _one_tap(names, profile, resample)
    steps = int(settings["steps"] if steps is None else steps)
    every = int(settings["trace_every"] if trace_every is None else trace_every)
    dtype = PRECISIONS[precision or settings["precision"]]
    micro = int(settings["micro_batch"])
    chosen = OBJECTIVES[first.objective]
    aliased = bool(profile["model"]["aliased"])
    device = next(model.parameters()).device
    devices.check_lucent(device)
    amp = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    schedule = Schedule.from_profile(profile, first.jitter)
    channels = torch.tensor([name.channel for name in names], device=device)
    generators = [fz_generator(name) for name in names]
    size = int(profile["model"]["image_size"])
    params, image_f = image_parameterization(generators, size, decorrelate=bool(settings["decorrelate"]),
                                             fft=bool(settings["fft"]), device=device)
    optimizer = torch.optim.Adam(params, lr=float(settings["lr"]))
    extent = functools.lru_cache(maxsize=None)(
        lambda drawn: map_extent(model, profile, (first.block, first.tap), drawn, aliased))
    values = torch.empty(len(names))
    initial, traced, snapshots = None, [], {}
    with devices.lucent_on(device):
        for step in range(steps):
            draws = draw(schedule, generators)
            optimizer.zero_grad()
            transformed = apply(image_f(), schedule, draws, resample)
            loss = 0.0
            for index, images in micro_batches(transformed, micro):
                with amp:
                    taps, _ = taps_model.run(model, normalize(images, profile), [(first.block, first.tap)],
                                             stop=True, aliased=aliased,
                                             center=chosen.center and transformed.drawn is None)
                    tap = taps[(first.block, first.tap)][:len(index)]
                    if transformed.drawn is None:
                        group_values = chosen.value(tap, channels[index]).float()
                    else:
                        drawn = [transformed.drawn[i] for i in index.tolist()]
                        group_values = own_map_values(chosen, tap, channels[index],
                                                      [extent(size) for size in drawn])
                # The sum gives every image the gradient of its own objective alone.
                loss = loss - group_values.sum()
                values[index.cpu()] = group_values.detach().cpu()
            loss.backward()
            optimizer.step()
            if initial is None:
                initial = values.clone()
            if (step + 1) % every == 0:
                traced.append(values.clone())
            if step + 1 in snapshot_at:
                with torch.no_grad():
                    snapshots[step + 1] = image_f().detach().float().cpu()
        images = image_f().detach().float().cpu()
    trace = torch.stack(traced, dim=1) if traced else torch.empty(len(names), 0)
    return EngineResult(images, initial, values.clone(), trace, snapshots)

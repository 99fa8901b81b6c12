"""Lucent's FZ transform chain with independent draws per image, applied as one resample per step.

Lucent's transforms (``lucent.optvis.transform``) draw one setting per call from numpy's global generator
for the whole batch, so an FZ made in a batch depends on its neighbours. Here every FZ has a name
(``FZName``: seed, block, tap, channel, jitter, objective, recipe digest) and its own ``torch.Generator``
seeded from the SHA-256 of that name (``fz_generator``); its initial image and every step's transform
draw come from that stream alone, so its pixels do not depend on the batch, its position in it, chunking,
other seeds or workers.

The chain and its draws are Lucent's, by the tap's jitter j (``Schedule``):

* j < ``pad_from_jitter``: ``random_scale(scales)``, ``random_rotate(angles)``;
* j >= ``pad_from_jitter``: ``pad(j)`` (reflect), ``jitter(j)``, the same scale and rotation,
  ``jitter(j // 2)``, ``CenterCrop(image_size)``.

Per image and step, in Lucent's order: the first jitter's (dx, dy), each uniform over 0..j-1; the scale,
uniform over the list; the angle, uniform over the integer degrees; the second jitter's (dx, dy), uniform
over 0..j//2-1 (``Draws``). The whole chain is composed into one affine map from output pixels to input
pixels per image, and the batch is resampled by one ``F.affine_grid`` and one ``F.grid_sample`` call.

The geometry is Lucent's as it runs (torch-lucent 0.1.8 on kornia 0.4.1), not as its arguments read:

* ``jitter(d)`` is kornia's ``translate`` by integer (dx, dy), but kornia 0.4 normalizes pixel
  coordinates with ``align_corners=True`` and samples with ``align_corners=False``, so an n-pixel canvas
  moves by ``dx * n / (n - 1)`` pixels, a sub-pixel bilinear shift. The rotation about the canvas center
  is unaffected by that mismatch (for square canvases).
* ``random_scale(s)`` resizes an n-pixel canvas to ``S = ceil(s n)`` with ``align_corners=True`` (a
  factor ``(n - 1) / (S - 1)``, not s) and zero-pads by ``ceil((n - S) / 2)`` when shrinking; without
  padding (j < pad_from_jitter) nothing crops it back, so the network sees 64-68 px images on the 64 px
  toy (224-236 px at 224). ``Transformed.sizes`` keeps each image's size, and each image lies in the top
  left corner of a canvas as large as the largest possible output.
* ``CenterCrop`` starts at ``round((m - size) / 2)`` (Python's round, half to even).

Where this differs from Lucent's sequence of resamples:

* One bilinear interpolation instead of up to four (jitter, scale, rotation, jitter). Lucent's repeated
  interpolation low-pass filters the image and its gradient a little more; the benchmark
  ``benchmarks/fz_transforms.py`` compares the FZs' activation distributions.
* Zero fill: each resampling stage of Lucent blends with zeros over one pixel beyond its input's support;
  here each such stage contributes a factor (the bilinear weight of its support at the point) to one mask.
  This is exact where a point is near one stage's border and differs within a pixel where the borders of
  two stages meet. Inside the reflect padding the sample is Lucent's exactly (reflecting about a pixel
  center commutes with bilinear interpolation on the pixel grid).

kornia's augmentation module has per-sample parameters, but draws them from torch's global generator and
applies them with the same ``affine_grid``/``grid_sample`` pair; it would add nothing here.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from repro import device as devices
from repro.optvis import param as lucent_param

# Lucent's initial spread of the image parameters (``sd or 0.01`` in fft_image and pixel_image).
INITIAL_SD = 0.01
# Uniforms per step and image: first jitter (dx, dy), scale, angle, second jitter (dx, dy). Always six, so
# a stream's position after k steps does not depend on the schedule.
UNIFORMS_PER_STEP = 6


# ---------------------------------------------------------------- names and streams


def recipe_digest(profile: Mapping) -> str:
    """SHA-256 (16 hex digits) of the settings an FZ's optimization depends on besides its name's other parts."""
    model, settings = profile["model"], profile["fz"]
    recipe = {
        "image_size": int(model["image_size"]), "normalize_mean": [float(v) for v in model["normalize_mean"]],
        "normalize_std": [float(v) for v in model["normalize_std"]], "aliased": bool(model["aliased"]),
        "lr": float(settings["lr"]), "fft": bool(settings["fft"]), "decorrelate": bool(settings["decorrelate"]),
        "random_scale": [float(v) for v in settings["random_scale"]],
        "rotate_degrees": int(settings["rotate_degrees"]), "pad_from_jitter": int(settings["pad_from_jitter"]),
        "precision": str(settings["precision"]),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class FZName:
    """What one FZ is: its random stream, and so its pixels, are a function of this alone."""
    seed: int
    block: str
    tap: str
    channel: int
    jitter: int
    objective: str
    recipe: str  # recipe_digest(profile)

    @property
    def text(self) -> str:
        return (f"fz/seed={self.seed}/block={self.block}/tap={self.tap}/channel={self.channel}"
                f"/jitter={self.jitter}/objective={self.objective}/recipe={self.recipe}")


def stream_seed(name: str) -> int:
    """The generator seed of a name: the first 32 bits of its SHA-256.

    torch's CPU generator (mt19937) keeps only 32 bits of a seed, so no more are passed; two names share a
    stream with probability 2**-32, which matters only for FZs that are compared (the seeds of one neuron).
    """
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def fz_generator(name: FZName | str) -> torch.Generator:
    """A CPU generator seeded from the FZ's name: first its initial image, then its transform draws."""
    text = name.text if isinstance(name, FZName) else name
    return torch.Generator().manual_seed(stream_seed(text))


# ---------------------------------------------------------------- the initial image


def initial_parameters(generators: Sequence[torch.Generator], shape: Sequence[int]) -> torch.Tensor:
    """Lucent's initial image parameters (``randn * 0.01``), one row per image from its own generator.

    ``shape`` is one image's parameter shape (``params[0].shape[1:]`` of Lucent's ``param.image``).
    """
    return torch.cat([torch.randn((1, *shape), generator=g) * INITIAL_SD for g in generators])


def image_parameterization(generators: Sequence[torch.Generator], size: int, *, decorrelate: bool, fft: bool,
                           device: torch.device) -> tuple[list[torch.Tensor], callable]:
    """Lucent's ``param.image(size, batch=n, decorrelate, fft)`` with each image's parameters drawn from its
    own generator (Lucent draws the batch from torch's global generator, which is left untouched here).

    Returns Lucent's (params, image_f); call image_f inside ``devices.lucent_on(device)``.
    """
    with torch.random.fork_rng(devices=[]), devices.lucent_on(device):
        params, image_f = lucent_param.image(size, batch=len(generators), decorrelate=decorrelate, fft=fft)
    (spectrum,) = params
    with torch.no_grad():
        spectrum.copy_(initial_parameters(generators, spectrum.shape[1:]).to(spectrum.device))
    return params, image_f


# ---------------------------------------------------------------- the schedule and its draws


@dataclass(frozen=True)
class Schedule:
    """The transform chain of a tap at one jitter (``fz.transforms`` in Lucent's terms)."""
    image_size: int
    jitter: int
    scales: tuple[float, ...]
    angles: tuple[int, ...]  # degrees
    pad_from_jitter: int

    @classmethod
    def from_profile(cls, profile: Mapping, jitter: int) -> "Schedule":
        settings = profile["fz"]
        degrees = int(settings["rotate_degrees"])
        schedule = cls(int(profile["model"]["image_size"]), int(jitter),
                       tuple(float(s) for s in settings["random_scale"]), tuple(range(-degrees, degrees + 1)),
                       int(settings["pad_from_jitter"]))
        if schedule.padded and jitter // 2 < 2:
            raise ValueError(f"jitter {jitter}: jitter({jitter // 2}) needs jitter >= 4 (Lucent's jitter(d) needs d > 1)")
        return schedule

    @property
    def padded(self) -> bool:
        return self.jitter >= self.pad_from_jitter

    @property
    def pad(self) -> int:
        return self.jitter if self.padded else 0

    def scaled(self, scale: float) -> tuple[int, int, int]:
        """Lucent's random_scale on the (padded) canvas: (canvas before, resized size S, zero padding p)."""
        before = self.image_size + 2 * self.pad
        resized = math.ceil(scale * before)
        return before, resized, max(0, math.ceil((before - resized) / 2))

    def output_size(self, scale: float) -> int:
        """The size of the image the network sees after this scale draw."""
        if self.padded:
            return self.image_size
        _, resized, padding = self.scaled(scale)
        return resized + 2 * padding

    @property
    def canvas_size(self) -> int:
        """The batch's canvas: the largest output any draw gives (a function of the schedule alone, so an
        image's resample does not depend on the others in its batch)."""
        return max(self.output_size(s) for s in self.scales)


@dataclass(frozen=True)
class Draws:
    """One step's draws for a batch, one row per image."""
    first_shift: torch.Tensor  # [n, 2] int64 (dx, dy); zero without padding
    scale: torch.Tensor  # [n] float64
    angle: torch.Tensor  # [n] float64, degrees
    second_shift: torch.Tensor  # [n, 2] int64 (dx, dy); zero without padding

    def __len__(self) -> int:
        return len(self.scale)

    def row(self, i: int) -> "Draws":
        return Draws(self.first_shift[i:i + 1], self.scale[i:i + 1], self.angle[i:i + 1], self.second_shift[i:i + 1])


def draw(schedule: Schedule, generators: Sequence[torch.Generator]) -> Draws:
    """One step's draws, each image from its own generator (six float64 uniforms per image and step)."""
    uniforms = torch.stack([torch.rand(UNIFORMS_PER_STEP, dtype=torch.float64, generator=g) for g in generators])

    def pick(column: int, count: int) -> torch.Tensor:
        return torch.floor(uniforms[:, column] * count).long().clamp_(max=count - 1)

    scales = torch.tensor(schedule.scales, dtype=torch.float64)
    angles = torch.tensor(schedule.angles, dtype=torch.float64)
    if schedule.padded:
        first = torch.stack([pick(0, schedule.jitter), pick(1, schedule.jitter)], dim=1)
        second = torch.stack([pick(4, schedule.jitter // 2), pick(5, schedule.jitter // 2)], dim=1)
    else:
        first = second = torch.zeros(len(generators), 2, dtype=torch.long)
    return Draws(first, scales[pick(2, len(scales))], angles[pick(3, len(angles))], second)


# ---------------------------------------------------------------- the resample


def _translation(x: float, y: float) -> torch.Tensor:
    return torch.tensor([[1.0, 0.0, x], [0.0, 1.0, y], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _uniform_scale(factor: float) -> torch.Tensor:
    return torch.diag(torch.tensor([factor, factor, 1.0], dtype=torch.float64))


def _inverse_rotation(degrees: float, center: float) -> torch.Tensor:
    """Destination → source of kornia's rotation by ``degrees`` (counter-clockwise on screen) about (c, c)."""
    radians = math.radians(degrees)
    cos, sin = math.cos(radians), math.sin(radians)
    turn = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return _translation(center, center) @ turn @ _translation(-center, -center)


@dataclass(frozen=True)
class Geometry:
    """One image's chain as maps from output pixel coordinates (x, y, 1) to each stage's input coordinates."""
    source: torch.Tensor  # [3, 3]: output pixel → pixel of the (unpadded) input image
    supports: tuple[tuple[torch.Tensor, float, float], ...]  # (map, low, high): a resample's input support
    output_size: int


def geometry(schedule: Schedule, first_shift: Sequence[int], scale: float, angle: float,
             second_shift: Sequence[int]) -> Geometry:
    """The composed inverse map of one image's draws (coordinates in pixels, pixel centers at integers)."""
    before, resized, padding = schedule.scaled(scale)
    rotated = resized + 2 * padding  # the canvas the rotation and the second jitter act on
    if schedule.padded:
        top = int(round((rotated - schedule.image_size) / 2.0))
        # kornia 0.4's translate moves an n-pixel canvas by d * n / (n - 1) (see the module docstring).
        second = _translation(-second_shift[0] * rotated / (rotated - 1), -second_shift[1] * rotated / (rotated - 1))
        to_rotated = second @ _translation(top, top)
    else:
        to_rotated = torch.eye(3, dtype=torch.float64)
    to_scaled = _inverse_rotation(angle, (rotated - 1) / 2) @ to_rotated
    # Upsample with align_corners=True: scaled pixel q ↦ (q - p) (n - 1) / (S - 1) on the canvas before.
    to_before = _uniform_scale((before - 1) / (resized - 1)) @ _translation(-padding, -padding) @ to_scaled
    if schedule.padded:
        to_jittered_pad = _translation(-first_shift[0] * before / (before - 1),
                                       -first_shift[1] * before / (before - 1)) @ to_before
        source = _translation(-schedule.pad, -schedule.pad) @ to_jittered_pad
        supports = ((to_jittered_pad, 0.0, before - 1.0), (to_scaled, float(padding), padding + resized - 1.0),
                    (to_rotated, 0.0, rotated - 1.0))
    else:
        source = to_before
        supports = ((to_scaled, float(padding), padding + resized - 1.0),)
    return Geometry(source, supports, schedule.output_size(scale))


@dataclass
class Transformed:
    """A batch after the chain: image i is ``canvas[i, :, :sizes[i], :sizes[i]]``."""
    canvas: torch.Tensor  # [n, 3, canvas, canvas]; zero outside each image's own size
    sizes: list[int]

    def groups(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(indices, images) per distinct output size, for forwards that need one size per call."""
        found: dict[int, list[int]] = {}
        for i, size in enumerate(self.sizes):
            found.setdefault(size, []).append(i)
        groups = []
        for size, rows in sorted(found.items()):
            index = torch.tensor(rows, device=self.canvas.device)
            images = self.canvas if len(rows) == len(self.sizes) else self.canvas.index_select(0, index)
            groups.append((index, images[:, :, :size, :size]))
        return groups


def _tent(coordinate: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """The bilinear weight of pixels low..high at a coordinate: 1 inside, falling to 0 one pixel outside."""
    return torch.clamp(torch.minimum(coordinate - low + 1.0, high + 1.0 - coordinate), 0.0, 1.0)


def apply(images: torch.Tensor, schedule: Schedule, draws: Draws) -> Transformed:
    """The chain on a batch [n, 3, H, W] in [0, 1], image i with draws row i, as one resample."""
    n, _, height, width = images.shape
    if height != width or height != schedule.image_size:
        raise ValueError(f"images are {height}x{width}; the schedule is for {schedule.image_size} px squares")
    canvas = schedule.canvas_size
    shapes = [geometry(schedule, draws.first_shift[i].tolist(), float(draws.scale[i]), float(draws.angle[i]),
                       draws.second_shift[i].tolist()) for i in range(n)]
    # affine_grid (align_corners=True) hands out output coordinates normalized to [-1, 1] over the canvas.
    from_normalized = torch.tensor([[(canvas - 1) / 2, 0.0, (canvas - 1) / 2], [0.0, (canvas - 1) / 2, (canvas - 1) / 2],
                                    [0.0, 0.0, 1.0]], dtype=torch.float64)
    to_normalized = torch.tensor([[2 / (height - 1), 0.0, -1.0], [0.0, 2 / (height - 1), -1.0], [0.0, 0.0, 1.0]],
                                 dtype=torch.float64)
    stages = len(shapes[0].supports)
    thetas = torch.stack([torch.stack([to_normalized @ shape.source @ from_normalized]
                                      + [support[0] @ from_normalized for support in shape.supports])
                          for shape in shapes])[:, :, :2, :]  # [n, 1 + stages, 2, 3]
    grids = F.affine_grid(thetas.reshape(-1, 2, 3).to(images.device, torch.float32),
                          [n * (1 + stages), 1, canvas, canvas], align_corners=True)
    grids = grids.reshape(n, 1 + stages, canvas, canvas, 2)
    # Beyond the reflect padding (or the image, unpadded) Lucent's stages see zeros: the sample there is the
    # support's edge value, weighted by the masks below, as a bilinear blend with zero weights it.
    reach = 1 + 2 * schedule.pad / (height - 1)
    sample_grid = grids[:, 0].clamp(-reach, reach)
    resampled = F.grid_sample(images, sample_grid, mode="bilinear",
                              padding_mode="reflection" if schedule.padded else "border", align_corners=True)
    mask = torch.ones(n, canvas, canvas, device=images.device)
    for stage in range(stages):
        bounds = torch.tensor([[shape.supports[stage][1], shape.supports[stage][2]] for shape in shapes],
                              device=images.device, dtype=torch.float32)
        low, high = bounds[:, 0, None, None, None], bounds[:, 1, None, None, None]
        mask = mask * _tent(grids[:, 1 + stage], low, high).prod(dim=-1)
    sizes = [shape.output_size for shape in shapes]
    inside = torch.arange(canvas, device=images.device)
    limit = torch.tensor(sizes, device=images.device)[:, None]
    mask = mask * ((inside[None, :] < limit)[:, :, None] & (inside[None, :] < limit)[:, None, :])
    return Transformed(resampled * mask[:, None], sizes)

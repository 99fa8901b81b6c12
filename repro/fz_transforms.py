"""Lucent's FZ transform chain with independent draws per image, applied to the whole batch at once.

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
over 0..j//2-1 (``Draws``). ``apply`` runs the chain on a batch, image i with its own draws, in one of two
ways (``resample``):

* ``"fused"``: the whole chain composed into one affine map from output pixels to input pixels per
  image; the batch is resampled by one sampling grid (``F.affine_grid``'s) and one ``F.grid_sample`` call.
* ``"staged"``: Lucent's sequence of resamples (jitter, resize, rotation, jitter), each one batched
  ``grid_sample`` with per-image maps: Lucent's chain to float rounding, at two to four resamples.

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

Where the fused resample differs from Lucent's sequence of resamples:

* One bilinear interpolation instead of up to four (jitter, scale, rotation, jitter). Lucent's repeated
  interpolation low-pass filters the image and its gradient a little more; the benchmark
  ``benchmarks/fz_transforms.py`` compares the FZs' activation distributions.
* Zero fill: each resampling stage of Lucent blends with zeros over one pixel beyond its input's support;
  here each such stage contributes a factor (the bilinear weight of its support at the point) to one mask.
  That is Lucent's weight where only one stage resamples near a border; where later stages resample a zero
  band's edge again (the first jitter's band, scaled and rotated), Lucent's edge is spread over a pixel or
  two more (tests/test_fz_transforms.py bounds the difference). Inside the reflect padding the sample is
  Lucent's exactly (reflecting about a pixel center commutes with bilinear interpolation on the grid).

kornia's augmentation module has per-sample parameters, but draws them from torch's global generator and
applies them with the same ``affine_grid``/``grid_sample`` pair; it would add nothing here.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
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


RESAMPLES = ("fused", "staged")
# What the forward gets of an unpadded chain's image: the image at the size its scale draw gives, as Lucent
# ("drawn": one forward per distinct size), or the largest draw's canvas with the image in its top left corner,
# where Lucent's chain puts it, and zeros right of and below it ("canvas": one forward size for the batch).
FORWARD_SIZES = ("drawn", "canvas")


def recipe_digest(profile: Mapping, resample: str | None = None) -> str:
    """SHA-256 (16 hex digits) of the settings an FZ's optimization depends on besides its name's other parts
    (``resample``: how the chain is applied, see ``apply``; default the profile's ``fz.resample``)."""
    resample = resample or profile["fz"]["resample"]
    if resample not in RESAMPLES:
        raise ValueError(f"resample {resample!r}: one of {RESAMPLES}")
    model, settings = profile["model"], profile["fz"]
    recipe = {
        "image_size": int(model["image_size"]), "normalize_mean": [float(v) for v in model["normalize_mean"]],
        "normalize_std": [float(v) for v in model["normalize_std"]], "aliased": bool(model["aliased"]),
        "lr": float(settings["lr"]), "fft": bool(settings["fft"]), "decorrelate": bool(settings["decorrelate"]),
        "random_scale": [float(v) for v in settings["random_scale"]],
        "rotate_degrees": int(settings["rotate_degrees"]), "pad_from_jitter": int(settings["pad_from_jitter"]),
        "precision": str(settings["precision"]), "resample": resample,
        "micro_batch": int(settings["micro_batch"]),
    }
    if settings["forward_size"] != "drawn":  # recorded only when it differs, so "drawn" names keep their digest
        recipe["forward_size"] = str(settings["forward_size"])
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
    recipe: str  # recipe_digest(profile, resample)

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
                           device: torch.device) -> tuple[list[torch.Tensor], Callable]:
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
    on_canvas: bool = False  # fz.forward_size "canvas": an unpadded image forwarded on the whole canvas

    @classmethod
    def from_profile(cls, profile: Mapping, jitter: int) -> "Schedule":
        settings = profile["fz"]
        degrees = int(settings["rotate_degrees"])
        schedule = cls(int(profile["model"]["image_size"]), int(jitter),
                       tuple(float(s) for s in settings["random_scale"]), tuple(range(-degrees, degrees + 1)),
                       int(settings["pad_from_jitter"]), settings["forward_size"] == "canvas")
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
    def rotated_canvas_size(self) -> int:
        """The largest canvas the rotation acts on (the resize's output with its zero padding)."""
        return max(resized + 2 * padding for _, resized, padding in map(self.scaled, self.scales))

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


@dataclass(frozen=True)
class Sampling:
    """A batch's chains as maps from output pixel coordinates (x, y) (pixel centers at integers).

    ``source`` maps them to the input image's pixels, u = A (x, y) + b. Each zero-filling resample of Lucent's
    chain contributes a support: the coordinate v its input is read at, and the pixel range 0..high holding
    its input. Before the rotation that coordinate is u scaled and shifted per axis (``source_supports``:
    v = scale * u + offset); after it, (x, y) shifted (``output_supports``: v = (x, y) + offset).
    """
    source: np.ndarray  # [n, 2, 3] float64
    source_supports: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]  # (scale [n], offset [n, 2], high [n])
    output_supports: tuple[tuple[np.ndarray, np.ndarray], ...]  # (offset [n, 2], high [n])
    sizes: np.ndarray  # [n] int: each image's output size


@dataclass(frozen=True)
class Chain:
    """One step's chain per image, in Lucent's pixel terms (arrays over the batch, float64)."""
    before: int  # the canvas the first jitter and the resize read (image plus reflect padding)
    resized: np.ndarray  # S = ceil(scale * before)
    padding: np.ndarray  # the resize's zero padding p
    rotated: np.ndarray  # S + 2p: the canvas the rotation and the second jitter act on
    factor: np.ndarray  # the resize (align_corners=True) from output to input pixels: (before - 1) / (S - 1)
    cos: np.ndarray
    sin: np.ndarray
    first: np.ndarray  # [n, 2] the first jitter's shift in pixels
    second: np.ndarray  # [n, 2] the second jitter's shift in pixels
    top: np.ndarray  # the center crop's first row and column


def chain(schedule: Schedule, draws: Draws) -> Chain:
    """Each image's canvas sizes, resize factor, rotation and shifts in pixels, as Lucent's chain has them."""
    scale = draws.scale.numpy()
    radians = np.radians(draws.angle.numpy())
    before = schedule.image_size + 2 * schedule.pad
    resized = np.ceil(scale * before).astype(np.int64)  # as Lucent's np.ceil(scale * d)
    padding = np.maximum(0, np.ceil((before - resized) / 2)).astype(np.int64)
    rotated = resized + 2 * padding
    if schedule.padded:
        top = np.rint((rotated - schedule.image_size) / 2)  # CenterCrop's round(): half to even, as np.rint
        # kornia 0.4's translate moves an n-pixel canvas by d * n / (n - 1) (see the module docstring).
        second = draws.second_shift.numpy() * (rotated / (rotated - 1))[:, None]
        first = draws.first_shift.numpy() * (before / (before - 1))
    else:
        top = np.zeros(len(scale))
        second = first = np.zeros((len(scale), 2))
    return Chain(before, resized, padding, rotated, (before - 1) / (resized - 1), np.cos(radians), np.sin(radians),
                 first, second, top)


def sampling(schedule: Schedule, draws: Draws) -> Sampling:
    """The composed inverse maps of a batch's draws (float64, vectorized over images)."""
    steps = chain(schedule, draws)
    cos, sin, factor, pad = steps.cos, steps.sin, steps.factor, schedule.pad
    center = (steps.rotated - 1) / 2
    # q2 = (x, y) + top - second; q1 = R^T (q2 - c) + c; u = factor (q1 - padding) - first - pad.
    shift = steps.top[:, None] - steps.second - center[:, None]  # q2 - c = (x, y) + shift
    turned = np.stack([cos * shift[:, 0] - sin * shift[:, 1], sin * shift[:, 0] + cos * shift[:, 1]], axis=1)
    linear = factor[:, None, None] * np.stack([np.stack([cos, -sin], axis=1), np.stack([sin, cos], axis=1)], axis=1)
    offset = factor[:, None] * (turned + (center - steps.padding)[:, None]) - steps.first - pad
    source = np.concatenate([linear, offset[:, :, None]], axis=2)
    # The rotation reads the resized image (pixels 0..S-1 after its zero padding): (u + pad + first) / factor.
    rotation_input = (1 / factor, (pad + steps.first) / factor[:, None], steps.resized - 1.0)
    n = len(factor)
    if schedule.padded:
        first_jitter_input = (np.ones(n), np.full((n, 2), float(pad)), np.full(n, steps.before - 1.0))
        second_jitter_input = (steps.top[:, None] - steps.second, steps.rotated - 1.0)
        return Sampling(source, (first_jitter_input, rotation_input), (second_jitter_input,),
                        np.full(n, schedule.image_size))
    return Sampling(source, (rotation_input,), (), steps.rotated)


@dataclass
class Transformed:
    """A batch after the chain: image i is ``canvas[i, :, :sizes[i], :sizes[i]]`` (``sizes[i]`` is the whole
    canvas when the schedule forwards on it: the image in its top left corner, zeros right and below)."""
    canvas: torch.Tensor  # [n, 3, canvas, canvas]; zero outside each image's own size
    sizes: list[int]  # what each image's forward reads of the canvas
    drawn: list[int] | None = None  # each image's own size, where it differs from ``sizes`` (on the canvas)

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


def affine_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """``F.affine_grid(theta, [n, 1, size, size], align_corners=True)``, built as two broadcast sums: the
    grid's x is theta[0, 0] x + theta[0, 2] (a row) plus theta[0, 1] y (a column), and so on; F.affine_grid's
    batched matmul with an inner size of 3 costs more than the resample itself on a CPU."""
    base = torch.linspace(-1.0, 1.0, size, device=theta.device, dtype=theta.dtype)
    columns = theta[:, :, 0, None] * base + theta[:, :, 2, None]  # [n, 2, size]: the x-dependent part
    rows = theta[:, :, 1, None] * base  # [n, 2, size]: the y-dependent part
    return torch.stack([columns[:, axis, None, :] + rows[:, axis, :, None] for axis in range(2)], dim=-1)


def _tent(coordinate: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """The bilinear weight of pixels 0..high at a coordinate: 1 inside, falling to 0 one pixel outside."""
    return torch.minimum(coordinate + 1.0, high + 1.0 - coordinate).clamp_(0.0, 1.0)


def apply(images: torch.Tensor, schedule: Schedule, draws: Draws, resample: str = "staged") -> Transformed:
    """The chain on a batch [n, 3, H, W] in [0, 1], image i with draws row i.

    ``resample="staged"``: Lucent's sequence of resamples (jitter, resize, rotation, jitter), each one
    batched call with per-image maps, so Lucent's repeated interpolation is kept (to float rounding) at two
    to four resamples per step. ``"fused"``: one resample of the composed map.
    """
    n, _, height, width = images.shape
    if height != width or height != schedule.image_size:
        raise ValueError(f"images are {height}x{width}; the schedule is for {schedule.image_size} px squares")
    if resample == "staged":
        return _apply_staged(images, schedule, draws)
    if resample != "fused":
        raise ValueError(f"resample {resample!r}: one of {RESAMPLES}")
    device, canvas = images.device, schedule.canvas_size
    maps = sampling(schedule, draws)

    def per_image(values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(values, dtype=torch.float32, device=device)

    # affine_grid (align_corners=True) hands out normalized coordinates g in [-1, 1]: output pixel
    # x = (g + 1) (canvas - 1) / 2, input pixel u = (g_in + 1) (H - 1) / 2.
    half_out, half_in = (canvas - 1) / 2, (height - 1) / 2
    linear, offset = maps.source[:, :, :2], maps.source[:, :, 2]
    theta = np.concatenate([linear * half_out / half_in,
                            ((linear.sum(axis=2) * half_out + offset) / half_in - 1)[:, :, None]], axis=2)
    grid = affine_grid(per_image(theta), canvas)
    mask = None
    for scale, shift, high in maps.source_supports:
        # v = scale * u + shift, with u = (g + 1) * half_in.
        for axis in range(2):
            weight = _tent(torch.addcmul(per_image(scale * half_in + shift[:, axis])[:, None, None],
                                         per_image(scale * half_in)[:, None, None], grid[..., axis]),
                           per_image(high)[:, None, None])
            mask = weight if mask is None else mask.mul_(weight)
    pixels = torch.arange(canvas, device=device, dtype=torch.float32)
    rows = cols = (pixels[None, :] < per_image(maps.sizes)[:, None]).float()  # the image's own size
    for shift, high in maps.output_supports:
        cols = cols * _tent(pixels[None, :] + per_image(shift[:, 0])[:, None], per_image(high)[:, None])
        rows = rows * _tent(pixels[None, :] + per_image(shift[:, 1])[:, None], per_image(high)[:, None])
    mask = mask.mul_(rows[:, :, None] * cols[:, None, :])
    # Beyond the reflect padding (or the image, unpadded) Lucent's stages see zeros: the sample there is the
    # support's edge value, weighted by the mask, as a bilinear blend with zero weights it.
    reach = 1 + schedule.pad / half_in
    resampled = F.grid_sample(images, grid.clamp_(-reach, reach), mode="bilinear",
                              padding_mode="reflection" if schedule.padded else "border", align_corners=True)
    return Transformed(resampled * mask[:, None], _forward_sizes(schedule, maps.sizes), _drawn(schedule, maps.sizes))


def _forward_sizes(schedule: Schedule, sizes: np.ndarray) -> list[int]:
    """Each image's size for the forward: its own, or the whole canvas (``on_canvas``; the same for padded
    chains, whose images are all the image size)."""
    return [schedule.canvas_size if schedule.on_canvas else int(size) for size in sizes]


def _drawn(schedule: Schedule, sizes: np.ndarray) -> list[int] | None:
    return [int(size) for size in sizes] if schedule.on_canvas and not schedule.padded else None


def _resample(images: torch.Tensor, inverse: np.ndarray, size: int) -> torch.Tensor:
    """Image i sampled bilinearly at ``inverse[i] @ (x, y, 1)`` for output pixels (x, y) of a size x size
    canvas (pixel coordinates), zero beyond its input canvas as kornia's warps and Lucent's pads give."""
    n, _, height, _ = images.shape
    half_out, half_in = (size - 1) / 2, (height - 1) / 2
    linear, offset = inverse[:, :, :2], inverse[:, :, 2]
    theta = np.concatenate([linear * half_out / half_in,
                            ((linear.sum(axis=2) * half_out + offset) / half_in - 1)[:, :, None]], axis=2)
    grid = affine_grid(torch.as_tensor(theta, dtype=torch.float32, device=images.device), size)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _box(size: int, start: np.ndarray, stop: np.ndarray, device: torch.device) -> torch.Tensor:
    """[n, 1, size, size]: 1 on pixels start..stop of both axes, image by image."""
    pixels = torch.arange(size, device=device)
    inside = ((pixels[None, :] >= torch.as_tensor(start, device=device)[:, None])
              & (pixels[None, :] <= torch.as_tensor(stop, device=device)[:, None])).float()
    return (inside[:, :, None] * inside[:, None, :])[:, None]


def _translation(shift: np.ndarray) -> np.ndarray:
    """Inverse maps of translations by ``shift`` [n, 2]: output pixel q reads q - shift."""
    inverse = np.zeros((len(shift), 2, 3))
    inverse[:, 0, 0] = inverse[:, 1, 1] = 1.0
    inverse[:, :, 2] = -shift
    return inverse


def _apply_staged(images: torch.Tensor, schedule: Schedule, draws: Draws) -> Transformed:
    """Lucent's sequence of resamples with per-image maps; images on canvases as large as any draw's."""
    steps, n, device = chain(schedule, draws), len(images), images.device
    canvas = schedule.rotated_canvas_size
    if schedule.padded:
        images = F.pad(images, [schedule.pad] * 4, mode="reflect")
        images = _resample(images, _translation(steps.first), steps.before)
    # The resize (align_corners=True) and its zero padding: canvas pixel q reads factor (q - p).
    resize = np.zeros((n, 2, 3))
    resize[:, 0, 0] = resize[:, 1, 1] = steps.factor
    resize[:, :, 2] = (-steps.factor * steps.padding)[:, None]
    images = _resample(images, resize, canvas) * _box(canvas, steps.padding, steps.padding + steps.resized - 1, device)
    # The rotation about each canvas's center c: q reads R^T (q - c) + c.
    center, cos, sin = (steps.rotated - 1) / 2, steps.cos, steps.sin
    turn = np.stack([np.stack([cos, -sin, center * (1 - cos + sin)], axis=1),
                     np.stack([sin, cos, center * (1 - sin - cos)], axis=1)], axis=1)
    images = _resample(images, turn, canvas) * _box(canvas, np.zeros(n, dtype=np.int64), steps.rotated - 1, device)
    if not schedule.padded:
        return Transformed(images, _forward_sizes(schedule, steps.rotated), _drawn(schedule, steps.rotated))
    # The second jitter and the center crop: output pixel x reads x + top - second.
    images = _resample(images, _translation(steps.second - steps.top[:, None]), schedule.image_size)
    return Transformed(images, [schedule.image_size] * n)

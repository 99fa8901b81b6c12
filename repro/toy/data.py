"""A procedural object-recognition world where objects appear at many scales.

Each image holds one object of a class (disc, ring, square, ...) on a textured background. The object's
size is drawn log-uniformly over ``[scale_min, scale_max]`` pixels (the diameter of its circumscribed
circle), its position, colour and shading at random and its tilt within ``±max_tilt_deg`` of upright (as most
objects in photographs are); the background is a smooth two-colour noise field with finer texture and pixel
grain. Colour and size are drawn independently of the class, so only shape tells classes apart.

Image ``index`` of a split has class ``index % len(classes)`` and is drawn from its own random generator
seeded by ``(seed, split, index)``: any image can be regenerated alone, and generation in parallel gives
the same bytes as generation in order.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Mapping

import numpy as np
from PIL import Image, ImageDraw

from repro.errors import UserError

# Bump when a change to drawing changes the images a seed produces.
GENERATOR_VERSION = 1
MANIFEST_NAME = "toy_manifest.json"
# Shapes are drawn at this many times the image resolution and box-filtered down: antialiased edges.
SUPERSAMPLE = 4
# An object's colour must lie at least this far (RGB in [0, 1]) from the background behind it.
MIN_COLOUR_DISTANCE = 0.5


# ---------------------------------------------------------------- shapes, in units of the circumscribed radius



@dataclass(frozen=True)
class Circle:
    radius: float = 1.0
    centre: tuple[float, float] = (0.0, 0.0)


# A part is a polygon's vertices [k, 2] or a circle, with its fill: 255 draws the shape, 0 cuts a hole.
Part = tuple[np.ndarray | Circle, int]


def _regular(corners: int, radius: float = 1.0, turn: float = 0.0, centre=(0.0, 0.0)) -> np.ndarray:
    angles = turn + 2 * np.pi * np.arange(corners) / corners
    return np.stack([centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)], axis=1)


def _star() -> np.ndarray:
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
    angles = -np.pi / 2 + 2 * np.pi * np.arange(10) / 10  # a point upwards (image y grows down)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _plus(half_width: float = 0.22) -> np.ndarray:
    w, arm = half_width, np.sqrt(1 - half_width**2)
    quarter = [(w, arm), (w, w), (arm, w)]
    points = []
    for turn in range(4):  # the same L-shaped corner, rotated four times
        c, s = np.cos(-turn * np.pi / 2), np.sin(-turn * np.pi / 2)
        points += [(x * c - y * s, x * s + y * c) for x, y in quarter]
    return np.array(points)


def _arrow() -> np.ndarray:
    return np.array([(1.0, 0.0), (0.1, 0.55), (0.1, 0.18), (-0.98, 0.18), (-0.98, -0.18), (0.1, -0.18), (0.1, -0.55)])


def _bars() -> list[Part]:
    half = np.sqrt(0.5)  # three bars filling the square inscribed in the unit circle
    bars = []
    for centre in (-0.8 * half, 0.0, 0.8 * half):
        top, bottom = centre - 0.2 * half, centre + 0.2 * half
        bars.append((np.array([(-half, top), (half, top), (half, bottom), (-half, bottom)]), 255))
    return bars


SHAPES: dict[str, list[Part]] = {
    "disc": [(Circle(), 255)],
    "ring": [(Circle(), 255), (Circle(0.6), 0)],
    "square": [(_regular(4, turn=np.pi / 4), 255)],
    "triangle": [(_regular(3, turn=-np.pi / 2), 255)],
    "plus": [(_plus(), 255)],
    "star": [(_star(), 255)],
    "crescent": [(Circle(), 255), (Circle(0.8, centre=(0.45, 0.0)), 0)],
    "frame": [(_regular(4, turn=np.pi / 4), 255), (_regular(4, 0.62, turn=np.pi / 4), 0)],
    "arrow": [(_arrow(), 255)],
    "bars": _bars(),
}
DEFAULT_CLASSES = tuple(SHAPES)


# ---------------------------------------------------------------- the world and one image


@dataclass(frozen=True)
class ToyWorld:
    """What a toy dataset looks like: its classes, image size and range of object sizes (pixels)."""

    classes: tuple[str, ...] = DEFAULT_CLASSES
    image_size: int = 64
    scale_min: float = 12.0
    scale_max: float = 56.0
    max_tilt_deg: float = 20.0

    def __post_init__(self):
        unknown = [name for name in self.classes if name not in SHAPES]
        if unknown:
            raise UserError(f"unknown toy classes {unknown}; known: {', '.join(SHAPES)}")
        if not 0 < self.scale_min <= self.scale_max <= self.image_size:
            raise UserError(f"object scales {self.scale_min}-{self.scale_max} px must fit a {self.image_size} px image")

    @classmethod
    def from_profile(cls, toy: Mapping) -> "ToyWorld":
        low, high = toy.get("scale_px", (cls.scale_min, cls.scale_max))
        return cls(
            classes=tuple(toy.get("classes", DEFAULT_CLASSES)),
            image_size=int(toy.get("image_size", cls.image_size)),
            scale_min=float(low),
            scale_max=float(high),
            max_tilt_deg=float(toy.get("max_tilt_deg", cls.max_tilt_deg)),
        )

    @property
    def folders(self) -> list[str]:
        """Class folder names; they sort in class order, as torchvision's ImageFolder labels them."""
        return [f"c{label:02d}_{name}" for label, name in enumerate(self.classes)]


@dataclass(frozen=True)
class ObjectRecord:
    label: int
    scale_px: float
    centre_xy: tuple[float, float]
    angle_deg: float


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image; the split enters through a stable checksum of its name."""
    return np.random.default_rng([int(seed), zlib.crc32(split.encode()), int(index)])


@lru_cache(maxsize=None)
def _cubic_upsampler(cells: int, size: int) -> np.ndarray:
    """[size, cells] weights of Keys' cubic interpolation (a = -0.5) from ``cells`` samples to ``size`` pixels."""
    position = (np.arange(size) + 0.5) * cells / size - 0.5
    base = np.floor(position).astype(int)
    weights = np.zeros((size, cells), np.float32)
    for offset in range(-1, 3):
        distance = np.abs(position - (base + offset))
        kernel = np.where(distance <= 1, 1.5 * distance**3 - 2.5 * distance**2 + 1,
                          -0.5 * distance**3 + 2.5 * distance**2 - 4 * distance + 2)
        kernel = np.where(distance < 2, kernel, 0)
        np.add.at(weights, (np.arange(size), np.clip(base + offset, 0, cells - 1)), kernel)
    return weights


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    """Random values on a coarse grid, cubically enlarged: noise with features of about size/cells px."""
    grid = rng.random((channels, cells, cells), dtype=np.float32)
    upsample = _cubic_upsampler(cells, size)
    return (upsample @ grid @ upsample.T).transpose(1, 2, 0)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Two related colours mixed by a smooth noise field, plus a finer texture: float RGB in [0, 1].

    The background varies less than an object stands out from it, so the object's outline carries the
    class while the texture still has to be ignored.
    """
    base = rng.random(3, dtype=np.float32)
    colours = np.stack([base, np.clip(base + rng.uniform(-0.35, 0.35, 3), 0, 1)]).astype(np.float32)
    mix = np.clip(_smooth_noise(rng, size, int(rng.integers(2, 5)), 1), 0, 1)
    texture = _smooth_noise(rng, size, int(rng.integers(6, 13)), 3) - 0.5
    strength = rng.uniform(0.02, 0.15)
    return np.clip(colours[0] * (1 - mix) + colours[1] * mix + strength * texture, 0, 1)


def _mask(name: str, size: int, centre: np.ndarray, radius: float, angle: float) -> np.ndarray:
    """The object's coverage of each pixel in [0, 1], antialiased by supersampling.

    Continuous coordinates: pixel k spans [k, k + 1). PIL places canvas pixel K at coordinate K and fills
    ellipse boxes inclusively, hence the half-pixel and one-pixel corrections.
    """
    canvas = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    for part, fill in SHAPES[name]:
        if isinstance(part, Circle):
            x, y = (rotation @ np.array(part.centre) * radius + centre) * SUPERSAMPLE
            r = part.radius * radius * SUPERSAMPLE
            draw.ellipse([x - r, y - r, x + r - 1, y + r - 1], fill=fill)
        else:
            points = (part @ rotation.T * radius + centre) * SUPERSAMPLE - 0.5
            draw.polygon([tuple(point) for point in points], fill=fill)
    return np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.float32) / 255.0


def _object_colour(rng: np.random.Generator, background: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A random colour that stands out from the background behind the object (the farthest of 16 if none does)."""
    behind = mask.ravel() @ background.reshape(-1, 3) / max(float(mask.sum()), 1e-6)
    candidates = rng.random((16, 3))
    distance = np.linalg.norm(candidates - behind, axis=1)
    far_enough = np.flatnonzero(distance >= MIN_COLOUR_DISTANCE)
    return candidates[far_enough[0] if far_enough.size else distance.argmax()]


@lru_cache(maxsize=None)
def _pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return x, y


def _shading(rng: np.random.Generator, size: int, centre: np.ndarray, radius: float) -> np.ndarray:
    """A linear light gradient across the object, so its surface is not one flat colour."""
    direction = rng.uniform(0, 2 * np.pi)
    strength = rng.uniform(0.0, 0.3)
    x, y = _pixel_centres(size)
    along = ((x - centre[0]) * np.cos(direction) + (y - centre[1]) * np.sin(direction)) / radius
    return 1 + strength * np.clip(along, -1, 1)[..., None]


def render(world: ToyWorld, seed: int, split: str, index: int) -> tuple[np.ndarray, ObjectRecord]:
    """Image ``index`` of ``split``: uint8 [H, W, 3] and what was drawn."""
    rng = image_rng(seed, split, index)
    size, label = world.image_size, index % len(world.classes)
    scale = float(np.exp(rng.uniform(np.log(world.scale_min), np.log(world.scale_max))))
    radius = scale / 2
    centre = rng.uniform(radius, size - radius, 2)
    angle = np.radians(rng.uniform(-world.max_tilt_deg, world.max_tilt_deg))
    background = _background(rng, size)
    mask = _mask(world.classes[label], size, centre, radius, angle)[..., None]
    colour = _object_colour(rng, background, mask[..., 0])
    painted = np.clip(colour * _shading(rng, size, centre, radius), 0, 1)
    grain = rng.uniform(0.0, 0.04) * rng.standard_normal(background.shape, dtype=np.float32)
    image = background * (1 - mask) + painted * mask + grain
    pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    record = ObjectRecord(label, round(scale, 3), (round(float(centre[0]), 3), round(float(centre[1]), 3)),
                          round(float(np.degrees(angle)), 3))
    return pixels, record


# ---------------------------------------------------------------- splits


@dataclass
class ToySplit:
    """One split in memory: images uint8 [N, H, W, 3], labels, and each object's size in pixels."""

    world: ToyWorld
    seed: int
    name: str
    images: np.ndarray
    labels: np.ndarray
    records: list[ObjectRecord] = field(repr=False)

    @property
    def per_class(self) -> int:
        return len(self.labels) // len(self.world.classes)

    @property
    def scales(self) -> np.ndarray:
        return np.array([record.scale_px for record in self.records], dtype=np.float32)

    def relative_path(self, index: int) -> str:
        return f"{self.world.folders[self.labels[index]]}/{index:05d}.png"


def _render_range(world: ToyWorld, seed: int, split: str, indices: range) -> list[tuple[np.ndarray, ObjectRecord]]:
    return [render(world, seed, split, index) for index in indices]


def generate(world: ToyWorld, seed: int, split: str, per_class: int, workers: int = 1) -> ToySplit:
    """All ``per_class × classes`` images of a split; the same bytes for any number of workers."""
    total = per_class * len(world.classes)
    chunk = 256
    pieces = [range(start, min(start + chunk, total)) for start in range(0, total, chunk)]
    work = partial(_render_range, world, seed, split)
    if workers > 1 and len(pieces) > 1:
        with ProcessPoolExecutor(workers) as pool:
            rendered = [item for piece in pool.map(work, pieces) for item in piece]
    else:
        rendered = [item for piece in map(work, pieces) for item in piece]
    size = world.image_size
    images = np.stack([pixels for pixels, _ in rendered]) if rendered else np.zeros((0, size, size, 3), np.uint8)
    records = [record for _, record in rendered]
    labels = np.array([record.label for record in records], dtype=np.int64)
    return ToySplit(world, seed, split, images, labels, records)


def manifest(split: ToySplit) -> dict:
    """What a written split holds: seed, generator version, and per image its class and object scale."""
    return {
        "generator": "repro.toy.data",
        "generator_version": GENERATOR_VERSION,
        "seed": split.seed,
        "split": split.name,
        "per_class": split.per_class,
        "image_size": split.world.image_size,
        "classes": split.world.folders,
        "scale_px_range": [split.world.scale_min, split.world.scale_max],
        "max_tilt_deg": split.world.max_tilt_deg,
        "scale_definition": "diameter in pixels of the circle circumscribing the object",
        "images": {
            "path": [split.relative_path(index) for index in range(len(split.labels))],
            "label": split.labels.tolist(),
            "scale_px": [record.scale_px for record in split.records],
            "centre_xy": [list(record.centre_xy) for record in split.records],
            "angle_deg": [record.angle_deg for record in split.records],
        },
    }


def write_split(root: Path, split: ToySplit) -> Path:
    """``root/<split>/<class folder>/<index:05d>.png`` plus ``root/<split>/toy_manifest.json``.

    Written in a staging folder beside it and swapped in whole under a lock, so a reader (a second run on the
    same machine) never sees a half-written split, and of two writers of the same split the first one's stays."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    split_dir = root / split.name
    _remove_abandoned_staging(root, split.name)
    staging = Path(tempfile.mkdtemp(prefix=f".{split.name}-{os.getpid()}-", dir=root))
    try:
        os.chmod(staging, root.stat().st_mode & 0o777)  # mkdtemp's 0700 would hide the split from other users
        for folder in split.world.folders:
            (staging / folder).mkdir(parents=True, exist_ok=True)
        for index, pixels in enumerate(split.images):
            Image.fromarray(pixels).save(staging / split.relative_path(index), optimize=False)
        # ImageFolder takes only directories as classes, so a file beside them is not mistaken for one.
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest(split)))
        with open(root / f".{split.name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _swap_in(staging, split_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return split_dir


def _swap_in(new: Path, target: Path) -> None:
    """Put ``new`` at ``target`` (the caller holds the split's lock). An equal split already there is kept;
    another (other settings, or a half-written one from an older version) is moved aside, then removed."""
    with contextlib.suppress(OSError):
        if (target / MANIFEST_NAME).read_text() == (new / MANIFEST_NAME).read_text():
            return
    aside = None
    if target.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-{os.getpid()}-", dir=target.parent))
        os.replace(target, aside / target.name)
    os.rename(new, target)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _remove_abandoned_staging(root: Path, name: str) -> None:
    """Staging folders of writers that no longer run (killed mid-write): ``.<name>-<pid>-*``."""
    for folder in root.glob(f".{name}-*-*"):
        pid = folder.name.split("-")[-2]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # PermissionError: it runs, as another user
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def write_imagefolder(root: Path, seed: int, per_class: Mapping[str, int], world: ToyWorld = ToyWorld(),
                      workers: int = 1) -> dict[str, Path]:
    """Generate and write each split (name → images per class) in ImageFolder layout; return their folders."""
    return {name: write_split(root, generate(world, seed, name, count, workers)) for name, count in per_class.items()}


def read_manifest(split_dir: Path) -> dict:
    return json.loads((Path(split_dir) / MANIFEST_NAME).read_text())

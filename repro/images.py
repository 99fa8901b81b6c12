"""Image folders, decoding, the eval transform and the decoded-image cache.

Images come from a folder in torchvision's ImageFolder layout (ImageNet validation: ``val/<wnid>/*.JPEG``);
labels are the index of the class folder in sorted order, exactly as ``torchvision.datasets.ImageFolder``
assigns them. The eval transform is ``Resize(resize), CenterCrop(crop), ToTensor, Normalize(mean, std)``
with the profile's ``natural.resize``, ``natural.crop`` and ``model.normalize_mean/std``.

The decoded-image cache
-----------------------
The natural-image pass stores every image once more as uint8 RGB, so later stages (the ablation's scale
crops) never decode a JPEG again. Group ``image_cache`` of the run's store:

* ``pixels`` uint8 (image, y, x, rgb): ``CenterCrop(resize)`` of ``Resize(resize)`` of the image, a
  ``resize`` x ``resize`` square (256 x 256 in the paper profile; 50,000 x 256 x 256 x 3 bytes, about
  9.8 GB before compression, for ImageNet's validation set).
* ``resized_height``, ``resized_width`` int (image): the size of the image after ``Resize(resize)``,
  before the crop; with them any ``CenterCrop(size)``, ``size <= resize``, of the resized image is cut
  from the square exactly (:func:`center_crop_from_cache`).
* ``corrupt`` bool (image): the image could not be decoded; its square is zeros.
* coords ``image`` (index), ``path`` (relative to the folder), ``label``; the same as group ``natural``.

Why the sizes: torchvision's CenterCrop starts at ``round((length - size) / 2)`` with Python's
round-half-to-even, so CenterCrop(size) of CenterCrop(resize) starts where CenterCrop(size) of the whole
resized image does for every image only when ``(resize - size) % 4 == 0``. That holds for the paper's eval
crop (256 - 224 = 32), so ``eval_from_cache(images, profile)`` is exact there without sizes; for other
sizes (the ablation's scale crops, small test profiles) pass the stored sizes.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset, pil_loader
from torchvision.transforms import functional as TF

from repro.errors import UserError
from repro import resources
from repro.settings import as_profile
from repro.hashing import digest, file_sha256

CACHE_GROUP = "image_cache"
LAYOUT_HINT = "expected an ImageFolder layout DIR/<class>/<image>, such as ImageNet's val/<wnid>/*.JPEG"


class CorruptImageWarning(UserWarning):
    """Some images could not be decoded; they are recorded in the store and left out of the results."""


# ---------------------------------------------------------------- the folder


@dataclass(frozen=True)
class ImageList:
    """The images of an ImageFolder, in torchvision's order (sorted class folders, then sorted files)."""

    root: Path
    paths: tuple[str, ...]  # relative to root, with "/" separators
    labels: tuple[int, ...]
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def absolute(self, index: int) -> Path:
        return self.root / self.paths[index]


def find_images(root) -> ImageList:
    """The images under ``root`` with their ImageFolder labels; UserError for anything else."""
    if not root:
        raise UserError("no image folder given: pass --images DIR or set RESIDUAL_STREAM_IMAGES")
    root = Path(root).expanduser().resolve()
    if not root.exists():
        raise UserError(f"image folder {root} does not exist ({LAYOUT_HINT})")
    if not root.is_dir():
        raise UserError(f"image folder {root} is not a directory ({LAYOUT_HINT})")
    try:
        classes, class_to_index = find_classes(root)
        samples = make_dataset(root, class_to_index, extensions=IMG_EXTENSIONS)
    except OSError as error:  # FileNotFoundError for a wrong layout; PermissionError and the like
        raise UserError(f"{root} is not an image folder: {error} ({LAYOUT_HINT})") from None
    paths = tuple(Path(path).relative_to(root).as_posix() for path, _ in samples)
    return ImageList(root, paths, tuple(label for _, label in samples), tuple(classes))


# ---------------------------------------------------------------- transforms


def natural_sizes(profile: Mapping) -> tuple[int, int]:
    """The profile's (resize, crop) of natural images."""
    natural = as_profile(profile).natural
    return natural.resize, natural.crop


def eval_transform(profile: Mapping) -> transforms.Compose:
    """The reference eval transform on a PIL image: Resize, CenterCrop, ToTensor, Normalize."""
    resize, crop = natural_sizes(profile)
    model = profile["model"]
    return transforms.Compose([
        transforms.Resize(resize),
        transforms.CenterCrop(crop),
        transforms.ToTensor(),
        transforms.Normalize(model["normalize_mean"], model["normalize_std"]),
    ])


def normalize(tensor01: torch.Tensor, profile: Mapping) -> torch.Tensor:
    """Normalize(mean, std) of the profile on a [0, 1] tensor [..., 3, H, W] (a new tensor)."""
    model = profile["model"]
    return TF.normalize(tensor01, model["normalize_mean"], model["normalize_std"])


def as_tensor(images) -> torch.Tensor:
    """A tensor view of images given as a tensor, a numpy array or an xarray DataArray."""
    if isinstance(images, torch.Tensor):
        return images
    array = np.asarray(images)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def to_unit_float(images) -> torch.Tensor:
    """uint8 [N, H, W, 3] → float32 [N, 3, H, W] in [0, 1], computed exactly as ToTensor does."""
    images = as_tensor(images)
    return images.permute(0, 3, 1, 2).contiguous().to(torch.get_default_dtype()).div(255)


def center_start(length: int, size: int) -> int:
    """Where torchvision's CenterCrop(size) starts along an edge of ``length`` pixels."""
    return int(round((length - size) / 2.0))


def load_rgb(path) -> Image.Image:
    """Decode an image file to RGB, as ImageFolder's default loader does."""
    return pil_loader(path)


def decode_rgb(data: bytes) -> Image.Image:
    """Decode an image file's bytes to RGB, as ``load_rgb`` does for a path."""
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def cache_square(image: Image.Image, resize: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The cached square of a decoded image, uint8 [resize, resize, 3], and the resized (height, width)."""
    resized = transforms.Resize(resize)(image)
    square = transforms.CenterCrop(resize)(resized)
    return np.array(square, dtype=np.uint8), (resized.height, resized.width)


def center_crop_from_cache(images, size: int, resized_height=None, resized_width=None) -> torch.Tensor:
    """CenterCrop(size) of each resized image, cut from its cached square: uint8 [N, size, size, 3].

    With the stored ``resized_height``/``resized_width`` the crop equals torchvision's CenterCrop(size) of
    the resized image for every size up to the square's. Without them the square's own center crop is
    used, which is the same only when ``(square - size) % 4 == 0``; other sizes raise ValueError.
    """
    images = as_tensor(images)
    square = images.shape[1]
    if not 0 < size <= square:
        raise ValueError(f"crop size {size} does not fit the cached {square} px square")
    if resized_height is None or resized_width is None:
        if (square - size) % 4:
            raise ValueError(f"CenterCrop({size}) of a {square} px cached square needs the resized sizes: "
                             f"(square - size) is not a multiple of 4, so torchvision's rounding may differ")
        start = center_start(square, size)
        return images[:, start:start + size, start:start + size]
    tops = _offsets_in_square(resized_height, square, size)
    lefts = _offsets_in_square(resized_width, square, size)
    return torch.stack([image[top:top + size, left:left + size] for image, top, left in zip(images, tops, lefts)])


def _offsets_in_square(lengths, square: int, size: int) -> list[int]:
    # Corrupt images have length 0; their (zero) square is cropped at its own center.
    return [center_start(length, size) - center_start(length, square) if length else center_start(square, size)
            for length in np.asarray(lengths).tolist()]


def eval_from_cache(images, profile: Mapping, resized_height=None, resized_width=None) -> torch.Tensor:
    """The eval transform's output, float32 [N, 3, crop, crop], from cached squares uint8 [N, R, R, 3].

    Bitwise equal to ``eval_transform(profile)`` on the decoded image. The resized sizes are needed
    unless ``(resize - crop) % 4 == 0`` (the paper's 256/224 needs none); see :func:`center_crop_from_cache`.
    """
    resize, crop = natural_sizes(profile)
    images = as_tensor(images)
    if images.shape[1:] != (resize, resize, 3):
        raise ValueError(f"expected cached squares [N, {resize}, {resize}, 3], got {list(images.shape)}")
    crops = center_crop_from_cache(images, crop, resized_height, resized_width)
    return normalize(to_unit_float(crops), profile)


# ---------------------------------------------------------------- decoding in DataLoader workers


class DecodedSquares(Dataset):
    """Item i: (i, cached square uint8 [R, R, 3], resized height, width, decode error or "").

    Decoding failures are caught per image, in the worker, and returned as a flag with a zero square,
    so one bad file neither stops the pass nor disappears silently.
    """

    def __init__(self, images: ImageList, resize: int):
        self.images = images
        self.resize = resize

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        """Reading errors (permission, I/O) are returned apart from decoding errors: they are not the image's fault."""
        blank = torch.zeros(self.resize, self.resize, 3, dtype=torch.uint8)
        try:
            data = self.images.absolute(index).read_bytes()
        except OSError as error:
            return index, blank, 0, 0, "", f"{type(error).__name__}: {error.strerror or error}"
        try:
            decoded = decode_rgb(data)
        except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
            return index, blank, 0, 0, f"{type(error).__name__}: {error}", ""
        square, (height, width) = cache_square(decoded, self.resize)
        return index, torch.from_numpy(square), height, width, "", ""


def raise_read_errors(images: ImageList, index, read_errors: Sequence[str]) -> None:
    """Stop the run on an image that could not be read (it is not recorded as corrupt)."""
    for i, error in zip(index.tolist(), read_errors):
        if error:
            raise UserError(f"cannot read image {images.absolute(i)} ({error}); fix it and rerun "
                            "(finished shards are kept)")


def listing_digest(images: ImageList) -> str:
    """What identifies an image folder's content: relative paths, labels and each file's SHA-256."""
    return digest({"paths": list(images.paths), "labels": list(images.labels),
                   "sha256": content_hashes(images.root, images.paths)})


def content_hashes(root: Path, paths: Sequence[str]) -> list[str]:
    """Each file's SHA-256, computed once and kept in a cache (``resources.cache_dir``) keyed by the file's
    path, size and modification time, so a rerun reads no file it has hashed and an edited file is hashed
    again (an edit that keeps the size still changes the modification time)."""
    cache_file = resources.cache_dir() / "content" / f"{hashlib.sha256(str(root).encode()).hexdigest()[:24]}.json"
    try:
        cached = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cached = {}
    cached = cached if isinstance(cached, dict) else {}
    hashes, fresh = [], {}
    for relative in paths:
        stat = (root / relative).stat()
        key = [stat.st_size, stat.st_mtime_ns]
        known = cached.get(relative)
        if not (isinstance(known, list) and len(known) == 3 and known[:2] == key):
            known = [*key, file_sha256(root / relative)]
        fresh[relative] = known
        hashes.append(known[2])
    if fresh != cached:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            temporary = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps(fresh))
            os.replace(temporary, cache_file)
        except OSError:
            pass  # a cache that cannot be written only costs the hashing again
    return hashes


def warn_corrupt(paths: Sequence[str], total: int, errors: Mapping[str, str] | None = None) -> None:
    """One warning that counts the images left out."""
    if not paths:
        return
    errors = errors or {}
    shown = "; ".join(f"{path} ({errors[path]})" if path in errors else path for path in list(paths)[:5])
    more = f" and {len(paths) - 5} more" if len(paths) > 5 else ""
    warnings.warn(f"{len(paths)} of {total} images could not be decoded and are left out "
                  f"(recorded in the store as `corrupt`): {shown}{more}", CorruptImageWarning, stacklevel=2)


# ---------------------------------------------------------------- reading the cache


def open_cache(store) -> xr.Dataset:
    """The decoded-image cache of a store (see the module docstring); UserError when it is not complete."""
    if not store.has(CACHE_GROUP) or not store.group_attrs(CACHE_GROUP).get("complete"):
        raise UserError(f"store {store.path} has no complete image cache; run `repro natural` first")
    return store.dataset(CACHE_GROUP)

"""Natural-image center activations of every tap, and each channel's top-k exemplar images.

One pass over an ImageFolder (the ImageNet validation set in the paper profile): each batch is decoded
once (in DataLoader workers), one forward reads every tap of every block (``repro.model.run``, center
neurons only; a tensor two taps share is computed once and stored under both labels), and the
activations are written shard by shard. Memory is bounded by one shard, whatever the number of images: a
shard is one unit (``make_shard``), whose buffers are freed when it returns, before the next shard's are
made (a loop that rebinds one buffer name holds two shards' buffers at the moment the next is allocated).
Shards are independent, so on Dask workers (``repro.executor``) they run side by side.

Group ``natural``:

* ``activation`` (block, tap, channel, image): float32, or float16 with ``natural.dtype = "float16"``;
  NaN for corrupt images and for channels a narrower block lacks.
* ``top_images`` int64 and ``top_values`` float32 (block, tap, channel, rank): the ``natural.top_k``
  images with the largest center value, highest first, ties to the lower image index; corrupt images
  never rank; -1 / NaN where fewer than k images are valid. Values are float32 even for a float16 cube.
* ``valid`` bool (block, channel); ``corrupt`` bool (image).
* ``shard_top_values`` / ``shard_top_images`` (shard, block, tap, channel, rank): each shard's own top-k,
  the resumable state of the running top-k (see below).
* coords ``image`` (index), ``path`` (relative to the folder), ``label`` (ImageFolder class index).
* attrs: provenance (``stage="natural"``, ``images_root``) and, once complete, ``corrupt_images``.

The decoded-image cache (group ``image_cache``, see ``repro.images``) is written in the same pass.

Resuming: a unit is an image shard (``natural.shard_size`` images). It writes the shard's cache squares,
then its activations and its own top-k candidates, and only then is marked done. At the end the
candidates are merged shard by shard. The order (value descending, then image index ascending) is
total, so every channel's global top-k lies within the union of the shards' top-k and the merge equals a
full sort; a resumed run merges the same stored candidates as an uninterrupted one. Batches never cross
a shard boundary, so a shard is computed by the same batches whichever shards a run has left to do, and
its floats are identical too.

Taps hold true values (``aliased`` is for feature visualizations only): the authors' activation
extraction cloned its hooked tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import dask.array as da
import numpy as np
import torch
import xarray as xr
from torch.utils.data import DataLoader

from repro import images as imgs
from repro import profiles
from repro.errors import UserError
from repro.executor import Serial
from repro.model import TAPS, TapLayout, run as run_model, tap_layout
from repro.settings import NaturalSettings, Profile, as_profile
from repro.stage import Group, Part, Stage, run_stage
from repro.store import Store, labels, provenance

GROUP = "natural"
CACHE_GROUP = imgs.CACHE_GROUP
TOP_K_UNIT = "top-k"
DTYPES = {"float32": np.float32, "float16": np.float16}


# ---------------------------------------------------------------- settings and layout


Settings = NaturalSettings  # the profile's [natural] table (repro.settings), as the stage reads it


def shard_ranges(count: int, shard_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + shard_size, count)) for start in range(0, count, shard_size)]


def shard_unit(shard: int) -> str:
    return f"shard-{shard:05d}"


# ---------------------------------------------------------------- top-k


def top_k(values: np.ndarray, image_index: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest values along the last axis, highest first, ties to the lower image index.

    ``values`` [..., n]; ``image_index`` [n] or [..., n]. NaN never ranks: where fewer than k values are
    finite the tail is NaN with index -1. Returns (values float32 [..., k], indices int64 [..., k]).
    """
    image_index = np.broadcast_to(image_index, values.shape)
    if values.shape[-1] < k:
        padding = [(0, 0)] * (values.ndim - 1) + [(0, k - values.shape[-1])]
        values = np.pad(values, padding, constant_values=np.nan)
        image_index = np.pad(image_index, padding, constant_values=-1)
    order = np.lexsort((image_index, -values), axis=-1)[..., :k]  # NaN sorts last
    top_values = np.take_along_axis(values, order, axis=-1).astype(np.float32)
    top_index = np.take_along_axis(image_index, order, axis=-1).astype(np.int64)
    top_index[np.isnan(top_values)] = -1
    return top_values, top_index


def merge_top_k(first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray], k: int):
    """Top-k of two candidate sets (values, indices), by the same order as :func:`top_k`."""
    return top_k(np.concatenate([first[0], second[0]], axis=-1), np.concatenate([first[1], second[1]], axis=-1), k)


# ---------------------------------------------------------------- store layout


def _image_coords(images: imgs.ImageList) -> dict:
    return {"image": np.arange(len(images)), "path": ("image", labels(images.paths)),
            "label": ("image", np.array(images.labels, dtype=np.int64))}


def _lazy(shape, chunks, dtype, fill):
    return da.full(shape, fill, dtype=dtype, chunks=chunks)


def natural_template(images: imgs.ImageList, layout: TapLayout, settings: Settings) -> xr.Dataset:
    blocks, width, count, k = len(layout.blocks), layout.max_width, len(images), settings.top_k
    shards = len(shard_ranges(count, settings.shard_size))
    grid, candidates = ("block", "tap", "channel"), ("shard", "block", "tap", "channel", "rank")
    shard_chunk = (1, blocks, len(TAPS), width, k)
    return xr.Dataset(
        {
            "activation": (grid + ("image",), _lazy((blocks, len(TAPS), width, count),
                                                    (1, 1, width, settings.shard_size), DTYPES[settings.dtype], np.nan)),
            "top_images": (grid + ("rank",), _lazy((blocks, len(TAPS), width, k), -1, np.int64, -1)),
            "top_values": (grid + ("rank",), _lazy((blocks, len(TAPS), width, k), -1, np.float32, np.nan)),
            "shard_top_images": (candidates, _lazy((shards,) + shard_chunk[1:], shard_chunk, np.int64, -1)),
            "shard_top_values": (candidates, _lazy((shards,) + shard_chunk[1:], shard_chunk, np.float32, np.nan)),
            "corrupt": (("image",), _lazy((count,), settings.shard_size, bool, False)),
            "valid": (("block", "channel"), layout.valid()),
        },
        coords={"block": labels(layout.blocks), "tap": labels(TAPS), "channel": np.arange(width),
                "rank": np.arange(k), "shard": np.arange(shards), **_image_coords(images)},
    )


def cache_images_per_chunk(settings: Settings) -> int:
    """A few images per chunk, dividing the shard so that units write whole chunks."""
    return max(size for size in range(1, 9) if settings.shard_size % size == 0)


def cache_template(images: imgs.ImageList, settings: Settings) -> xr.Dataset:
    count, side, per_chunk = len(images), settings.resize, cache_images_per_chunk(settings)
    return xr.Dataset(
        {
            "pixels": (("image", "y", "x", "rgb"), _lazy((count, side, side, 3), (per_chunk, side, side, 3), np.uint8, 0)),
            "resized_height": (("image",), _lazy((count,), settings.shard_size, np.int32, 0)),
            "resized_width": (("image",), _lazy((count,), settings.shard_size, np.int32, 0)),
            "corrupt": (("image",), _lazy((count,), settings.shard_size, bool, False)),
        },
        coords={"rgb": labels(["r", "g", "b"]), **_image_coords(images)},
    )


def group_settings(images: imgs.ImageList, layout: TapLayout, profile: Mapping) -> dict[str, dict]:
    """What each group's layout and values depend on: the model, natural settings and the image listing."""
    listing = imgs.listing_digest(images)
    return {
        GROUP: {**profiles.read_by(profile, "model", "natural"), "images": listing,
                "layout": {"blocks": layout.blocks, "widths": layout.widths}},
        CACHE_GROUP: {"natural": {key: profile["natural"][key] for key in ("resize", "shard_size")},
                      "images": listing},
    }


# ---------------------------------------------------------------- the pass


class ShardBuffer:
    """One shard's results, filled batch by batch, written as one unit."""

    def __init__(self, shard: int, bounds: tuple[int, int], layout: TapLayout, resize: int):
        self.shard, (self.start, self.stop) = shard, bounds
        count = self.stop - self.start
        self.activation = np.full((len(layout.blocks), len(TAPS), layout.max_width, count), np.nan, np.float32)
        self.pixels = np.zeros((count, resize, resize, 3), np.uint8)
        self.resized = np.zeros((2, count), np.int32)
        self.corrupt = np.zeros(count, bool)
        self.filled = 0

    @property
    def full(self) -> bool:
        return self.filled == self.stop - self.start

    def add(self, index, squares, heights, widths, errors, values: dict, layout: TapLayout) -> None:
        """Take one batch: consecutive images (batches are cut within the shard)."""
        first = int(index[0]) - self.start
        rows = slice(first, first + len(index))
        self.pixels[rows] = squares.numpy()
        self.resized[:, rows] = np.stack([heights.numpy(), widths.numpy()])
        for b, block in enumerate(layout.blocks):
            for t, tap in enumerate(TAPS):
                tap_values = self.activation[b, t]  # a view [channel, image]
                tap_values[:layout.widths[b], rows] = values[layout.source[(block, tap)]].numpy().T
        broken = np.array([bool(error) for error in errors])
        self.corrupt[rows] = broken
        self.activation[..., rows][..., broken] = np.nan  # corrupt images never rank
        self.filled += len(index)


def _batches(shards: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Batches cut within each shard, from its start, so a shard is always computed the same way."""
    return [list(range(first, min(first + batch_size, stop)))
            for start, stop in shards for first in range(start, stop, batch_size)]


def shard_parts(buffer: ShardBuffer, settings: Settings) -> Iterator[Part]:
    """The shard's cache squares, then its activations and top-k candidates: the unit in each group."""
    region = {"image": slice(buffer.start, buffer.stop)}
    cache_part = xr.Dataset({
        "pixels": (("image", "y", "x", "rgb"), buffer.pixels),
        "resized_height": (("image",), buffer.resized[0]),
        "resized_width": (("image",), buffer.resized[1]),
        "corrupt": (("image",), buffer.corrupt),
    })
    yield Part(CACHE_GROUP, shard_unit(buffer.shard), cache_part, region)
    candidates = top_k(buffer.activation, np.arange(buffer.start, buffer.stop), settings.top_k)
    candidate_dims = ("shard", "block", "tap", "channel", "rank")
    natural_part = xr.Dataset({
        "activation": (("block", "tap", "channel", "image"), buffer.activation.astype(DTYPES[settings.dtype])),
        "corrupt": (("image",), buffer.corrupt),
        "shard_top_values": (candidate_dims, candidates[0][None]),
        "shard_top_images": (candidate_dims, candidates[1][None]),
    })
    yield Part(GROUP, shard_unit(buffer.shard), natural_part, {**region, "shard": slice(buffer.shard, buffer.shard + 1)})


def batch_center_values(model, profile, layout: TapLayout, squares, heights, widths) -> dict:
    """Center values of every computed tap for one batch of cached squares.

    Copied out of the full maps (run() returns views of them), so a batch's maps are freed before the
    next batch's forward.
    """
    inputs = imgs.eval_from_cache(squares, profile, heights, widths).to(next(model.parameters()).device)
    values, _ = run_model(model, inputs, layout.computed, center=True, stop=True)
    return {key: value.float().cpu().clone() for key, value in values.items()}


@dataclass(frozen=True)
class PassContext:
    """What every shard of one pass shares (sent to each worker once)."""

    profile: Profile
    images: imgs.ImageList
    layout: TapLayout
    settings: Settings
    loader_workers: int  # DataLoader processes per shard; 0 on Dask workers, which are the parallelism


def make_shard(model, context: PassContext, shard: int) -> Iterator[Part]:
    """One shard's activations, top-k candidates and cache squares, as one unit in each group; returns
    {path: decode error} of the corrupt images met."""
    settings, images, layout = context.settings, context.images, context.layout
    bounds = shard_ranges(len(images), settings.shard_size)[shard]
    loader = DataLoader(imgs.DecodedSquares(images, settings.resize),
                        batch_sampler=_batches([bounds], settings.batch_size), num_workers=context.loader_workers)
    buffer = ShardBuffer(shard, bounds, layout, settings.resize)
    errors: dict[str, str] = {}
    with torch.inference_mode():
        for index, squares, heights, widths, batch_errors, read_errors in loader:
            imgs.raise_read_errors(images, index, read_errors)
            values = batch_center_values(model, context.profile, layout, squares, heights, widths)
            buffer.add(index, squares, heights, widths, batch_errors, values, layout)
            errors.update({images.paths[i]: e for i, e in zip(index.tolist(), batch_errors) if e})
    yield from shard_parts(buffer, settings)
    return errors


def merged_top_k(store: Store, settings: Settings) -> xr.Dataset:
    """The shards' top-k candidates merged shard by shard: every channel's top-k over all images."""
    stored = store.dataset(GROUP)
    merged = None
    for shard in range(stored.sizes["shard"]):
        candidates = stored[["shard_top_values", "shard_top_images"]].isel(shard=shard)
        candidates = (candidates.shard_top_values.values, candidates.shard_top_images.values)
        merged = candidates if merged is None else merge_top_k(merged, candidates, settings.top_k)
    grid = ("block", "tap", "channel", "rank")
    return xr.Dataset({"top_values": (grid, merged[0]), "top_images": (grid, merged[1])})


class NaturalStage(Stage):
    """The natural-image stage: a unit is an image shard (in both groups); finishing merges the top-k."""

    title = "natural image shards"

    def __init__(self, store: Store, model: torch.nn.Module, weights: Mapping, profile: Mapping, *,
                 blocks: Sequence[str] | None = None, loader_workers: int | None = None):
        self.store, self.profile, self.weights = store, as_profile(profile), weights
        self.settings = self.profile.natural
        self.images = imgs.find_images(self.settings.images)
        self.layout = tap_layout(model, blocks or self.profile.model.blocks)
        self.loader_workers = self.settings.workers if loader_workers is None else loader_workers
        self.shards = len(shard_ranges(len(self.images), self.settings.shard_size))

    def groups(self) -> list[Group]:
        images, settings, profile = self.images, self.settings, self.profile
        settings_read = group_settings(images, self.layout, profile)
        common = {"images_root": str(images.root), "shard_size": settings.shard_size}
        shards = frozenset(shard_unit(s) for s in range(self.shards))
        return [Group(GROUP, natural_template(images, self.layout, settings),
                      provenance(profile, self.weights, stage=GROUP, top_k=settings.top_k, **common),
                      settings_read[GROUP], shards | {TOP_K_UNIT}),
                Group(CACHE_GROUP, cache_template(images, settings),
                      provenance(profile, self.weights, stage=CACHE_GROUP, resize=settings.resize, **common),
                      settings_read[CACHE_GROUP], shards)]

    def units(self, done: Mapping[str, set[str]]) -> list[int]:
        both = done[GROUP] & done[CACHE_GROUP]
        return [s for s in range(self.shards) if shard_unit(s) not in both]

    def context(self) -> PassContext:
        return PassContext(self.profile, self.images, self.layout, self.settings, self.loader_workers)

    @staticmethod
    def compute(model, context: PassContext, shard: int) -> Iterator[Part]:
        return make_shard(model, context, shard)

    def finish(self, results: list[dict[str, str]]) -> Mapping[str, Mapping]:
        """Merge the shards' top-k candidates, record corrupt images."""
        errors = {path: error for shard_errors in results for path, error in shard_errors.items()}
        self.store.write_unit(GROUP, TOP_K_UNIT, merged_top_k(self.store, self.settings),
                              region={dim: slice(None) for dim in ("block", "tap", "channel", "rank")})
        images = self.images
        corrupt = [images.paths[i] for i in np.flatnonzero(self.store.dataset(GROUP).corrupt.values)]
        if len(corrupt) == len(images):
            shown = "; ".join(f"{path} ({errors[path]})" for path in corrupt[:2] if path in errors)
            raise UserError(f"none of the {len(images)} images under {images.root} could be decoded ({shown}); "
                            "is it an image folder?")
        imgs.warn_corrupt(corrupt, len(images), errors)
        return {GROUP: {"corrupt_images": corrupt}, CACHE_GROUP: {"corrupt_images": corrupt}}

    def already_complete(self, store: Store) -> str:
        return f"natural: {store.path} is already complete ({len(self.images)} images)"


def run(store: Store, model: torch.nn.Module, weights: Mapping, profile: Mapping, *,
        blocks: Sequence[str] | None = None, executor=None, device: torch.device | str | None = None) -> None:
    """The natural-image stage: activations, top-k exemplars and the image cache into ``store``."""
    executor = executor or Serial()
    # DataLoader processes only in this process: on Dask workers the workers are the parallelism
    stage = NaturalStage(store, model, weights, profile, blocks=blocks,
                         loader_workers=None if isinstance(executor, Serial) else 0)
    run_stage(stage, store, model, weights, executor=executor, device=device)

"""Scale-robust ablation (paper "Naturally computed scale invariance", Fig. 2; docs/method.md, "Ablation").

For each studied block, top-1 accuracy on the validation images under three conditions:

* ``none``: the unablated model;
* ``invariant``: every scale-invariant channel of the block ablated (from the ``metrics`` group under the
  profile's criterion, or from explicit ``channel_sets``);
* ``random``: as many random valid non-invariant channels ablated, ``trials`` accepted draws. A draw is
  kept only if its no-scale top-1 is at most the invariant set's plus ``screen_tolerance[block]``
  percentage points; rejected draws are counted and kept in the store.

Ablation overwrites the block's pre-ReLU ``O`` map of the chosen channels, at every position, with a
constant: the mean over the natural images of ReLU(center ``O_c``) (``ablation = "mean"``) or 0 (``"zero"``).

Each condition is measured at scale 0 (the standard eval crop) and at every scale p of the profile:
CenterCrop of the Resize(resize) image, then a bilinear antialiased Resize to ``crop``. The crop is
``resize - floor(resize * p)`` (``scale_definition = "paper"``, the paper's text) or ``int(crop * (1 - p))``
(``"code"``, the authors' code). Crops are cut from the image cache with each image's resized size, so they
are exactly torchvision's CenterCrop of the resized image (``repro.images.center_crop_from_cache``). The
authors resized PIL images; here the resize is a tensor op on uint8 batches (torchvision's antialiased
bilinear kernel, ``ablation.resize = "tensor"``) or PIL's, image by image (``"pil"``, the code's reading;
slower). The two kernels round differently: outputs differ by a few intensity levels at most,
well under one level on average (``tests/test_ablate.py`` measures it).

Speed: the cached uint8 squares are read once per pass, cropped and resized once per batch, and every
condition of a block is evaluated in one forward: the block's ``O`` map is computed once and fanned out
into one copy per condition (``ablation_edit``), so only the rest of the network runs per condition.

Resumable units, each written to its region of the ``ablation`` group before being marked done:

* ``screen/<block>/<first>-<last>``: a round of ``trials`` random draws at scale 0 (round 0 also measures
  ``none`` and ``invariant`` at scale 0);
* ``screened/<block>``: the screening outcome: accepted sets, rejected draws, scale-0 accuracies;
* ``scale/<block>/<p>``: every condition and trial of the block at scale p.

A unit always evaluates the same conditions together, so a rerun recomputes it exactly. A job's condition
sets are labelled (condition, number: the trial, or while screening the draw), its accuracies come back as a
(condition, number) table, and every unit is written by its coordinate labels, never by position.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import click
import dask.array as da
import numpy as np
import torch
import xarray as xr
from PIL import Image
from tqdm import tqdm

from analyses import criteria
from repro import images, profiles, stimulus
from repro.errors import UserError
from repro.model import OEdit, TapLayout, blocks as model_blocks, tap_layout
from repro.model import run as run_model
from repro.settings import AblationSettings, NaturalSettings, Profile, as_profile
from repro.settings import crop_size  # beside the check of the ablation's scales, which needs it
from repro.stage import Group, Part, Stage, run_stage
from repro.store import Store, labels, provenance

GROUP = "ablation"
CONDITIONS = ("none", "invariant", "random")
Row = tuple[str, int]  # a condition set's label: (condition, number), the number a trial or, screening, a draw
# Accuracies of different correct-counts differ by at least 100 / n_images points, far more than this;
# it only absorbs the float rounding of "reference + tolerance", so a draw exactly at the limit is kept.
SCREEN_SLACK = 1e-9


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """The [ablation] table as the stage uses it, with the natural images' sizes its crops are cut from."""

    table: AblationSettings
    natural: NaturalSettings

    @classmethod
    def from_profile(cls, profile: Mapping) -> "Settings":
        profile = as_profile(profile)
        return cls(profile.ablation, profile.natural)

    @property
    def scales(self) -> tuple[float, ...]:
        """0.0 (the standard eval crop) first, then the profile's scales in order."""
        return (0.0, *sorted({p for p in self.table.scales if p != 0}))

    def tolerance(self, block: str) -> float:
        return self.table.screen_tolerance.get(block, 0.0)

    def crop_px(self, scale: float) -> int:
        return crop_size(scale, self.natural.resize, self.natural.crop, self.table.scale_definition)


# ---------------------------------------------------------------- scale transforms


def resize_crops(crops: torch.Tensor, out_px: int) -> torch.Tensor:
    """uint8 ``[N, s, s, 3]`` crops → uint8 ``[N, 3, out_px, out_px]``, bilinear with antialiasing (as PIL's
    resize, which the authors used, always is)."""
    crops = crops.permute(0, 3, 1, 2)
    if crops.shape[-1] == out_px:
        return crops
    return stimulus.resize(out_px, antialias=True)(crops)


def resize_crops_pil(crops: torch.Tensor, out_px: int) -> torch.Tensor:
    """As :func:`resize_crops`, image by image with PIL's bilinear resize (the authors' code)."""
    if crops.shape[2] == out_px:
        return crops.permute(0, 3, 1, 2)
    resized = [np.asarray(Image.fromarray(crop).resize((out_px, out_px), Image.BILINEAR))
               for crop in crops.cpu().numpy()]
    return torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).to(crops.device)


RESIZERS = {"tensor": resize_crops, "pil": resize_crops_pil}


def scaled_inputs(batch: "CacheBatch", crop_px: int, out_px: int, profile: Mapping,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """The network's input at one scale: CenterCrop(crop_px) of each resized image (cut exactly from its
    cached square), Resize(out_px), ToTensor, Normalize: float ``[N, 3, out_px, out_px]``.

    At ``crop_px == out_px`` (scale 0) this is the standard eval transform, as ``images.eval_from_cache``.
    """
    crops = images.center_crop_from_cache(batch.squares, crop_px, batch.resized_height, batch.resized_width)
    resized = RESIZERS[as_profile(profile).ablation.resize](crops.to(device), out_px)
    return images.normalize(resized.to(torch.float32).div(255), profile).contiguous()


# ---------------------------------------------------------------- ablation as an O-map edit


def ablation_values(natural: xr.Dataset | None, block: str, width: int, kind: str) -> np.ndarray:
    """The constant each channel's ``O`` map is set to: mean over images of ReLU(center O_c), or 0."""
    if kind == "zero":
        return np.zeros(width, dtype=np.float64)
    if natural is None:
        raise UserError("mean ablation needs the natural-image activations; run `repro natural` first "
                        "(or use --ablation zero)")
    if block not in natural["block"].values:
        raise UserError(f"the natural group has no activations for block {block}; rerun `repro natural`")
    center = natural["activation"].sel(block=block, tap="O").isel(channel=slice(0, width))
    if "corrupt" in natural:  # corrupt images have no activations (NaN): they are not part of the mean
        center = center.isel(image=~natural["corrupt"].values.astype(bool))
    values = np.maximum(center.values.astype(np.float64), 0).mean(axis=center.dims.index("image"))
    if not np.isfinite(values).all():
        raise UserError(f"natural activations of block {block} tap O hold NaN; rerun `repro natural`")
    return values


def condition_masks(channel_sets: Sequence[Iterable[int]], width: int) -> torch.Tensor:
    """Bool ``[K, width]``: row k marks the channels condition k ablates (an empty set: no ablation)."""
    masks = torch.zeros(len(channel_sets), width, dtype=torch.bool)
    for row, channels in enumerate(channel_sets):
        masks[row, list(channels)] = True
    return masks


def ablation_edit(masks: torch.Tensor, values: torch.Tensor) -> OEdit:
    """An ``O``-map edit that fans the batch out into one copy per condition.

    ``O [N, C, H, W]`` becomes ``[K * N, C, H, W]``: copy k (rows k*N .. k*N + N - 1) has the channels
    ``masks[k]`` set to ``values`` at every position and every other value untouched. The layers before
    the edit run once for all K conditions.
    """

    def edit(output: torch.Tensor) -> torch.Tensor:
        mask = masks.to(output.device)[:, None, :, None, None]
        constant = values.to(output.device, output.dtype)[None, None, :, None, None]
        copies = output.unsqueeze(0).expand(len(masks), *output.shape)
        return torch.where(mask, constant, copies).reshape(-1, *output.shape[1:])

    return edit


def count_correct(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, block: str,
                  masks: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Top-1 hits ``[K]`` of the batch ``x`` under each of the K ablation conditions of ``block``."""
    _, logits = run_model(model, x, edit_output={block: ablation_edit(masks, values)})
    predictions = logits.argmax(dim=1).view(len(masks), len(x))
    return (predictions == targets).sum(dim=1)


# ---------------------------------------------------------------- the evaluation pass


@dataclass(frozen=True)
class Job:
    """The conditions of one block evaluated together: one row of ``masks`` per condition set."""

    block: str
    masks: torch.Tensor
    values: torch.Tensor
    rows: tuple[Row, ...] = ()  # the label of each row of ``masks``


def by_condition(accuracy: np.ndarray, rows: Sequence[Row]) -> xr.DataArray:
    """A job's accuracies [row] as a (condition, number) table, NaN where no set was evaluated."""
    numbers = sorted({number for _, number in rows})
    table = xr.DataArray(np.full((len(CONDITIONS), len(numbers)), np.nan), dims=("condition", "number"),
                         coords={"condition": list(CONDITIONS), "number": numbers})
    for (condition, number), value in zip(rows, accuracy):
        table.loc[condition, number] = value
    return table


def evaluate(model: torch.nn.Module, batches: Iterable["CacheBatch"], jobs: Sequence[Job], crop_px: int,
             out_px: int, profile: Mapping, *, total: int | None = None, desc: str = "ablation") -> list[np.ndarray]:
    """Correct-counts per job and condition over all batches at one scale.

    Each batch is cropped, resized and normalized once; then every job runs one forward with all its
    conditions.
    """
    device = next(model.parameters()).device
    counts = [torch.zeros(len(job.masks), dtype=torch.int64, device=device) for job in jobs]
    with torch.inference_mode(), tqdm(total=total, desc=desc, unit="img", leave=False) as progress:
        for batch in batches:
            x = scaled_inputs(batch, crop_px, out_px, profile, device)
            targets = torch.from_numpy(batch.targets).to(device)
            for job, count in zip(jobs, counts):
                count += count_correct(model, x, targets, job.block, job.masks, job.values)
            progress.update(len(batch.targets))
    return [count.cpu().numpy() for count in counts]


def percent(correct: np.ndarray, n_images: int) -> np.ndarray:
    return 100.0 * np.asarray(correct, dtype=np.float64) / n_images


# ---------------------------------------------------------------- the image cache


@dataclass(frozen=True)
class CacheBatch:
    """Consecutive decodable images of the cache: squares uint8 [N, R, R, 3], labels and resized sizes."""

    squares: np.ndarray
    targets: np.ndarray
    resized_height: np.ndarray
    resized_width: np.ndarray


@dataclass
class CachedImages:
    """The image cache (``repro.images``): each image's Resize(resize) + CenterCrop(resize) square, its
    label, its size after Resize(resize) (to cut any center crop exactly) and whether it was corrupt.
    Corrupt images are left out of every accuracy, as the natural stage leaves them out."""

    pixels: xr.DataArray  # uint8 (image, y, x, rgb)
    targets: np.ndarray
    paths: np.ndarray
    resized_height: np.ndarray
    resized_width: np.ndarray
    corrupt: np.ndarray

    @classmethod
    def from_dataset(cls, cache: xr.Dataset) -> "CachedImages":
        return cls(cache["pixels"], np.asarray(cache["label"].values, dtype=np.int64), np.asarray(cache["path"].values),
                   np.asarray(cache["resized_height"].values), np.asarray(cache["resized_width"].values),
                   np.asarray(cache["corrupt"].values, dtype=bool))

    @property
    def count(self) -> int:
        """Images that count: the decodable ones."""
        return int((~self.corrupt).sum())

    def identity(self) -> str:
        digest = hashlib.sha256()
        digest.update(json.dumps([str(p) for p in self.paths]).encode())
        for array in (self.targets, self.resized_height, self.resized_width, self.corrupt):
            digest.update(np.asarray(array, dtype=np.int64).tobytes())
        return digest.hexdigest()[:16]

    def read(self, start: int, stop: int) -> CacheBatch:
        keep = ~self.corrupt[start:stop]
        squares = np.asarray(self.pixels[start:stop].values)[keep]
        return CacheBatch(squares, self.targets[start:stop][keep], self.resized_height[start:stop][keep],
                          self.resized_width[start:stop][keep])

    def batches(self, batch_size: int) -> Iterator[CacheBatch]:
        """Batches in image order; the next batch is read while the current one is evaluated."""
        total = len(self.targets)
        bounds = [(start, min(start + batch_size, total)) for start in range(0, total, batch_size)]
        with ThreadPoolExecutor(max_workers=1) as reader:
            pending = reader.submit(self.read, *bounds[0]) if bounds else None
            for following in [*bounds[1:], None]:
                if pending is None:
                    return
                batch = pending.result()
                pending = reader.submit(self.read, *following) if following else None
                if len(batch.targets):
                    yield batch


def open_image_cache(store: Store, settings: Settings) -> CachedImages:
    """The store's complete image cache, checked against the profile's resize."""
    cache = CachedImages.from_dataset(images.open_cache(store))
    side = cache.pixels.sizes["y"], cache.pixels.sizes["x"]
    if side != (settings.natural.resize, settings.natural.resize):
        raise UserError(f"the image cache holds {side[0]} x {side[1]} px squares, but natural.resize is "
                        f"{settings.natural.resize}; rerun `repro natural` with this profile")
    if cache.count == 0:
        raise UserError("the image cache holds no decodable images")
    return cache


# ---------------------------------------------------------------- which channels


@dataclass(frozen=True)
class BlockPlan:
    block: str
    width: int
    invariant: tuple[int, ...]
    candidates: tuple[int, ...]  # valid, non-invariant: the pool random sets are drawn from
    values: np.ndarray  # the ablation constant of every channel [width]
    tolerance: float

    def job(self, channel_sets: Mapping[Row, Iterable[int]]) -> Job:
        """The job of these labelled condition sets, one mask row each in their order."""
        masks = condition_masks(list(channel_sets.values()), self.width)
        return Job(self.block, masks, torch.from_numpy(self.values).float(), tuple(channel_sets))


def _metrics_valid(metrics: xr.Dataset | None, block: str, layout: TapLayout) -> list[int]:
    """Channels the metrics stage could measure (every channel of the block without metrics)."""
    if metrics is None:
        return layout.valid_channels(block)
    if block not in metrics["block"].values:
        raise UserError(f"the metrics group has no block {block}; rerun `repro metrics`")
    valid = metrics["valid"].sel(block=block).values.astype(bool)[:layout.width(block)]
    return [int(c) for c in np.flatnonzero(valid)]


def _metrics_invariant(metrics: xr.Dataset | None, block: str, layout: TapLayout, settings: Settings) -> list[int]:
    """The block's scale-invariant valid channels under the profile's criterion."""
    if metrics is None:
        raise UserError(f"no channel set for block {block}: run `repro metrics` first, or pass "
                        f"--channels {block}=LIST (and --blocks to choose which blocks to ablate)")
    # With several FZ seeds the set is the robust one: channels passing in enough seeds, not in one.
    name = criteria.CRITERIA[settings.table.criterion].column + ("_robust" if "seed" in metrics.dims else "")
    flags = metrics[name].sel(block=block, stimulus_set=settings.table.stimulus_set)
    invariant = flags.values.astype(bool)[:layout.width(block)]
    return [c for c in _metrics_valid(metrics, block, layout) if invariant[c]]


def plan_blocks(store: Store, layout: TapLayout, settings: Settings,
                channel_sets: Mapping[str, Sequence[int]] | None) -> list[BlockPlan]:
    """Every ablated block with its invariant set, the pool for random sets and the ablation constants.

    The blocks are the profile's ``ablation.blocks`` and any block named in ``channel_sets``; a block's
    invariant set comes from ``channel_sets`` when named there, otherwise from the metrics group.
    ``layout`` is the whole model's.
    """
    channel_sets = {str(k): list(v) for k, v in (channel_sets or {}).items()}
    chosen = list(settings.table.blocks) + [b for b in channel_sets if b not in settings.table.blocks]
    unknown = [b for b in chosen if b not in layout.blocks]
    if unknown:
        raise UserError(f"unknown block(s) {', '.join(unknown)}; this model has blocks {', '.join(layout.blocks)}")
    chosen.sort(key=layout.blocks.index)
    metrics = store.dataset("metrics") if store.has("metrics") else None
    natural = store.dataset("natural") if settings.table.ablation == "mean" and store.has("natural") else None
    plans = []
    for block in chosen:
        width = layout.width(block)
        if block in channel_sets:
            invariant = sorted(set(channel_sets[block]))
        else:
            invariant = _metrics_invariant(metrics, block, layout, settings)
            if not invariant:
                # A model may simply have none (the papers found none in 3.0, 4.0, 4.1): say so, ablate the rest.
                warnings.warn(f"block {block} has no scale-invariant channels under criterion "
                              f"{settings.table.criterion!r}; it is not ablated", stacklevel=2)
                continue
        valid = _metrics_valid(metrics, block, layout)
        plans.append(_plan(block, width, invariant, valid, natural, settings))
    return plans


def _plan(block, width, invariant, valid, natural, settings) -> BlockPlan:
    outside = [c for c in invariant if not 0 <= c < width]
    if outside:
        raise UserError(f"block {block} has channels 0-{width - 1}; channels {outside} do not exist")
    if not invariant:
        raise UserError(f"block {block} has no scale-invariant channels under criterion {settings.table.criterion!r}; "
                        "nothing to ablate (choose other --blocks)")
    candidates = sorted(set(valid) - set(invariant))
    if len(candidates) < len(invariant):
        raise UserError(f"block {block}: {len(invariant)} invariant channels but only {len(candidates)} "
                        "non-invariant valid channels to draw random sets of that size from")
    values = ablation_values(natural, block, width, settings.table.ablation)
    return BlockPlan(block, width, tuple(invariant), tuple(candidates), values, settings.tolerance(block))


# ---------------------------------------------------------------- random draws and screening


def label_entropy(block: str) -> list[int]:
    """A block label as seed words: its numeric parts as they are (a ResNet's "2.1" → 2, 1; a ConvNeXt's
    likewise), any other part (a ViT's "attn", "mlp") as the first 4 bytes of its SHA-256."""
    return [int(part) if part.isdigit() else int.from_bytes(hashlib.sha256(part.encode()).digest()[:4], "big")
            for part in block.split(".")]


def random_draw(seed: int, block: str, draw: int, candidates: Sequence[int], size: int) -> list[int]:
    """Draw number ``draw`` for ``block``: ``size`` distinct candidates, the same on every run."""
    rng = np.random.default_rng([seed, *label_entropy(block), draw])
    return sorted(int(c) for c in rng.choice(np.asarray(candidates), size=size, replace=False))


@dataclass(frozen=True)
class Screening:
    accepted: tuple[int, ...]  # draw numbers, in trial order
    rejected: tuple[int, ...]
    complete: bool  # ``trials`` draws accepted

    @property
    def draws_made(self) -> int:
        return max((*self.accepted, *self.rejected), default=-1) + 1


def screen(draw_accuracies: Sequence[float], reference: float, tolerance: float, trials: int) -> Screening:
    """Walk the draws in order: keep a draw iff its no-scale top-1 <= reference + tolerance (points),
    until ``trials`` are kept. Draws after the last kept one are not part of the outcome."""
    accepted, rejected = [], []
    for draw, accuracy in enumerate(draw_accuracies):
        if len(accepted) == trials:
            break
        (accepted if accuracy <= reference + tolerance + SCREEN_SLACK else rejected).append(draw)
    return Screening(tuple(accepted), tuple(rejected), len(accepted) == trials)


# ---------------------------------------------------------------- the store group


def _template(plans: Sequence[BlockPlan], settings: Settings, max_width: int) -> xr.Dataset:
    n_blocks, n_conditions, trials, draws = len(plans), len(CONDITIONS), settings.table.trials, settings.table.max_draws
    n_scales = len(settings.scales)

    def full(shape, value, dtype, chunks):
        return da.full(shape, value, dtype=dtype, chunks=chunks)

    values = np.full((n_blocks, max_width), np.nan)
    for row, plan in enumerate(plans):
        values[row, : plan.width] = plan.values
    dims4 = ("block", "condition", "trial", "scale")
    return xr.Dataset(
        {
            "accuracy": (dims4, full((n_blocks, n_conditions, trials, n_scales), np.nan, np.float64,
                                     (1, n_conditions, trials, 1))),
            "channels": (("block", "condition", "trial", "channel"),
                         full((n_blocks, n_conditions, trials, max_width), False, bool,
                              (1, n_conditions, trials, max_width))),
            "rejected_draws": (("block",), full((n_blocks,), 0, np.int64, (1,))),
            "draw_accuracy": (("block", "draw"), full((n_blocks, draws), np.nan, np.float64, (1, draws))),
            "draw_channels": (("block", "draw", "channel"), full((n_blocks, draws, max_width), False, bool,
                                                                 (1, draws, max_width))),
            "rejected": (("block", "draw"), full((n_blocks, draws), False, bool, (1, draws))),
            "draw_trial": (("block", "draw"), full((n_blocks, draws), -1, np.int64, (1, draws))),
            "ablation_value": (("block", "channel"), values),
        },
        coords={
            "block": labels(p.block for p in plans),
            "condition": labels(CONDITIONS),
            "trial": np.arange(trials),
            "scale": np.asarray(settings.scales, dtype=np.float64),
            "crop_px": ("scale", np.asarray([settings.crop_px(s) for s in settings.scales], dtype=np.int64)),
            "draw": np.arange(draws),
            "channel": np.arange(max_width),
            "set_size": ("block", np.asarray([len(p.invariant) for p in plans], dtype=np.int64)),
            "screen_tolerance": ("block", np.asarray([p.tolerance for p in plans], dtype=np.float64)),
        },
    )


def group_settings(profile: Mapping, plans: Sequence[BlockPlan], settings: Settings,
                   channel_sets: Mapping | None) -> dict:
    """What the group's units depend on beyond its input groups: another value replaces the group."""
    return {
        **profiles.read_by(profile, "model", "stimulus", "ablation"),
        "natural": {key: profile["natural"][key] for key in ("resize", "crop")},
        "channel_sets": {str(k): sorted(int(c) for c in v) for k, v in (channel_sets or {}).items()},
        "plans": [[p.block, p.width, list(p.invariant), list(p.candidates), p.tolerance,
                   hashlib.sha256(p.values.tobytes()).hexdigest()] for p in plans],
    }


def input_groups(settings: Settings, channel_sets: Mapping | None) -> list[str]:
    """The store groups an ablation reads: metrics unless every set is given, natural for mean values."""
    named = set(channel_sets or {})
    groups = [images.CACHE_GROUP]
    if not set(settings.table.blocks) <= named:
        groups.append("metrics")
    if settings.table.ablation == "mean":
        groups.append("natural")
    return groups


def _group_attrs(profile, weights_record, settings: Settings, cache: CachedImages) -> dict:
    return {
        **provenance(profile, weights_record, stage="ablation"),
        "scale_definition": settings.table.scale_definition,
        "ablation": settings.table.ablation,
        "criterion": settings.table.criterion,
        "stimulus_set": settings.table.stimulus_set,
        "seed": settings.table.seed,
        "trials": settings.table.trials,
        "max_draws": settings.table.max_draws,
        "n_images": cache.count,
        "accuracy_units": "percent top-1",
        "layout": ("accuracy[block, condition, trial, scale]: none and invariant in trial 0 (NaN in the other "
                   "trials), random in every trial; scale 0 is the standard eval crop, crop_px the crop side. "
                   "channels: the ablated sets. draw_*: every random draw made in order, rejected marks "
                   "the ones screening dropped, draw_trial the trial an accepted draw became."),
    }


# ---------------------------------------------------------------- stages of the run


@dataclass(frozen=True)
class PassContext:
    """What every pass of one run shares (sent to each worker once)."""

    store_path: str
    profile: Profile
    settings: Settings
    plans: tuple[BlockPlan, ...]


@dataclass(frozen=True)
class ScreenRound:
    """One screening round of each of these blocks, from these draws on: one pass at scale 0."""

    blocks: tuple[str, ...]
    starts: tuple[int, ...]


@dataclass(frozen=True)
class ScalePass:
    """Every condition of these blocks at the scale of this index: one pass."""

    index: int
    blocks: tuple[str, ...]


def screened_unit(block: str) -> str:
    """The unit of a block's screening outcome."""
    return f"screened/{block}"


@dataclass(frozen=True)
class Screened:
    """A block whose screening is over: its outcome is written here, from the stored draws."""

    block: str
    draws_evaluated: int
    here = True


def run_pass(model: torch.nn.Module, context: PassContext, work: ScreenRound | ScalePass) -> Iterator[Part]:
    """One pass over the image cache, wherever it runs: its units' parts, one per block."""
    store = Store(Path(context.store_path))
    cache = open_image_cache(store, context.settings)
    experiment = AblationRun(store, model, context.settings, context.plans, cache, context.profile)
    chosen = [plan for plan in context.plans if plan.block in work.blocks]
    if isinstance(work, ScreenRound):
        yield from experiment._evaluate_rounds(chosen, dict(zip(work.blocks, work.starts)))
    else:
        yield from experiment._scale_pass(work.index, chosen)


class AblationRun:
    """One ablation run over a store: screening first, then every scale.

    Screening rounds depend on the rounds before them (a block stops once enough draws pass), so they
    run one after another; the passes of different scales are independent and run side by side on an
    executor with workers (``AblationStage`` gives them as waves of units)."""

    def __init__(self, store: Store, model: torch.nn.Module, settings: Settings, plans: Sequence[BlockPlan],
                 cache: CachedImages, profile: Mapping):
        self.store, self.model, self.settings = store, model, settings
        self.plans, self.cache, self.profile = list(plans), cache, profile
        self.plan_of = {plan.block: plan for plan in self.plans}

    # -------------------------------------------------- helpers

    def _pass(self, jobs: Sequence[Job], scale: float, desc: str) -> list[xr.DataArray]:
        """Each job's accuracies at one scale, by condition and number (``by_condition``)."""
        crop_px = self.settings.crop_px(scale)
        counts = evaluate(self.model, self.cache.batches(self.settings.table.batch_size), jobs, crop_px,
                          self.settings.natural.crop, self.profile, total=self.cache.count, desc=desc)
        return [by_condition(percent(c, self.cache.count), job.rows) for job, c in zip(jobs, counts)]

    def _write(self, unit: str, plan: BlockPlan, part: xr.Dataset) -> Part:
        """A unit of the block, placed in the group by its coordinate labels."""
        return Part(GROUP, unit, part.expand_dims(block=labels([plan.block])))

    def _stored(self) -> xr.Dataset:
        return self.store.dataset(GROUP)

    def _draw(self, plan: BlockPlan, draw: int) -> list[int]:
        return random_draw(self.settings.table.seed, plan.block, draw, plan.candidates, len(plan.invariant))

    # -------------------------------------------------- screening

    def _round(self, start: int) -> range:
        return range(start, min(start + self.settings.table.trials, self.settings.table.max_draws))

    def _round_unit(self, plan: BlockPlan, draws: range) -> str:
        return f"screen/{plan.block}/{draws.start}-{draws.stop - 1}"

    def screen_position(self, plan: BlockPlan, done: set[str]) -> range | Screened:
        """Where a block's screening stands, given the done units: the draws of its next round, or
        ``Screened`` once ``trials`` draws passed or ``max_draws`` ran out."""
        start = 0
        while True:
            outcome = self._screen_so_far(plan, start)
            if outcome.complete or start >= self.settings.table.max_draws:
                return Screened(plan.block, start)
            draws = self._round(start)
            if self._round_unit(plan, draws) not in done:
                return draws
            start = draws.stop

    def screened(self, unit: Screened) -> Iterator[Part]:
        """The block's screening outcome, with a warning when it goes on with fewer random sets than asked."""
        plan = self.plan_of[unit.block]
        outcome = self._screen_so_far(plan, unit.draws_evaluated)
        if not outcome.complete:
            self._too_many_draws(plan, outcome)
        yield self._write_screened(plan, outcome)

    def _round_sets(self, plan: BlockPlan, draws: range) -> dict[Row, list[int]]:
        sets = {("random", draw): self._draw(plan, draw) for draw in draws}
        if draws.start == 0:  # round 0 also measures the unablated model and the invariant set
            sets = {("none", 0): [], ("invariant", 0): list(plan.invariant), **sets}
        return sets

    def _evaluate_rounds(self, plans: Sequence[BlockPlan], next_draw: Mapping[str, int]) -> list[Part]:
        rounds = [self._round(next_draw[plan.block]) for plan in plans]
        jobs = [plan.job(self._round_sets(plan, draws)) for plan, draws in zip(plans, rounds)]
        desc = "screening " + ", ".join(f"{p.block} draws {r.start}-{r.stop - 1}" for p, r in zip(plans, rounds))
        return [self._write_round(plan, draws, accuracy)
                for plan, draws, accuracy in zip(plans, rounds, self._pass(jobs, 0.0, desc))]

    def _write_round(self, plan: BlockPlan, draws: range, accuracy: xr.DataArray) -> Part:
        random = accuracy.sel(condition="random", number=list(draws), drop=True)
        part = xr.Dataset({"draw_accuracy": random.rename(number="draw")})
        if draws.start == 0:  # round 0 also holds the no-scale none and invariant accuracies
            measured = accuracy.sel(condition=["none", "invariant"], number=[0]).rename(number="trial")
            part["accuracy"] = measured.expand_dims(scale=[0.0], axis=-1)
        return self._write(self._round_unit(plan, draws), plan, part)

    def _screen_so_far(self, plan: BlockPlan, draws_evaluated: int) -> Screening:
        if draws_evaluated == 0:
            return Screening((), (), False)
        stored = self._stored().sel(block=plan.block)
        reference = float(stored["accuracy"].sel(condition="invariant", trial=0, scale=0.0))
        accuracies = stored["draw_accuracy"].values[:draws_evaluated]
        return screen(accuracies, reference, plan.tolerance, self.settings.table.trials)

    def _too_many_draws(self, plan: BlockPlan, outcome: Screening) -> None:
        """Say that the block goes on with fewer random sets than asked; the store records how many."""
        stored = self._stored().sel(block=plan.block)
        reference = float(stored["accuracy"].sel(condition="invariant", trial=0, scale=0.0))
        best = float(np.nanmin(stored["draw_accuracy"].values))
        warnings.warn(
            f"block {plan.block}: only {len(outcome.accepted)} of {self.settings.table.trials} random sets passed "
            f"screening in {self.settings.table.max_draws} draws (ablation.max_draws); the block goes on with those. "
            f"A random set is kept when its no-scale top-1 is at most the invariant set's {reference:.3f} % + "
            f"{plan.tolerance:g} points (ablation.screen_tolerance); the lowest random top-1 was {best:.3f} %.",
            stacklevel=2,
        )

    def _draws_part(self, plan: BlockPlan, outcome: Screening, stored: xr.Dataset) -> xr.Dataset:
        """Every draw made, in order: its accuracy and channels, whether screening rejected it, the trial it became."""
        settings, made = self.settings, outcome.draws_made
        draw_accuracy = np.full(settings.table.max_draws, np.nan)
        draw_accuracy[:made] = stored["draw_accuracy"].values[:made]
        draw_channels = np.zeros((settings.table.max_draws, stored.sizes["channel"]), dtype=bool)
        for draw in range(made):
            draw_channels[draw, self._draw(plan, draw)] = True
        draw_trial = np.full(settings.table.max_draws, -1, dtype=np.int64)
        draw_trial[list(outcome.accepted)] = np.arange(len(outcome.accepted))
        rejected = np.zeros(settings.table.max_draws, dtype=bool)
        rejected[list(outcome.rejected)] = True
        return xr.Dataset({"draw_accuracy": ("draw", draw_accuracy), "draw_channels": (("draw", "channel"), draw_channels),
                           "rejected": ("draw", rejected), "draw_trial": ("draw", draw_trial)},
                          coords={"draw": np.arange(settings.table.max_draws), "channel": stored["channel"].values})

    def _write_screened(self, plan: BlockPlan, outcome: Screening) -> Part:
        """The screening outcome and every scale-0 accuracy of the block, as one unit."""
        stored = self._stored().sel(block=plan.block)
        draws = self._draws_part(plan, outcome, stored)
        accepted = list(outcome.accepted)  # fewer than ``trials`` when max_draws ran out
        trials = np.arange(self.settings.table.trials)
        filled = trials[:len(accepted)]
        accuracy = _table(np.nan, condition=CONDITIONS, trial=trials)
        measured = ["none", "invariant"]
        accuracy.loc[measured, 0] = stored["accuracy"].sel(condition=measured, trial=0, scale=0.0).values
        accuracy.loc["random", filled] = draws["draw_accuracy"].values[accepted]
        channels = _table(False, condition=CONDITIONS, trial=trials, channel=stored["channel"].values)
        channels.loc["invariant", 0, list(plan.invariant)] = True
        channels.loc["random", filled] = draws["draw_channels"].values[accepted]
        part = draws.assign(accuracy=accuracy.expand_dims(scale=[0.0], axis=-1), channels=channels,
                            rejected_draws=np.int64(len(outcome.rejected)))
        return self._write(screened_unit(plan.block), plan, part)

    # -------------------------------------------------- scales

    def _scale_unit(self, plan: BlockPlan, scale: float) -> str:
        return f"scale/{plan.block}/{scale:g}"

    def scale_passes(self, done: set[str]) -> list[ScalePass]:
        """Every condition and trial of every block at each nonzero scale still to do; one pass per scale."""
        work = []
        for index, scale in enumerate(self.settings.scales):
            pending = tuple(p.block for p in self.plans if self._scale_unit(p, scale) not in done)
            if scale != 0 and pending:
                work.append(ScalePass(index, pending))
        return work

    def _scale_pass(self, index: int, pending: Sequence[BlockPlan]) -> list[Part]:
        stored, scale = self._stored(), self.settings.scales[index]
        jobs = [p.job(self._condition_sets(stored, p)) for p in pending]
        desc = f"scale {scale:.0%} ({self.settings.crop_px(scale)} px): {', '.join(p.block for p in pending)}"
        return [self._write_scale(plan, index, accuracy) for plan, accuracy in zip(pending, self._pass(jobs, scale, desc))]

    def _condition_sets(self, stored: xr.Dataset, plan: BlockPlan) -> dict[Row, list[int]]:
        """none, invariant, then the random sets screening accepted, by trial (from the screening outcome)."""
        random_sets = stored["channels"].sel(block=plan.block, condition="random").load()
        sets = {("none", 0): [], ("invariant", 0): list(plan.invariant)}
        for trial in random_sets["trial"].values:
            chosen = random_sets.sel(trial=trial).values
            if chosen.any():  # a trial screening filled
                sets[("random", int(trial))] = [int(c) for c in np.flatnonzero(chosen)]
        return sets

    def _write_scale(self, plan: BlockPlan, index: int, accuracy: xr.DataArray) -> Part:
        table = accuracy.reindex(number=np.arange(self.settings.table.trials)).rename(number="trial")
        part = table.expand_dims(scale=[self.settings.scales[index]], axis=-1).to_dataset(name="accuracy")
        return self._write(self._scale_unit(plan, self.settings.scales[index]), plan, part)


def _table(fill, **coords: Sequence) -> xr.DataArray:
    """A labelled array of ``fill`` over these dims (in order, with these labels), to fill with ``.loc``."""
    shape = tuple(len(values) for values in coords.values())
    return xr.DataArray(np.full(shape, fill), dims=tuple(coords), coords={dim: list(v) for dim, v in coords.items()})


class AblationStage(Stage):
    """The ablation stage in waves: screening rounds (each a pass at scale 0 over every block still
    screening), each block's screening outcome once it is over (written here), then one pass per scale."""

    title = "ablation"

    def __init__(self, store: Store, model: torch.nn.Module, weights_record: Mapping, profile: Mapping,
                 channel_sets: Mapping[str, Sequence[int]] | None = None):
        self.store, self.weights_record, self.profile = store, weights_record, as_profile(profile)
        self.settings = settings = Settings.from_profile(self.profile)
        self.channel_sets = channel_sets
        self.read = [group for group in input_groups(settings, channel_sets) if store.has(group)]
        store.require_intact(self.read, units=False)
        self.cache = open_image_cache(store, settings)
        self.layout = tap_layout(model, model_blocks(model))  # the group's channel axis is the widest block's
        self.plans = plan_blocks(store, self.layout, settings, channel_sets)
        self.experiment = AblationRun(store, model, settings, self.plans, self.cache, self.profile)

    def inputs(self) -> list[str]:
        return self.read

    def groups(self) -> list[Group]:
        settings = self.settings
        needed = {screened_unit(p.block) for p in self.plans}
        needed |= {self.experiment._scale_unit(p, scale) for p in self.plans for scale in settings.scales if scale != 0}
        return [Group(GROUP, _template(self.plans, settings, self.layout.max_width),
                      _group_attrs(self.profile, self.weights_record, settings, self.cache),
                      group_settings(self.profile, self.plans, settings, self.channel_sets), frozenset(needed),
                      count_units=False)]  # screening rounds are units too, and their number is not known ahead

    def units(self, done: Mapping[str, set[str]]) -> list:
        done = done[GROUP]
        screening = [plan for plan in self.plans if screened_unit(plan.block) not in done]
        if not screening:
            return self.experiment.scale_passes(done)
        positions = {plan.block: self.experiment.screen_position(plan, done) for plan in screening}
        rounds = {block: draws for block, draws in positions.items() if isinstance(draws, range)}
        over = [position for position in positions.values() if isinstance(position, Screened)]
        return over + ([ScreenRound(tuple(rounds), tuple(d.start for d in rounds.values()))] if rounds else [])

    def context(self) -> PassContext:
        return PassContext(str(self.store.path), self.profile, self.settings, tuple(self.plans))

    @staticmethod
    def compute(model: torch.nn.Module, context: PassContext, work: ScreenRound | ScalePass) -> Iterator[Part]:
        return run_pass(model, context, work)

    def compute_here(self, model, unit: Screened) -> Iterator[Part]:
        return self.experiment.screened(unit)

    def here_model(self, model, device):
        return None  # a screening outcome is read from the store


def run(store: Store, model: torch.nn.Module, weights_record: Mapping, profile: Mapping,
        channel_sets: Mapping[str, Sequence[int]] | None = None, executor=None,
        device: torch.device | str | None = None) -> xr.Dataset | None:
    """Run (or resume) the ablation experiment into the store's ``ablation`` group and return it.

    Blocks without invariant channels are skipped with a warning; with none left, nothing is written.
    """
    stage = AblationStage(store, model, weights_record, profile, channel_sets)
    if not stage.plans:
        store.start_fresh()
        warnings.warn("no block to ablate: none of the ablation blocks has scale-invariant channels", stacklevel=2)
        if store.has(GROUP):  # made from other metrics: kept, it would stay stale with nothing to replace it
            store.remove(GROUP)
            click.echo("ablation: removed the stored ablation group, made from metrics that had invariant "
                       "channels; the current metrics leave nothing to ablate", err=True)
        return None
    run_stage(stage, store, model, weights_record, executor=executor, device=device)
    return store.dataset(GROUP)

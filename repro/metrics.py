"""The `metrics` stage: stimulus responses, mix ratios and the scale-invariance criteria.

Reads the store's ``fz`` group (and ``natural`` + ``image_cache`` when present) and writes two groups.

Every FZ seed of the ``fz`` group (dim ``seed``) is measured on its own: ``responses`` and the per-set
``metrics`` variables carry the ``seed`` dim (top-9 stimuli are natural images, the same for every seed,
so their responses are computed once and stored under each seed).

``responses``: ``response`` (seed, block, tap, channel, source, transform, stimulus_set) is tap ``tap``'s
center value for channel c when shown source tap ``source``'s stimulus for channel c, unscaled
(``none``), scaled up (``S``) or down (``S_inv``), see :mod:`repro.stimulus`. Stimulus sets:

* ``fz``: the saved uint8 FZ of (block, source, c), normalized as the network sees it;
* ``top9``: the 9 natural images that most activate the source tap's center neuron of channel c; each
  image's response is computed (after the transform) and the 9 responses are averaged. Filled only
  when the store has a complete ``natural`` group and ``image_cache``, for the blocks ``natural`` has
  (attr ``top9_blocks``); otherwise NaN, and the attrs ``top9_available`` / ``top9_note`` say why.

``relu_response``: the same, for the mean of the per-image ReLUs (for ``fz``, one image, the ReLU of
``response``); the code's reading of the top-9 deltas (``metrics.top9_relu = "per_image"``) reads it.

``metrics``: per (seed, block, channel, stimulus_set), in the papers' notation (X̂_T = the stimulus of tap T):

* ``mix`` M = O_c(X̂_I) / O_c(X̂_B); O_c(X̂_B) ≤ 0 → 5 (skip); else O_c(X̂_I) ≤ 0 → 0 (overwrite);
  clamped to ``metrics.mix_clamp`` (5). ``mix_ok``: mix_low < M < mix_high (strict).
* ``up_delta`` = B_c(S(X̂_I)) − ReLU(B_c(X̂_I)), ``up_ok`` = up_delta > 0.
* ``down_delta`` = I_c(S⁻¹(X̂_B)) − ReLU(I_c(X̂_B)), ``down_ok`` = down_delta > 0.
* ``scale_metric`` = up_delta / B_c(X̂_B) + down_delta / I_c(X̂_I).
* ``invariant_<name>`` per stored criterion of ``analyses.criteria``: ``invariant_naturally`` = mix ∧ up;
  ``invariant_interpreting`` = mix ∧ up ∧ down.

That is the paper's reading. The authors' code differs in items 2-5 and 7 of docs/method.md's list, each a setting
of the ``metrics`` table (``repro.reading``): ``delta_relu = "both"`` ReLUs the scaled term too;
``direction = "normalised"`` tests ``up_delta / B_c(X̂_B) > 0`` and ``down_delta / I_c(X̂_I) > 0``;
``mix_edges = "code"`` gives M = 10 when O_c(X̂_B) ≤ 0, leaves M unclamped, and flags a failed FZ only when both
O responses are < 0; ``top9_relu = "per_image"`` and ``top9_png`` average per-image ReLUs of the 9 images after
an 8-bit PNG round trip; ``interpreting_criterion = "mix_up"`` drops down from the second paper's set.
* ``failed_fz``: both O responses ≤ 0 (see :func:`mix_ratio`); warned (:class:`FailedFZWarning`) and
  counted per block in the attrs ``failed_fz_count`` / ``failed_fz_total``.

per (block, channel, stimulus_set), over the seeds: ``<flag>_frequency``, the fraction of seeds in which
the channel passes each criterion flag, and ``<flag>_robust``, frequency ≥ ``metrics.robust_fraction``
(the label that does not hang on one seed); and per (block, channel): ``bn2_weight_abs`` = |bn2.weight[c]| and ``conv2_weight_mean_abs`` = mean
|conv2.weight[c]| (for a Bottleneck block, the block's last BN and conv: bn3 and conv3; in another family the
parts its adapter's ``weight_parts`` names, a ConvNeXt's layer scale and last Linear; NaN where it names none,
as in a ViT, the reason per block in the attr ``weights_missing``), ``tuning_rho``
(Spearman ρ of I_c and B_c over the natural images with I_c > 0), ``valid``; per block: ``downsample`` (the
block's I comes through a layer of its own: a downsample branch, a ConvNeXt's downsampling layer).

Work is batched: a block's stimuli for all channels of one source tap go through the model together
(``metrics.batch_size`` images per forward, default 64), each forward reads the three taps' center
values at once, and channel c's value is taken from image c. Taps hold their true values (never the
aliased reading, which is for making FZs only); the model runs on the GPU when there is one. Units are
(seed, block, stimulus_set), one per (block, stimulus_set) for the frequencies, and one per block for the
weight and tuning columns; a rerun skips done units.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import click
import dask.array as da
import numpy as np
import torch
import xarray as xr
from scipy import stats
from torch import nn

from analyses import criteria
from repro import fz as fz_stage
from repro import images as imgs
from repro import profiles
from repro import model as taps_model
from repro import stimulus
from repro.errors import UserError
from repro.model import TAPS
from repro.stimulus import TRANSFORMS
from repro.hashing import digest
from repro.settings import MetricsSettings, Profile, as_profile
from repro.stage import Group, Part, Stage, run_stage
from repro.store import Store, labels, provenance

TOP9_RANKS = 9
MIN_TUNING_IMAGES = 3


class FailedFZWarning(UserWarning):
    """Some channels' FZs drive neither O response above zero: their mix ratio is meaningless."""


def metrics_settings(profile: Mapping) -> MetricsSettings:
    """The profile's [metrics] table (repro.settings): the mix bounds and the reading items."""
    return as_profile(profile).metrics


# ---------------------------------------------------------------- formulas


def relu(values: np.ndarray) -> np.ndarray:
    return np.maximum(values, 0.0)


def mix_ratio(o_input: np.ndarray, o_block: np.ndarray, clamp: float = 5.0) -> np.ndarray:
    """M = O_c(X̂_I) / O_c(X̂_B) with the papers' conventions, in this order.

    O_c(X̂_B) ≤ 0 → ``clamp`` (5: a skip, the block's own feature does not reach the output); else
    O_c(X̂_I) ≤ 0 → 0 (an overwrite); else the ratio, clamped to ``clamp``. A channel whose two O
    responses are both ≤ 0 (a failed FZ) therefore gets M = 5 by the first rule; it is flagged as
    ``failed_fz`` and kept out of every invariance criterion (``mix_ok`` is false for it). NaN in, NaN out.
    """
    o_input = np.asarray(o_input, dtype=np.float64)
    o_block = np.asarray(o_block, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.minimum(o_input / o_block, clamp)
    mix = np.where(o_block <= 0, clamp, np.where(o_input <= 0, 0.0, ratio))
    return np.where(np.isnan(o_input) | np.isnan(o_block), np.nan, mix)


def mix_ratio_code(o_input: np.ndarray, o_block: np.ndarray, skip: float = 10.0) -> np.ndarray:
    """The code's M: O_c(X̂_B) ≤ 0 → 10; else O_c(X̂_I) ≤ 0 → 0; else the ratio, unclamped (histograms clamp)."""
    o_input = np.asarray(o_input, dtype=np.float64)
    o_block = np.asarray(o_block, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mix = np.where(o_block <= 0, skip, np.where(o_input <= 0, 0.0, o_input / o_block))
    return np.where(np.isnan(o_input) | np.isnan(o_block), np.nan, mix)


MIX_CONVENTIONS = {
    "paper": "M = O(X_I)/O(X_B); O(X_B) <= 0 -> clamp; else O(X_I) <= 0 -> 0; clamp to mix_clamp",
    "code": "M = O(X_I)/O(X_B); O(X_B) <= 0 -> 10; else O(X_I) <= 0 -> 0; unclamped (histograms clamp)",
}
# Each reading item's variants, chosen by its setting (repro.reading lists the items).
# Mix ratio and failed FZ: the paper flags both O responses <= 0; the code aborts only when both are < 0.
MIX_RULES = {
    "paper": (lambda o_input, o_block, clamp: mix_ratio(o_input, o_block, clamp),
              lambda o_input, o_block: (o_input <= 0) & (o_block <= 0)),
    "code": (lambda o_input, o_block, clamp: mix_ratio_code(o_input, o_block),
             lambda o_input, o_block: (o_input < 0) & (o_block < 0)),
}
# Up/down delta from the scaled response, its ReLU'd form and the ReLU'd unscaled response.
DELTAS = {
    "unscaled": lambda scaled, scaled_relu, base_relu: scaled - base_relu,  # Eq. 5
    "both": lambda scaled, scaled_relu, base_relu: scaled_relu - base_relu,
}
# Up/down pass from the delta and its normaliser (B_c(X̂_B) for up, I_c(X̂_I) for down).
DIRECTIONS = {
    "delta": lambda delta, norm: delta > 0,
    "normalised": lambda delta, norm: _ratio(delta, norm) > 0,
}


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return numerator / denominator


def channel_metrics(response: xr.DataArray, settings: MetricsSettings,
                    relu_response: xr.DataArray | None = None) -> xr.Dataset:
    """Every per-channel metric from one block's responses (tap, channel, source, transform).

    ``relu_response`` is the mean of the per-image ReLUs (top-9 stimuli); the ReLU'd terms of the deltas
    read it under ``top9_relu = "per_image"``, otherwise they are the ReLU of ``response``.
    """

    def value(tap: str, source: str, transform: str = "none") -> np.ndarray:
        return response.sel(tap=tap, source=source, transform=transform).values.astype(np.float64)

    def relu_value(tap: str, source: str, transform: str = "none") -> np.ndarray:
        if settings.top9_relu == "per_image" and relu_response is not None:
            return relu_response.sel(tap=tap, source=source, transform=transform).values.astype(np.float64)
        return relu(value(tap, source, transform))

    o_input, o_block = value("O", "I"), value("O", "B")
    mix_of, failed_of = MIX_RULES[settings.mix_edges]
    mix = mix_of(o_input, o_block, settings.mix_clamp)
    failed_fz = failed_of(o_input, o_block)
    delta = DELTAS[settings.delta_relu]
    up_delta = delta(value("B", "I", "S"), relu_value("B", "I", "S"), relu_value("B", "I"))
    down_delta = delta(value("I", "B", "S_inv"), relu_value("I", "B", "S_inv"), relu_value("I", "B"))
    up_norm, down_norm = value("B", "B"), value("I", "I")
    scale_metric = _ratio(up_delta, up_norm) + _ratio(down_delta, down_norm)
    mix_ok = (settings.mix_low < mix) & (mix < settings.mix_high) & ~failed_fz
    direction = DIRECTIONS[settings.direction]
    up_ok, down_ok = direction(up_delta, up_norm), direction(down_delta, down_norm)
    flags = dict(zip(criteria.FLAGS, (mix_ok, up_ok, down_ok)))
    columns = {
        "mix": mix.astype(np.float32),
        "up_delta": up_delta.astype(np.float32),
        "down_delta": down_delta.astype(np.float32),
        "scale_metric": scale_metric.astype(np.float32),
        **flags,
        **{criterion.column: criterion.passes(flags, asdict(settings)) for criterion in criteria.stored()},
        "failed_fz": failed_fz,
    }
    return xr.Dataset({name: ("channel", data) for name, data in columns.items()},
                      coords={"channel": response["channel"].values})


def block_weights(model: nn.Module, block: str) -> tuple[np.ndarray, np.ndarray] | str:
    """|scale[c]| and mean |weight[c, ...]| of the parts that make the block's summand B, or why it has none.

    ResNet: the last BN's weight and the last conv's (bn2/conv2 of a BasicBlock, the papers' analysis;
    bn3/conv3 of a Bottleneck, the modules that play the same role). Other families: their adapter's
    ``weight_parts`` (a ConvNeXt's layer scale and last Linear; a ViT has none).
    """
    parts = taps_model.weight_parts(model, block)
    if isinstance(parts, str):
        return parts
    scale, weight = parts
    scale_abs = scale.detach().abs().cpu().double().numpy()
    weight_mean_abs = weight.detach().abs().flatten(1).mean(1).cpu().double().numpy()
    return scale_abs, weight_mean_abs


def weight_gaps(model: nn.Module, blocks: Sequence[str]) -> dict[str, str]:
    """{block: why its weight columns are NaN} for the blocks whose family names no weights that make B."""
    return {block: parts for block in blocks
            if isinstance(parts := taps_model.weight_parts(model, block), str)}


def tuning_rho(input_activation: np.ndarray, block_activation: np.ndarray) -> np.ndarray:
    """Per channel, Spearman ρ of I_c and B_c over the images with I_c > 0 (rows: channels, columns: images).

    NaN where fewer than 3 images drive I_c above zero or either side is constant there.
    """
    rho = np.full(input_activation.shape[0], np.nan)
    for c, (input_c, block_c) in enumerate(zip(input_activation, block_activation)):
        driven = input_c > 0
        if driven.sum() < MIN_TUNING_IMAGES:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            rho[c] = stats.spearmanr(input_c[driven], block_c[driven]).statistic
    return rho


# ---------------------------------------------------------------- images and forwards


def fz_tensor(images: np.ndarray, profile: Mapping) -> torch.Tensor:
    """Saved FZs, uint8 ``[N, H, W, 3]``, as the normalized float ``[N, 3, H, W]`` the network sees."""
    return imgs.normalize(imgs.to_unit_float(images), profile)


def own_channel_responses(model: nn.Module, x: torch.Tensor, block: str, channels: np.ndarray) -> np.ndarray:
    """``[3 taps, N]``: tap T's center value of channel ``channels[i]`` at image ``x[i]``, one forward."""
    with torch.inference_mode():
        values, _ = taps_model.run(model, x, [(block, tap) for tap in TAPS], stop=True, center=True)
    rows = torch.arange(len(channels), device=x.device)
    index = torch.as_tensor(channels, device=x.device)
    return np.stack([values[(block, tap)][rows, index].double().cpu().numpy() for tap in TAPS])


def batched_responses(model, load, channels: np.ndarray, block: str, transform, batch_size: int) -> np.ndarray:
    """``[3 taps, N]``: stimulus ``load(rows)[i]`` shown to channel ``channels[rows][i]``, ``batch_size`` per forward.

    Stimuli move to the model's device before they are transformed, so resizing runs there too.
    """
    device = next(model.parameters()).device
    out = np.empty((len(TAPS), len(channels)))
    for start in range(0, len(channels), batch_size):
        rows = np.arange(start, min(start + batch_size, len(channels)))
        x = transform(load(rows).to(device))
        out[:, rows] = own_channel_responses(model, x, block, channels[rows])
    return out


# ---------------------------------------------------------------- the store's inputs


@dataclass
class Inputs:
    fz: xr.Dataset
    natural: xr.Dataset | None
    cache: xr.Dataset | None
    blocks: list[str]  # the blocks computed now: some channel has its FZs of every tap and seed
    top9_note: str
    layout_blocks: list[str] = ()  # the group's block coordinate: every block of the fz group
    fz_group: str = "fz"  # the FZs measured: ``fz``, or ``fz_aliased`` for the aliased comparison
    groups: tuple[str, str] = ("responses", "metrics")  # the groups written
    lacking: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # valid channels without all their FZs

    def fz_ready(self, block: str) -> np.ndarray:
        """Over the block's valid channels: whether the FZs of every tap and seed exist."""
        return ~np.isin(self.valid_channels(block), self.lacking.get(block, ()))

    def unit(self, seed: int, block: str, stimulus_set: str) -> str:
        """A unit's name; a block computed with some channels' FZs missing says which ones it had, so that
        it is made again, whole, once they exist (its full name is what the group needs)."""
        return unit_name(seed, block, stimulus_set) + self._partial(block, stimulus_set)

    def seeds_unit(self, block: str, stimulus_set: str) -> str:
        return seeds_unit(block, stimulus_set) + self._partial(block, stimulus_set)

    def _partial(self, block: str, stimulus_set: str) -> str:
        if stimulus_set != "fz" or not self.lacking.get(block):
            return ""
        return f":without-{digest(list(self.lacking[block]), 8)}"

    @property
    def input_groups(self) -> list[str]:
        return [self.fz_group, "natural", imgs.CACHE_GROUP] if self.top9_available else [self.fz_group]

    @property
    def top9_available(self) -> bool:
        return self.natural is not None and self.cache is not None

    def stimulus_sets(self, block: str) -> list[str]:
        sets = ["fz"]
        if self.top9_available and block in self.natural["block"].values:
            sets.append("top9")
        return sets

    @property
    def seeds(self) -> list[int]:
        return [int(seed) for seed in self.fz["seed"].values]

    def valid_channels(self, block: str) -> np.ndarray:
        valid = self.fz["valid"].sel(block=block).values.astype(bool)
        return self.fz["channel"].values[valid]


def read_inputs(store: Store, profile: Mapping, blocks: Sequence[str] | None = None, *, fz_group: str = "fz",
                top9: bool = True, groups: tuple[str, str] = ("responses", "metrics")) -> Inputs:
    """The stored FZs (and natural images unless ``top9`` is false) to compute from. A channel is computed once
    its FZs of all three taps and every seed exist; blocks with no such channel are skipped, and channels
    without theirs left missing, each listed in one line."""
    if not store.has(fz_group):
        raise UserError(f"store {store.path} has no {fz_group!r} group; run `repro fz` first")
    fz = store.dataset(fz_group)
    missing_taps = set(TAPS) - set(fz["tap"].values)
    if missing_taps:
        raise UserError(f"the 'fz' group lacks taps {', '.join(sorted(missing_taps))}; metrics need I, B and O")
    size = as_profile(profile).model.image_size
    if fz.sizes["y"] != size or fz.sizes["x"] != size:
        raise UserError(f"stored FZs are {fz.sizes['y']}x{fz.sizes['x']} px, the profile's image size is {size}")
    stored = [str(block) for block in fz["block"].values]
    unknown = [block for block in blocks or () if block not in stored]
    if unknown:
        raise UserError(f"blocks {', '.join(unknown)} have no FZs in the store (it has {', '.join(stored)})")
    chosen = [block for block in stored if not blocks or block in blocks]
    made = fz_stage.covered(store, fz_group)  # the FZ units' regions, read once
    lacking, taps_done = fz_lacking(fz, made), fz_stage.done_taps(fz, made)
    ready = [block for block in chosen if len(lacking[block]) < int(fz["valid"].sel(block=block).sum())]
    skipped = [f"{block} (FZs of tap {', '.join(t for t in TAPS if (block, t) not in taps_done)} not done)"
               for block in chosen if block not in ready]
    if not ready:
        raise UserError(f"no channel of {store.path} has its FZs of all three taps done (for every seed); run "
                        "`repro fz` first")
    if skipped:
        click.echo(f"metrics: skipping {len(skipped)} block(s): {'; '.join(skipped)}", err=True)
    partial = [f"{block} ({len(lacking[block])}: {channel_ranges(lacking[block])})" for block in ready if lacking[block]]
    if partial:
        click.echo(f"metrics: channels without the FZs of every tap and seed are left missing: {'; '.join(partial)}",
                   err=True)

    natural = cache = None
    if not top9:
        note = "top9 not computed for these FZs (FZ stimuli only)"
    elif not store.has("natural"):
        note = "no natural group in the store: top9 not computed (NaN)"
    elif not store.group_attrs("natural").get("complete", False):
        note = "the natural group is incomplete: top9 not computed (NaN)"
    elif not store.has(imgs.CACHE_GROUP) or not store.group_attrs(imgs.CACHE_GROUP).get("complete", False):
        note = "no complete image_cache group in the store: top9 not computed (NaN)"
    else:
        natural, cache = store.dataset("natural"), imgs.open_cache(store)
        note = "top9 = mean response over each source tap's 9 top natural images"
    return Inputs(fz, natural, cache, ready, note, chosen, fz_group, tuple(groups),
                  {block: lacking[block] for block in ready if lacking[block]})


def fz_lacking(fz: xr.Dataset, made: np.ndarray) -> dict[str, tuple[int, ...]]:
    """By block: the valid channels some tap or seed has no FZ of (``made``: ``fz.covered``, [seed, block,
    tap, channel])."""
    taps = [list(fz["tap"].values).index(tap) for tap in TAPS]
    complete = made[:, :, taps].all(axis=(0, 2))  # [block, channel]
    valid = fz["valid"].values.astype(bool)
    channels = fz["channel"].values
    return {str(block): tuple(int(c) for c in channels[valid[b] & ~complete[b]])
            for b, block in enumerate(fz["block"].values)}


def channel_ranges(channels: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] → "0-2, 5, 7-8"."""
    runs, start = [], None
    for i, channel in enumerate(channels):
        if start is None:
            start = channel
        if i + 1 == len(channels) or channels[i + 1] != channel + 1:
            runs.append(f"{start}-{channel}" if channel != start else f"{channel}")
            start = None
    return ", ".join(runs)


def group_settings(profile: Mapping, inputs: Inputs) -> dict:
    """What the groups' layout and values depend on beyond their input groups."""
    return {**profiles.read_by(profile, "model", "stimulus", "metrics"),
            "layout": {"blocks": list(inputs.layout_blocks), "channels": int(inputs.fz.sizes["channel"])}}


# ---------------------------------------------------------------- responses of one block


def fz_responses(model, inputs: Inputs, block: str, profile: Mapping, batch_size: int, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(tap, channel, source, transform) responses of a block's valid channels to their own FZs of ``seed``,
    and their ReLU (one image per channel: the mean of per-image ReLUs is the ReLU)."""
    transforms = stimulus.transforms(profile)
    ready = inputs.fz_ready(block)  # the others stay NaN: their FZs are missing
    channels = inputs.valid_channels(block)[ready]
    out = np.full((len(TAPS), len(ready), len(TAPS), len(TRANSFORMS)), np.nan)
    for s, source in enumerate(TAPS):
        images = inputs.fz["image"].sel(seed=seed, block=block, tap=source, channel=channels).values
        for t, transform in enumerate(transforms.values()):
            out[:, ready, s, t] = batched_responses(model, lambda rows: fz_tensor(images[rows], profile), channels,
                                                    block, transform, batch_size)
    return out, relu(out)


def png_round_trip(images01: torch.Tensor) -> torch.Tensor:
    """[0, 1] images saved as 8-bit PNG and read back: ToPILImage's ``mul(255).byte()`` truncates, PNG is
    lossless, ToTensor divides by 255 (the code's top-9 images, saved by its tuning-curve script)."""
    return images01.mul(255).to(torch.uint8).to(images01.dtype).div(255)


def top9_tensor(pixels, profile: Mapping, resized_height, resized_width, png: bool) -> torch.Tensor:
    """Cached squares as the network sees them: the eval crop, through the PNG round trip when ``png``."""
    if not png:
        return imgs.eval_from_cache(pixels, profile, resized_height, resized_width)
    _, crop = imgs.natural_sizes(profile)
    crops = imgs.center_crop_from_cache(imgs.as_tensor(pixels), crop, resized_height, resized_width)
    return imgs.normalize(png_round_trip(imgs.to_unit_float(crops)), profile)


def top9_responses(model, inputs: Inputs, block: str, profile: Mapping, batch_size: int, seed: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(tap, channel, source, transform) mean responses over each source tap's top natural images, and the
    mean of the per-image ReLUs (the same for every FZ ``seed``)."""
    transforms = stimulus.transforms(profile)
    png = as_profile(profile).metrics.top9_png
    channels = inputs.valid_channels(block)
    out = np.full((len(TAPS), len(channels), len(TAPS), len(TRANSFORMS)), np.nan)
    out_relu = out.copy()
    for s, source in enumerate(TAPS):
        top = inputs.natural["top_images"].sel(block=block, tap=source, channel=channels).values[:, :TOP9_RANKS]
        top = top.astype(np.int64)
        pair_channel, pair_rank = np.nonzero(top >= 0)  # unfilled ranks (negative indices) are skipped
        if len(pair_channel) == 0:
            continue
        wanted = top[pair_channel, pair_rank]
        unique, position = np.unique(wanted, return_inverse=True)
        cached = inputs.cache[["pixels", "resized_height", "resized_width"]].isel(image=unique).load()  # read once

        def load(rows, position=position, cached=cached):
            at = position[rows]
            return top9_tensor(cached["pixels"].values[at], profile, cached["resized_height"].values[at],
                               cached["resized_width"].values[at], png)

        count = np.bincount(pair_channel, minlength=len(channels))
        for t, transform in enumerate(transforms.values()):
            per_pair = batched_responses(model, load, channels[pair_channel], block, transform, batch_size)
            out[:, :, s, t] = _channel_mean(per_pair, pair_channel, count)
            out_relu[:, :, s, t] = _channel_mean(relu(per_pair), pair_channel, count)
    return out, out_relu


# The stimulus sets, in the order of the ``stimulus_set`` coordinate: name → the responses of one block.
STIMULUS_SETS = {"fz": fz_responses, "top9": top9_responses}
# Stimulus sets whose images are the FZs of one seed; the others (top-9 natural images) are the same for every seed.
PER_SEED_SETS = ("fz",)


def _channel_mean(per_pair: np.ndarray, pair_channel: np.ndarray, count: np.ndarray) -> np.ndarray:
    """``[taps, channels]`` mean of the pairs' values per channel (NaN for a channel without pairs)."""
    summed = np.zeros((per_pair.shape[0], len(count)))
    np.add.at(summed, (slice(None), pair_channel), per_pair)
    with np.errstate(invalid="ignore", divide="ignore"):
        return summed / count


# ---------------------------------------------------------------- templates and parts


def _coords(inputs: Inputs) -> dict:
    return {
        "seed": np.array(inputs.seeds),
        "block": labels(inputs.layout_blocks),
        "tap": labels(TAPS),
        "channel": inputs.fz["channel"].values,
        "source": labels(TAPS),
        "transform": labels(TRANSFORMS),
        "stimulus_set": labels(STIMULUS_SETS),
    }


def responses_template(inputs: Inputs) -> xr.Dataset:
    coords = _coords(inputs)
    dims = ("seed", "block", "tap", "channel", "source", "transform", "stimulus_set")
    shape = tuple(len(coords[dim]) for dim in dims)
    chunks = (1, 1, len(TAPS), shape[3], len(TAPS), len(TRANSFORMS), 1)
    response = da.full(shape, np.nan, dtype=np.float32, chunks=chunks)
    relu_response = da.full(shape, np.nan, dtype=np.float32, chunks=chunks)
    return xr.Dataset({"response": (dims, response), "relu_response": (dims, relu_response)}, coords=coords)


PER_SET_FLOATS = ("mix", "up_delta", "down_delta", "scale_metric")
PER_CHANNEL_FLOATS = ("bn2_weight_abs", "conv2_weight_mean_abs", "tuning_rho")


def criterion_flags() -> tuple[str, ...]:
    """The flags whose pass frequency over seeds is stored (``<flag>_frequency``) with a robust label
    (``<flag>_robust``): each test and each stored criterion (``analyses.criteria``)."""
    return criteria.FLAGS + criteria.stored_columns()


def per_set_flags() -> tuple[str, ...]:
    return criterion_flags() + ("failed_fz",)


def metrics_template(inputs: Inputs) -> xr.Dataset:
    coords = {key: value for key, value in _coords(inputs).items()
              if key in ("seed", "block", "channel", "stimulus_set")}
    n_seeds, n_blocks, n_channels = len(inputs.seeds), len(inputs.layout_blocks), len(coords["channel"])
    per_seed = (n_seeds, n_blocks, n_channels, len(STIMULUS_SETS))
    per_set, per_channel = (n_blocks, n_channels, len(STIMULUS_SETS)), (n_blocks, n_channels)
    seed_dims, set_dims = ("seed", "block", "channel", "stimulus_set"), ("block", "channel", "stimulus_set")
    variables = {}
    for name in PER_SET_FLOATS:
        variables[name] = (seed_dims, da.full(per_seed, np.nan, dtype=np.float32, chunks=(1, 1, n_channels, 1)))
    for name in per_set_flags():
        variables[name] = (seed_dims, da.zeros(per_seed, dtype=bool, chunks=(1, 1, n_channels, 1)))
    for name in per_set_flags():
        variables[f"{name}_frequency"] = (set_dims, da.full(per_set, np.nan, dtype=np.float32,
                                                            chunks=(1, n_channels, 1)))
    for name in criterion_flags():
        variables[f"{name}_robust"] = (set_dims, da.zeros(per_set, dtype=bool, chunks=(1, n_channels, 1)))
    for name in PER_CHANNEL_FLOATS:
        variables[name] = (("block", "channel"), da.full(per_channel, np.nan, dtype=np.float32, chunks=(1, n_channels)))
    variables["valid"] = (("block", "channel"), da.zeros(per_channel, dtype=bool, chunks=(1, n_channels)))
    variables["downsample"] = (("block",), da.zeros(n_blocks, dtype=bool, chunks=1))
    return xr.Dataset(variables, coords=coords)


def response_part(inputs: Inputs, seed: int, block: str, stimulus_set: str, values: np.ndarray,
                  relu_values: np.ndarray) -> xr.Dataset:
    """One unit of ``responses``: the valid channels' values (and their per-image ReLU means) of one seed
    placed on the full channel axis."""
    coords = _coords(inputs)
    valid = inputs.fz["valid"].sel(block=block).values.astype(bool)
    coords.update(seed=np.array([seed]), block=labels([block]), stimulus_set=labels([stimulus_set]))
    dims = ("seed", "block", "tap", "channel", "source", "transform", "stimulus_set")
    variables = {}
    for name, data in (("response", values), ("relu_response", relu_values)):
        full = np.full((len(TAPS), len(coords["channel"]), len(TAPS), len(TRANSFORMS)), np.nan, dtype=np.float32)
        full[:, valid] = data
        variables[name] = (dims, full[None, None, ..., None])
    return xr.Dataset(variables, coords=coords)


def metrics_part(seed: int, block: str, stimulus_set: str, metrics: xr.Dataset) -> xr.Dataset:
    return metrics.expand_dims(seed=np.array([seed]), block=labels([block]),
                               stimulus_set=labels([stimulus_set])).transpose("seed", "block", "channel", "stimulus_set")


def seed_frequencies(per_seed: xr.Dataset, valid: np.ndarray, robust_fraction: float) -> xr.Dataset:
    """Per channel: the fraction of seeds passing each criterion flag, and the robust label (fraction ≥
    ``robust_fraction``). ``per_seed`` holds one block and stimulus set: flags over (seed, channel)."""
    columns, robust = {}, criterion_flags()
    for name in per_set_flags():
        frequency = per_seed[name].astype(np.float64).mean("seed").values
        columns[f"{name}_frequency"] = np.where(valid, frequency, np.nan).astype(np.float32)
        if name in robust:
            # A small margin, so 2 of 3 seeds pass a fraction of 2/3 despite rounding.
            columns[f"{name}_robust"] = valid & (frequency >= robust_fraction - 1e-9)
    return xr.Dataset({name: ("channel", data) for name, data in columns.items()},
                      coords={"channel": per_seed["channel"].values})


def block_part(model: nn.Module, inputs: Inputs, block: str) -> xr.Dataset:
    """The per-channel columns that need no stimuli: weights, tuning correlation, validity."""
    channels = inputs.fz["channel"].values
    valid = inputs.fz["valid"].sel(block=block).values.astype(bool)
    present = channels[valid]
    columns = {name: np.full(len(channels), np.nan, dtype=np.float32) for name in PER_CHANNEL_FLOATS}
    weights = block_weights(model, block)
    if not isinstance(weights, str):  # else NaN, the reason in the group's weights_missing attr
        bn_abs, conv_mean_abs = weights
        columns["bn2_weight_abs"][valid] = bn_abs[present]
        columns["conv2_weight_mean_abs"][valid] = conv_mean_abs[present]
    if inputs.natural is not None and block in inputs.natural["block"].values:
        activation = inputs.natural["activation"].sel(block=block, channel=present)
        columns["tuning_rho"][valid] = tuning_rho(activation.sel(tap="I").values.astype(np.float64),
                                                  activation.sel(tap="B").values.astype(np.float64))
    variables = {name: (("block", "channel"), data[None]) for name, data in columns.items()}
    variables["valid"] = (("block", "channel"), valid[None])
    variables["downsample"] = (("block",), np.array([taps_model.family_of(model).projects_input(model, block)]))
    return xr.Dataset(variables, coords={"block": labels([block]), "channel": channels})


# ---------------------------------------------------------------- the stage


def failed_message(block: str, stimulus_set: str, metrics: xr.Dataset, valid: np.ndarray, seed: int = 0) -> str:
    """The warning a block's failed FZs deserve ("" when none failed)."""
    failed = metrics["channel"].values[metrics["failed_fz"].values & valid]
    if not len(failed):
        return ""
    return (f"block {block} ({stimulus_set}, seed {seed}): {len(failed)} channel(s) with both O responses <= 0 "
            f"(failed FZ; M = 5, excluded from invariance): {', '.join(map(str, failed))}")


def failed_counts(metrics: xr.Dataset) -> dict:
    """{block: {stimulus_set: number of failed FZs (valid channel × seed) flagged failed_fz}} from the stored group."""
    flagged = (metrics["failed_fz"] & metrics["valid"]).sum(("seed", "channel")).load()
    return {str(block): {str(s): int(flagged.sel(block=block, stimulus_set=s)) for s in metrics["stimulus_set"].values}
            for block in metrics["block"].values}


class MetricsStage(Stage):
    """The metrics stage: a unit is a block's stimulus set (its responses and metrics for every seed, then
    their pass frequencies) or a block's per-channel columns (``stimulus_set == "channel"``)."""

    def __init__(self, store: Store, weights: Mapping, profile: Mapping, *, blocks: Sequence[str] | None = None,
                 fz_group: str = "fz", groups: tuple[str, str] = ("responses", "metrics"), top9: bool = True,
                 model: nn.Module | None = None):
        store.require_intact([fz_group, "natural", imgs.CACHE_GROUP], units=False)
        self.store, self.weights, self.profile = store, weights, as_profile(profile)
        self.read = read_inputs(store, profile, blocks, fz_group=fz_group, top9=top9, groups=groups)
        # What the weight columns are in this model's family, and the blocks where they are NaN, and why.
        family = taps_model.family_of(model) if model is not None else None
        self.weights_note = family.weights_note() if family else "bn2/conv2 of a BasicBlock; bn3/conv3 of a Bottleneck"
        self.weight_gaps = weight_gaps(model, self.read.layout_blocks) if model is not None else {}
        self.title = self.read.groups[1]

    def inputs(self) -> list[str]:
        return list(self.read.input_groups)

    def groups(self) -> list[Group]:
        inputs, profile = self.read, self.profile
        responses_group, metrics_group = inputs.groups
        settings = metrics_settings(profile)
        settings_read = group_settings(profile, inputs)
        block_sets = [(block, s) for block in inputs.layout_blocks for s in inputs.stimulus_sets(block)]
        layout_units = {unit_name(seed, block, s) for seed in inputs.seeds for block, s in block_sets}
        summary_units = {seeds_unit(block, s) for block, s in block_sets} | {channel_unit(b) for b in inputs.layout_blocks}
        attrs = provenance(profile, self.weights, stage="metrics", top9_available=inputs.top9_available,
                           top9_note=inputs.top9_note)
        return [Group(responses_group, responses_template(inputs), attrs, settings_read, frozenset(layout_units)),
                Group(metrics_group, metrics_template(inputs), {
                    **attrs,
                    "mix_conventions": MIX_CONVENTIONS[settings.mix_edges],
                    "mix_low": settings.mix_low, "mix_high": settings.mix_high, "mix_clamp": settings.mix_clamp,
                    "interpreting_criterion": settings.interpreting_criterion,
                    "weights_note": self.weights_note,
                    "weights_missing": self.weight_gaps,
                    "robust_fraction": profile.metrics.robust_fraction,
                }, settings_read, frozenset(layout_units | summary_units))]

    def units(self, done: Mapping[str, set[str]]) -> list[tuple[str, str]]:
        inputs = self.read
        responses_done, metrics_done = (done[group] for group in inputs.groups)
        units = [(block, s) for block in inputs.blocks for s in inputs.stimulus_sets(block)]
        units = [(b, s) for b, s in units
                 if not ({inputs.unit(seed, b, s) for seed in inputs.seeds} <= responses_done & metrics_done
                         and inputs.seeds_unit(b, s) in metrics_done)]
        return units + [(block, "channel") for block in inputs.blocks if channel_unit(block) not in metrics_done]

    def context(self) -> "MetricsContext":
        inputs = self.read
        return MetricsContext(str(self.store.path), self.profile, tuple(inputs.blocks),
                              tuple(inputs.layout_blocks), inputs.top9_available, inputs.top9_note,
                              inputs.fz_group, tuple(inputs.groups), dict(inputs.lacking))

    @staticmethod
    def compute(model: nn.Module, context: "MetricsContext", unit: tuple[str, str]) -> Iterator[Part]:
        return make_unit(model, context, unit)

    def finish(self, results: list[list[str]]) -> Mapping[str, Mapping]:
        for messages in results:  # the units' failed-FZ warnings, shown here
            for message in messages:
                warnings.warn(message, FailedFZWarning, stacklevel=2)
        inputs = self.read
        responses_group, metrics_group = inputs.groups
        for group in inputs.groups:  # a block computed in part, now whole: its partial units are superseded
            done = self.store.done(group)
            self.store.unmark(group, [unit for unit in done if unit.rsplit(":without-", 1)[0] in done - {unit}])
        counts = failed_counts(self.store.dataset(metrics_group))
        top9_blocks = [block for block in inputs.blocks if "top9" in inputs.stimulus_sets(block)]
        missing = "; ".join(f"{block} ({channel_ranges(channels)})" for block, channels in inputs.lacking.items())
        incomplete = f"channels without their FZs: {missing}; make them with `repro fz`, then rerun" if missing else ""
        return {responses_group: {"top9_blocks": top9_blocks, "incomplete": incomplete},
                metrics_group: {"top9_blocks": top9_blocks, "failed_fz_count": counts, "incomplete": incomplete,
                                "failed_fz_total": sum(sum(c.values()) for c in counts.values())}}


def run(store: Store, model: nn.Module, weights: Mapping, profile: Mapping, *,
        blocks: Sequence[str] | None = None, fz_group: str = "fz",
        groups: tuple[str, str] = ("responses", "metrics"), top9: bool = True,
        executor=None, device: torch.device | str | None = None) -> None:
    """Compute and store ``responses`` and ``metrics`` for the FZs (and natural images) in ``store``.

    ``fz_group`` and ``groups`` name the FZs read and the two groups written (the aliased comparison
    reads ``fz_aliased`` and writes ``responses_aliased`` / ``metrics_aliased``, FZ stimuli only)."""
    stage = MetricsStage(store, weights, profile, blocks=blocks, fz_group=fz_group, groups=groups, top9=top9,
                         model=model)
    if stage.weight_gaps:  # once per run, not once per block
        click.echo(f"metrics: weight columns (bn2_weight_abs, conv2_weight_mean_abs) are NaN for "
                   f"{len(stage.weight_gaps)} block(s): {next(iter(stage.weight_gaps.values()))}", err=True)
    run_stage(stage, store, model, weights, executor=executor, device=device)


def unit_name(seed: int, block: str, stimulus_set: str) -> str:
    """A seed's responses and metrics of a block's stimulus set."""
    return f"s{seed}:{block}:{stimulus_set}"


def seeds_unit(block: str, stimulus_set: str) -> str:
    """The pass frequencies over seeds of a block's stimulus set."""
    return f"{block}:{stimulus_set}:seeds"


def channel_unit(block: str) -> str:
    """A block's per-channel columns (weights, tuning)."""
    return f"{block}:channel"


@dataclass(frozen=True)
class MetricsContext:
    """What every unit of one run shares; each unit reopens the input groups from the store."""

    store_path: str
    profile: Profile
    blocks: tuple[str, ...]
    layout_blocks: tuple[str, ...]
    top9_available: bool
    top9_note: str
    fz_group: str = "fz"
    groups: tuple[str, str] = ("responses", "metrics")
    lacking: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def inputs(self) -> Inputs:
        store = Store(Path(self.store_path))
        natural = store.dataset("natural") if self.top9_available else None
        cache = imgs.open_cache(store) if self.top9_available else None
        return Inputs(store.dataset(self.fz_group), natural, cache, list(self.blocks), self.top9_note,
                      list(self.layout_blocks), self.fz_group, self.groups, self.lacking)


def make_unit(model: nn.Module, context: MetricsContext, unit: tuple[str, str]) -> Iterator[Part]:
    """One unit: a block's responses and metrics for one stimulus set, every seed, then their pass
    frequencies; or its per-channel columns (``stimulus_set == "channel"``). Returns the messages of the
    warnings it raised."""
    block, stimulus_set = unit
    store, inputs = Store(Path(context.store_path)), context.inputs()
    messages: list[str] = []  # shown where the run started (``MetricsStage.finish``), wherever this unit ran
    if stimulus_set == "channel":
        yield Part(inputs.groups[1], channel_unit(block), block_part(model, inputs, block))
    else:
        yield from _unit_parts(store, model, inputs, context.profile, metrics_settings(context.profile),
                               block, stimulus_set, context.profile.metrics.batch_size, messages)
        yield from _frequency_parts(store, inputs, block, stimulus_set, context.profile.metrics.robust_fraction)
    return messages


def _unit_parts(store, model, inputs, profile, settings, block, stimulus_set, batch_size,
                messages: list[str]) -> Iterator[Part]:
    """Each seed's responses, then its metrics (computed from the stored responses)."""
    responses_group, metrics_group = inputs.groups
    computed = {}  # top-9 stimuli do not depend on the FZ seed: computed once, stored under every seed
    for seed in inputs.seeds:
        unit = inputs.unit(seed, block, stimulus_set)
        if unit not in store.done(responses_group):
            key = seed if stimulus_set in PER_SEED_SETS else None
            if key not in computed:
                computed[key] = STIMULUS_SETS[stimulus_set](model, inputs, block, profile, batch_size, seed=seed)
            values, relu_values = computed[key]
            yield Part(responses_group, unit, response_part(inputs, seed, block, stimulus_set, values, relu_values))
        if unit not in store.done(metrics_group):
            stored = store.dataset(responses_group).sel(seed=seed, block=block, stimulus_set=stimulus_set)
            metrics = channel_metrics(stored["response"].load(), settings, stored["relu_response"].load())
            valid = inputs.fz["valid"].sel(block=block).values.astype(bool)
            messages += filter(None, [failed_message(block, stimulus_set, metrics, valid, seed)])
            yield Part(metrics_group, unit, metrics_part(seed, block, stimulus_set, metrics))


def _frequency_parts(store, inputs, block, stimulus_set, robust_fraction: float) -> Iterator[Part]:
    metrics_group = inputs.groups[1]
    unit = inputs.seeds_unit(block, stimulus_set)
    if unit in store.done(metrics_group):
        return
    stored = store.dataset(metrics_group)
    per_seed = stored[list(per_set_flags())].sel(block=block, stimulus_set=stimulus_set).load()
    valid = inputs.fz["valid"].sel(block=block).values.astype(bool)
    if stimulus_set == "fz":  # channels without their FZs have no frequency (NaN), as they have no metrics
        valid[valid] = inputs.fz_ready(block)
    frequencies = seed_frequencies(per_seed, valid, robust_fraction)
    part = frequencies.expand_dims(block=labels([block]), stimulus_set=labels([stimulus_set])).transpose(
        "block", "channel", "stimulus_set")
    yield Part(metrics_group, unit, part)

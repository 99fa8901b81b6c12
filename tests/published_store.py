"""Store groups constructed to match every published number of one paper (resnet18's real block widths).

``published_groups(paper)`` gives {"metrics", "responses", "ablation"} Datasets and the ablation group's attrs.
Each claim's quantity is set directly from ``data/published`` (channel sets, named channels, accuracies) and
the qualitative claims are built in (overwrite-skewed downsample blocks, weights falling with M, ...). The two
papers cannot share one store: "Interpreting" lists channels passing all three criteria (so mix and up) that
"Naturally computed" does not list as passing mix and up (2.0: 3, 7, 15), and its Fig. 1A skip channel 25 of
1.1 (M >= 3/2) is one of the first paper's invariant channels (M < 3/2).
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from repro.store import labels

WIDTHS = {"1.1": 64, "2.0": 128, "2.1": 128, "3.0": 256, "3.1": 256, "4.0": 512, "4.1": 512}
DOWNSAMPLE = ("2.0", "3.0", "4.0")
SETS = ("fz", "top9")
SCALES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
TRIALS = 10
UP_DOWN_WITHOUT_MIX = {"3.0": 8, "2.1": 10, "3.1": 10}  # paper 2 Fig. 5 yellow bars: 3.0 appreciable, below 2.1, 3.1


def _background_mix(block: str, width: int) -> np.ndarray:
    """Distinct mix ratios: mostly overwrite (M < 1) in downsample blocks, less so in simple ones, and all of
    4.1 in the lowest bin (0, 0.25)."""
    order = np.arange(width) / width
    if block == "4.1":
        return 0.05 + 0.15 * order
    overwrite_share = 0.8 if block in DOWNSAMPLE else 0.4
    return np.where(order < overwrite_share, 0.1 + 0.4 * order, 2.0 + order)


class Block:
    """One block's per-channel arrays, filled claim by claim."""

    def __init__(self, block: str, width: int):
        self.block, self.width = block, width
        self.mix = _background_mix(block, width)
        self.up = np.zeros(width, bool)
        self.down = np.zeros(width, bool)
        self.top9 = None  # channels passing every criterion with the top-9 images (None: as with FZs)
        self.scale_metric = -1.0 - np.arange(width) / width

    def passing(self, channels, down: bool = True) -> None:
        """Channels passing mix and up (and down): M in (2/3, 3/2) but farther from 1 than the top mixes."""
        channels = list(channels)
        self.mix[channels] = 1.3 + 0.1 * np.arange(len(channels)) / max(len(channels), 1)
        self.up[channels] = True
        self.down[channels] = down
        self.scale_metric[channels] = 1.0 + np.arange(len(channels)) / (10 * max(len(channels), 1))

    def top_mixes(self, channels) -> None:
        self.mix[list(channels)] = 1.0 + 0.001 * (np.arange(len(channels)) + 1)

    def highest_scale_metric(self, channels) -> None:
        self.scale_metric[list(channels)] = 10.0 - np.arange(len(channels))

    def up_and_down_without_mix(self, count: int) -> None:
        free = [c for c in range(self.width) if not self.up[c] and self.mix[c] < 2 / 3][:count]
        self.up[free] = self.down[free] = True


def _naturally_blocks(published) -> dict[str, Block]:
    blocks = {block: Block(block, width) for block, width in WIDTHS.items()}
    for block, channels in published["invariant_channels"].items():
        if block in blocks:
            blocks[block].passing(channels, down=False)
    return blocks


def _interpreting_blocks(published) -> dict[str, Block]:
    blocks = {block: Block(block, width) for block, width in WIDTHS.items()}
    a3, named = published["fz_and_imagenet"], published["top_scale_metric"]
    spectrum = published["fig1a_spectrum_examples"]
    for block, unit in blocks.items():
        fz_set = sorted(set(a3.get(block, [])) | set(named.get(block, []))
                        | (set(published["fig1b_invariant_examples"]["channels"]) if block == "3.1" else set()))
        unit.passing(fz_set)
        unit.top9 = list(a3.get(block, []))
        unit.highest_scale_metric(named.get(block, []))
        unit.up_and_down_without_mix(UP_DOWN_WITHOUT_MIX.get(block, 0))
        unit.top_mixes(published["top_mixes"][block])
    one = blocks[spectrum["block"]]
    one.mix[spectrum["overwrite"]], one.mix[spectrum["skip"]] = 0.05, 4.0
    return blocks


def _metrics(blocks: dict[str, Block]) -> xr.Dataset:
    width = max(WIDTHS.values())
    shape = (len(blocks), width)

    def stacked(values_of, fill):
        out = np.full(shape, fill, dtype=np.asarray(fill).dtype)
        for index, unit in enumerate(blocks.values()):
            out[index, :unit.width] = values_of(unit)
        return out

    mix = stacked(lambda u: u.mix, np.nan)
    up, down = stacked(lambda u: u.up, False), stacked(lambda u: u.down, False)
    valid = stacked(lambda u: np.ones(u.width, bool), False)
    mix_ok = (mix > 2 / 3) & (mix < 3 / 2)
    # With the top-9 images, exactly the A.3 channels pass up and down (their M is the FZs', in the band).
    up9 = stacked(lambda u: np.isin(np.arange(u.width), u.top9) if u.top9 is not None else u.up, False)
    down9 = stacked(lambda u: np.isin(np.arange(u.width), u.top9) if u.top9 is not None else u.down, False)
    per_set = {"mix": np.stack([mix, mix], -1), "mix_ok": np.stack([mix_ok, mix_ok], -1),
               "up_ok": np.stack([up, up9], -1), "down_ok": np.stack([down, down9], -1)}
    scale_metric = stacked(lambda u: u.scale_metric, np.nan)
    per_set["scale_metric"] = np.stack([scale_metric, scale_metric], -1)
    per_set["up_delta"] = np.where(per_set["up_ok"], 0.5, -0.5)
    per_set["down_delta"] = np.where(per_set["down_ok"], 0.5, -0.5)
    per_set["invariant_naturally"] = per_set["mix_ok"] & per_set["up_ok"]
    per_set["invariant_interpreting"] = per_set["invariant_naturally"] & per_set["down_ok"]
    per_set["failed_fz"] = np.zeros(per_set["mix"].shape, bool)
    falling = 2.0 - np.nan_to_num(mix) / 5  # |weights| fall with M: skip channels have small weights
    # Tuning: overwrite channels more negative in 3.1 only; elsewhere the same values in both groups.
    tuning = np.broadcast_to((np.arange(width) % 3 - 1) * 0.5, shape).copy()
    tuning[list(blocks).index("3.1")] = np.clip(np.nan_to_num(mix[list(blocks).index("3.1")]) - 1, -1, 1)
    per_channel = {"bn2_weight_abs": falling, "conv2_weight_mean_abs": 0.1 * falling, "tuning_rho": tuning,
                   "valid": valid}
    dims_set, dims = ("block", "channel", "stimulus_set"), ("block", "channel")
    return xr.Dataset(
        {**{name: (dims_set, value) for name, value in per_set.items()},
         **{name: (dims, np.where(valid, value, np.nan) if name != "valid" else value)
            for name, value in per_channel.items()},
         "downsample": (("block",), np.array([block in DOWNSAMPLE for block in blocks]))},
        coords={"block": labels(blocks), "channel": np.arange(width), "stimulus_set": labels(SETS)})


def _responses(metrics: xr.Dataset) -> xr.Dataset:
    """B_c(X_I) = M − 1: overwrite channels (M < 1) inhibit the block, skip channels do not."""
    mix = metrics["mix"].sel(stimulus_set="fz").values
    response = np.zeros((*mix.shape[:1], 3, mix.shape[1], 3, 3, 2), np.float32)
    response[:, 1, :, 0, 0, :] = (np.nan_to_num(mix) - 1)[..., None]
    return xr.Dataset({"response": (("block", "tap", "channel", "source", "transform", "stimulus_set"), response)},
                      coords={"block": metrics["block"].values, "tap": labels("IBO"), "channel": metrics["channel"].values,
                              "source": labels("IBO"), "transform": labels(["none", "S", "S_inv"]),
                              "stimulus_set": labels(SETS)})


def _ablation(published) -> xr.Dataset:
    """The code comments' invariant accuracies; random sets whose ratio falls below the no-scale ratio."""
    blocks = published["ablation_ratio_below_no_scale"]["blocks"]
    rng = np.random.default_rng(0)
    accuracy = np.full((len(blocks), 3, TRIALS, len(SCALES)), np.nan)
    for index, block in enumerate(blocks):
        code = published["ablation_invariant_accuracy"][block]
        invariant = np.array([code["no_scale"], *code["scaled"]])
        ratio = 0.99 - 0.01 * np.arange(len(SCALES)) * (np.arange(len(SCALES)) > 0)
        accuracy[index, 0, 0] = published["unablated_accuracy"]["value"] - 3 * np.arange(len(SCALES))
        accuracy[index, 1, 0] = invariant
        accuracy[index, 2] = invariant / ratio * (1 + rng.normal(0, 1e-4, (TRIALS, len(SCALES))))
    return xr.Dataset({"accuracy": (("block", "condition", "trial", "scale"), accuracy),
                       "rejected_draws": (("block",), np.zeros(len(blocks), int))},
                      coords={"block": labels(blocks), "condition": labels(["none", "invariant", "random"]),
                              "trial": np.arange(TRIALS), "scale": np.array(SCALES)})


def published_groups(paper: str) -> tuple[dict[str, xr.Dataset], dict]:
    """The groups of a store matching every published number of ``paper`` ("naturally" or "interpreting")."""
    from report import spec

    if paper == "naturally":
        metrics = _metrics(_naturally_blocks(spec.NATURALLY))
    else:
        metrics = _metrics(_interpreting_blocks(spec.INTERPRETING))
    groups = {"metrics": metrics, "responses": _responses(metrics), "ablation": _ablation(spec.NATURALLY)}
    return groups, {"scale_definition": spec.NATURALLY["ablation_invariant_accuracy"]["scale_definition"]}

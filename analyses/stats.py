"""The statistics both papers report, over the store's ``metrics`` and ``responses`` datasets.

Every function is pure: Datasets (as ``Store.dataset(...)`` or ``xarray.open_zarr`` return them) and
plain arguments in, numbers, channel lists or a pandas DataFrame out. The tests come from scipy
(``spearmanr``, ``f_oneway``) and bin counts from numpy; nothing is computed by hand.

Conventions:

* Only ``valid`` channels of a block count (narrower blocks are padded to the widest).
* ``stimulus_set`` is ``"fz"`` (the papers' main results) or ``"top9"`` (the ImageNet variant). Where a
  criterion is asked for, ``"both"`` means passing with both stimulus sets (appendix A.3); channels are
  then ranked by their FZ scale metric, as in the paper. A dataset already narrowed to one stimulus
  set (no ``stimulus_set`` dim) is used as it is.
* ``criterion`` is a name in the registry ``analyses.criteria.CRITERIA`` — ``"naturally"`` (mix ∧ up, paper
  "Naturally computed scale invariance"), ``"interpreting"`` (mix ∧ up ∧ down, paper "Interpreting the
  residual stream"), ``"interpreting_without_mix"`` (up ∧ down, its Fig. 5 yellow bars) — or the name of
  any boolean metrics variable (``"mix_ok"``, ``"invariant_naturally"``, ...).
* Skip channels have M ≥ 1, overwrite channels M < 1.

Example::

    metrics = xr.open_zarr("run.zarr", group="metrics")
    block_counts(metrics, "naturally")                 # Fig. 5 / the "Naturally computed" counts
    invariant_channels(metrics, "2.1", "interpreting", "both", order="scale_metric")   # A.3
    weight_mix_correlations(metrics, blocks=["1.1", "2.1", "3.1"])                     # Fig. 3
"""
from __future__ import annotations

import warnings
from typing import NamedTuple, Sequence

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from analyses.criteria import CRITERIA

MIX_BINS = np.arange(0, 5.25, 0.25)  # the paper's Fig. 2: 0 to 5 at 0.25
MIN_SPEARMAN_PAIRS = 3


class SkipOverwrite(NamedTuple):
    """One-way ANOVA of a per-channel value between skip (M ≥ 1) and overwrite (M < 1) channels."""

    f: float
    p: float
    n_skip: int
    n_overwrite: int
    mean_skip: float
    mean_overwrite: float


# ---------------------------------------------------------------- tests on vectors


def spearman(x, y) -> tuple[float, float]:
    """Spearman ρ and its p-value (scipy.stats.spearmanr) over the pairs where both are finite.

    (NaN, NaN) with fewer than 3 such pairs or a constant side.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < MIN_SPEARMAN_PAIRS:
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        result = stats.spearmanr(x[keep], y[keep])
    return float(result.statistic), float(result.pvalue)


def anova_skip_overwrite(values, mix) -> SkipOverwrite:
    """scipy.stats.f_oneway of ``values`` between skip (M ≥ 1) and overwrite (M < 1) channels.

    Pairs with a non-finite value or M are left out; F and p are NaN when a group is empty or scipy
    finds the data degenerate.
    """
    values, mix = np.asarray(values, dtype=float), np.asarray(mix, dtype=float)
    keep = np.isfinite(values) & np.isfinite(mix)
    skip, overwrite = values[keep & (mix >= 1)], values[keep & (mix < 1)]
    f = p = float("nan")
    if len(skip) and len(overwrite):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degenerate groups: scipy warns and returns NaN
            result = stats.f_oneway(skip, overwrite)
        f, p = float(result.statistic), float(result.pvalue)
    return SkipOverwrite(f, p, len(skip), len(overwrite), _mean(skip), _mean(overwrite))


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


# ---------------------------------------------------------------- selections


def first_seed(dataset):
    """The store's first FZ seed alone: one FZ per neuron, the papers' method (seed noise is measured
    separately, in ``analyses.noise``)."""
    return dataset.isel(seed=0, drop=True) if "seed" in dataset.dims else dataset


def _one_set(dataset: xr.Dataset, stimulus_set: str) -> xr.Dataset:
    dataset = first_seed(dataset)
    return dataset.sel(stimulus_set=stimulus_set) if "stimulus_set" in dataset.dims else dataset


def blocks_of(metrics_ds: xr.Dataset) -> list[str]:
    return [str(block) for block in metrics_ds["block"].values]


def valid_channels(metrics_ds: xr.Dataset, block: str) -> np.ndarray:
    """The channels the block has (``valid``), ascending."""
    valid = metrics_ds["valid"].sel(block=block)
    return valid["channel"].values[np.asarray(valid.values, dtype=bool)]


def per_channel(metrics_ds: xr.Dataset, name: str, block: str, stimulus_set: str = "fz") -> pd.Series:
    """One variable of one block over its valid channels, indexed by channel."""
    channels = valid_channels(metrics_ds, block)
    values = _one_set(metrics_ds[[name]], stimulus_set)[name].sel(block=block, channel=channels).values
    return pd.Series(np.asarray(values), index=pd.Index(channels, name="channel"), name=name)


def criterion_flags(metrics_ds: xr.Dataset, criterion: str) -> tuple[str, ...]:
    """The flags a criterion ANDs, under the reading the metrics were made under (their attrs); a boolean
    variable's name is itself."""
    found = CRITERIA.get(criterion)
    return found.flags_under(metrics_ds.attrs) if found else (criterion,)


def passing(metrics_ds: xr.Dataset, block: str, criterion: str = "naturally", stimulus_set: str = "fz") -> pd.Series:
    """Boolean Series over the block's valid channels: does each pass ``criterion`` with ``stimulus_set``?"""
    if stimulus_set == "both":
        return passing(metrics_ds, block, criterion, "fz") & passing(metrics_ds, block, criterion, "top9")
    names = criterion_flags(metrics_ds, criterion)
    unknown = [name for name in names if name not in metrics_ds]
    if unknown:
        raise ValueError(f"unknown criterion {criterion!r}: use one of {', '.join(CRITERIA)} or a boolean variable")
    result = None
    for name in names:
        flags = per_channel(metrics_ds, name, block, stimulus_set).astype(bool)
        result = flags if result is None else result & flags
    return result.rename(criterion)


# ---------------------------------------------------------------- counts and channel lists


def block_counts(metrics_ds: xr.Dataset, criterion: str = "naturally", stimulus_set: str = "fz") -> pd.DataFrame:
    """Per block: ``count`` of valid channels passing, ``channels`` (valid ones), ``percent`` of them."""
    rows = []
    for block in blocks_of(metrics_ds):
        flags = passing(metrics_ds, block, criterion, stimulus_set)
        count, total = int(flags.sum()), len(flags)
        rows.append({"block": block, "count": count, "channels": total,
                     "percent": 100.0 * count / total if total else float("nan")})
    return pd.DataFrame(rows).set_index("block")


def _by_scale_metric(metrics_ds: xr.Dataset, block: str, channels, stimulus_set: str) -> list[int]:
    """``channels`` by scale metric, highest first (ties by channel); "both" ranks by the FZ scale metric."""
    ranking_set = "fz" if stimulus_set == "both" else stimulus_set
    metric = per_channel(metrics_ds, "scale_metric", block, ranking_set).reindex(list(channels))
    ordered = metric.sort_values(ascending=False, kind="stable", na_position="last")
    return [int(channel) for channel in ordered.index]


def invariant_channels(metrics_ds: xr.Dataset, block: str, criterion: str = "naturally", stimulus_set: str = "fz",
                       *, order: str = "channel") -> list[int]:
    """The block's channels passing ``criterion``: ascending, or by scale metric with ``order="scale_metric"``."""
    flags = passing(metrics_ds, block, criterion, stimulus_set)
    channels = [int(channel) for channel in flags.index[flags.values]]
    if order == "channel":
        return channels
    if order == "scale_metric":
        return _by_scale_metric(metrics_ds, block, channels, stimulus_set)
    raise ValueError(f"order {order!r}: use 'channel' or 'scale_metric'")


def top_by_scale_metric(metrics_ds: xr.Dataset, block: str, n: int = 3, criterion: str | None = "interpreting",
                        stimulus_set: str = "fz") -> list[int]:
    """The ``n`` channels with the highest scale metric among those passing ``criterion`` (all valid with None)."""
    if criterion is None:
        channels = valid_channels(metrics_ds, block)
    else:
        channels = invariant_channels(metrics_ds, block, criterion, stimulus_set)
    return _by_scale_metric(metrics_ds, block, channels, stimulus_set)[:n]


def top_mixes(metrics_ds: xr.Dataset, block: str, n: int = 3, stimulus_set: str = "fz") -> list[int]:
    """The ``n`` channels with the smallest |M − 1| (appendix A.4), closest first, ties by channel."""
    distance = (per_channel(metrics_ds, "mix", block, stimulus_set) - 1.0).abs().dropna()
    return [int(channel) for channel in distance.sort_values(kind="stable").index[:n]]


def mix_histogram(metrics_ds: xr.Dataset, block: str, bins=MIX_BINS, stimulus_set: str = "fz"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """numpy.histogram of the block's mix ratios (Fig. 2): (counts, bin edges). M = 5 lands in the last bin;
    so does any M above the top edge (the code's reading stores M unclamped and clamps for the histogram)."""
    mix = per_channel(metrics_ds, "mix", block, stimulus_set).dropna().to_numpy()
    return np.histogram(np.minimum(mix, np.asarray(bins)[-1]), bins=bins)


def scale_metric_terms(metrics_ds: xr.Dataset, responses_ds: xr.Dataset, block: str, channels=None,
                       stimulus_set: str = "fz") -> pd.DataFrame:
    """The two summed deltas of the scale metric (Eq. 5, paper 2 Fig. 6), per channel: ``up`` =
    up_delta / B_c(X̂_B) and ``down`` = down_delta / I_c(X̂_I); their sum is SM_c."""
    channels = valid_channels(metrics_ds, block) if channels is None else np.asarray(channels)
    response = _one_set(responses_ds, stimulus_set)["response"].sel(block=block, channel=list(channels),
                                                                     transform="none")
    own_block = response.sel(tap="B", source="B").values.astype(np.float64)
    own_input = response.sel(tap="I", source="I").values.astype(np.float64)
    up_delta = per_channel(metrics_ds, "up_delta", block, stimulus_set).reindex(channels).to_numpy(np.float64)
    down_delta = per_channel(metrics_ds, "down_delta", block, stimulus_set).reindex(channels).to_numpy(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return pd.DataFrame({"up": up_delta / own_block, "down": down_delta / own_input},
                            index=pd.Index(channels, name="channel"))


# ---------------------------------------------------------------- mix against weights, activations, tuning


def simple_blocks(metrics_ds: xr.Dataset) -> list[str]:
    """Blocks without a downsample branch (the ``downsample`` variable the metrics stage stores)."""
    downsample = metrics_ds["downsample"].values.astype(bool)
    return [block for block, has in zip(blocks_of(metrics_ds), downsample) if not has]


def shown_blocks(metrics_ds: xr.Dataset, blocks: Sequence[str] | None) -> list[str]:
    """The requested blocks the store has, in order; when it has none of them (a model of another family,
    whose labels are not the paper's "L.i"), every simple block of the store; None: every simple block."""
    here = [block for block in blocks or () if block in blocks_of(metrics_ds)]
    return here or simple_blocks(metrics_ds)


def weight_mix_correlations(metrics_ds: xr.Dataset, blocks: Sequence[str] | None = None,
                            stimulus_set: str = "fz") -> pd.DataFrame:
    """Per block (default: every simple block), Spearman ρ and p of |bn2 weight| and mean |conv2 weight|
    against M (Fig. 3): columns ``n``, ``bn2_rho``, ``bn2_p``, ``conv2_rho``, ``conv2_p``."""
    rows = []
    for block in shown_blocks(metrics_ds, blocks):
        mix = per_channel(metrics_ds, "mix", block, stimulus_set)
        bn2_rho, bn2_p = spearman(per_channel(metrics_ds, "bn2_weight_abs", block), mix)
        conv2_rho, conv2_p = spearman(per_channel(metrics_ds, "conv2_weight_mean_abs", block), mix)
        rows.append({"block": block, "n": int(mix.notna().sum()), "bn2_rho": bn2_rho, "bn2_p": bn2_p,
                     "conv2_rho": conv2_rho, "conv2_p": conv2_p})
    return pd.DataFrame(rows).set_index("block")


def _skip_overwrite_table(metrics_ds, values_of, blocks, stimulus_set) -> pd.DataFrame:
    rows = []
    for block in blocks_of(metrics_ds) if blocks is None else shown_blocks(metrics_ds, blocks):
        mix = per_channel(metrics_ds, "mix", block, stimulus_set)
        values = values_of(block, mix.index.to_numpy())
        rows.append({"block": block, **anova_skip_overwrite(values, mix.to_numpy())._asdict()})
    return pd.DataFrame(rows).set_index("block")


def block_activation_at_input_stimulus(responses_ds: xr.Dataset, block: str, channels,
                                       stimulus_set: str = "fz") -> np.ndarray:
    """B_c(X̂_I): the block summand's center value at the input tap's stimulus, per channel."""
    response = _one_set(responses_ds, stimulus_set)["response"]
    return response.sel(block=block, tap="B", source="I", transform="none", channel=list(channels)).values


def activation_mix(metrics_ds: xr.Dataset, responses_ds: xr.Dataset, blocks: Sequence[str] | None = None,
                   stimulus_set: str = "fz") -> pd.DataFrame:
    """Per block, B_c(X̂_I) of skip vs overwrite channels (Fig. 4 top): the :class:`SkipOverwrite` columns."""
    return _skip_overwrite_table(
        metrics_ds, lambda block, channels: block_activation_at_input_stimulus(responses_ds, block, channels,
                                                                               stimulus_set),
        blocks, stimulus_set)


def tuning_mix(metrics_ds: xr.Dataset, blocks: Sequence[str] | None = None, stimulus_set: str = "fz") -> pd.DataFrame:
    """Per block, the tuning correlation ``tuning_rho`` of skip vs overwrite channels (Fig. 4 bottom)."""
    return _skip_overwrite_table(
        metrics_ds, lambda block, channels: per_channel(metrics_ds, "tuning_rho", block).reindex(channels).to_numpy(),
        blocks, stimulus_set)

"""The papers' figures, and the small tables printed beside them, from store groups.

Every function takes xarray Datasets as read from the store (already narrowed by the report spec's
selection) plus plain arguments, and returns a matplotlib ``Figure`` or a pandas ``DataFrame``; nothing
here reads or writes files. Figures are built on ``matplotlib.figure.Figure`` (no pyplot), so no global
state survives a call. Statistics and channel choices come from :mod:`analyses.stats`; ``criterion`` is one
of its names (``"naturally"``, ``"interpreting"``, ``"interpreting_without_mix"``).

Channel choices (which channels a grid shows) come from the store's own metrics: exemplary channels are
the top ones by scale metric, top mixes are the smallest |M - 1|, and so on.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure
from PIL import Image

from analyses import criteria, stats

TAPS = ("I", "B", "O")
GRID_ROWS = ("FZ neuron", "FZ channel", "top 9")
SKIP_COLOR, OVERWRITE_COLOR = "tab:blue", "tab:red"
NOT_COMPUTED_GRAY = 0.85
MIX_CLAMP = 5.0  # repro.metrics clamps M here when the store does not record its own clamp


def spectrum_examples(metrics: xr.Dataset, block: str) -> dict[str, int]:
    """One overwrite (lowest M), mix (M closest to 1) and skip (highest M below the clamp) channel (Fig. 1A),
    three different channels where the block has three. Only channels at the clamp (M = ``mix_clamp``, a
    block summand that never reaches the output) are passed over for skip, unless every candidate is there."""
    mix = stats.per_channel(metrics, "mix", block).dropna()
    overwrite = int(mix.idxmin())
    others = mix.drop(overwrite) if len(mix) > 1 else mix
    middle = int((others - 1).abs().idxmin())
    rest = others.drop(middle) if len(others) > 1 else others
    clamp = float(metrics.attrs.get("mix_clamp", MIX_CLAMP))
    unclamped = rest[rest < clamp] if (rest < clamp).any() else rest
    return {"overwrite": overwrite, "mix": middle, "skip": int(unclamped.idxmax())}


def unit_id(block: str, channel: int) -> str:
    """A unit's stable id, as OpenAI Microscope names units: ``block:channel``."""
    return f"{block}:{int(channel)}"


def criterion_words(criterion: str) -> str:
    """The criterion as a reader knows it, not by its code name."""
    found = criteria.CRITERIA.get(criterion)
    return found.words if found else f"{criterion} criterion"


def fz_and_imagenet(metrics: xr.Dataset, block: str, criterion: str = "interpreting") -> list[int]:
    """Channels passing ``criterion`` with FZ stimuli and with top-9 natural images, by FZ scale metric (A.3)."""
    return stats.invariant_channels(metrics, block, criterion, "both", order="scale_metric")


# ---------------------------------------------------------------- channel grids (Fig. 1, 3, 4, 6, 7, 8)

def _tile(image: np.ndarray | None, size: int) -> np.ndarray:
    """An RGB uint8 image resized to size x size; a light gray square for a missing one."""
    if image is None:
        return np.full((size, size, 3), int(255 * NOT_COMPUTED_GRAY), np.uint8)
    return np.asarray(Image.fromarray(np.asarray(image, np.uint8)).resize((size, size), Image.BILINEAR))


def montage(images: Sequence[np.ndarray | None], size: int, side: int = 3) -> np.ndarray:
    """``side`` x ``side`` images packed into one size x size tile."""
    small = max(size // side, 1)
    tiles = [_tile(image, small) for image in list(images)[: side * side]]
    tiles += [_tile(None, small)] * (side * side - len(tiles))
    rows = [np.concatenate(tiles[row * side:(row + 1) * side], axis=1) for row in range(side)]
    return _tile(np.concatenate(rows, axis=0), size)


def _cached_images(image_cache: xr.Dataset, ids: set[int]) -> dict[int, np.ndarray]:
    """Natural images by the ids ``natural.top_images`` holds (image labels when indexed, else positions),
    read in one selection."""
    wanted = sorted(image_id for image_id in ids if image_id >= 0)
    squares = image_cache["pixels" if "pixels" in image_cache else "image"]  # the cache's resized squares
    if "image" in image_cache.indexes:
        wanted = [image_id for image_id in wanted if image_id in image_cache.indexes["image"]]
        pixels = squares.sel(image=wanted).values
    else:
        wanted = [image_id for image_id in wanted if image_id < image_cache.sizes["image"]]
        pixels = squares.isel(image=wanted).values
    return dict(zip(wanted, pixels))


def grid_images(fz: xr.Dataset, natural: xr.Dataset | None, image_cache: xr.Dataset | None,
                pairs: Sequence[tuple[str, int]], fz_channel: xr.Dataset | None = None) -> dict[tuple[str, int], list]:
    """For each (block, channel): its three grid rows (neuron FZ, channel FZ, top-9 images) of three taps each,
    read with one selection per block and group; None where the store has nothing."""
    rows: dict[tuple[str, int], list] = {pair: [[None] * 3, [None] * 3, [[None] * 9] * 3] for pair in pairs}
    by_block: dict[str, list[int]] = {}
    for block, channel in pairs:
        by_block.setdefault(block, []).append(channel)
    top_ids: dict[tuple[str, int], np.ndarray] = {}
    for block, channels in by_block.items():
        for row, source in enumerate((fz, fz_channel)):
            if source is not None:
                pixels = source["image"].sel(block=block, tap=list(TAPS), channel=channels).values
                for index, channel in enumerate(channels):
                    rows[(block, channel)][row] = list(pixels[:, index])
        if natural is not None and image_cache is not None:
            ids = natural["top_images"].sel(block=block, tap=list(TAPS), channel=channels).values
            for index, channel in enumerate(channels):
                top_ids[(block, channel)] = ids[:, index]
    if top_ids:
        cached = _cached_images(image_cache, {int(i) for ids in top_ids.values() for i in ids.ravel()})
        for pair, ids in top_ids.items():
            rows[pair][2] = [[cached.get(int(i)) for i in tap_ids] for tap_ids in ids]
    return rows


def channel_mosaic(rows: list, tile: int = 96, gap: int = 4, with_channel: bool = True) -> np.ndarray:
    """The paper's 3x3 grid for one channel (from ``grid_images``) as one image.

    Columns: taps I, B, O. Rows: center-neuron FZ, whole-channel FZ (left out with ``with_channel=False``,
    for a store made without them), and a montage of the tap's top-9 natural images (gray when the store has
    none).
    """
    neuron, channel, natural = rows
    cells = [[_tile(image, tile) for image in neuron]]
    if with_channel:
        cells.append([_tile(image, tile) for image in channel])
    cells.append([montage(images, tile) for images in natural])
    white = np.full((tile, gap, 3), 255, np.uint8)
    lines = [np.concatenate([row[0], white, row[1], white, row[2]], axis=1) for row in cells]
    hgap = np.full((gap, lines[0].shape[1], 3), 255, np.uint8)
    stacked = [lines[0]]
    for line in lines[1:]:
        stacked += [hgap, line]
    return np.concatenate(stacked, axis=0)


def _label(metrics: xr.Dataset | None, block: str, channel: int) -> str:
    if metrics is None or "mix" not in metrics:
        return ""
    mix = float(metrics["mix"].sel(block=block, channel=channel))
    scale = float(metrics["scale_metric"].sel(block=block, channel=channel))
    return f"M={mix:.2f}  SM={scale:.2f}"


def _empty(message: str) -> Figure:
    """A figure with nothing to show: its message, which the report prints as one line instead of a figure."""
    figure = Figure(figsize=(6, 1.2))
    axis = figure.add_subplot()
    axis.axis("off")
    axis.text(0.5, 0.5, message, ha="center", va="center")
    figure.empty_message = message
    return figure


GRID_TITLE_PX, GRID_MARGIN_PX, GRID_SPACING_PX, GRID_GAP_PX = 44, 64, 14, 4


def channel_grids(fz: xr.Dataset, natural: xr.Dataset | None, image_cache: xr.Dataset | None,
                  channels: Sequence[tuple[str, int]], fz_channel: xr.Dataset | None = None,
                  metrics: xr.Dataset | None = None, columns: int = 6, tile: int | None = None,
                  title: str = "", empty_message: str = "no channels to show",
                  layout: Sequence[tuple[int, int]] | None = None,
                  labels: Sequence[str] | None = None) -> Figure:
    """One 3x3 grid per (block, channel), ``columns`` grids per row (or at the given (row, column) ``layout``),
    titled by ``labels`` or "block: channel c", with M and SM when metrics are given.

    The grids are composed into one image drawn on one axes: many small axes would make large figures slow.
    """
    if not channels:
        return _empty(empty_message)
    tile = tile or int(np.clip(fz.sizes["x"], 48, 96))  # small FZs are not blown up
    layout = list(layout or [divmod(index, columns) for index in range(len(channels))])
    rows, width = max(r for r, _ in layout) + 1, max(c for _, c in layout) + 1
    # A store made without whole-channel FZs (fz.channel_grids = false) shows two rows, not a gray one.
    row_names = GRID_ROWS if fz_channel is not None else (GRID_ROWS[0], GRID_ROWS[2])
    side = 3 * tile + 2 * GRID_GAP_PX
    side_h = len(row_names) * tile + (len(row_names) - 1) * GRID_GAP_PX
    cell_w, cell_h = side + GRID_SPACING_PX, side_h + GRID_TITLE_PX + GRID_SPACING_PX
    top = 30 if title else 0
    canvas = np.full((top + rows * cell_h, GRID_MARGIN_PX + width * cell_w, 3), 255, np.uint8)
    images = grid_images(fz, natural, image_cache, channels, fz_channel)
    texts, cells = [], []
    for index, ((block, channel), (row, column)) in enumerate(zip(channels, layout)):
        x, y = GRID_MARGIN_PX + column * cell_w, top + row * cell_h + GRID_TITLE_PX
        cells.append({"unit": unit_id(block, channel), "box": [x, y - GRID_TITLE_PX, side, side_h + GRID_TITLE_PX]})
        canvas[y:y + side_h, x:x + side] = channel_mosaic(images[(block, channel)], tile, GRID_GAP_PX,
                                                          with_channel=fz_channel is not None)
        heading = labels[index] if labels else f"{block}: channel {channel}"
        texts.append((x + side / 2, y - 14, f"{heading}\n{_label(metrics, block, channel)}".rstrip(), 8, "center"))
        centers = [x + tile / 2 + k * (tile + GRID_GAP_PX) for k in range(3)]
        texts += [(center, y - 4, tap, 7, "center") for center, tap in zip(centers, TAPS)]
        if column == 0:
            texts += [(GRID_MARGIN_PX - 4, y + tile / 2 + k * (tile + GRID_GAP_PX), name, 7, "right")
                      for k, name in enumerate(row_names)]
    dpi = 100
    figure = Figure(figsize=(canvas.shape[1] / dpi, canvas.shape[0] / dpi), dpi=dpi)
    figure.figimage(canvas, origin="upper", zorder=-1)  # pixel for pixel, under the labels
    axis = figure.add_axes((0, 0, 1, 1))
    axis.set_xlim(0, canvas.shape[1])
    axis.set_ylim(canvas.shape[0], 0)
    axis.axis("off")
    for x, y, text, size, align in texts:
        axis.text(x, y, text, fontsize=size, ha=align, va="bottom" if align == "center" else "center")
    if title:
        axis.text(canvas.shape[1] / 2, 20, title, fontsize=10, ha="center")
    if fz_channel is None:
        axis.text(canvas.shape[1] - 4, canvas.shape[0] - 2, "no whole-channel FZ row: the store was made with "
                  "fz.channel_grids = false", fontsize=6, ha="right", va="bottom", color="0.35")
    # Where each channel's grid lies (pixels of the figure saved at ``dpi``): the report links each to its unit page.
    figure.grid_cells = {"width": canvas.shape[1], "height": canvas.shape[0], "dpi": dpi, "cells": cells}
    return figure


def _present(metrics: xr.Dataset, block: str, channels: Sequence[int]) -> list[tuple[str, int]]:
    """(block, channel) pairs that exist in this store."""
    if block not in stats.blocks_of(metrics):
        return []
    have = set(stats.valid_channels(metrics, block).tolist())
    return [(block, int(channel)) for channel in channels if int(channel) in have]


def exemplary_invariant_grids(fz, natural, image_cache, metrics, blocks: Sequence[str] = ("2.1", "3.1"),
                              count: int = 6, criterion: str = "naturally", fz_channel=None) -> Figure:
    """Paper 1 Fig. 1: the store's top ``count`` invariant channels by scale metric, one row per block."""
    blocks = stats.shown_blocks(metrics, blocks)  # another family's store: its simple blocks
    rows = [(block, stats.top_by_scale_metric(metrics, block, count, criterion)) for block in blocks]
    rows = [(block, channels) for block, channels in rows if channels]
    chosen = [(block, channel) for block, channels in rows for channel in channels]
    layout = [(row, column) for row, (_, channels) in enumerate(rows) for column in range(len(channels))]
    return channel_grids(fz, natural, image_cache, chosen, fz_channel, metrics, layout=layout,
                         empty_message=f"no channel of {', '.join(blocks)} passes the {criterion_words(criterion)}")


def remaining_invariant_grids(fz, natural, image_cache, metrics, blocks: Sequence[str],
                              shown_elsewhere: Mapping[str, int] | None = None,
                              criterion: str = "naturally", fz_channel=None, limit: int = 60) -> Figure:
    """Paper 1 Fig. 3-4: every other invariant channel of ``blocks`` (the top ``shown_elsewhere[block]`` by
    scale metric are in Fig. 1), at most ``limit`` grids."""
    shown_elsewhere = shown_elsewhere or {}
    chosen = []
    for block in [block for block in blocks if block in stats.blocks_of(metrics)]:
        ranked = stats.invariant_channels(metrics, block, criterion, order="scale_metric")
        chosen += _present(metrics, block, sorted(ranked[shown_elsewhere.get(block, 0):]))
    more = len(chosen) - limit
    return channel_grids(fz, natural, image_cache, chosen[:limit], fz_channel, metrics,
                         title=f"first {limit} shown; {more} more in the store" if more > 0 else "",
                         empty_message=f"no other channel of {', '.join(blocks)} passes the {criterion_words(criterion)}")


def named_channel_grids(fz, natural, image_cache, metrics, channels: Mapping[str, Sequence[int]],
                        fz_channel=None, columns: int = 6) -> Figure:
    """Grids of channels the paper names, where this store has them."""
    chosen = [pair for block, listed in channels.items() for pair in _present(metrics, block, listed)]
    return channel_grids(fz, natural, image_cache, chosen, fz_channel, metrics, columns=columns,
                         empty_message="this store has none of the paper's named channels")


def spectrum_example_grids(fz, natural, image_cache, metrics, block: str = "1.1", fz_channel=None) -> Figure:
    """Paper 2 Fig. 1A: the store's overwrite, mix and skip example channels of one block."""
    block = next(iter(stats.shown_blocks(metrics, [block])), block)  # another family's: its first simple block
    if block not in stats.blocks_of(metrics):
        return _empty(f"block {block} is not in this store")
    examples = spectrum_examples(metrics, block)
    return channel_grids(fz, natural, image_cache, [(block, channel) for channel in examples.values()],
                         fz_channel, metrics, columns=3,
                         labels=[f"{kind}: {block} channel {channel}" for kind, channel in examples.items()])


def top_scale_metric_grids(fz, natural, image_cache, metrics, responses=None, count: int = 3,
                           criterion: str = "interpreting", fz_channel=None) -> Figure:
    """Paper 2 Fig. 6: columns are blocks with passing channels, rows their top ``count`` by scale metric,
    each grid labelled with M and the two summed deltas of SM (when ``responses`` is given)."""
    columns = [(block, stats.top_by_scale_metric(metrics, block, count, criterion)) for block in stats.blocks_of(metrics)]
    columns = [(block, chosen) for block, chosen in columns if chosen]
    pairs = [(block, channel) for block, chosen in columns for channel in chosen]
    layout = [(row, column) for column, (_, chosen) in enumerate(columns) for row in range(len(chosen))]
    labels = ([_delta_label(metrics, responses, block, channel) for block, channel in pairs]
              if responses is not None else None)
    return channel_grids(fz, natural, image_cache, pairs, fz_channel, None if labels else metrics, layout=layout,
                         labels=labels, empty_message=f"no channel passes the {criterion_words(criterion)}")


def _delta_label(metrics: xr.Dataset, responses: xr.Dataset, block: str, channel: int) -> str:
    terms = stats.scale_metric_terms(metrics, responses, block, [channel]).loc[channel]
    mix = float(metrics["mix"].sel(block=block, channel=channel))
    return f"{block}: channel {channel}\nM={mix:.2f}  Δup={terms['up']:.2f}  Δdown={terms['down']:.2f}"


def fz_imagenet_grids(fz, natural, image_cache, metrics, criterion: str = "interpreting",
                      fz_channel=None, limit: int = 60) -> Figure:
    """Paper 2 Fig. 7: channels passing both the FZ and the top-9 criteria, by FZ scale metric."""
    chosen = [(block, channel) for block in stats.blocks_of(metrics)
              for channel in fz_and_imagenet(metrics, block, criterion)][:limit]
    return channel_grids(fz, natural, image_cache, chosen, fz_channel, metrics.sel(stimulus_set="fz"),
                         empty_message="no channel passes both the FZ and the ImageNet criteria")


def top_mix_grids(fz, natural, image_cache, metrics, count: int = 3, fz_channel=None) -> Figure:
    """Paper 2 Fig. 8: the ``count`` channels with M closest to 1 in every block, one row per block."""
    chosen = [(block, channel) for block in stats.blocks_of(metrics) for channel in stats.top_mixes(metrics, block, count)]
    return channel_grids(fz, natural, image_cache, chosen, fz_channel, metrics, columns=count)


# ---------------------------------------------------------------- skip-overwrite spectrum (paper 2 Fig. 2-5)

def _panels(count: int, rows: int = 1, width: float = 2.6, height: float = 2.4) -> tuple[Figure, np.ndarray]:
    figure = Figure(figsize=(width * max(count, 1), height * rows))
    axes = np.array(figure.subplots(rows, max(count, 1), squeeze=False))
    return figure, axes


HISTOGRAM_COLUMNS = 4  # seven blocks in two rows: each panel keeps about a quarter of the page width


def mix_histograms(metrics: xr.Dataset, columns: int = HISTOGRAM_COLUMNS) -> Figure:
    """Paper 2 Fig. 2: one histogram of mix ratios per block, bins 0 to 5 at 0.25, ``columns`` per row."""
    blocks = stats.blocks_of(metrics)
    columns = max(1, min(columns, len(blocks)))
    rows = -(-len(blocks) // columns)
    figure, axes = _panels(columns, rows=rows)
    for index, axis in enumerate(axes.ravel()):
        if index >= len(blocks):
            axis.set_visible(False)
            continue
        counts, edges = stats.mix_histogram(metrics, blocks[index])
        axis.stairs(counts, edges, fill=True, color="0.3")
        axis.axvline(1.0, color="0.6", linestyle=":")
        axis.set_xlim(edges[0], edges[-1])
        axis.set_title(blocks[index])
        axis.set_xlabel("mix ratio M")
        if index % columns == 0:
            axis.set_ylabel("channels")
    figure.tight_layout()
    return figure


WEIGHTS = {"bn2": ("bn2_weight_abs", "|bn2 weight|"), "conv2": ("conv2_weight_mean_abs", "mean |conv2 weight|")}


def weight_mix_scatter(metrics: xr.Dataset, blocks: Sequence[str] = ("1.1", "2.1", "3.1")) -> Figure:
    """Paper 2 Fig. 3: weight magnitudes against mix ratio with Spearman rho and p per block."""
    blocks = stats.shown_blocks(metrics, blocks)
    correlations = stats.weight_mix_correlations(metrics, blocks)
    figure, axes = _panels(len(blocks), rows=2)
    for column, block in enumerate(blocks):
        mix = stats.per_channel(metrics, "mix", block)
        for row, (short, (name, label)) in enumerate(WEIGHTS.items()):
            axis = axes[row][column]
            rho, p = correlations.loc[block, f"{short}_rho"], correlations.loc[block, f"{short}_p"]
            axis.scatter(mix, stats.per_channel(metrics, name, block), s=6, color="0.2")
            axis.set_title(f"{block}: rho={rho:.2f}, p={p:.1e}", fontsize=9)
            axis.set_xlabel("mix ratio M")
            if column == 0:
                axis.set_ylabel(label)
    figure.tight_layout()
    return figure


def _skip_overwrite_panel(axis, mix: pd.Series, values: np.ndarray, ylabel: str, block: str) -> None:
    result = stats.anova_skip_overwrite(values, mix.to_numpy())
    axis.scatter(mix, values, s=6, color="0.3")
    axis.axhline(result.mean_skip, color=SKIP_COLOR, label="skip mean (M ≥ 1)")
    axis.axhline(result.mean_overwrite, color=OVERWRITE_COLOR, label="overwrite mean (M < 1)")
    axis.set_title(f"{block}: F={result.f:.2f}, p={result.p:.1e}", fontsize=9)
    axis.set_xlabel("mix ratio M")
    axis.set_ylabel(ylabel)


def activation_tuning_mix(metrics: xr.Dataset, responses: xr.Dataset,
                          blocks: Sequence[str] = ("1.1", "2.1", "3.1")) -> Figure:
    """Paper 2 Fig. 4: B_c(X_I) (top) and input-block tuning rho (bottom) against M, skip vs overwrite ANOVA."""
    blocks = stats.shown_blocks(metrics, blocks)
    figure, axes = _panels(len(blocks), rows=2)
    for column, block in enumerate(blocks):
        mix = stats.per_channel(metrics, "mix", block)
        activation = stats.block_activation_at_input_stimulus(responses, block, mix.index)
        _skip_overwrite_panel(axes[0][column], mix, activation, "B_c(X_I)" if column == 0 else "", block)
        _skip_overwrite_panel(axes[1][column], mix, stats.per_channel(metrics, "tuning_rho", block).to_numpy(),
                              "tuning Spearman rho (I vs B)" if column == 0 else "", block)
    if blocks:
        axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    return figure


def percent_invariant_table(metrics: xr.Dataset, criterion: str = "interpreting") -> pd.DataFrame:
    """Per block: channels, and count and percent passing ``criterion`` with and without the mix criterion
    (paper 2 Fig. 5)."""
    with_mix = stats.block_counts(metrics, criterion)
    without_mix = stats.block_counts(metrics, f"{criterion}_without_mix")
    return pd.DataFrame({"channels": with_mix["channels"], "all_criteria": with_mix["count"],
                         "percent_all_criteria": with_mix["percent"], "without_mix": without_mix["count"],
                         "percent_without_mix": without_mix["percent"]})


def percent_invariant_bars(metrics: xr.Dataset, criterion: str = "interpreting") -> Figure:
    """Paper 2 Fig. 5: percent of channels passing all criteria (purple) and without the mix criterion (yellow)."""
    table = percent_invariant_table(metrics, criterion)
    figure = Figure(figsize=(7, 3.2))
    axis = figure.add_subplot()
    positions = np.arange(len(table))
    axis.bar(positions - 0.2, table["percent_all_criteria"], width=0.4, color="rebeccapurple", label="all criteria")
    axis.bar(positions + 0.2, table["percent_without_mix"], width=0.4, color="gold", label="without mix criterion")
    axis.set_xticks(positions, table.index)
    axis.set_ylabel("% of block channels")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def fz_imagenet_table(metrics: xr.Dataset, criterion: str = "interpreting") -> pd.DataFrame:
    """Agreement of the FZ and ImageNet (top-9) criteria per block, with the channels passing both (A.3)."""
    rows = []
    for block in stats.blocks_of(metrics):
        fz = set(stats.invariant_channels(metrics, block, criterion, "fz"))
        top9 = set(stats.invariant_channels(metrics, block, criterion, "top9"))
        union = fz | top9
        rows.append({"block": block, "fz": len(fz), "top9": len(top9), "both": len(fz & top9),
                     "fz_only": len(fz - top9), "top9_only": len(top9 - fz),
                     "jaccard": len(fz & top9) / len(union) if union else float("nan"),
                     "channels_both": " ".join(map(str, fz_and_imagenet(metrics, block, criterion)))})
    return pd.DataFrame(rows)


def fz_imagenet_agreement(metrics: xr.Dataset, criterion: str = "interpreting") -> Figure:
    """Paper 2 A.3: per block, channels passing with FZ stimuli only, with top-9 images only, and with both."""
    table = fz_imagenet_table(metrics, criterion)
    figure = Figure(figsize=(7, 3.2))
    axis = figure.add_subplot()
    bottom = np.zeros(len(table))
    for column, color in (("both", "tab:green"), ("fz_only", "tab:purple"), ("top9_only", "tab:orange")):
        axis.bar(table["block"], table[column], bottom=bottom, color=color, label=column.replace("_", " "))
        bottom += table[column].to_numpy(float)
    axis.set_ylabel(f"channels passing the {criterion_words(criterion)}", fontsize=8)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def channel_list_table(metrics: xr.Dataset, chooser: Callable[..., list[int]],
                       published: Mapping[str, Sequence[int]] | None = None, **options) -> pd.DataFrame:
    """Per block, the channels ``chooser(metrics, block, **options)`` picks, beside the paper's list when given."""
    rows = []
    for block in stats.blocks_of(metrics):
        chosen = chooser(metrics, block, **options)
        row = {"block": block, "store": " ".join(map(str, chosen)), "store_count": len(chosen)}
        if published is not None:
            listed = list(published.get(block, []))
            row.update(published=" ".join(map(str, listed)), published_count=len(listed),
                       shared=len(set(chosen) & set(listed)))
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- default vs aliased taps

def aliased_comparison_table(metrics: xr.Dataset, metrics_aliased: xr.Dataset,
                             criteria: Sequence[str] = ("naturally", "interpreting")) -> pd.DataFrame:
    """Per block and criterion: invariant channels with the default (true) taps and with Lucent's aliased
    taps, and their overlap."""
    rows = []
    for block in [block for block in stats.blocks_of(metrics) if block in stats.blocks_of(metrics_aliased)]:
        for criterion in criteria:
            default = set(stats.invariant_channels(metrics, block, criterion))
            aliased = set(stats.invariant_channels(metrics_aliased, block, criterion))
            union = default | aliased
            rows.append({"block": block, "criterion": criterion, "default": len(default), "aliased": len(aliased),
                         "shared": len(default & aliased),
                         "jaccard": len(default & aliased) / len(union) if union else float("nan")})
    return pd.DataFrame(rows)


def aliased_mix_scatter(metrics: xr.Dataset, metrics_aliased: xr.Dataset) -> Figure:
    """Mix ratio per channel with default taps against aliased taps, one panel per block."""
    blocks = [block for block in stats.blocks_of(metrics) if block in stats.blocks_of(metrics_aliased)]
    figure, axes = _panels(len(blocks))
    for axis, block in zip(axes[0], blocks):
        default = stats.per_channel(metrics, "mix", block)
        aliased = stats.per_channel(metrics_aliased, "mix", block).reindex(default.index)
        axis.scatter(default, aliased, s=6, color="0.3")
        axis.plot([0, 5], [0, 5], color="0.7", linestyle=":")
        axis.set_title(block)
        axis.set_xlabel("M, default taps")
    if blocks:
        axes[0][0].set_ylabel("M, aliased taps")
    figure.tight_layout()
    return figure

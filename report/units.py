"""The channel browser: one static page per unit (block, channel), as OpenAI Microscope gives for a unit.

``_site/units/`` holds ``index.html`` (the blocks), ``<block>.html`` (a sortable table of the block's
channels: mix ratio, scale metric, criteria, seed frequencies when the store has seeds), and
``<block>:<channel>.html`` per unit: its FZs (neuron and channel objective, taps I/B/O, every seed when
present), the top-9 natural images per tap, every metric and criterion, its rank in its block, and links to
the report figures it appears in. Unit ids are ``block:channel`` (``analyses.figures.unit_id``), in the URLs.
Pages and images are rewritten only when the store's groups, this module or the figures' channels change.
"""
from __future__ import annotations

import hashlib
import html
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import xarray as xr
from PIL import Image

from analyses import criteria, figures, stats
from report import spec
from repro.hashing import digest

FOLDER = "units"
GROUPS = ("fz", "fz_channel", "natural", "image_cache", "metrics")
OBJECTIVES = (("neuron", "FZ, center neuron"), ("channel", "FZ, whole channel"))


def metric_order() -> tuple[str, ...]:
    """The unit page's metrics in this order (others after them, by name); criteria from the registry."""
    return ("mix", "scale_metric", "up_delta", "down_delta", *criteria.FLAGS, *criteria.stored_columns(), "failed_fz",
            "bn2_weight_abs", "conv2_weight_mean_abs", "tuning_rho")


def block_columns() -> tuple[tuple[str, str], ...]:
    """(variable, heading) of a block page's table: M, SM, each test and each stored criterion."""
    return (("mix", "M"), ("scale_metric", "SM"), *((flag, flag.removesuffix("_ok")) for flag in criteria.FLAGS),
            *((criterion.column, f"invariant ({', '.join(criterion.tests)})") for criterion in criteria.stored()))


SORT_SCRIPT = """document.querySelectorAll("table.sortable th").forEach((th, column) => th.addEventListener("click", () => {
  const table = th.closest("table"), body = table.tBodies[0];
  const ascending = th.getAttribute("aria-sort") !== "ascending";
  table.querySelectorAll("th").forEach(other => other.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  const key = row => { const cell = row.cells[column], text = cell.dataset.value ?? cell.textContent;
                       const number = parseFloat(text); return isNaN(number) ? text : number; };
  [...body.rows].sort((a, b) => { const x = key(a), y = key(b); return (x > y ? 1 : x < y ? -1 : 0) * (ascending ? 1 : -1); })
    .forEach(row => body.appendChild(row));
}));
"""


def unit_href(unit: str) -> str:
    """A unit page's path from the site root. ``./``-relative links inside ``units/`` keep ``2.1:15`` from
    reading as a URL scheme."""
    return f"{FOLDER}/{unit}.html"


def appearances(artifacts, out_dir: Path, labels: dict[str, str], anchor: Callable[[str], str]) -> dict[str, list]:
    """{unit: [(figure label, page file, anchor)]} from the grid figures' cell maps."""
    found: dict[str, list] = {}
    for artifact in artifacts:
        cells_path = out_dir / artifact.files.get("cells.json", "-")
        if not artifact.ok or not cells_path.is_file():
            continue
        cells = json.loads(cells_path.read_text())
        if not cells or "cells" not in cells:
            continue
        page = spec.CHAPTERS[artifact.entry.chapter][0] + ".html"
        for cell in (cells or {}).get("cells", []):
            shown = (f"{labels[artifact.entry.id]} · {artifact.entry.title}", page, anchor(artifact.entry.id))
            if shown not in found.setdefault(cell["unit"], []):
                found[cell["unit"]].append(shown)
    return found


# ---------------------------------------------------------------- values of one unit

def _per_seed(values: xr.DataArray) -> str:
    if "seed" not in values.dims:
        return _number(values.item())
    numbers = values.values.astype(float)
    if values.dtype == bool:
        return f"{numbers.mean():.2f} ({int(numbers.sum())} of {numbers.size} seeds)"
    return f"{np.nanmean(numbers):.4g} (seeds: {' '.join(f'{v:.3g}' for v in numbers)})"


def _number(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return "—" if not np.isfinite(value) else f"{float(value):.4g}"
    return html.escape(str(value))


def metric_rows(metrics: xr.Dataset, block: str, channel: int) -> list[tuple[str, list[str]]]:
    """(variable, [value per stimulus set]) for every metrics variable of the unit."""
    sets = [str(s) for s in metrics["stimulus_set"].values] if "stimulus_set" in metrics.dims else [""]
    rows = []
    order = metric_order()
    names = sorted(metrics.data_vars, key=lambda n: (order.index(n) if n in order else len(order), n))
    for name in names:
        variable = metrics[name]
        if "channel" not in variable.dims or name == "valid":
            continue
        one = variable.sel(block=block, channel=channel)
        if "stimulus_set" in one.dims:
            rows.append((name, [_per_seed(one.sel(stimulus_set=s)) for s in sets]))
        else:
            rows.append((name, [_per_seed(one)] + [""] * (len(sets) - 1)))
    return rows


def ranks(metrics: xr.Dataset, block: str, channel: int) -> list[str]:
    """The unit's rank in its block by scale metric (highest first) and by |M − 1| (closest first)."""
    lines = []
    for name, key, words in (("scale_metric", lambda s: -s, "by scale metric SM (highest first)"),
                             ("mix", lambda s: (s - 1).abs(), "by |M − 1| (closest to 1 first)")):
        if name not in metrics:
            continue
        values = _fz_mean(metrics, name, block)
        ordered = key(values.dropna()).sort_values(kind="stable").index.tolist()
        if channel in ordered:
            lines.append(f"rank {ordered.index(channel) + 1} of {len(ordered)} {words}")
    return lines


def _fz_mean(metrics: xr.Dataset, name: str, block: str):
    """A variable of the block with FZ stimuli, the mean over seeds when the store has seeds."""
    variable = metrics[name]
    if "seed" in variable.dims:
        metrics = metrics.assign({name: variable.astype(float).mean("seed")})
    return stats.per_channel(metrics, name, block)


# ---------------------------------------------------------------- images

def _save_png(pixels, path: Path) -> str:
    if pixels is None:
        return ""
    Image.fromarray(np.asarray(pixels, np.uint8)).save(path, compress_level=1)
    return path.name


def unit_images(rows_by_seed: dict, unit: str, folder: Path) -> dict:
    """PNG files of one unit: {(objective, tap, seed): name} and {("top9", tap): name}."""
    names = {}
    stem = unit.replace(":", "-")
    for seed, (neuron, channel, natural) in rows_by_seed.items():
        suffix = "" if seed is None else f"-seed{seed}"
        for objective, images in (("neuron", neuron), ("channel", channel)):
            for tap, pixels in zip(figures.TAPS, images):
                names[(objective, tap, seed)] = _save_png(pixels, folder / f"{stem}-{objective}-{tap}{suffix}.png")
        if seed == next(iter(rows_by_seed)):
            for tap, images in zip(figures.TAPS, natural):
                if any(image is not None for image in images):
                    size = 3 * next(np.asarray(image).shape[0] for image in images if image is not None)
                    names[("top9", tap)] = _save_png(figures.montage(images, size), folder / f"{stem}-top9-{tap}.png")
    return names


def block_rows(fz, fz_channel, natural, image_cache, block: str, channels: Sequence[int]) -> dict:
    """{seed: grid rows} per channel of one block: {channel: {seed: (neuron, channel, top-9)}}."""
    seeds = [int(s) for s in fz["seed"].values] if "seed" in fz.dims else [None]
    per_channel: dict[int, dict] = {channel: {} for channel in channels}
    pairs = [(block, channel) for channel in channels]
    for number, seed in enumerate(seeds):
        pick = (lambda ds: ds.sel(seed=seed) if ds is not None and "seed" in ds.dims else ds)
        rows = figures.grid_images(pick(fz), natural if number == 0 else None, image_cache, pairs, pick(fz_channel))
        for (_, channel), grid in rows.items():
            per_channel[channel][seed] = grid
    return per_channel


# ---------------------------------------------------------------- pages

def page(title: str, body: str, root: str = "../", script: bool = False) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f'<link rel="stylesheet" href="{root}report.css">\n</head>\n<body>\n{body}\n'
            + ('<script src="sort.js"></script>\n' if script else "") + "</body>\n</html>\n")


def nav(pages: Sequence[tuple[str, str]], block: str | None = None) -> str:
    links = [f'<a href="../{stem}.html">{html.escape(title)}</a>' for stem, title in pages]
    links.append('<a href="./index.html">Channels</a>')
    if block:
        links.append(f'<a href="./{block}.html">block {block}</a>')
    return '<nav class="report-nav">' + " · ".join(links) + "</nav>"


def _image_cell(name: str, css: str = "") -> str:
    if not name:
        return "<td>not computed</td>"
    return f'<td><img src="img/{name}" alt="{html.escape(name)}" class="{css}"></td>'


def images_html(names: dict, seeds: Sequence) -> str:
    header = "<tr><th></th>" + "".join(f"<th>{tap}</th>" for tap in figures.TAPS) + "</tr>"
    rows = []
    for seed in seeds:
        for objective, words in OBJECTIVES:
            label = words + ("" if seed is None else f", seed {seed}")
            rows.append(f"<tr><th>{label}</th>" + "".join(_image_cell(names.get((objective, tap, seed), ""))
                                                       for tap in figures.TAPS) + "</tr>")
    rows.append("<tr><th>top 9 natural images</th>" + "".join(_image_cell(names.get(("top9", tap), ""), "montage")
                                                              for tap in figures.TAPS) + "</tr>")
    return f'<table class="unit-images">{header}{"".join(rows)}</table>'


def unit_page(unit: str, names: dict, seeds: Sequence, metrics: xr.Dataset, shown_in: list,
              neighbours: tuple[str | None, str | None], pages) -> str:
    block, channel = unit.split(":")
    channel = int(channel)
    sets = [str(s) for s in metrics["stimulus_set"].values] if "stimulus_set" in metrics.dims else ["value"]
    metric_table = ("<table><thead><tr><th>metric</th>" + "".join(f"<th>{s}</th>" for s in sets) + "</tr></thead><tbody>"
                    + "".join(f"<tr><td>{name}</td>" + "".join(f"<td>{v}</td>" for v in values) + "</tr>"
                              for name, values in metric_rows(metrics, block, channel)) + "</tbody></table>")
    figures_list = ("<ul>" + "".join(f'<li><a href="../{page_file}#{target}">{html.escape(label)}</a></li>'
                                     for label, page_file, target in shown_in) + "</ul>") if shown_in else \
        "<p>Not shown in any report figure.</p>"
    steps = " · ".join(f'<a href="./{other}.html">{words} {other}</a>' for other, words in
                       zip(neighbours, ("previous", "next")) if other)
    body = (f"{nav(pages, block)}\n<h1 class=\"title\">Unit {unit}</h1>\n<p>Block {block}, channel {channel}. {steps}</p>\n"
            f"<h2>Feature visualizations and top images</h2>\n{images_html(names, seeds)}\n"
            f"<h2>Rank in block {block}</h2>\n<ul>" + "".join(f"<li>{line}</li>" for line in ranks(metrics, block, channel))
            + f"</ul>\n<h2>Metrics and criteria</h2>\n{metric_table}\n<h2>In the report</h2>\n{figures_list}")
    return page(f"Unit {unit}", body)


def block_page(block: str, metrics: xr.Dataset, channels: Sequence[int], pages) -> str:
    columns = [(name, words) for name, words in block_columns() if name in metrics]
    has_seeds = "seed" in metrics.dims
    frequency = " (frequency)" if has_seeds else ""
    header = "<tr><th>unit</th>" + "".join(f"<th>{words}{frequency if metrics[name].dtype == bool else ''}</th>"
                                           for name, words in columns) + "</tr>"
    values = {name: _fz_mean(metrics, name, block) for name, _ in columns}
    rows = []
    for channel in channels:
        unit = figures.unit_id(block, channel)
        cells = "".join(_sort_cell(values[name].get(channel, np.nan), metrics[name].dtype == bool and not has_seeds)
                        for name, _ in columns)
        rows.append(f'<tr><td data-value="{channel}"><a href="./{unit}.html">{unit}</a></td>{cells}</tr>')
    body = (f"{nav(pages)}\n<h1 class=\"title\">Block {block}: {len(channels)} channels</h1>\n"
            "<p>Click a column heading to sort; criteria with FZ stimuli"
            + (", as the frequency over seeds" if has_seeds else "") + ".</p>\n"
            f'<table class="sortable"><thead>{header}</thead><tbody>{"".join(rows)}</tbody></table>')
    return page(f"Block {block}", body, script=True)


def _sort_cell(value, boolean: bool = False) -> str:
    """A cell sorted by its number (missing values first), shown as yes/no for a criterion."""
    number = float(value) if value is not None else float("nan")
    shown = "—" if not np.isfinite(number) else ("yes" if number else "no") if boolean else f"{number:.4g}"
    return f'<td data-value="{number if np.isfinite(number) else -1e300}">{shown}</td>'


def index_page(blocks: dict[str, list[int]], pages) -> str:
    items = "".join(f'<li><a href="./{block}.html">block {block}</a>: {len(channels)} channels</li>'
                    for block, channels in blocks.items())
    body = (f"{nav(pages)}\n<h1 class=\"title\">Channels</h1>\n<p>One page per unit (block:channel) with its "
            f"feature visualizations, top natural images, metrics and the figures it appears in.</p>\n<ul>{items}</ul>")
    return page("Channels", body)


# ---------------------------------------------------------------- writing the browser

def browser_key(store, context, shown: dict, pages) -> str:
    payload = {"groups": {group: context.stamp(store, group) for group in GROUPS},
               "source": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
               "figures_source": hashlib.sha256(Path(figures.__file__).read_bytes()).hexdigest(),
               "shown": shown, "pages": list(pages), "store": str(context.path)}
    return digest(payload, length=None)


def write(store, loader, context, site: Path, shown: dict, previous_key: str | None, pages) -> str | None:
    """Write the browser into ``site/units`` unless its key is unchanged; returns the key (None without
    FZs or metrics: then there is nothing to browse)."""
    if not (store.has("fz") and store.has("metrics")):
        return None
    key = browser_key(store, context, shown, pages)
    folder = site / FOLDER
    if key == previous_key and (folder / "index.html").is_file():
        return key
    (folder / "img").mkdir(parents=True, exist_ok=True)
    groups = {group: loader.load(spec.Selection(group, optional=True, seeds=True)) for group in GROUPS}
    metrics = groups["metrics"]
    blocks = {block: [int(c) for c in stats.valid_channels(metrics, block)] for block in stats.blocks_of(metrics)
              if block in [str(b) for b in groups["fz"]["block"].values]}
    for block, channels in blocks.items():
        _write_block(groups, metrics, block, channels, folder, shown, pages)
    (folder / "index.html").write_text(index_page(blocks, pages))
    (folder / "sort.js").write_text(SORT_SCRIPT)
    return key


def _write_block(groups, metrics, block, channels, folder: Path, shown, pages) -> None:
    rows = block_rows(groups["fz"], groups["fz_channel"], groups["natural"], groups["image_cache"], block, channels)
    seeds = [int(s) for s in groups["fz"]["seed"].values] if "seed" in groups["fz"].dims else [None]
    one = metrics.sel(block=[block])
    for index, channel in enumerate(channels):
        unit = figures.unit_id(block, channel)
        names = unit_images(rows[channel], unit, folder / "img")
        neighbours = (figures.unit_id(block, channels[index - 1]) if index else None,
                      figures.unit_id(block, channels[index + 1]) if index + 1 < len(channels) else None)
        (folder / f"{unit}.html").write_text(unit_page(unit, names, seeds, one, shown.get(unit, []), neighbours, pages))
    (folder / f"{block}.html").write_text(block_page(block, one, channels, pages))

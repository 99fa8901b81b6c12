"""Build the report: run every spec entry on a store, write figures and tables, Quarto sources, and HTML.

``build(store, out_dir)`` writes into ``out_dir``:

* ``figures/<id>.png`` and ``.svg`` (and ``<id>.cells.json``: where each channel's grid lies, for grid
  figures), ``tables/<id>.csv``, ``.md`` and ``.outcome.txt`` (the table's outcome in words);
* ``_quarto.yml``, ``index.qmd`` (what this store is and shows, claims at a glance, default vs aliased taps,
  seeds, and the universality section across every compared store),
  one ``.qmd`` per paper, and ``alignment.qmd``;
* ``_site/*.html``: rendered by ``report.render`` (Quarto, else pandoc, else markdown-it-py), and the channel
  browser ``_site/units/`` (``report.units``).

Figures are numbered and titled by the paper's figure ("Fig. 1A"), tables by their own count on the page;
an entry whose input is missing is a one-line placeholder, not a figure. An analysis that raises stops the
build with the entry named (``EntryError``), unless ``keep_going``: then it is shown as an error box.

Each figure and table is cached under a key of its spec entry, the store groups' progress attrs, the package
version and its analysis module's source, so a rebuild with unchanged inputs only rewrites the text.
"""
from __future__ import annotations

import hashlib
import html
import inspect
import json
import re
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import click
import pandas as pd

import repro
from analyses import measures
from analyses.levels import Level
from repro import resources as repro_resources
from repro.hashing import digest
from report import models, outcomes, readings, reference, render, rules, spec, units, verify
from report.loader import Loader

SITE = render.SITE
CACHE_FILE = ".report-cache.json"
CSS_FILE = resources.files("report") / "templates" / "report.css"
GROUP_STAMP_KEYS = ("finished", "complete", "version", "settings_digest", "created")
TOY_WORLD = ("The embedded default is a small procedural object-recognition world with a ResNet-18-shaped "
             "network (`profiles/toy.toml`): it runs offline in minutes and exercises every stage, but its "
             "channels have nothing to do with ImageNet-trained resnet18, so the papers' numbers do not apply. "
             "Its own numbers are computed and shown; run the `paper` profile on ImageNet to compare.")
BADGE_CLASS = {badge: "badge-" + badge.replace(" ", "-") for badge in rules.BADGES}
PAPER_CHAPTERS = ("naturally", "interpreting")
METHOD_PAGE = ("method", "The method")  # docs/method.md, rendered as a page of the report


class EntryError(click.ClickException):
    """An analysis raised while building an entry: the build stops with the entry named (exit 1)."""

    exit_code = 1


# ---------------------------------------------------------------- the store in one record

@dataclass
class StoreContext:
    path: Path
    attrs: dict
    comparable: bool
    why_not: str
    stamps: dict[str, Any]
    reading: str = "paper"

    @classmethod
    def of(cls, store) -> "StoreContext":
        attrs = store.attrs
        comparable, why_not = verify.comparability(attrs)
        return cls(Path(store.path).resolve(), attrs, comparable, why_not, {}, readings.store_reading(store))

    def stamp(self, store, group: str) -> Any:
        """What says a group changed: its progress attrs (or its absence)."""
        if group not in self.stamps:
            self.stamps[group] = ({**{key: store.group_attrs(group).get(key) for key in GROUP_STAMP_KEYS},
                                   "units_done": sorted(store.done(group))}
                                  if store.has(group) else "absent")
        return self.stamps[group]

    @property
    def profile_name(self) -> str:
        return str(self.attrs.get("profile_name", "")) or "unknown"

    def provenance(self) -> str:
        weights_hash = str(self.attrs.get("weights_file_sha256") or self.attrs.get("weights_sha256") or "")[:12]
        commit = str(self.attrs.get("git_commit", "unknown"))
        commit = commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")
        return (f"store `{self.path}` · profile `{self.profile_name}` · weights `{self.attrs.get('weights', '')}`"
                f" (sha256 `{weights_hash or 'n/a'}`) · commit `{commit}`")


@dataclass
class Shown:
    """A store the universality section sets side by side with the others: its label there, its model and
    how to read it."""
    label: str
    model: models.Model
    store: Any
    loader: Loader
    context: StoreContext


def shown_stores(store, loader: Loader, context: StoreContext, compared: Sequence) -> list[Shown]:
    """This store first, then every compared one, each labelled by its profile and architecture."""
    stores = [store, *compared]
    found = [models.of(one.attrs) for one in stores]
    return [Shown(label, model, one, loader if one is store else Loader(one),
                  context if one is store else StoreContext.of(one))
            for label, model, one in zip(models.labels(found), found, stores)]


def reading_store(store, compared: Sequence):
    """The first compared store of this store's model (architecture and weights): the other reading."""
    mine = models.of(store.attrs)
    return next((other for other in compared if models.of(other.attrs).same_as(mine)), None)


def compared_stores(compare) -> list:
    """``compare`` as a list: None, one store, or several."""
    if compare is None:
        return []
    return list(compare) if isinstance(compare, (list, tuple)) else [compare]


# ---------------------------------------------------------------- figures and tables, cached

@dataclass
class Artifact:
    entry: spec.Figure | spec.Table
    status: str  # "built", "cached", "missing", "skipped", "error"
    message: str = ""
    files: dict[str, str] = field(default_factory=dict)
    key: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("built", "cached")

    def empty(self, out_dir: Path) -> str:
        """The message of a built figure that has nothing to show ("" otherwise)."""
        path = out_dir / self.files.get("cells.json", "-")
        if not self.ok or not path.is_file():
            return ""
        return (json.loads(path.read_text()) or {}).get("empty") or ""


def _source_hash(function) -> str:
    try:
        return hashlib.sha256(Path(inspect.getsourcefile(function)).read_bytes()).hexdigest()[:16]
    except (TypeError, OSError):
        return "unknown"


def entry_key(entry: spec.Figure | spec.Table, store, context: StoreContext, across: Sequence[Shown] = ()) -> str:
    """Hash of what an entry's output depends on (for an entry across stores, every store's groups too)."""
    payload = {
        "id": entry.id, "kind": entry.kind,
        "function": f"{entry.function.__module__}.{entry.function.__qualname__}",
        "source": _source_hash(entry.function), "outcomes": _source_hash(outcomes.describe),
        "args": repr(sorted((name, _named(value)) for name, value in entry.args.items())),
        "inputs": {name: [sel.group, repr(sorted(sel.sel.items())), context.stamp(store, sel.group)]
                   for name, sel in entry.inputs.items()},
        "store": str(context.path), "version": repro.__version__,
    }
    if entry.across_stores:
        payload["across"] = [[shown.label, str(shown.context.path),
                              {sel.group: shown.context.stamp(shown.store, sel.group) for sel in entry.inputs.values()}]
                             for shown in across]
    return digest(payload, length=None)


def _named(value: Any) -> Any:
    """An argument as the key sees it: a function (a chooser) by its qualified name, not its address."""
    return f"{value.__module__}.{value.__qualname__}" if callable(value) else value


def _outputs(entry: spec.Figure | spec.Table) -> dict[str, str]:
    return {suffix: f"{entry.folder}/{entry.id}.{suffix}" for suffix in entry.suffixes}


def _format_cell(value: Any) -> str:
    if isinstance(value, float):
        text = "" if pd.isna(value) else f"{value:.4g}"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame) -> str:
    """A pipe table (Quarto, pandoc and markdown-it read it)."""
    if frame.empty:
        return "*(empty table)*\n"
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(_format_cell(value) for value in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def _save(result: Any, entry: spec.Figure | spec.Table, out_dir: Path) -> dict[str, str]:
    files = _outputs(entry)
    if isinstance(entry, spec.Figure):
        result.savefig(out_dir / files["png"], dpi=100)
        result.savefig(out_dir / files["svg"])
        empty = getattr(result, "empty_message", None)
        (out_dir / files["cells.json"]).write_text(json.dumps({"empty": empty} if empty else
                                                              getattr(result, "grid_cells", None)))
    else:
        sentence = outcomes.describe(entry.function, result, entry.args)
        if not isinstance(result.index, pd.RangeIndex):
            result = result.reset_index()
        result.to_csv(out_dir / files["csv"], index=False)
        (out_dir / files["md"]).write_text(markdown_table(result))
        (out_dir / files["outcome.txt"]).write_text(sentence)
    return files


def _missing_groups(entry: spec.Figure | spec.Table, store) -> list[str]:
    return [sel.group for sel in entry.inputs.values() if not sel.optional and not store.has(sel.group)]


def _inputs(entry: spec.Figure | spec.Table, loader: Loader, across: Sequence[Shown]) -> dict:
    """The entry's arguments from the store: for an entry across stores, {label: dataset} per input over the
    stores that have its group."""
    if not entry.across_stores:
        return loader.inputs(entry.inputs)
    return {name: {shown.label: shown.loader.load(selection) for shown in across if shown.store.has(selection.group)}
            for name, selection in entry.inputs.items()}


def make(entry: spec.Figure | spec.Table, store, loader: Loader, context: StoreContext, out_dir: Path,
         cache: dict, keep_going: bool = False, across: Sequence[Shown] = ()) -> Artifact:
    """Build one figure or table, or reuse it when its key is unchanged; an analysis error stops the build
    (``EntryError``) unless ``keep_going``. ``across``: the stores an entry across stores reads (this one
    alone when empty)."""
    if entry.across_stores and not across:
        across = shown_stores(store, loader, context, [])
    if entry.comparable_only and not context.comparable:
        return Artifact(entry, "skipped", "the paper's own channel choices, shown only for a store comparable "
                                          "with the paper")
    missing = _missing_groups(entry, store)
    if missing:
        return Artifact(entry, "missing", f"needs the store's {', '.join(missing)} group, not made yet")
    key = entry_key(entry, store, context, across)
    files = _outputs(entry)
    if cache.get(entry.id) == key and all((out_dir / path).is_file() for path in files.values()):
        return Artifact(entry, "cached", files=files, key=key)
    try:
        result = entry.function(**_inputs(entry, loader, across), **entry.args)
        files = _save(result, entry, out_dir)
    except Exception as error:
        message = f"{entry.id} failed: {type(error).__name__}: {error}".replace("\n", " ")
        if not keep_going:
            raise EntryError(message + " (rerun with --keep-going to build the rest)") from error
        print(f"report: {message}", file=sys.stderr)
        return Artifact(entry, "error", f"{type(error).__name__}: {error}")
    return Artifact(entry, "built", files=files, key=key)


# ---------------------------------------------------------------- numbers, anchors, badges

def anchor(entry_id: str) -> str:
    """An entry's HTML id. Not Quarto's ``fig-``/``tbl-`` prefixes: those would number figures by Quarto's
    own count, and the report numbers them by the paper's figure."""
    return re.sub(r"^fig-", "figure-", re.sub(r"^tbl-", "table-", entry_id))


def numbers(artifacts: Sequence[Artifact], out_dir: Path) -> dict[str, str]:
    """Each built entry's label: figures of a paper's chapter by the paper's figure ("Fig. 1A"; its titles
    tell the store's channel choices from the paper's), other figures "Figure n", tables "Table n", counted
    per chapter over built entries only."""
    labels, counts = {}, {}
    for artifact in artifacts:
        entry = artifact.entry
        if not artifact.ok or artifact.empty(out_dir):
            continue
        if isinstance(entry, spec.Figure) and entry.paper_figure != "—" and entry.chapter in PAPER_CHAPTERS:
            labels[entry.id] = entry.paper_figure
            continue
        counts[(entry.chapter, entry.label)] = counts.get((entry.chapter, entry.label), 0) + 1
        labels[entry.id] = f"{entry.label} {counts[(entry.chapter, entry.label)]}"
    return labels


def badge(name: str) -> str:
    return f"[{name}]{{.badge .{BADGE_CLASS[name]}}}"


def own_badge(outcome: rules.Outcome) -> str:
    """The badge, and for a claim the store cannot compare, what its rule gives on the store's own numbers."""
    return badge(outcome.badge) + (f" [in this store: {outcome.own_words}]{{.own}}" if outcome.own else "")


def combined_badge(badges: Sequence[str]) -> str | None:
    """One badge for a figure from the claims it backs: any deviation wins, then noise, then verified;
    None when no claim backs it."""
    if not badges:
        return None
    if rules.DEVIATES in badges:
        return rules.DEVIATES
    comparable = [name for name in badges if name != rules.NOT_COMPARABLE]
    if not comparable:
        return rules.NOT_COMPARABLE
    return rules.WITHIN_NOISE if rules.WITHIN_NOISE in comparable else rules.VERIFIED


def _claims_backing(entry_id: str, results: Sequence[verify.Result]) -> list[verify.Result]:
    return [result for result in results if entry_id in result.claim.backs]


def _inline(text: str) -> str:
    """Text safe inside a markdown table cell or caption."""
    return (str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
            .replace("[", "\\[").replace("]", "\\]").replace("<", "&lt;").replace("*", "\\*"))


# ---------------------------------------------------------------- one entry's markdown

def _link_figure_mentions(text: str, chapter: str, labels: dict[str, str], entries: dict[str, spec.Figure | spec.Table]) -> str:
    """``Fig. 1`` in a caption → a link to this chapter's figure of that number (its first built one)."""
    targets = {}
    for entry_id, label in labels.items():
        match = re.match(r"Fig\. (\d+)", label)
        if match and entries[entry_id].chapter == chapter:
            targets.setdefault(match.group(1), entry_id)
    return re.sub(r"(?<!\[)Fig\. (\d+)(?![\dA-Z])", lambda m: f"[Fig. {m.group(1)}](#{anchor(targets[m.group(1)])})"
                  if m.group(1) in targets else m.group(0), text)


def placeholder_markdown(artifact: Artifact) -> str:
    """A missing or skipped entry in one line: not a figure, no number."""
    entry = artifact.entry
    where = f" ({entry.paper_figure})" if entry.paper_figure != "—" else ""
    return (f"::: {{#{anchor(entry.id)} .placeholder}}\n*{_inline(entry.title)}*{where}: "
            f"{_inline(artifact.message)}.\n:::\n")


def error_markdown(artifact: Artifact) -> str:
    entry = artifact.entry
    return (f"::: {{#{anchor(entry.id)} .entry .error}}\n**{_inline(entry.title)}** (`{entry.id}`) could not be "
            f"built: {_inline(artifact.message)}\n:::\n")


def grid_links(cells: dict | None, root: str = "") -> str:
    """Links over each channel's grid, placed in percent of the figure so they scale with it."""
    if not cells:
        return ""
    width, height = cells["width"], cells["height"]
    links = []
    for cell in cells["cells"]:
        x, y, w, h = cell["box"]
        style = (f"left:{100 * x / width:.3f}%;top:{100 * y / height:.3f}%;"
                 f"width:{100 * w / width:.3f}%;height:{100 * h / height:.3f}%")
        links.append(f'<a class="cell" href="{root}{units.unit_href(cell["unit"])}" style="{style}" '
                     f'title="unit {cell["unit"]}" aria-label="unit {cell["unit"]}"></a>')
    return "".join(links)


def figure_html(artifact: Artifact, label: str, out_dir: Path) -> str:
    cells_file = out_dir / artifact.files["cells.json"]
    cells = json.loads(cells_file.read_text()) if cells_file.is_file() else None
    alt = html.escape(f"{label}: {artifact.entry.title}", quote=True)
    return (f'<div class="grid-figure"><img src="{artifact.files["png"]}" alt="{alt}">'
            f"{grid_links(cells)}</div>\n")


def provenance_markdown(entry: spec.Figure | spec.Table, backing: Sequence[verify.Result], context: StoreContext) -> str:
    sources = (f"from {', '.join(selection.describe() for selection in entry.inputs.values())}; {context.provenance()}"
               if entry.inputs else f"(a seeded simulation; reads no store group; package {repro.__version__})")
    if entry.across_stores:
        sources += ", and of every compared store named in this section"
    overall = combined_badge([result.outcome.badge for result in backing])
    claims = ", ".join(f"[{result.claim.id}](#{result.claim.id}) {own_badge(result.outcome)}" for result in backing)
    return ("::: {.provenance}\n" + (badge(overall) + " " if overall else "")
            + f"Made by `{entry.function.__module__}.{entry.function.__name__}` {sources}."
            + (f" Claims: {claims}." if claims else " No published number backs this entry.") + "\n:::\n")


def entry_markdown(artifact: Artifact, results: Sequence[verify.Result], context: StoreContext, out_dir: Path,
                   labels: dict[str, str], entries: dict[str, spec.Figure | spec.Table], level: int = 2) -> str:
    if artifact.status in ("missing", "skipped"):
        return placeholder_markdown(artifact)
    if artifact.status == "error":
        return error_markdown(artifact)
    if artifact.empty(out_dir):
        return placeholder_markdown(Artifact(artifact.entry, "missing", artifact.empty(out_dir)))
    entry, label = artifact.entry, labels[artifact.entry.id]
    paper = (f" (paper {entry.paper_figure})" if isinstance(entry, spec.Table) and entry.paper_figure != "—" else "")
    caption = _link_figure_mentions(_inline(entry.caption), entry.chapter, labels, entries)
    # The heading stays outside the div: pandoc's table of contents lists top-level headings only.
    lines = ["#" * level + f" {label} · {_inline(entry.title)}{paper}", "", f"::: {{#{anchor(entry.id)} .entry}}"]
    if isinstance(entry, spec.Figure):
        lines += [figure_html(artifact, label, out_dir), f"[**{label}.** {caption}]{{.caption}}", "",
                  f"[SVG]({artifact.files['svg']})", ""]
    else:
        sentence = (out_dir / artifact.files["outcome.txt"]).read_text().strip()
        lines += [f"[**{label}.** {caption}]{{.caption}}", "", (out_dir / artifact.files["md"]).read_text().rstrip(), ""]
        lines += [f"[**Outcome.** {_inline(sentence)}]{{.outcome}}", ""] if sentence else []
        lines += [f"[CSV]({artifact.files['csv']})", ""]
    lines += [provenance_markdown(entry, _claims_backing(entry.id, results), context), ":::", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- pages

def claims_table(results: Sequence[verify.Result]) -> str:
    header = ("| claim | where | what the paper says | published | this store | badge | detail |\n"
              "|---|---|---|---|---|---|---|")
    rows = [f"| [{r.claim.id}]{{#{r.claim.id}}} | {_inline(r.claim.where)} | {_inline(r.claim.text)}"
            + (f" (source: {_inline(r.claim.source)})" if r.claim.source != "paper" else "")
            + f" | {_inline(verify.short(r.claim.published))} | {_inline(verify.short(r.outcome.measured))}"
            f" | {own_badge(r.outcome)} | {_inline(_claim_detail(r.outcome))} |" for r in results]
    return "\n".join([header, *rows]) + "\n"


def _claim_detail(outcome: rules.Outcome) -> str:
    if outcome.reason and outcome.reason != outcome.detail:
        return f"{outcome.detail}; not comparable: {outcome.reason}" if outcome.detail else outcome.reason
    return outcome.detail


def reading_note(context: StoreContext) -> str:
    return (f"Reading: **{_inline(context.reading)}** (the papers' text is `paper`, the authors' code `code`; "
            "both are compared on [the store page](index.qmd)).\n")


def reading_section(store, context: StoreContext, compare=None) -> str:
    """The two readings side by side, or how to make the other one."""
    parts = ["## The papers' text and the authors' code\n",
             f"This store was made under the **{_inline(context.reading)}** reading. The authors' code differs from "
             "the papers in eight places ([the method](method.qmd)); `reading = \"code\"` "
             "(`profiles/paper-code.toml`, or "
             "`--reading code` on any stage) computes items 1-7 as the code does. Item 8 cannot be reproduced: the "
             "tuning-curve script requests resnet18 weights `IMAGENET1K_V2`, which torchvision does not have, so the "
             "published top-9 numbers came from a configuration the repository does not show.\n"]
    other = readings.other_metrics(store, compare)
    if other is None or not store.has("metrics"):
        parts.append("No second reading to compare with: make a second store of the same model (architecture and "
                     "weights) under the other reading and pass it with `repro report --store S --compare S2` (or copy "
                     "its `metrics` group into this store as `metrics_code` or `metrics_paper`).\n")
        return "\n".join(parts)
    metrics, theirs, where = other
    names = readings.names_for(context.reading, theirs)
    table = readings.comparison(store.dataset("metrics"), metrics, names, context.comparable)
    parts += [f"Invariant channels under this store's reading (`{_inline(names[0])}`) and under `{_inline(names[1])}` "
              f"from {where}: counts, shared channels and their Jaccard index per block and criterion, and the "
              "Jaccard index of each with the published list. With several FZ seeds the readings are compared seed "
              "by seed (column seeds; medians over them), beside this store's own seed-to-seed Jaccard: beyond seed "
              "noise means even the closest seed pair of the two readings overlaps less than two seeds of this "
              "store do.\n", markdown_table(table)]
    return "\n".join(parts)


def front_matter(title: str) -> str:
    return f'---\ntitle: "{title}"\n---\n\n'


def comparability_note(context: StoreContext) -> str:
    """The store-wide reason claims are not comparable, stated once per page."""
    return ("" if context.comparable else
            f"**Not comparable with the paper:** {_inline(context.why_not)}. Each claim below shows its grey badge "
            "and, beside it, what its rule gives on this store's own numbers ("
            + ", ".join(level.words for level in Level) + ").\n")


def chapter_qmd(chapter: str, artifacts: Sequence[Artifact], results: Sequence[verify.Result],
                context: StoreContext, out_dir: Path, labels: dict[str, str]) -> str:
    published = spec.NATURALLY if chapter == "naturally" else spec.INTERPRETING
    mine = [artifact for artifact in artifacts if artifact.entry.chapter == chapter]
    entries = {artifact.entry.id: artifact.entry for artifact in artifacts}
    claims = [result for result in results if result.claim.paper == chapter]
    counts = verify.summary(claims)
    first = {}
    for artifact in mine:  # one link per figure number
        if artifact.entry.id in labels and isinstance(artifact.entry, spec.Figure):
            first.setdefault(labels[artifact.entry.id], artifact.entry.id)
    figure_refs = ", ".join(f"[{label}](#{anchor(entry_id)})" for label, entry_id in first.items())
    parts = [front_matter(spec.CHAPTERS[chapter][1]),
             f"{published['paper']['author']}. Criterion: {published['paper']['criterion']}. "
             f"Authors' code: <{published['paper']['code']}>.\n",
             f"This chapter rebuilds the paper's figures ({figure_refs or 'none built yet'}) from "
             f"{context.provenance()}. Claims: " + ", ".join(f"{count} {badge(name)}" for name, count in counts.items())
             + ".\n", reading_note(context), comparability_note(context)]
    parts += [entry_markdown(artifact, results, context, out_dir, labels, entries) for artifact in mine]
    parts += ["## Claims checked against the paper\n", claims_table(claims)]
    return "\n".join(part for part in parts if part)


def _groups_table(store) -> str:
    rows = ["| group | present | state | units done | finished |", "|---|---|---|---|---|"]
    known = ("fz", "fz_channel", "natural", "image_cache", "responses", "metrics", "fz_aliased", "responses_aliased",
             "metrics_aliased", "ablation", "alignment")  # the pipeline's order; any others after them
    for group in known + tuple(group for group in store.groups() if group not in known):
        attrs = store.group_attrs(group) if store.has(group) else {}
        state = store.group_state(group).state if store.has(group) else ""
        rows.append(f"| {group} | {'yes' if store.has(group) else 'no'} | {state} | "
                    f"{len(store.done(group))} | {attrs.get('finished', '')} |")
    return "\n".join(rows) + "\n"


def _level_counts(results: Sequence[verify.Result]) -> str:
    """How many of the results' own outcomes hold, hold weakly and fail, naming the failing ones."""
    shown = {level: [r for r in results if (r.outcome.own or r.outcome.badge) == badge]
             for level, badge in rules.BADGE_OF_LEVEL.items()}
    failing = [r.claim.id.removeprefix("claim-") for r in shown[Level.FAILS]]
    listed = ", ".join(failing[:6]) + (f" and {len(failing) - 6} more" if len(failing) > 6 else "")
    unmeasured = len(results) - sum(len(found) for found in shown.values())
    return (", ".join(f"{level.plural} for {len(found)}" for level, found in shown.items())
            + (f" (failing: {listed})" if failing else "")
            + (f"; {unmeasured} cannot be measured on this store" if unmeasured else ""))


def store_summary(results: Sequence[verify.Result], context: StoreContext) -> str:
    """One paragraph, generated from the results: what the store's own numbers show under each paper's
    qualitative rules, how its channel lists and numbers compare with the published ones, and its counts."""
    sentences = []
    for chapter in PAPER_CHAPTERS:
        mine = [r for r in results if r.claim.paper == chapter]
        ruled = [r for r in mine if r.claim.rule is rules.qualitative]
        numbers_ = [r for r in mine if r.claim.rule is not rules.qualitative]
        sentences.append(f"*{_inline(spec.CHAPTERS[chapter][1])}*: of its {len(ruled)} qualitative claims, checked on "
                         f"this store's own numbers, the rules {_level_counts(ruled)}; of its {len(numbers_)} "
                         f"published channel lists and numbers, this store's {_level_counts(numbers_)}.")
    counts = {r.claim.args["block"]: r.outcome.measured for r in results
              if r.claim.paper == "naturally" and r.claim.measure is measures.invariant_count
              and r.outcome.measured is not None}
    if counts:
        sentences.append("Channels passing mix and up per block: "
                         + ", ".join(f"{block} {count}" for block, count in counts.items()) + ".")
    lead = ("Measured against the papers' published numbers." if context.comparable else
            "The papers' numbers do not apply to this store (see below), so these are the store's own outcomes, "
            "not verdicts on the papers.")
    return f"{lead} " + " ".join(sentences) + "\n"


def _facts(context: StoreContext, profile: dict) -> list[tuple[str, str]]:
    attrs = context.attrs
    return [("store", f"`{context.path}`"), ("profile", f"`{context.profile_name}`: {profile.get('description', '')}"),
            ("reading", context.reading),
            ("weights", f"`{attrs.get('weights', '')}`"),
            ("weights sha256 (state)", f"`{attrs.get('weights_sha256', '') or 'n/a'}`"),
            ("weights sha256 (file)", f"`{attrs.get('weights_file_sha256', '') or 'n/a'}`"),
            ("git commit", f"`{attrs.get('git_commit', 'unknown')}`"),
            ("package", f"`{attrs.get('package_version', '')}`; torch `{attrs.get('torch_version', '')}`, "
                        f"torchvision `{attrs.get('torchvision_version', '')}`"),
            ("created", str(attrs.get("created", "")))]


def _aliased_how_to(context: StoreContext) -> str:
    return ("This store holds metrics for the true taps only. Lucent's hooks, which the authors' FZs used, alias "
            "B and the pre-ReLU taps to the post-ReLU block output. A profile with `compare_aliased = true` "
            "(the toy profile has it) also makes FZs for the aliased taps and their metrics (`metrics_aliased`); "
            f"rerun `repro pipeline --profile {context.profile_name}` with it to see the comparison here.\n")


def _reference_section(results: Sequence[verify.Result]) -> list[str]:
    """This profile's own reference run, judged with the papers' rules (absent when there is none)."""
    mine = [r for r in results if r.claim.paper == "reference"]
    if not mine:
        return []
    return ["## Against this profile's reference run\n",
            f"Numbers of a longer run of this profile ({_inline(mine[0].claim.where)}: its command and seeds are in "
            "the file), checked with the papers' claim rules; a channel set is within noise when its overlap lies "
            "within this store's own seed-to-seed overlap. "
            + ", ".join(f"{badge(name)} {count}" for name, count in verify.summary(mine).items()) + ".\n",
            claims_table(mine)]


def universality_intro(shown: Sequence[Shown]) -> str:
    """What the universality section compares, every store named by its model, or how to add others."""
    parts = ["Both papers end on universality: do the skip/overwrite/mix spectrum and scale invariance appear "
             "beyond ResNet18? Here every block of this store and of each store passed with `--compare` is placed "
             "by its normalised depth, so networks of other families and depths share one axis. A compared store of "
             "this store's own model (architecture and weights) also feeds the comparison of readings above.\n"]
    if shown:
        rows = ["| shown as | architecture | family | weights | profile | reading | store |",
                "|---|---|---|---|---|---|---|"]
        rows += [f"| {_inline(one.label)} | `{one.model.arch}` | {_inline(one.model.family)} | `{one.model.weights}` "
                 f"(sha256 `{one.model.weights_sha256[:12] or 'n/a'}`) | `{one.model.profile}` | "
                 f"{_inline(one.context.reading)} | `{one.context.path}` |" for one in shown]
        parts.append("\n".join(rows) + "\n")
    if len(shown) <= 1:
        parts.append("Only this store is shown. To set other architectures beside it, make a store of each (a "
                     "profile whose `[model] arch` is, say, `convnext_tiny`, `vit_b_16` or `repro.zoo:tiny_convnext`) "
                     "and pass them with `repro report --store S --compare S2 --compare S3`.\n")
    return "\n".join(parts)


def index_qmd(store, artifacts: Sequence[Artifact], results: Sequence[verify.Result], context: StoreContext,
              out_dir: Path, chapters: Sequence[str], labels: dict[str, str], compare=None,
              shown: Sequence[Shown] = ()) -> str:
    profile = verify.store_profile(context.attrs)
    comparable = ("Published-number claims are **comparable**: torchvision resnet18 IMAGENET1K_V1 weights and the "
                  "paper's settings." if context.comparable else
                  f"Published-number claims are **not comparable**: {_inline(context.why_not)}. Every figure and "
                  "number below is still this store's own.")
    if "toy" in profile:  # the toy profile and its twins carry a [toy] table
        comparable += "\n\n" + TOY_WORLD
    glance = ["| chapter | " + " | ".join(rules.BADGES) + " |", "|---|" + "---|" * len(rules.BADGES)]
    for chapter in PAPER_CHAPTERS:
        counts = verify.summary([r for r in results if r.claim.paper == chapter])
        stem, title = spec.CHAPTERS[chapter]
        glance.append(f"| [{_inline(title)}]({stem}.qmd) | " + " | ".join(str(counts[b]) for b in rules.BADGES) + " |")
    entries = {artifact.entry.id: artifact.entry for artifact in artifacts}
    parts = [front_matter(f"Residual stream of {models.of(context.attrs).name}: both papers rebuilt"),
             "## What this store shows\n", store_summary(results, context),
             "## What this store is\n",
             "| | |\n|---|---|\n" + "\n".join(f"| {k} | {_inline(v) if k == 'profile' else v} |"
                                             for k, v in _facts(context, profile)) + "\n",
             comparable + "\n", "Groups in the store:\n", _groups_table(store),
             "## Claims at a glance\n", "\n".join(glance) + "\n",
             "Badges: " + ", ".join(badge(name) for name in rules.BADGES) + ". Channel sets are compared by overlap "
             "(Jaccard, precision, recall), counts and percentages by tolerance, qualitative claims by rule; tolerances "
             "are in `report/spec.py`, published values in `data/published/`.\n",
             "Chapters: " + ", ".join(f"[{_inline(spec.CHAPTERS[c][1])}]({spec.CHAPTERS[c][0]}.qmd)" for c in chapters
                                      if c != "store") + ". Every channel: [the channel browser](units/index.html). "
             "How every number is computed, and where the authors' code differs from the papers: "
             f"[{METHOD_PAGE[1].lower()}]({METHOD_PAGE[0]}.qmd) (`docs/method.md`).\n",
             *_reference_section(results),
             reading_section(store, context, compare)]
    store_entries = [artifact for artifact in artifacts if artifact.entry.chapter == "store"]
    for section, heading in spec.STORE_SECTIONS.items():
        parts.append(f"## {heading}\n")
        if section == spec.ALIASED_SECTION and not store.has("metrics_aliased"):
            parts.append(_aliased_how_to(context))
        if section == spec.UNIVERSALITY_SECTION:
            parts.append(universality_intro(shown))
        parts += [entry_markdown(artifact, results, context, out_dir, labels, entries, level=3)
                  for artifact in store_entries if artifact.entry.section == section]
    return "\n".join(parts)


def alignment_qmd(artifacts: Sequence[Artifact], results, context: StoreContext, out_dir: Path,
                  labels: dict[str, str]) -> str:
    entries = {artifact.entry.id: artifact.entry for artifact in artifacts}
    parts = [front_matter(spec.CHAPTERS["alignment"][1]),
             "Superposition deflates representational alignment: simulations beside their closed forms "
             "(see `analyses/alignment_figures.py`); sparse-feature recovery and the two trained networks "
             "from the store's `alignment` group (`repro alignment`).\n"]
    parts += [entry_markdown(artifact, results, context, out_dir, labels, entries) for artifact in artifacts
              if artifact.entry.chapter == "alignment"]
    return "\n".join(parts)


def method_qmd() -> str:
    """``docs/method.md`` (shipped with the package) as a report page, its heading moved to the front matter."""
    text = repro_resources.document("method.md")
    if text.startswith("# "):
        text = text.split("\n", 1)[1] if "\n" in text else ""
    return front_matter(METHOD_PAGE[1]) + text.lstrip("\n")


def quarto_yml(chapters: Sequence[str], network: str = "ResNet18") -> str:
    pages = "\n".join(f"      - href: {spec.CHAPTERS[c][0]}.qmd\n        text: \"{spec.CHAPTERS[c][1]}\"" for c in chapters)
    return ("project:\n  type: website\n  output-dir: _site\n  resources:\n    - figures/*\n    - tables/*\n"
            f"website:\n  title: \"Residual stream of {network}\"\n  navbar:\n    left:\n" + pages + "\n"
            f"      - href: {METHOD_PAGE[0]}.qmd\n        text: \"{METHOD_PAGE[1]}\"\n"
            "      - href: units/index.html\n        text: \"Channels\"\n"
            "format:\n  html:\n    toc: true\n    css: report.css\n")


# ---------------------------------------------------------------- the build

def _load_cache(out_dir: Path) -> dict:
    try:
        return json.loads((out_dir / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _sources(store, artifacts, results, context, out_dir, chapters, compare=None, shown=()) -> dict[str, str]:
    labels = numbers(artifacts, out_dir)
    sources = {"index.qmd": index_qmd(store, artifacts, results, context, out_dir, chapters, labels, compare, shown),
               "_quarto.yml": quarto_yml(chapters, models.of(context.attrs).name),
               "report.css": CSS_FILE.read_text(),
               f"{METHOD_PAGE[0]}.qmd": method_qmd()}
    for chapter in PAPER_CHAPTERS:
        sources[f"{spec.CHAPTERS[chapter][0]}.qmd"] = chapter_qmd(chapter, artifacts, results, context, out_dir, labels)
    if "alignment" in chapters:
        sources["alignment.qmd"] = alignment_qmd(artifacts, results, context, out_dir, labels)
    return sources


def _write_changed(out_dir: Path, sources: dict[str, str]) -> None:
    for name, text in sources.items():
        path = out_dir / name
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)


def build(store, out_dir, how: str | None = None, keep_going: bool = False, compare=None) -> Path:
    """Rebuild both papers' figures, tables and claims from ``store`` into ``out_dir``; returns the HTML entry page.

    ``compare``: other stores (one, or a list), each shown beside this one in the universality section; the
    first of this store's model (architecture and weights), made under the other reading, also feeds the
    comparison of readings (``readings``)."""
    started = time.monotonic()
    out_dir = Path(out_dir)
    for folder in ("figures", "tables"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    context = StoreContext.of(store)
    results = verify.evaluate(store, reference.claims_for(str(store.attrs.get("profile_name", ""))))
    cache = _load_cache(out_dir)
    loader = Loader(store)
    compared = compared_stores(compare)
    shown = shown_stores(store, loader, context, compared)
    entries = [*spec.FIGURES, *spec.FIGURES_ALIGNMENT]
    artifacts = [make(entry, store, loader, context, out_dir, cache.get("entries", {}), keep_going, shown)
                 for entry in entries]
    has_alignment = any(entry.chapter == "alignment" for entry in entries)
    chapters = ["store", *PAPER_CHAPTERS] + (["alignment"] if has_alignment else [])
    sources = _sources(store, artifacts, results, context, out_dir, chapters, reading_store(store, compared), shown)
    _write_changed(out_dir, sources)
    how = how or render.renderer()
    render_key = hashlib.sha256(json.dumps([how, sources, [a.key for a in artifacts]]).encode()).hexdigest()
    index = out_dir / SITE / "index.html"
    pages = [spec.CHAPTERS[chapter] for chapter in chapters] + [METHOD_PAGE]
    if cache.get("render") != render_key or not index.is_file():
        index = render.render(out_dir, pages, how)
    appearances = units.appearances(artifacts, out_dir, numbers(artifacts, out_dir), anchor)
    units_key = units.write(store, loader, context, out_dir / SITE, appearances, cache.get("units"), pages)
    cache = {"entries": {a.entry.id: a.key for a in artifacts if a.ok}, "render": render_key, "units": units_key}
    (out_dir / CACHE_FILE).write_text(json.dumps(cache, indent=1))
    built = sum(a.status == "built" for a in artifacts)
    print(f"report: {built} built, {sum(a.status == 'cached' for a in artifacts)} cached, "
          f"{sum(not a.ok for a in artifacts)} not built; {how} → {index} ({time.monotonic() - started:.1f} s)")
    return index

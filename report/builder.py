"""Build the report: run every spec entry on a store, write figures and tables, Quarto sources, and HTML.

``build(store, out_dir)`` writes into ``out_dir``:

* ``figures/<id>.png`` and ``.svg``, ``tables/<id>.csv`` and ``.md``;
* ``_quarto.yml``, ``index.qmd`` (what this store is, claims at a glance, default vs aliased taps), one
  ``.qmd`` per paper, and ``alignment.qmd`` when ``analyses.alignment_figures`` exists;
* ``_site/*.html``: rendered with ``quarto render`` when Quarto is installed, else with pandoc, else with
  a small built-in converter for the markdown subset written here.

Each figure and table is cached under a key of its spec entry, the store groups' progress attrs, the package
version and its analysis module's source, so a rebuild with unchanged inputs only rewrites the text.
"""
from __future__ import annotations

import hashlib
import html
import inspect
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

import repro
from report import spec, verify

SITE = "_site"
CACHE_FILE = ".report-cache.json"
GROUP_STAMP_KEYS = ("finished", "complete", "units_done", "signature", "created")
TOY_WORLD = ("The embedded default is a small procedural object-recognition world with a ResNet-18-shaped "
             "network (`profiles/toy.toml`): it runs offline in minutes and exercises every stage, but its "
             "channels have nothing to do with ImageNet-trained resnet18, so the papers' numbers do not apply. "
             "Its own numbers are computed and shown; run the `paper` profile on ImageNet to compare.")
BADGE_CLASS = {badge: "badge-" + badge.replace(" ", "-") for badge in verify.BADGES}
CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 0 auto; padding: 1rem 2rem; line-height: 1.45; }
img { max-width: 100%; height: auto; }
figure { margin: 1.5rem 0; }
figcaption { font-size: 0.92rem; color: #333; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.45rem; vertical-align: top; }
nav.report-nav { margin-bottom: 1rem; font-size: 0.95rem; }
.provenance { font-size: 0.8rem; color: #555; }
.badge { display: inline-block; padding: 0 0.45rem; border-radius: 0.6rem; font-size: 0.8rem; font-weight: 600; }
.badge-verified { background: #d4f4dd; color: #135f2b; }
.badge-within-noise { background: #fff1c2; color: #6b4f00; }
.badge-deviates { background: #ffd7d5; color: #8a1410; }
.badge-not-comparable { background: #e6e6e6; color: #444; }
.missing { border: 1px dashed #bbb; padding: 0.5rem 1rem; color: #555; }
"""


# ---------------------------------------------------------------- the store in one record

@dataclass
class StoreContext:
    path: Path
    attrs: dict
    comparable: bool
    why_not: str
    stamps: dict[str, Any]

    @classmethod
    def of(cls, store) -> "StoreContext":
        attrs = store.attrs
        comparable, why_not = verify.comparability(attrs)
        return cls(Path(store.path).resolve(), attrs, comparable, why_not, {})

    def stamp(self, store, group: str) -> Any:
        """What says a group changed: its progress attrs (or its absence)."""
        if group not in self.stamps:
            self.stamps[group] = ({key: store.group_attrs(group).get(key) for key in GROUP_STAMP_KEYS}
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


# ---------------------------------------------------------------- figures and tables, cached

@dataclass
class Artifact:
    entry: spec.Figure
    status: str  # "built", "cached", "missing", "skipped", "error"
    message: str = ""
    files: dict[str, str] = field(default_factory=dict)
    key: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("built", "cached")


def _source_hash(function) -> str:
    try:
        return hashlib.sha256(Path(inspect.getsourcefile(function)).read_bytes()).hexdigest()[:16]
    except (TypeError, OSError):
        return "unknown"


def entry_key(entry: spec.Figure, store, context: StoreContext) -> str:
    """Hash of what an entry's output depends on."""
    payload = {
        "id": entry.id, "kind": entry.kind,
        "function": f"{entry.function.__module__}.{entry.function.__qualname__}",
        "source": _source_hash(entry.function),
        "args": repr(sorted(entry.args.items())),
        "inputs": {name: [sel.group, repr(sorted(sel.sel.items())), context.stamp(store, sel.group)]
                   for name, sel in entry.inputs.items()},
        "store": str(context.path), "version": repro.__version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _outputs(entry: spec.Figure) -> dict[str, str]:
    folder = "figures" if entry.kind == "figure" else "tables"
    suffixes = ("png", "svg") if entry.kind == "figure" else ("csv", "md")
    return {suffix: f"{folder}/{entry.id}.{suffix}" for suffix in suffixes}


def _format_cell(value: Any) -> str:
    if isinstance(value, float):
        text = "" if pd.isna(value) else f"{value:.4g}"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame) -> str:
    """A pipe table (pandoc and Quarto both read it)."""
    if frame.empty:
        return "*(empty table)*\n"
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(_format_cell(value) for value in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def _save(result: Any, entry: spec.Figure, out_dir: Path) -> dict[str, str]:
    files = _outputs(entry)
    if entry.kind == "figure":
        result.savefig(out_dir / files["png"], dpi=100)
        result.savefig(out_dir / files["svg"])
    else:
        if not isinstance(result.index, pd.RangeIndex):
            result = result.reset_index()
        result.to_csv(out_dir / files["csv"], index=False)
        (out_dir / files["md"]).write_text(markdown_table(result))
    return files


def make(entry: spec.Figure, store, loader: spec.Loader, context: StoreContext, out_dir: Path,
         cache: dict) -> Artifact:
    """Build one figure or table, or reuse it when its key is unchanged."""
    if entry.comparable_only and not context.comparable:
        return Artifact(entry, "skipped", "shown only for stores comparable with the paper (ImageNet weights, "
                                          "paper profile); this one is not: " + context.why_not)
    missing = [sel.group for sel in entry.inputs.values() if not sel.optional and not store.has(sel.group)]
    if missing:
        return Artifact(entry, "missing", f"the store has no {', '.join(missing)} group yet.")
    key = entry_key(entry, store, context)
    files = _outputs(entry)
    if cache.get(entry.id) == key and all((out_dir / path).is_file() for path in files.values()):
        return Artifact(entry, "cached", files=files, key=key)
    try:
        result = entry.function(**loader.inputs(entry.inputs), **entry.args)
        files = _save(result, entry, out_dir)
    except Exception as error:  # one broken analysis should not hide the rest of the report
        print(f"report: {entry.id} failed: {type(error).__name__}: {error}", file=sys.stderr)
        return Artifact(entry, "error", f"{type(error).__name__}: {error}")
    return Artifact(entry, "built", files=files, key=key)


# ---------------------------------------------------------------- Quarto sources

def badge(name: str) -> str:
    return f"[{name}]{{.badge .{BADGE_CLASS[name]}}}"


def combined_badge(badges: Sequence[str]) -> str:
    """One badge for a figure from the claims it backs: any deviation wins, then noise, then verified."""
    if verify.DEVIATES in badges:
        return verify.DEVIATES
    comparable = [name for name in badges if name != verify.NOT_COMPARABLE]
    if not comparable:
        return verify.NOT_COMPARABLE
    return verify.WITHIN_NOISE if verify.WITHIN_NOISE in comparable else verify.VERIFIED


def _claims_backing(entry_id: str, results: Sequence[verify.Result]) -> list[verify.Result]:
    return [result for result in results if entry_id in result.claim.backs]


def _inline(text: str) -> str:
    """Text safe inside a markdown table cell or caption."""
    return str(text).replace("|", "\\|").replace("\n", " ").replace("[", "\\[").replace("]", "\\]")


def entry_markdown(artifact: Artifact, results: Sequence[verify.Result], context: StoreContext, out_dir: Path,
                   level: int = 2) -> str:
    entry = artifact.entry
    backing = _claims_backing(entry.id, results)
    overall = combined_badge([result.outcome.badge for result in backing])
    claims = ", ".join(f"[{result.claim.id}](#{result.claim.id}) {badge(result.outcome.badge)}" for result in backing)
    sources = (f"from {', '.join(selection.describe() for selection in entry.inputs.values())}; {context.provenance()}"
               if entry.inputs else f"(a seeded simulation; reads no store group; package {repro.__version__})")
    provenance = ("::: {.provenance}\n"
                  f"{badge(overall)} Made by `{entry.function.__module__}.{entry.function.__name__}` {sources}."
                  + (f" Claims: {claims}." if claims else " No published number backs this entry.") + "\n:::\n")
    paper_label = f"Paper {entry.paper_figure}" if entry.paper_figure != "—" else ""
    caption = _inline(f"{paper_label}. {entry.caption}" if paper_label else entry.caption)
    lines = ["#" * level + f" {entry.title}" + (f" ({paper_label})" if paper_label else ""), ""]
    if not artifact.ok:
        label = "Figure" if entry.kind == "figure" else "Table"
        lines += [f"::: {{#{entry.id} .missing}}", f"{label} not built: {_inline(artifact.message)}", "",
                  caption, ":::", ""]
    elif entry.kind == "figure":
        lines += [f"![{caption}]({artifact.files['png']}){{#{entry.id}}}", "",
                  f"[SVG]({artifact.files['svg']})", ""]
    else:
        lines += [(out_dir / artifact.files["md"]).read_text().rstrip(), "", f": {caption} {{#{entry.id}}}", "",
                  f"[CSV]({artifact.files['csv']})", ""]
    return "\n".join([*lines, provenance, ""])


def claims_table(results: Sequence[verify.Result]) -> str:
    header = "| claim | where | what the paper says | published | this store | badge | detail |\n|---|---|---|---|---|---|---|"
    rows = [f"| [{r.claim.id}]{{#{r.claim.id}}} | {_inline(r.claim.where)} | {_inline(r.claim.text)}"
            + (f" (source: {r.claim.source})" if r.claim.source != "paper" else "")
            + f" | {_inline(verify.short(r.claim.published))} | {_inline(verify.short(r.outcome.measured))}"
            f" | {badge(r.outcome.badge)} | {_inline(r.outcome.detail)} |" for r in results]
    return "\n".join([header, *rows]) + "\n"


def front_matter(title: str) -> str:
    return f'---\ntitle: "{title}"\n---\n\n'


def chapter_qmd(chapter: str, artifacts: Sequence[Artifact], results: Sequence[verify.Result],
                context: StoreContext, out_dir: Path) -> str:
    published = spec.NATURALLY if chapter == "naturally" else spec.INTERPRETING
    mine = [artifact for artifact in artifacts if artifact.entry.chapter == chapter]
    claims = [result for result in results if result.claim.paper == chapter]
    counts = verify.summary(claims)
    figure_refs = ", ".join(f"@{artifact.entry.id}" for artifact in mine if artifact.entry.kind == "figure")
    parts = [front_matter(spec.CHAPTERS[chapter][1]),
             f"{published['paper']['author']}. Criterion: {published['paper']['criterion']}. "
             f"Authors' code: <{published['paper']['code']}>.\n",
             f"This chapter rebuilds the paper's figures ({figure_refs}) from {context.provenance()}. "
             + ("" if context.comparable else f"**Not comparable with the paper:** {context.why_not}. ")
             + "Claims: " + ", ".join(f"{count} {badge(name)}" for name, count in counts.items()) + ".\n"]
    parts += [entry_markdown(artifact, results, context, out_dir) for artifact in mine]
    parts += ["## Claims checked against the paper\n", claims_table(claims)]
    return "\n".join(parts)


def _groups_table(store) -> str:
    rows = ["| group | present | complete | units done | finished |", "|---|---|---|---|---|"]
    for group in ("fz", "fz_channel", "natural", "image_cache", "responses", "metrics", "metrics_aliased", "ablation"):
        attrs = store.group_attrs(group) if store.has(group) else {}
        rows.append(f"| {group} | {'yes' if store.has(group) else 'no'} | {attrs.get('complete', '')} | "
                    f"{len(attrs.get('units_done', []) or [])} | {attrs.get('finished', '')} |")
    return "\n".join(rows) + "\n"


def index_qmd(store, artifacts: Sequence[Artifact], results: Sequence[verify.Result], context: StoreContext,
              out_dir: Path, chapters: Sequence[str]) -> str:
    attrs = context.attrs
    profile = verify.store_profile(attrs)
    facts = [("store", f"`{context.path}`"), ("profile", f"`{context.profile_name}`: {profile.get('description', '')}"),
             ("weights", f"`{attrs.get('weights', '')}`"),
             ("weights sha256 (state)", f"`{attrs.get('weights_sha256', '') or 'n/a'}`"),
             ("weights sha256 (file)", f"`{attrs.get('weights_file_sha256', '') or 'n/a'}`"),
             ("git commit", f"`{attrs.get('git_commit', 'unknown')}`"),
             ("package", f"`{attrs.get('package_version', '')}`; torch `{attrs.get('torch_version', '')}`, "
                         f"torchvision `{attrs.get('torchvision_version', '')}`"),
             ("created", str(attrs.get("created", "")))]
    comparable = ("Published-number claims are **comparable**: torchvision resnet18 IMAGENET1K_V1 weights and the "
                  "paper's settings." if context.comparable else
                  f"Published-number claims are **not comparable**: {context.why_not}. Every figure and number "
                  "below is still this store's own.")
    if "toy" in profile:  # the toy profile and its twins carry a [toy] table
        comparable += "\n\n" + TOY_WORLD
    glance = ["| chapter | " + " | ".join(verify.BADGES) + " |", "|---|" + "---|" * len(verify.BADGES)]
    for chapter in ("naturally", "interpreting"):
        counts = verify.summary([r for r in results if r.claim.paper == chapter])
        stem, title = spec.CHAPTERS[chapter]
        glance.append(f"| [{_inline(title)}]({stem}.qmd) | " + " | ".join(str(counts[b]) for b in verify.BADGES) + " |")
    parts = [front_matter("Residual stream of ResNet18: both papers rebuilt"),
             "## What this store is\n", "| | |\n|---|---|\n" + "\n".join(f"| {k} | {_inline(v)} |" for k, v in facts) + "\n",
             comparable + "\n", "Groups in the store:\n", _groups_table(store),
             "## Claims at a glance\n", "\n".join(glance) + "\n",
             "Badges: " + ", ".join(badge(name) for name in verify.BADGES) + ". Channel sets are compared by overlap "
             "(Jaccard, precision, recall), counts and percentages by tolerance, qualitative claims by rule; tolerances "
             "are in `report/spec.py`, published values in `data/published/`.\n",
             "Chapters: " + ", ".join(f"[{_inline(spec.CHAPTERS[c][1])}]({spec.CHAPTERS[c][0]}.qmd)" for c in chapters
                                      if c != "store") + ".\n",
             "## Default taps and reference-compatibility (aliased) taps\n"]
    if not store.has("metrics_aliased"):
        parts.append("This store holds metrics for one tap convention only. The default taps hold true values; "
                     "Lucent's hooks, which the authors' FZs used, alias B and the pre-ReLU taps to the post-ReLU "
                     "block output. To compare, make a second store with the aliased taps and copy its `metrics` "
                     "group into this store as `metrics_aliased`, then rebuild the report:\n\n"
                     f"```\nrepro fz --profile {context.profile_name} --aliased --store aliased.zarr\n"
                     "repro natural --store aliased.zarr --images IMAGES\nrepro metrics --store aliased.zarr\n"
                     "python -c \"import xarray as xr; xr.open_zarr('aliased.zarr', group='metrics')"
                     f".to_zarr('{context.path}', group='metrics_aliased', mode='w', zarr_format=3)\"\n```\n")
    parts += [entry_markdown(artifact, results, context, out_dir, level=3) for artifact in artifacts
              if artifact.entry.chapter == "store"]
    return "\n".join(parts)


def alignment_qmd(artifacts: Sequence[Artifact], results, context: StoreContext, out_dir: Path) -> str:
    parts = [front_matter(spec.CHAPTERS["alignment"][1]),
             "Superposition deflates representational alignment: simulations beside their closed forms "
             "(see `analyses/alignment_figures.py`). These do not read the store.\n"]
    parts += [entry_markdown(artifact, results, context, out_dir) for artifact in artifacts
              if artifact.entry.chapter == "alignment"]
    return "\n".join(parts)


def quarto_yml(chapters: Sequence[str]) -> str:
    pages = "\n".join(f"      - href: {spec.CHAPTERS[c][0]}.qmd\n        text: \"{spec.CHAPTERS[c][1]}\"" for c in chapters)
    return ("project:\n  type: website\n  output-dir: _site\n  resources:\n    - figures/*\n    - tables/*\n"
            "website:\n  title: \"Residual stream of ResNet18\"\n  navbar:\n    left:\n" + pages + "\n"
            "format:\n  html:\n    toc: true\n    css: report.css\n")


# ---------------------------------------------------------------- rendering

def cross_ref_numbers(text: str) -> dict[str, str]:
    """Labels defined in a page, numbered per kind in order: {"fig-x": "Figure 1", "tbl-y": "Table 1"}."""
    numbers, counts = {}, {"fig": 0, "tbl": 0}
    for label in re.findall(r"\{#((?:fig|tbl)-[\w.-]+)[ }]", text):
        kind = label[:3]
        if label not in numbers:
            counts[kind] += 1
            numbers[label] = f"{'Figure' if kind == 'fig' else 'Table'} {counts[kind]}"
    return numbers


def _wrap_captioned_tables(lines: list[str], numbers: Mapping[str, str]) -> list[str]:
    """``: caption {#tbl-x}`` after a pipe table → the table inside a ``::: {#tbl-x}`` div, caption numbered."""
    out: list[str] = []
    for line in lines:
        match = re.match(r"^: (.*) \{#(tbl-[\w.-]+)\}\s*$", line)
        if not match:
            out.append(line)
            continue
        caption, label = match.groups()
        start = len(out)
        while start > 0 and (out[start - 1].startswith("|") or out[start - 1] == "" and start > 1
                             and out[start - 2].startswith("|")):
            start -= 1
        out[start:start] = [f"::: {{#{label}}}"]
        out += [f": {numbers.get(label, '')}: {caption}", ":::"]
    return out


def plain_markdown(text: str, navigation: str) -> str:
    """Quarto-only syntax made plain pandoc markdown: numbered captions, ``@fig-x`` refs as links,
    ``.qmd`` links as ``.html``, a navigation line after the title."""
    numbers = cross_ref_numbers(text)
    text = re.sub(r"!\[(.*?)\]\((\S+?)\)\{#(fig-[\w.-]+)\}",
                  lambda m: f"![{numbers.get(m.group(3), 'Figure')}: {m.group(1)}]({m.group(2)}){{#{m.group(3)}}}", text)
    text = re.sub(r"(?<![\w\[])@((?:fig|tbl)-[\w.-]*[\w])", lambda m: f"[{numbers.get(m.group(1), m.group(1))}](#{m.group(1)})", text)
    text = re.sub(r"\]\(([\w-]+)\.qmd\)", r"](\1.html)", text)
    lines = _wrap_captioned_tables(text.split("\n"), numbers)
    text = "\n".join(lines)
    if text.startswith("---\n"):
        end = text.index("\n---\n", 4) + 5
        return text[:end] + "\n" + navigation + "\n" + text[end:]
    return navigation + "\n" + text


# ------------------------------------------------ a minimal markdown → HTML converter (no pandoc installed)

_SPAN = re.compile(r"\[([^\[\]]*(?:\[[^\[\]]*\][^\[\]]*)*)\]\{([^}]*)\}")


def _attributes(spec_text: str) -> str:
    ids = re.findall(r"#([\w.-]+)", spec_text)
    classes = re.findall(r"\.([\w-]+)", spec_text)
    return (f' id="{ids[0]}"' if ids else "") + (f' class="{" ".join(classes)}"' if classes else "")


def inline_html(text: str) -> str:
    """Inline markdown of the subset written here: code, images, links, spans, bold, italics, escapes."""
    codes: list[str] = []

    def stash(match):
        codes.append(f"<code>{html.escape(match.group(1))}</code>")
        return f"\x00{len(codes) - 1}\x00"

    text = re.sub(r"`([^`]+)`", stash, text)
    text = text.replace("\\|", "\x01").replace("\\[", "\x02").replace("\\]", "\x03")
    text = html.escape(text, quote=False)
    text = re.sub(r"&lt;(https?://[^\s&]+)&gt;", r'<a href="\1">\1</a>', text)
    for _ in range(2):  # spans may hold badges
        text = _SPAN.sub(lambda m: f"<span{_attributes(m.group(2))}>{m.group(1)}</span>", text)
    text = re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", r'<img src="\2" alt="\1">', text)
    text = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"(?<![\w*])\*([^*]+)\*(?![\w*])", r"<em>\1</em>", text)
    text = text.replace("\x01", "|").replace("\x02", "[").replace("\x03", "]")
    return re.sub("\x00(\\d+)\x00", lambda m: codes[int(m.group(1))], text)


def _table_html(rows: list[str], caption: str) -> str:
    cells = [[cell.strip() for cell in re.split(r"(?<!\\)\|", row.strip())[1:-1]] for row in rows]
    head, body = cells[0], cells[2:]
    parts = ["<table>"] + ([f"<caption>{inline_html(caption)}</caption>"] if caption else [])
    parts.append("<thead><tr>" + "".join(f"<th>{inline_html(c)}</th>" for c in head) + "</tr></thead><tbody>")
    parts += ["<tr>" + "".join(f"<td>{inline_html(c)}</td>" for c in row) + "</tr>" for row in body]
    return "\n".join(parts + ["</tbody></table>"])


def markdown_to_html(text: str) -> tuple[str, str]:
    """(title, body HTML) of plain markdown as ``plain_markdown`` writes it."""
    title = ""
    if text.startswith("---\n"):
        end = text.index("\n---\n", 4)
        found = re.search(r'^title:\s*"?(.*?)"?\s*$', text[4:end], re.M)
        title, text = (found.group(1) if found else ""), text[end + 5:]
    lines, out, index = text.split("\n"), [], 0
    while index < len(lines):
        line = lines[index]
        if not line.strip():
            index += 1
        elif line.startswith("```"):
            end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
            out.append("<pre><code>" + html.escape("\n".join(lines[index + 1:end])) + "</code></pre>")
            index = end + 1
        elif line.startswith(":::"):
            out.append(f"<div{_attributes(line[3:])}>" if line.strip() != ":::" else "</div>")
            index += 1
        elif re.match(r"#{1,6} ", line):
            level = len(line) - len(line.lstrip("#"))
            heading, _, attributes = line[level + 1:].partition(" {")
            out.append(f"<h{level}{_attributes(attributes)}>{inline_html(heading)}</h{level}>")
            index += 1
        elif line.startswith("|"):
            end = index
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            caption_at = end + 1 if end < len(lines) and not lines[end].strip() else end
            caption = lines[caption_at][2:] if caption_at < len(lines) and lines[caption_at].startswith(": ") else ""
            out.append(_table_html(lines[index:end], caption))
            index = caption_at + 1 if caption else end
        elif line.startswith("- "):
            items = []
            while index < len(lines) and lines[index].startswith("- "):
                items.append(f"<li>{inline_html(lines[index][2:])}</li>")
                index += 1
            out.append("<ul>" + "".join(items) + "</ul>")
        else:
            paragraph = []
            while index < len(lines) and lines[index].strip() and not re.match(r"(#{1,6} |\||:::|- |```)", lines[index]):
                paragraph.append(lines[index])
                index += 1
            figure = re.fullmatch(r"!\[(.*)\]\((\S+?)\)\{#([\w.-]+)\}", " ".join(paragraph))
            if figure:
                caption, source, label = figure.groups()
                out.append(f'<figure id="{label}"><img src="{html.escape(source)}" alt="">'
                           f"<figcaption>{inline_html(caption)}</figcaption></figure>")
            else:
                out.append(f"<p>{inline_html(' '.join(paragraph))}</p>")
    return title, "\n".join(out)


def html_page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f'<link rel="stylesheet" href="report.css">\n</head>\n<body>\n<h1 class="title">{html.escape(title)}</h1>\n'
            f"{body}\n</body>\n</html>\n")


def _sync(source: Path, target: Path) -> None:
    """Copy files that are new or changed (the fallback's stand-in for Quarto's resource copying)."""
    for path in source.rglob("*") if source.is_dir() else [source]:
        if path.is_dir():
            continue
        destination = target / path.relative_to(source) if source.is_dir() else target
        if not destination.exists() or destination.stat().st_mtime < path.stat().st_mtime:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)


def render_fallback(out_dir: Path, pages: Sequence[str], use_pandoc: bool) -> Path:
    """HTML for every page without Quarto: pandoc when asked, else the built-in converter."""
    site = out_dir / SITE
    site.mkdir(exist_ok=True)
    for name in ("figures", "tables", "report.css"):
        _sync(out_dir / name, site / name)
    navigation = ('<nav class="report-nav">' + " · ".join(
        f'<a href="{stem}.html">{html.escape(title)}</a>' for stem, title in
        (spec.CHAPTERS[c] for c in pages)) + "</nav>\n")
    for chapter in pages:
        stem = spec.CHAPTERS[chapter][0]
        text = plain_markdown((out_dir / f"{stem}.qmd").read_text(), navigation)
        if use_pandoc:
            subprocess.run(["pandoc", "-f", "markdown", "-t", "html5", "-s", "--css", "report.css",
                            "-o", str(site / f"{stem}.html")], input=text, text=True, check=True,
                           capture_output=True, timeout=120)
        else:
            title, body = markdown_to_html(text)
            (site / f"{stem}.html").write_text(html_page(title, body))
    return site / "index.html"


def renderer() -> str:
    return "quarto" if shutil.which("quarto") else "pandoc" if shutil.which("pandoc") else "python"


def render(out_dir: Path, pages: Sequence[str], how: str) -> Path:
    if how == "quarto":
        completed = subprocess.run(["quarto", "render", str(out_dir)], capture_output=True, text=True)
        if completed.returncode == 0:
            return out_dir / SITE / "index.html"
        print(f"report: quarto render failed, using pandoc or the built-in renderer:\n{completed.stderr[-2000:]}",
              file=sys.stderr)
        how = "pandoc" if shutil.which("pandoc") else "python"
    return render_fallback(out_dir, pages, use_pandoc=how == "pandoc")


# ---------------------------------------------------------------- the build

def _load_cache(out_dir: Path) -> dict:
    try:
        return json.loads((out_dir / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def build(store, out_dir, how: str | None = None) -> Path:
    """Rebuild both papers' figures, tables and claims from ``store`` into ``out_dir``; returns the HTML entry page."""
    started = time.monotonic()
    out_dir = Path(out_dir)
    for folder in ("figures", "tables"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    context = StoreContext.of(store)
    results = verify.evaluate(store)
    cache = _load_cache(out_dir)
    loader = spec.Loader(store)
    entries = [*spec.FIGURES, *spec.alignment_figures()]
    artifacts = [make(entry, store, loader, context, out_dir, cache.get("entries", {})) for entry in entries]
    chapters = ["store", "naturally", "interpreting"] + (["alignment"] if spec.has_alignment() else [])
    sources = {"index.qmd": index_qmd(store, artifacts, results, context, out_dir, chapters),
               "_quarto.yml": quarto_yml(chapters), "report.css": CSS}
    for chapter in ("naturally", "interpreting"):
        sources[f"{spec.CHAPTERS[chapter][0]}.qmd"] = chapter_qmd(chapter, artifacts, results, context, out_dir)
    if "alignment" in chapters:
        sources["alignment.qmd"] = alignment_qmd(artifacts, results, context, out_dir)
    for name, text in sources.items():
        path = out_dir / name
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
    how = how or renderer()
    render_key = hashlib.sha256(json.dumps([how, sources, [a.key for a in artifacts]]).encode()).hexdigest()
    index = out_dir / SITE / "index.html"
    if cache.get("render") != render_key or not index.is_file():
        index = render(out_dir, chapters, how)
    cache = {"entries": {a.entry.id: a.key for a in artifacts if a.ok}, "render": render_key}
    (out_dir / CACHE_FILE).write_text(json.dumps(cache, indent=1))
    built = sum(a.status == "built" for a in artifacts)
    print(f"report: {built} built, {sum(a.status == 'cached' for a in artifacts)} cached, "
          f"{sum(not a.ok for a in artifacts)} not built; {how} → {index} ({time.monotonic() - started:.1f} s)")
    return index

"""The report's content on a tiny synthetic store: every spec entry is on its page, numbered by the paper's
figure, with honest badges, outcomes in words, one-line placeholders, errors that stop the build, and a fast
unchanged rebuild. ``make_store`` builds the store other report tests use too."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from repro import profiles
from repro.store import Store, labels

BLOCKS = ("1.1", "2.0", "2.1", "3.0", "3.1", "4.0", "4.1")
TAPS = ("I", "B", "O")
SCALES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
IMAGENET_FILE_SHA256 = "f37072fd" + "0" * 56


def root_attrs(weights: str = "imagenet", profile_name: str = "paper") -> dict:
    profile = profiles.as_dict(profiles.load("paper"))  # a stored profile is the plain record
    profile["name"] = profile_name
    return {"store_kind": "residual-stream", "profile_name": profile_name, "profile": json.dumps(profile),
            "weights": weights, "weights_sha256": "ab" * 32,
            "weights_file_sha256": IMAGENET_FILE_SHA256 if weights == "imagenet" else "cd" * 32,
            "git_commit": "0123456789abcdef", "package_version": "0.1.0", "torch_version": "test",
            "torchvision_version": "test", "created": "2025-01-01T00:00:00+00:00"}


def group_attrs(name: str) -> dict:
    return {"finished": "2025-01-01T00:00:00+00:00", "complete": True, "units_done": [f"{name}-0"],
            "signature": "synthetic"}


def write_group(path: Path, name: str, dataset: xr.Dataset) -> None:
    dataset.attrs = group_attrs(name)
    dataset.to_zarr(str(path), group=name, mode="w", zarr_format=3, consolidated=False)


def metrics_dataset(widths: dict[str, int], rng: np.random.Generator,
                    invariant: dict[str, list[int]] | None = None) -> xr.Dataset:
    """Random metrics; ``invariant`` fixes the channels passing every criterion (the rest fail mix)."""
    width = max(widths.values())
    shape = (len(widths), width, 2)
    mix = rng.uniform(0.0, 5.0, shape)
    up_ok, down_ok = rng.random(shape) < 0.6, rng.random(shape) < 0.6
    for index, block in enumerate(widths):
        chosen = (invariant or {}).get(block)
        if chosen is not None:
            outside = np.ones(width, bool)
            outside[list(chosen)] = False
            mix[index, outside, :] = np.where(rng.random((outside.sum(), 2)) < 0.5, 0.3, 2.5)
            mix[index, list(chosen), :] = 1.0 + rng.uniform(-0.2, 0.2, (len(chosen), 2))
            up_ok[index, list(chosen), :] = down_ok[index, list(chosen), :] = True
    mix_ok = (mix > 2 / 3) & (mix < 3 / 2)
    valid = np.array([[channel < widths[block] for channel in range(width)] for block in widths])
    coords = {"block": labels(widths), "channel": np.arange(width), "stimulus_set": labels(["fz", "top9"])}
    per_set = ("block", "channel", "stimulus_set")
    per_channel = ("block", "channel")
    return xr.Dataset({
        "mix": (per_set, mix), "up_delta": (per_set, rng.normal(size=shape)),
        "down_delta": (per_set, rng.normal(size=shape)), "scale_metric": (per_set, rng.normal(size=shape)),
        "mix_ok": (per_set, mix_ok), "up_ok": (per_set, up_ok), "down_ok": (per_set, down_ok),
        "invariant_naturally": (per_set, mix_ok & up_ok & valid[..., None]),
        "invariant_interpreting": (per_set, mix_ok & up_ok & down_ok & valid[..., None]),
        "failed_fz": (per_set, np.zeros(shape, bool)),
        "bn2_weight_abs": (per_channel, rng.random(shape[:2])), "conv2_weight_mean_abs": (per_channel, rng.random(shape[:2])),
        "tuning_rho": (per_channel, rng.uniform(-1, 1, shape[:2])), "valid": (per_channel, valid),
    }, coords=coords)


def ablation_dataset(rng: np.random.Generator, trials: int = 10) -> xr.Dataset:
    accuracy = np.full((2, 3, trials, len(SCALES)), np.nan)
    base = 70.0 - 5 * np.arange(len(SCALES))
    accuracy[:, 0, 0, :] = base
    accuracy[:, 1, 0, :] = base - 6 - np.arange(len(SCALES))
    accuracy[:, 2, :, :] = base - 6 + rng.normal(0, 0.3, (2, trials, len(SCALES)))
    return xr.Dataset({"accuracy": (("block", "condition", "trial", "scale"), accuracy)},
                      coords={"block": labels(["2.1", "3.1"]), "condition": labels(["none", "invariant", "random"]),
                              "trial": np.arange(trials), "scale": np.array(SCALES)})


def make_store(path: Path, *, channels: int = 8, size: int = 16, images: int = 20, weights: str = "imagenet",
               profile_name: str = "paper", invariant: dict[str, list[int]] | None = None,
               widths: dict[str, int] | None = None, pixels: bool = True, seed: int = 0, aliased: bool = True) -> Store:
    """A store with the real layout: tiny images and widths unless told otherwise."""
    rng = np.random.default_rng(seed)
    widths = widths or {block: channels for block in BLOCKS}
    width = max(widths.values())
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.attrs.update(root_attrs(weights, profile_name))
    write_group(path, "metrics", metrics_dataset(widths, rng, invariant))
    aliased_metrics = metrics_dataset(widths, rng, invariant)
    if aliased:
        write_group(path, "metrics_aliased", aliased_metrics)
    write_group(path, "ablation", ablation_dataset(rng))
    valid = np.array([[channel < widths[block] for channel in range(width)] for block in widths])
    unit = {"block": labels(widths), "tap": labels(TAPS), "channel": np.arange(width)}
    write_group(path, "responses", xr.Dataset(
        {"response": (("block", "tap", "channel", "source", "transform", "stimulus_set"),
                      rng.normal(size=(len(widths), 3, width, 3, 3, 2)).astype(np.float32))},
        coords={**unit, "source": labels(TAPS), "transform": labels(["none", "S", "S_inv"]),
                "stimulus_set": labels(["fz", "top9"])}))
    if not pixels:
        return Store(path)
    picture = ("block", "tap", "channel", "y", "x", "rgb")
    for group in ("fz", "fz_channel"):
        write_group(path, group, xr.Dataset({
            "image": (picture, rng.integers(0, 255, (len(widths), 3, width, size, size, 3), dtype=np.uint8)),
            "activation": (("block", "tap", "channel"), rng.normal(size=(len(widths), 3, width)).astype(np.float32)),
            "valid": (("block", "channel"), valid)}, coords=unit))
    write_group(path, "natural", xr.Dataset({
        "activation": (("block", "tap", "channel", "image"), rng.normal(size=(len(widths), 3, width, images)).astype(np.float32)),
        "top_images": (("block", "tap", "channel", "rank"), rng.integers(0, images, (len(widths), 3, width, 9)))},
        coords={**unit, "rank": np.arange(9), "image": np.arange(images),
                "path": ("image", labels(f"n0/{i}.JPEG" for i in range(images))),
                "label": ("image", np.zeros(images, int))}))
    write_group(path, "image_cache", xr.Dataset(
        {"pixels": (("image", "y", "x", "rgb"), rng.integers(0, 255, (images, size, size, 3), dtype=np.uint8))},
        coords={"image": np.arange(images)}))
    return Store(path)


# ---------------------------------------------------------------- the built report

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from report import builder, spec

    with pytest.MonkeyPatch.context() as patch:
        # The alignment chapter's simulations take half a minute of CPU; its test below uses a stand-in module.
        patch.setattr(spec, "FIGURES_ALIGNMENT", [])  # no alignment chapter in these tests
        root = tmp_path_factory.mktemp("report")
        store = make_store(root / "store.zarr")
        started = time.monotonic()
        index = builder.build(store, root / "out")
        yield store, root / "out", index, time.monotonic() - started


class PageContents(HTMLParser):
    """Ids, images, links, navigation links and visible text of one page."""

    def __init__(self):
        super().__init__()
        self.ids, self.images, self.links, self.nav_links, self.text = set(), [], [], [], []
        self.in_nav = self.toc = False

    def handle_starttag(self, tag, attributes):
        attributes = dict(attributes)
        if "id" in attributes:
            self.ids.add(attributes["id"])
        if tag == "img":
            self.images.append(attributes.get("src", ""))
        if tag == "a" and "href" in attributes:
            self.links.append(attributes["href"])
            if self.in_nav:
                self.nav_links.append(attributes["href"])
        if tag == "nav":
            self.in_nav = "report-nav" in (attributes.get("class") or "")
            self.toc = self.toc or attributes.get("id") == "TOC"

    def handle_endtag(self, tag):
        if tag == "nav":
            self.in_nav = False

    def handle_data(self, data):
        self.text.append(data)


def parse_site(site: Path, pattern: str = "*.html") -> dict[str, PageContents]:
    pages = {}
    for page in sorted(site.glob(pattern)):
        pages[page.name] = PageContents()
        pages[page.name].feed(page.read_text())
    return pages


def chapter(out: Path, stem: str) -> str:
    return (out / f"{stem}.qmd").read_text()


def test_every_spec_entry_is_on_its_page_with_its_figure_or_table(built):
    from report import builder, spec

    _, out, index, _ = built
    pages = parse_site(index.parent)
    ids = set().union(*(page.ids for page in pages.values()))
    for entry in [*spec.FIGURES, *spec.FIGURES_ALIGNMENT]:
        assert builder.anchor(entry.id) in ids, entry.id
    for claim in spec.CLAIMS:
        assert claim.id in ids, claim.id
    html = "".join(page.read_text() for page in index.parent.glob("*.html"))
    for entry in spec.FIGURES:
        if entry.kind == "figure":
            assert f"figures/{entry.id}.png" in html or f'id="{builder.anchor(entry.id)}" class="placeholder' in html
        else:
            assert re.search(rf'id="{builder.anchor(entry.id)}"[^>]*>.*?<table', html, re.S), entry.id
    assert (out / "_quarto.yml").is_file() and (out / "index.qmd").is_file()


def test_figures_are_written_as_png_and_svg(built):
    from report import spec

    _, out, _, _ = built
    for entry in spec.FIGURES:
        if entry.kind == "figure" and not entry.comparable_only:
            assert (out / "figures" / f"{entry.id}.png").stat().st_size > 0
            assert (out / "figures" / f"{entry.id}.svg").stat().st_size > 0
        elif entry.kind == "table" and entry.chapter != "store":
            assert (out / "tables" / f"{entry.id}.csv").is_file()


def test_unchanged_rebuild_is_fast_and_cached(built, capsys):
    from report import builder

    store, out, _, first = built
    started = time.monotonic()
    builder.build(store, out)
    assert time.monotonic() - started < 10
    assert " 0 built" in capsys.readouterr().out


def test_store_provenance_and_badges_are_shown(built):
    _, _, index, _ = built
    text = index.read_text()
    assert "f37072fd" in text and "paper" in text and "0123456789ab" in text
    page = (index.parent / "naturally-computed.html").read_text()
    assert "badge-" in page and "claim-naturally-invariant-2-1" in page


# ---------------------------------------------------------------- numbering by the paper's figure

def headings(qmd: str) -> list[str]:
    return re.findall(r"^#{2,3} (.*)$", qmd, re.M)


def test_figures_are_numbered_by_the_papers_figure(built):
    from report import spec

    _, out, _, _ = built
    titles = headings(chapter(out, "interpreting"))
    built_figures = [e for e in spec.FIGURES_INTERPRETING if e.kind == "figure"
                     and (out / "figures" / f"{e.id}.png").is_file()]
    for entry in built_figures:
        assert any(title.startswith(f"{entry.paper_figure} · {entry.title}") for title in titles) or \
            f"*{entry.title}*" in chapter(out, "interpreting"), entry.id
    assert not any(re.match(r"Figure \d", title) for title in titles)  # no count of the report's own
    tables = [title for title in titles if title.startswith("Table")]
    assert [int(title.split()[1]) for title in tables] == list(range(1, len(tables) + 1))


def test_a_caption_citing_fig_1_links_to_fig_1(built):
    from report import builder

    _, out, _, _ = built
    text = chapter(out, "naturally-computed")
    # Fig. 3's caption cites Fig. 1: the link goes to the chapter's Fig. 1, the store's exemplary channels.
    assert f"[Fig. 1](#{builder.anchor('fig-naturally-1')})" in text


def test_placeholders_are_one_line_and_not_figures(built, tmp_path):
    from report import builder

    store, out, _, _ = built
    bare = make_store(tmp_path / "bare.zarr", pixels=False, weights="random:0")
    builder.build(bare, tmp_path / "out")
    text = chapter(tmp_path / "out", "naturally-computed")
    placeholders = re.findall(r"::: \{#(\S+) \.placeholder\}\n(.*)\n:::", text)
    ids = {name for name, _ in placeholders}
    assert builder.anchor("fig-naturally-1") in ids and builder.anchor("fig-naturally-1-published") in ids
    assert all("\n" not in line and line.endswith(".") for _, line in placeholders)
    assert "Fig. 1 ·" not in text  # no figure of that number is built, so none is numbered
    assert "fz group" in dict(placeholders)[builder.anchor("fig-naturally-1")]


# ---------------------------------------------------------------- badges

def provenance_lines(qmd: str) -> list[str]:
    return re.findall(r"::: \{\.provenance\}\n(.*)\n:::", qmd)


def test_entries_no_claim_backs_carry_no_verdict_badge(built):
    _, out, _, _ = built
    lines = [line for name in ("naturally-computed", "interpreting", "index") for line in provenance_lines(chapter(out, name))]
    unbacked = [line for line in lines if "No published number backs this entry" in line]
    assert unbacked and not any(".badge" in line for line in unbacked)
    assert all(line.startswith("[") for line in lines if "Claims:" in line)


@pytest.fixture(scope="module")
def toy_like(tmp_path_factory):
    """A store that cannot be compared (other weights, toy profile) built into a report."""
    from report import builder

    root = tmp_path_factory.mktemp("toy_like")
    store = make_store(root / "store.zarr", weights="random:0", profile_name="toy")
    builder.build(store, root / "out", how="python")
    return store, root / "out"


def test_a_store_that_cannot_compare_states_why_once_per_page_and_shows_its_own_outcomes(toy_like):
    from report import spec, verify

    store, out = toy_like
    why = verify.comparability(store.attrs)[1]
    for name in ("naturally-computed", "interpreting"):
        text = chapter(out, name)
        assert text.count("weights are not IMAGENET1K_V1") == 0
        assert text.count("Not comparable with the paper:") == 1 and "random:0" in why
    results = verify.evaluate(store, spec.CLAIMS)
    text = chapter(out, "interpreting")
    for result in results:
        if result.claim.paper == "interpreting" and result.outcome.own:
            row = next(line for line in text.splitlines() if line.startswith(f"| [{result.claim.id}]"))
            assert f"in this store: {result.outcome.own_words}" in row, result.claim.id


def test_own_outcome_is_the_rule_on_the_stores_numbers():
    from report import rules as rules_
    from report import spec, verify

    metrics = metrics_dataset({block: 8 for block in BLOCKS}, np.random.default_rng(0), {"3.0": [], "4.0": [], "4.1": []})
    claim = next(c for c in spec.CLAIMS if c.id == "claim-naturally-no-invariant")
    inputs = {"metrics": metrics.sel(stimulus_set="fz")}
    comparable = verify.evaluate_claim(claim, inputs, root_attrs())
    other = verify.evaluate_claim(claim, inputs, root_attrs(weights="random:0"))
    assert comparable.badge == rules_.VERIFIED
    assert other.badge == rules_.NOT_COMPARABLE and other.own == rules_.VERIFIED and other.own_words == "holds"
    assert "random" not in other.reason  # the store-wide reason is stated once per page, not per claim


def test_index_says_what_this_store_shows(toy_like):
    from analyses import measures
    from report import rules as rules_
    from report import spec, verify

    store, out = toy_like
    text = chapter(out, "index")
    section = text.split("## What this store shows\n", 1)[1].split("\n## ", 1)[0].strip()
    assert "\n\n" not in section  # one paragraph
    results = [r for r in verify.evaluate(store, spec.CLAIMS) if r.claim.paper == "naturally"]
    rules = [r for r in results if r.claim.rule is rules_.qualitative]
    holds = sum((r.outcome.own or r.outcome.badge) == rules_.VERIFIED for r in rules)
    assert f"of its {len(rules)} qualitative claims" in section and f"the rules hold for {holds}," in section
    counts = ", ".join(f"{block} {len(measures.invariant_set(store.dataset('metrics').sel(stimulus_set='fz'), block, 'naturally'))}"
                       for block in BLOCKS)
    assert f"Channels passing mix and up per block: {counts}." in section


# ---------------------------------------------------------------- outcomes in words

def test_every_table_of_the_papers_states_its_outcome_in_words(built):
    from report import spec

    _, out, index, _ = built
    pages = parse_site(index.parent)
    for entry in spec.FIGURES:
        if entry.kind == "table" and entry.chapter != "store":
            sentence = (out / "tables" / f"{entry.id}.outcome.txt").read_text()
            assert sentence.strip(), entry.id
            shown = " ".join("".join(pages[spec.CHAPTERS[entry.chapter][0] + ".html"].text).split()).replace("’", "'")
            assert sentence in shown, entry.id


def test_skip_overwrite_outcome_names_the_blocks_from_the_numbers():
    import pandas as pd

    from report import outcomes

    table = pd.DataFrame({"mean_skip": [1.0, 0.0], "mean_overwrite": [0.5, 0.2], "p": [0.01, 0.3]},
                         index=pd.Index(["2.1", "3.1"], name="block"))
    assert outcomes.skip_overwrite(table, {}) == ("Overwrite channels (M < 1) have the lower mean in 1 of 2 blocks "
                                                  "(2.1); significantly (p < 0.05) in 2.1.")


# ---------------------------------------------------------------- errors

@pytest.fixture
def failing_entry(monkeypatch):
    from report import spec

    def broken(metrics):
        raise ValueError("shape mismatch (12,16) vs (18,16)")

    entry = spec.Table("tbl-broken", "interpreting", "Fig. 5", "A broken table", "Caption.", broken,
                       {"metrics": spec.METRICS_FZ})
    monkeypatch.setattr(spec, "FIGURES", [*spec.FIGURES, entry])
    return entry


def test_an_analysis_error_exits_non_zero_with_the_entry_named(built, failing_entry, tmp_path):
    from click.testing import CliRunner

    from residual_stream.cli import main

    store, out, _, _ = built
    shutil.copytree(out, tmp_path / "out")
    result = CliRunner().invoke(main, ["report", "--store", str(store.path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert "tbl-broken failed: ValueError: shape mismatch" in result.output
    kept = CliRunner().invoke(main, ["report", "--store", str(store.path), "--out", str(tmp_path / "out"),
                                     "--keep-going"])
    assert kept.exit_code == 0, kept.output
    page = (tmp_path / "out" / "_site" / "interpreting.html").read_text()
    assert 'id="table-broken"' in page and "shape mismatch" in page


def test_alignment_chapter_appears_when_the_spec_has_its_entries(built, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from report import builder, spec

    def cka_deflation_figure():
        """Linear CKA of two superposed systems against the closed form."""
        figure = Figure()
        figure.add_subplot().plot([0, 1], [0, 1])
        return figure

    entry = spec.Figure("fig-alignment-cka-deflation", "alignment", "—", "CKA deflation",
                        "Linear CKA of two superposed systems.", cka_deflation_figure, {})
    monkeypatch.setattr(spec, "FIGURES_ALIGNMENT", [entry])
    store, out, _, _ = built
    shutil.copytree(out, tmp_path / "out")
    index = builder.build(store, tmp_path / "out")
    page = (index.parent / "alignment.html").read_text()
    assert 'id="figure-alignment-cka-deflation"' in page and "figures/fig-alignment-cka-deflation.png" in page
    assert "alignment.html" in index.read_text()


def test_percent_outcome_reads_from_the_counts():
    import pandas as pd

    from report import outcomes

    table = pd.DataFrame({"all_criteria": [2, 0], "without_mix": [3, 4]}, index=pd.Index(["2.1", "4.1"], name="block"))
    assert outcomes.percent_invariant(table, {}) == ("Channels pass all three criteria in 1 of 2 blocks (2.1), none in "
                                                     "4.1; without the mix criterion 7 channels pass in all.")
    table["all_criteria"] = 0
    assert outcomes.percent_invariant(table, {}).startswith("No channel passes all three criteria in any block;")


def test_a_table_with_an_agrees_column_says_how_many_agree():
    import pandas as pd

    from report import outcomes

    table = pd.DataFrame({"metric": ["cka", "rsa", "r2", "r"], "agrees": [True, False, True, np.nan]})
    assert outcomes.describe(lambda: None, table, {}) == "2 of 3 rows agree; 1 does not."


def test_the_index_links_the_method_page_rendered_from_docs_method_md(built):
    from repro import resources

    _, out, index, _ = built
    pages = parse_site(index.parent)
    assert "method.html" in pages["index.html"].links  # in the text, not only in the navigation
    assert "method.html" in pages["index.html"].nav_links
    method = pages["method.html"]
    text = " ".join("".join(method.text).split()).replace("\u2019", "'")  # pandoc's typographic apostrophe
    assert "The method" in text and "Where the authors' code differs from the papers" in text
    assert "In-place trap".lower() in text.lower() and method.toc
    source = (out / "method.qmd").read_text()
    assert source.endswith(resources.document("method.md").split("\n", 1)[1].lstrip("\n"))

"""The report, declared: every figure, table and claim of both papers, where it comes from, how it is checked.

* ``Figure`` / ``Table``: id (a stable label; its HTML anchor is ``report.builder.anchor(id)``), chapter, paper
  figure (the paper's number, which the report shows it under), caption, the analysis function
  (``analyses.figures``, ``analyses.ablation``) and the store groups it reads (``Selection``: group plus an
  xarray ``.sel``), passed to the function by argument name.
* ``Claim``: a number or statement the paper prints (its value read from ``data/published/*.toml``), the
  measure that gives the store's value (``analyses.measures``), the comparison rule (``report.rules``) and its
  tolerance, and the figures/tables it backs.

Pure data: nothing here opens a store. The builder (``report.builder``) and the verifier (``report.verify``,
given ``CLAIMS``) only walk these lists; ``report.reference`` adds a profile's claims against its own
reference run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

from analyses import ablation, convergence, noise, stats, universality
from analyses import alignment_figures as af
from analyses import figures as fg
from analyses import measures as m
from report import rules as r
from repro import profiles, resources

NATURALLY = resources.published("naturally_computed")
INTERPRETING = resources.published("interpreting")
BLOCKS = tuple(profiles.load(profiles.ROOT_PROFILE)["model"]["blocks"])  # the papers' blocks

CHAPTERS = {  # chapter key → (file stem, title)
    "store": ("index", "What this store is"),
    "naturally": ("naturally-computed", NATURALLY["paper"]["title"]),
    "interpreting": ("interpreting", INTERPRETING["paper"]["title"]),
    "alignment": ("alignment", "Superposition and alignment"),
}


# Groups whose ``seed`` dim is the FZ seed (made from FZs: fz, fz_channel, fz_aliased, responses*, metrics*). The
# alignment group's ``seed`` is its simulations' draws, which every reader of it keeps.
@dataclass(frozen=True)
class Selection:
    """One store group, narrowed with ``Dataset.sel(**sel)``; optional groups read as None when absent."""
    group: str
    sel: Mapping[str, Any] = field(default_factory=dict)
    optional: bool = False
    # False: the first FZ seed only (one FZ per neuron, as the papers); True: every seed (noise floors).
    seeds: bool = False

    def describe(self) -> str:
        narrowed = ", ".join(f"{key}={value}" for key, value in self.sel.items())
        return f"{self.group}({narrowed})" if narrowed else self.group


@dataclass(frozen=True)
class _Entry:
    """What a figure and a table share: where the report shows it and the analysis that makes it."""
    id: str
    chapter: str
    paper_figure: str
    title: str
    caption: str
    function: Callable
    inputs: Mapping[str, Selection]
    args: Mapping[str, Any] = field(default_factory=dict)
    comparable_only: bool = False  # the paper's own channel choices: shown only where its numbers compare
    section: str = ""  # the part of its chapter's page it is shown in (``STORE_SECTIONS`` on the store page)
    # True: each input is {store label: dataset} over this store and every store compared with it
    # (``repro report --compare``), so the entry sets models side by side.
    across_stores: bool = False


@dataclass(frozen=True)
class Figure(_Entry):
    """An entry whose function returns a matplotlib figure."""
    kind: ClassVar[str] = "figure"
    label: ClassVar[str] = "Figure"  # its numbered label: "Figure 2"
    folder: ClassVar[str] = "figures"
    suffixes: ClassVar[tuple[str, ...]] = ("png", "svg", "cells.json")


@dataclass(frozen=True)
class Table(_Entry):
    """An entry whose function returns a pandas table."""
    kind: ClassVar[str] = "table"
    label: ClassVar[str] = "Table"
    folder: ClassVar[str] = "tables"
    suffixes: ClassVar[tuple[str, ...]] = ("csv", "md", "outcome.txt")


@dataclass(frozen=True)
class ReferenceRun:
    """A claim's requirement: the store is of ``profile`` (made with weights of this hash, where known), the
    profile whose reference run (``report.reference``) published the number."""
    profile: str
    weights_sha256: str = ""


@dataclass(frozen=True)
class Claim:
    id: str
    paper: str
    where: str
    text: str
    published: Any
    measure: Callable
    inputs: Mapping[str, Selection]
    rule: Callable
    args: Mapping[str, Any] = field(default_factory=dict)
    tolerance: Mapping[str, Any] = field(default_factory=dict)
    backs: tuple[str, ...] = ()
    source: str = "paper"
    requires: tuple[str | ReferenceRun, ...] = ("paper_setup",)


# ---------------------------------------------------------------- store selections

METRICS_FZ = Selection("metrics", {"stimulus_set": "fz"})
METRICS_BOTH = Selection("metrics")
# Every FZ seed: the set claims compare each seed's list and judge the overlap against the seed noise floor.
METRICS_FZ_SEEDS = Selection("metrics", {"stimulus_set": "fz"}, seeds=True)
METRICS_BOTH_SEEDS = Selection("metrics", seeds=True)
RESPONSES = Selection("responses")
ABLATION = Selection("ablation")
GRID_INPUTS = {
    "fz": Selection("fz"),
    "natural": Selection("natural", optional=True),
    "image_cache": Selection("image_cache", optional=True),
    "fz_channel": Selection("fz_channel", optional=True),
    "metrics": METRICS_FZ,
}
ALIASED_INPUTS = {"metrics": METRICS_FZ, "metrics_aliased": Selection("metrics_aliased", {"stimulus_set": "fz"})}
ALIASED_SEED_INPUTS = {"metrics": Selection("metrics", {"stimulus_set": "fz"}, seeds=True),
                       "metrics_aliased": Selection("metrics_aliased", {"stimulus_set": "fz"}, seeds=True)}

# ---------------------------------------------------------------- tolerances (FZs are stochastic)

SET_TOLERANCE = {"verified": 0.75, "noise": 0.4, "empty_noise": 2}          # Jaccard of channel sets
TOP3_TOLERANCE = {"verified": 0.5, "noise": 0.2, "empty_noise": 0}          # 2 of 3 shared / 1 of 3 shared
RATIO_TOLERANCE = {"verified_abs": 0.02, "noise_abs": 0.05, "unit": "in ratio"}                # accuracy ratios (about 1)
COUNT_TOLERANCE = {"verified_abs": 1, "verified_rel": 0.15, "noise_abs": 3, "noise_rel": 0.5}
PERCENT_TOLERANCE = {"verified_abs": 1.0, "verified_rel": 0.15, "noise_abs": 3.0, "noise_rel": 0.5}
TOP1_TOLERANCE = {"verified_abs": 0.05, "noise_abs": 0.5}                   # unablated top-1 %, decoding noise
ABLATED_TOP1_TOLERANCE = {"verified_abs": 0.5, "noise_abs": 2.0}            # other FZs pick other channels
ALPHA = 0.05                                                                # "significantly"
FEW_PERCENT = 5.0                                                           # "only a few" channels
APPRECIABLE_PERCENT = 2.0                                                   # "an appreciable percentage"
EXEMPLARY_COUNT = 6                                                         # paper 1 Fig. 1: six per block

def _blocks_of(table: Mapping[str, Any]) -> dict[str, list[int]]:
    """The per-block entries of a published table (its other keys say where and what)."""
    return {block: list(table[block]) for block in BLOCKS if block in table}


# ---------------------------------------------------------------- paper 1: Naturally computed scale invariance

NC = NATURALLY
FIGURES_NATURALLY = [
    Figure("fig-naturally-1", "naturally", "Fig. 1", "Exemplary scale-invariant channels",
           "Grids of maximally exciting images for this store's exemplary scale-invariant channels: the top six "
           "by scale metric of blocks 2.1 (top row) and 3.1 (bottom row). Columns: taps I, B, O (input, pre-sum, "
           "post-sum). Rows: center-neuron FZ, whole-channel FZ, top-9 natural images of the center neuron.",
           fg.exemplary_invariant_grids, GRID_INPUTS,
           {"blocks": ("2.1", "3.1"), "count": EXEMPLARY_COUNT, "criterion": "naturally"}),
    Figure("fig-naturally-1-published", "naturally", "Fig. 1", "The paper's exemplary channels in this store",
           "The channels the paper shows in its Fig. 1 (2.1: 15 21 48 68 88 108; 3.1: 22 29 80 113 178 215), "
           "drawn from this store.",
           fg.named_channel_grids, GRID_INPUTS, {"channels": _blocks_of(NC["exemplary_channels"])},
           comparable_only=True),
    Figure("fig-naturally-2", "naturally", "Fig. 2", "Ablation: invariant versus random channels",
           "Mean ratio of top-1 accuracy with the block's scale-invariant channels ablated to that with as many "
           "random non-invariant channels ablated, per scale transform, with standard errors over the random "
           "trials; the blue line is the no-scale ratio. Blocks 2.1 (left) and 3.1 (right).",
           ablation.ratio_figure, {"ablation_ds": ABLATION}),
    Figure("fig-naturally-3", "naturally", "Fig. 3", "Remaining invariant channels of blocks 1.1, 2.0, 2.1",
           "Grids of every other criteria-passing channel of blocks 1.1, 2.0 and 2.1 (those of Fig. 1 left out).",
           fg.remaining_invariant_grids, GRID_INPUTS,
           {"blocks": ("1.1", "2.0", "2.1"), "shown_elsewhere": {"2.1": EXEMPLARY_COUNT},
            "criterion": "naturally"}),
    Figure("fig-naturally-4", "naturally", "Fig. 4", "Remaining invariant channels of block 3.1",
           "Grids of every other criteria-passing channel of block 3.1 (those of Fig. 1 left out).",
           fg.remaining_invariant_grids, GRID_INPUTS,
           {"blocks": ("3.1",), "shown_elsewhere": {"3.1": EXEMPLARY_COUNT}, "criterion": "naturally"}),
    Figure("fig-naturally-3-published", "naturally", "Fig. 3", "The paper's Fig. 3 channels in this store",
           "The remaining criteria-passing channels the paper lists for blocks 1.1, 2.0 and 2.1, drawn from this store.",
           fg.named_channel_grids, GRID_INPUTS, {"channels": _blocks_of(NC["remaining_channels_fig3"])},
           comparable_only=True),
    Figure("fig-naturally-4-published", "naturally", "Fig. 4", "The paper's Fig. 4 channels in this store",
           "The remaining criteria-passing channels the paper lists for block 3.1, drawn from this store.",
           fg.named_channel_grids, GRID_INPUTS, {"channels": _blocks_of(NC["remaining_channels_fig4"])},
           comparable_only=True),
    Table("tbl-naturally-counts", "naturally", "Sec. 3", "Invariant channels per block",
          "Channels passing mix AND up (FZ stimuli) per block: this store's list beside the paper's.",
          fg.channel_list_table, {"metrics": METRICS_FZ},
          {"chooser": stats.invariant_channels, "published": _blocks_of(NC["invariant_channels"]),
           "criterion": "naturally"}),
    Table("tbl-naturally-ablation", "naturally", "Fig. 2", "Ablation accuracies",
          "Top-1 accuracy (%) per block, condition and scale (0 % = no scale transform, crop side in pixels): "
          "unablated, invariant channels ablated, and the random trials' mean and standard error. The authors' "
          "code-comment accuracies are compared in the claims below.",
          ablation.accuracy_table, {"ablation_ds": ABLATION}),
]

_FIG1_BLOCKS = set(NC["exemplary_channels"])
_FIG3_BLOCKS = set(NC["remaining_channels_fig3"])
_FIG4_BLOCKS = set(NC["remaining_channels_fig4"])


def _grids_showing(block: str) -> tuple[str, ...]:
    return tuple(figure for figure, blocks in (("fig-naturally-1", _FIG1_BLOCKS), ("fig-naturally-3", _FIG3_BLOCKS),
                                               ("fig-naturally-4", _FIG4_BLOCKS)) if block in blocks)


def block_id(block: str) -> str:
    """A block in a claim id: "2.1" → "2-1"."""
    return block.replace(".", "-")


CLAIMS_NATURALLY = [
    *[Claim(id=f"claim-naturally-invariant-{block_id(b)}", paper="naturally",
            where=NC["invariant_channels"]["where"], text=f"Scale-invariant channels (mix AND up) of block {b}",
            published=NC["invariant_channels"][b], measure=m.invariant_set, inputs={"metrics": METRICS_FZ_SEEDS},
            rule=r.set_overlap, args={"block": b, "criterion": "naturally"}, tolerance=SET_TOLERANCE,
            backs=("tbl-naturally-counts", *_grids_showing(b)))
      for b in BLOCKS],
    *[Claim(id=f"claim-naturally-count-{block_id(b)}", paper="naturally", where=NC["invariant_counts"]["where"],
            text=f"Number of scale-invariant channels in block {b}", published=NC["invariant_counts"][b],
            measure=m.invariant_count, inputs={"metrics": METRICS_FZ}, rule=r.number_close,
            args={"block": b, "criterion": "naturally"}, tolerance=COUNT_TOLERANCE, backs=("tbl-naturally-counts",))
      for b in BLOCKS],
    *[Claim(id=f"claim-naturally-percent-{block_id(b)}", paper="naturally", where=NC["invariant_percent"]["where"],
            text=f"Percent of block {b}'s channels that are scale invariant", published=NC["invariant_percent"][b],
            measure=m.invariant_percent, inputs={"metrics": METRICS_FZ}, rule=r.number_close,
            args={"block": b, "criterion": "naturally"}, tolerance=PERCENT_TOLERANCE,
            backs=("tbl-naturally-counts",))
      for b in NC["invariant_percent"] if b in BLOCKS],
    *[Claim(id=f"claim-naturally-exemplary-{block_id(b)}", paper="naturally",
            where=NC["exemplary_channels"]["where"],
            text=f"The paper's exemplary channels of block {b} pass the criteria",
            published=NC["exemplary_channels"][b], measure=m.invariant_set, inputs={"metrics": METRICS_FZ_SEEDS},
            rule=r.recall_of, args={"block": b, "criterion": "naturally"},
            backs=("fig-naturally-1", "fig-naturally-1-published"))
      for b in ("2.1", "3.1")],
    Claim(id="claim-naturally-no-invariant", paper="naturally", where=NC["no_invariant_blocks"]["where"],
          text=NC["no_invariant_blocks"]["text"],
          published="none in " + ", ".join(NC["no_invariant_blocks"]["blocks"]), measure=m.no_invariant,
          inputs={"metrics": METRICS_FZ}, rule=r.qualitative,
          args={"blocks": NC["no_invariant_blocks"]["blocks"], "criterion": "naturally"},
          backs=("tbl-naturally-counts",)),
    *[Claim(id=f"claim-naturally-ablation-{block_id(b)}", paper="naturally",
            where=NC["ablation_ratio_below_no_scale"]["where"],
            text=f"Block {b}: " + NC["ablation_ratio_below_no_scale"]["text"], published="below at every scale",
            measure=m.ratio_below_no_scale, inputs={"ablation": ABLATION}, rule=r.qualitative, args={"block": b},
            backs=("fig-naturally-2", "tbl-naturally-ablation"))
      for b in NC["ablation_ratio_below_no_scale"]["blocks"]],
    Claim(id="claim-naturally-unablated-accuracy", paper="naturally", where=NC["unablated_accuracy"]["where"],
          text=NC["unablated_accuracy"]["text"], published=NC["unablated_accuracy"]["value"],
          measure=m.unablated_accuracy, inputs={"ablation": ABLATION}, rule=r.number_close, tolerance=TOP1_TOLERANCE,
          backs=("tbl-naturally-ablation",), source=NC["unablated_accuracy"]["source"]),
    *[Claim(id=f"claim-naturally-code-no-scale-{block_id(b)}", paper="naturally",
            where=NC["ablation_invariant_accuracy"]["where"],
            text=f"Block {b}: top-1 % with the invariant channels ablated, no scale transform",
            published={0.0: NC["ablation_invariant_accuracy"][b]["no_scale"]}, measure=m.invariant_accuracies,
            inputs={"ablation": ABLATION}, rule=r.accuracies_close, args={"block": b, "scales": (0.0,)},
            tolerance=ABLATED_TOP1_TOLERANCE, backs=("tbl-naturally-ablation", "fig-naturally-2"),
            source=NC["ablation_invariant_accuracy"]["source"])
      for b in ("2.1", "3.1")],
    *[Claim(id=f"claim-naturally-code-scaled-{block_id(b)}", paper="naturally",
            where=NC["ablation_invariant_accuracy"]["where"],
            text=f"Block {b}: top-1 % with the invariant channels ablated, scales 10-50 % (code's definition)",
            published=dict(zip(NC["ablation_invariant_accuracy"]["scales"],
                               NC["ablation_invariant_accuracy"][b]["scaled"])),
            measure=m.invariant_accuracies, inputs={"ablation": ABLATION}, rule=r.accuracies_close,
            args={"block": b, "scales": tuple(NC["ablation_invariant_accuracy"]["scales"])},
            tolerance=ABLATED_TOP1_TOLERANCE, backs=("tbl-naturally-ablation", "fig-naturally-2"),
            source=NC["ablation_invariant_accuracy"]["source"], requires=("paper_setup", "code_scales"))
      for b in ("2.1", "3.1")],
]

# ---------------------------------------------------------------- paper 2: Interpreting the residual stream

IR = INTERPRETING
SIMPLE_SHOWN = ("1.1", "2.1", "3.1")  # Fig. 3-4 leave out the downsample blocks and 4.1
FIGURES_INTERPRETING = [
    Figure("fig-interpreting-1a", "interpreting", "Fig. 1A", "Skip-overwrite spectrum examples",
           "Overwrite (lowest M), mix (M closest to 1) and skip (highest M below the clamp) example channels of "
           "output 1.1 in this store. Each grid: columns I, B, O; rows center-neuron FZ, channel FZ, top-9 images.",
           fg.spectrum_example_grids, GRID_INPUTS, {"block": "1.1"}),
    Figure("fig-interpreting-1b", "interpreting", "Fig. 1B", "Exemplary scale-invariant channels of 3.1",
           "This store's top three channels of output 3.1 by scale metric among those passing all three criteria.",
           fg.exemplary_invariant_grids, GRID_INPUTS,
           {"blocks": ("3.1",), "count": 3, "criterion": "interpreting"}),
    Figure("fig-interpreting-1-published", "interpreting", "Fig. 1", "The paper's Fig. 1 channels in this store",
           "The channels of the paper's Fig. 1: 1.1 overwrite 38, mix 19, skip 25 (A) and 3.1 channels 178, 215, "
           "25 (B), drawn from this store.",
           fg.named_channel_grids, GRID_INPUTS,
           {"channels": {"1.1": [IR["fig1a_spectrum_examples"][k] for k in ("overwrite", "mix", "skip")],
                         "3.1": IR["fig1b_invariant_examples"]["channels"]}, "columns": 3},
           comparable_only=True),
    Figure("fig-interpreting-2", "interpreting", "Fig. 2", "Mix-ratio histograms",
           "Histograms of mix ratios M for every block, bins from 0 to 5 at 0.25. Near 1: a mixture of input and "
           "block features; below 1: overwrite; above 1: skip.",
           fg.mix_histograms, {"metrics": METRICS_FZ}),
    Figure("fig-interpreting-3", "interpreting", "Fig. 3", "Weight magnitudes against mix ratio",
           "|bn2 weight| (top row) and mean |conv2 weight| (bottom row) per channel against M, with Spearman rho "
           "and p per simple block.",
           fg.weight_mix_scatter, {"metrics": METRICS_FZ}, {"blocks": SIMPLE_SHOWN}),
    Table("tbl-interpreting-spearman", "interpreting", "Fig. 3", "Weight-mix Spearman correlations",
          "Spearman rho and p of |bn2 weight| and mean |conv2 weight| against M (the numbers printed in Fig. 3).",
          stats.weight_mix_correlations, {"metrics_ds": METRICS_FZ}, {"blocks": SIMPLE_SHOWN}),
    Figure("fig-interpreting-4", "interpreting", "Fig. 4", "Overwrite inhibition and tuning correlations",
           "Top: B_c(X_I), the block summand's response to the input tap's FZ, against M, with skip (M ≥ 1, blue) "
           "and overwrite (M < 1, red) means. Bottom: Spearman rho of block against input activations over the "
           "natural images that positively activate the input, against M. One-way ANOVA F and p, skip vs overwrite.",
           fg.activation_tuning_mix, {"metrics": METRICS_FZ, "responses": RESPONSES}, {"blocks": SIMPLE_SHOWN}),
    Table("tbl-interpreting-activation-anova", "interpreting", "Fig. 4 top", "B_c(X_I): skip versus overwrite",
          "Group means, F and p of the one-way ANOVA of B_c(X_I) between skip (M ≥ 1) and overwrite (M < 1) channels.",
          stats.activation_mix, {"metrics_ds": METRICS_FZ, "responses_ds": RESPONSES}, {"blocks": SIMPLE_SHOWN}),
    Table("tbl-interpreting-tuning-anova", "interpreting", "Fig. 4 bottom", "Tuning correlations: skip versus overwrite",
          "Group means, F and p of the one-way ANOVA of the input-block tuning rho between skip and overwrite channels.",
          stats.tuning_mix, {"metrics_ds": METRICS_FZ}, {"blocks": SIMPLE_SHOWN}),
    Figure("fig-interpreting-5", "interpreting", "Fig. 5", "Percent scale-invariant channels",
           "Percent of each block's channels meeting all three criteria (purple) and with the mix criterion "
           "omitted (yellow).",
           fg.percent_invariant_bars, {"metrics": METRICS_FZ}),
    Table("tbl-interpreting-percent", "interpreting", "Fig. 5", "Scale-invariant channels per block",
          "Counts and percents behind Fig. 5.", fg.percent_invariant_table, {"metrics": METRICS_FZ}),
    Figure("fig-interpreting-6", "interpreting", "Fig. 6", "Top three channels by scale metric",
           "Columns: blocks with channels passing all three criteria; rows: their top three by scale metric SM, "
           "with M and the two summed deltas of SM (Δup = up delta / B_c(X_B), Δdown = down delta / I_c(X_I)) "
           "above each grid.",
           fg.top_scale_metric_grids, {**GRID_INPUTS, "responses": RESPONSES}, {"count": 3}),
    Figure("fig-interpreting-6-published", "interpreting", "Fig. 6", "The paper's Fig. 6 channels in this store",
           "The channels the paper names among the top three by scale metric, drawn from this store.",
           fg.named_channel_grids, GRID_INPUTS, {"channels": _blocks_of(IR["top_scale_metric"])},
           comparable_only=True),
    Table("tbl-interpreting-top-sm", "interpreting", "Fig. 6", "Top three by scale metric",
          "This store's top three channels by scale metric per block beside the channels the paper names.",
          fg.channel_list_table, {"metrics": METRICS_FZ},
          {"chooser": stats.top_by_scale_metric, "published": _blocks_of(IR["top_scale_metric"]),
           "n": 3}),
    Figure("fig-interpreting-7", "interpreting", "Fig. 7 (A.3)", "Channels passing the FZ and ImageNet criteria",
           "Grids of every channel passing all three criteria both with FZ stimuli and with the mean over its top-9 "
           "natural images, ordered by FZ scale metric.",
           fg.fz_imagenet_grids, {**GRID_INPUTS, "metrics": METRICS_BOTH}),
    Figure("fig-interpreting-7-agreement", "interpreting", "A.3", "Agreement of the FZ and ImageNet criteria",
           "Per block: channels passing with FZ stimuli only, with top-9 natural images only, and with both.",
           fg.fz_imagenet_agreement, {"metrics": METRICS_BOTH}),
    Figure("fig-interpreting-7-published", "interpreting", "Fig. 7 (A.3)", "The paper's A.3 channels in this store",
           "The channels the paper lists as passing both the FZ and the ImageNet criteria, in its order, drawn from "
           "this store.",
           fg.named_channel_grids, GRID_INPUTS, {"channels": _blocks_of(IR["fz_and_imagenet"])}, comparable_only=True),
    Table("tbl-interpreting-a3", "interpreting", "A.3", "FZ and ImageNet criteria",
          "Channels passing both versions of the criteria: this store's list beside the paper's.",
          fg.channel_list_table, {"metrics": METRICS_BOTH},
          {"chooser": fg.fz_and_imagenet, "published": _blocks_of(IR["fz_and_imagenet"])}),
    Figure("fig-interpreting-8", "interpreting", "Fig. 8 (A.4)", "Top mixes",
           "The three channels with mix ratio closest to 1 in every block, one row per block.",
           fg.top_mix_grids, GRID_INPUTS, {"count": 3}),
    Figure("fig-interpreting-8-published", "interpreting", "Fig. 8 (A.4)", "The paper's top mixes in this store",
           "The channels the paper lists as closest to M = 1 per block, in its order, drawn from this store.",
           fg.named_channel_grids, GRID_INPUTS, {"channels": _blocks_of(IR["top_mixes"]), "columns": 3},
           comparable_only=True),
    Table("tbl-interpreting-a4", "interpreting", "A.4", "Top mixes",
          "The three channels with M closest to 1 per block: this store's beside the paper's.",
          fg.channel_list_table, {"metrics": METRICS_FZ},
          {"chooser": stats.top_mixes, "published": _blocks_of(IR["top_mixes"])}),
]

_A3 = IR["fz_and_imagenet"]
CLAIMS_INTERPRETING = [
    Claim(id="claim-interpreting-spectrum-examples", paper="interpreting",
          where=IR["fig1a_spectrum_examples"]["where"], text=IR["fig1a_spectrum_examples"]["text"],
          published="overwrite 38, mix 19, skip 25", measure=m.spectrum_positions, inputs={"metrics": METRICS_FZ},
          rule=r.qualitative,
          args={k: IR["fig1a_spectrum_examples"][k] for k in ("block", "overwrite", "mix", "skip")},
          backs=("fig-interpreting-1a", "fig-interpreting-1-published")),
    Claim(id="claim-interpreting-fig1b-invariant", paper="interpreting",
          where=IR["fig1b_invariant_examples"]["where"],
          text=IR["fig1b_invariant_examples"]["text"] + " They pass all three criteria.",
          published=IR["fig1b_invariant_examples"]["channels"], measure=m.invariant_set,
          inputs={"metrics": METRICS_FZ}, rule=r.recall_of, args={"block": "3.1", "criterion": "interpreting"},
          backs=("fig-interpreting-1b", "fig-interpreting-1-published")),
    Claim(id="claim-interpreting-overwrite-skew", paper="interpreting", where=IR["overwrite_skew"]["where"],
          text=IR["overwrite_skew"]["text"],
          published="M < 1 dominates in " + ", ".join(IR["overwrite_skew"]["blocks"]), measure=m.overwrite_skew,
          inputs={"metrics": METRICS_FZ}, rule=r.qualitative, args={"blocks": IR["overwrite_skew"]["blocks"]},
          backs=("fig-interpreting-2",)),
    Claim(id="claim-interpreting-simple-less-skewed", paper="interpreting",
          where=IR["simple_blocks_less_skewed"]["where"], text=IR["simple_blocks_less_skewed"]["text"],
          published="simple < downsample overwrite share", measure=m.less_skewed, inputs={"metrics": METRICS_FZ},
          rule=r.qualitative, args={k: IR["simple_blocks_less_skewed"][k] for k in ("simple", "downsample")},
          backs=("fig-interpreting-2",)),
    Claim(id="claim-interpreting-final-block-lowest-bin", paper="interpreting",
          where=IR["final_block_lowest_bin"]["where"], text=IR["final_block_lowest_bin"]["text"],
          published="all channels in [0, 0.25)", measure=m.lowest_bin_share, inputs={"metrics": METRICS_FZ},
          rule=r.qualitative, args={k: IR["final_block_lowest_bin"][k] for k in ("block", "bin_high")},
          backs=("fig-interpreting-2",)),
    *[Claim(id=f"claim-interpreting-weights-{block_id(b)}", paper="interpreting",
            where=IR["skip_weights_smaller"]["where"], text=f"Block {b}: " + IR["skip_weights_smaller"]["text"],
            published="rho < 0, p < 0.05", measure=m.weights_fall_with_mix, inputs={"metrics": METRICS_FZ},
            rule=r.qualitative, args={"block": b, "alpha": ALPHA},
            backs=("fig-interpreting-3", "tbl-interpreting-spearman"))
      for b in IR["skip_weights_smaller"]["blocks"]],
    *[Claim(id=f"claim-interpreting-inhibition-{block_id(b)}", paper="interpreting",
            where=IR["overwrite_inhibition"]["where"], text=f"Block {b}: " + IR["overwrite_inhibition"]["text"],
            published="overwrite < skip, p < 0.05", measure=m.overwrite_inhibited,
            inputs={"metrics": METRICS_FZ, "responses": RESPONSES}, rule=r.qualitative,
            args={"block": b, "alpha": ALPHA}, backs=("fig-interpreting-4", "tbl-interpreting-activation-anova"))
      for b in IR["overwrite_inhibition"]["blocks"]],
    *[Claim(id=f"claim-interpreting-tuning-{block_id(b)}", paper="interpreting",
            where=IR["tuning_correlation"]["where"], text=f"Block {b}: " + IR["tuning_correlation"]["text"],
            published="overwrite more negative, p < 0.05" if significant else "no significant difference",
            measure=m.tuning_difference, inputs={"metrics": METRICS_FZ}, rule=r.qualitative,
            args={"block": b, "alpha": ALPHA, "significant": significant},
            backs=("fig-interpreting-4", "tbl-interpreting-tuning-anova"))
      for significant, key in ((True, "significant"), (False, "not_significant"))
      for b in IR["tuning_correlation"][key]],
    Claim(id="claim-interpreting-with-invariant", paper="interpreting", where=IR["invariant_blocks"]["where"],
          text="Blocks 1.1, 2.0, 2.1 and 3.1 have channels meeting all three criteria.",
          published="present in " + ", ".join(IR["invariant_blocks"]["with_invariant"]), measure=m.with_invariant,
          inputs={"metrics": METRICS_FZ}, rule=r.qualitative,
          args={"blocks": IR["invariant_blocks"]["with_invariant"], "criterion": "interpreting"},
          backs=("fig-interpreting-5", "tbl-interpreting-percent")),
    Claim(id="claim-interpreting-without-invariant", paper="interpreting", where=IR["invariant_blocks"]["where"],
          text="Zero channels meet all three criteria in blocks 3.0, 4.0 and 4.1.",
          published="none in " + ", ".join(IR["invariant_blocks"]["without_invariant"]), measure=m.no_invariant,
          inputs={"metrics": METRICS_FZ}, rule=r.qualitative,
          args={"blocks": IR["invariant_blocks"]["without_invariant"], "criterion": "interpreting"},
          backs=("fig-interpreting-5", "tbl-interpreting-percent")),
    Claim(id="claim-interpreting-without-mix-few", paper="interpreting", where=IR["without_mix_criterion"]["where"],
          text="Without the mix criterion only a few channels pass in 4.0 and 4.1.",
          published=f"at most {FEW_PERCENT:g}% (our reading of 'a few')", measure=m.few_without_mix,
          inputs={"metrics": METRICS_FZ}, rule=r.qualitative,
          args={"blocks": IR["without_mix_criterion"]["few_blocks"], "few_percent": FEW_PERCENT},
          backs=("fig-interpreting-5", "tbl-interpreting-percent")),
    Claim(id="claim-interpreting-without-mix-appreciable", paper="interpreting",
          where=IR["without_mix_criterion"]["where"],
          text="Without the mix criterion 3.0 has an appreciable percentage, substantially less than 2.1 and 3.1.",
          published=f"at least {APPRECIABLE_PERCENT:g}% (our reading of 'appreciable'), below its neighbours",
          measure=m.appreciable_without_mix, inputs={"metrics": METRICS_FZ}, rule=r.qualitative,
          args={"block": IR["without_mix_criterion"]["appreciable_block"],
                "neighbours": IR["without_mix_criterion"]["neighbours"], "appreciable_percent": APPRECIABLE_PERCENT},
          backs=("fig-interpreting-5", "tbl-interpreting-percent")),
    *[Claim(id=f"claim-interpreting-top-sm-{block_id(b)}", paper="interpreting",
            where=IR["top_scale_metric"]["where"],
            text=f"Block {b}: channels {', '.join(map(str, IR['top_scale_metric'][b]))} are among the top 3 by scale metric.",
            published=IR["top_scale_metric"][b], measure=m.named_in_top_scale_metric,
            inputs={"metrics": METRICS_FZ_SEEDS}, rule=r.qualitative,
            args={"block": b, "named": IR["top_scale_metric"][b], "count": 3, "criterion": "interpreting"},
            backs=("fig-interpreting-6", "tbl-interpreting-top-sm"))
      for b in IR["top_scale_metric"] if b in BLOCKS],
    *[Claim(id=f"claim-interpreting-a3-{block_id(b)}", paper="interpreting", where=_A3["where"],
            text=f"Block {b}: channels passing both the FZ and the ImageNet criteria", published=_A3[b],
            measure=m.fz_imagenet_set, inputs={"metrics": METRICS_BOTH_SEEDS}, rule=r.set_overlap, args={"block": b},
            tolerance=SET_TOLERANCE,
            backs=("fig-interpreting-7", "fig-interpreting-7-agreement", "tbl-interpreting-a3"))
      for b in BLOCKS],
    *[Claim(id=f"claim-interpreting-a4-{block_id(b)}", paper="interpreting", where=IR["top_mixes"]["where"],
            text=f"Block {b}: the 3 channels with M closest to 1", published=IR["top_mixes"][b],
            measure=m.top_mix_set, inputs={"metrics": METRICS_FZ_SEEDS}, rule=r.set_overlap, args={"block": b},
            tolerance=TOP3_TOLERANCE, backs=("fig-interpreting-8", "tbl-interpreting-a4"))
      for b in BLOCKS],
]

# ---------------------------------------------------------------- this store: default vs aliased taps, seeds

# The store page's sections, in its order: its heading by key.
ALIASED_SECTION, SEEDS_SECTION, UNIVERSALITY_SECTION = "aliased", "seeds", "universality"
STORE_SECTIONS = {ALIASED_SECTION: "Default taps and reference-compatibility (aliased) taps",
                  SEEDS_SECTION: "FZ seeds and convergence",
                  UNIVERSALITY_SECTION: "Universality: the spectrum and invariance across architectures"}
SPECTRUM_WORDS = ("overwrite M ≤ 2/3, mix 2/3 < M < 3/2, skip M ≥ 3/2 (the mix criterion's bounds as the store "
                  "records them), over the block's channels with a computed M")

FIGURES_STORE = [
    Figure("fig-fz-convergence", "store", "—", "FZ convergence per block",
           "Each FZ's objective (the maximized center value) every fz.trace_every steps, over its last traced value; "
           "median over channels and seeds per tap, 25-75 % band. A curve still rising at the last step has not "
           "converged (benchmarks/fz_convergence.py measures the recipe against 4x the steps).",
           convergence.convergence_figure, {"fz": Selection("fz", seeds=True)}, section=SEEDS_SECTION),
    Table("tbl-seed-noise", "store", "—", "Seed noise floors of the channel lists",
          "Per block and list (each criterion's channel set, the top-3 mixes, the top-3 by scale metric among the "
          "channels passing all three criteria): each list computed on one FZ seed alone, and the Jaccard index "
          "of every pair of seeds (median, low, high). A set claim is within noise when its overlap with the "
          "reference is at least the low end. With one seed the floor is unknown (NaN).",
          noise.floors_table, {"metrics": Selection("metrics", {"stimulus_set": "fz"}, seeds=True)},
          section=SEEDS_SECTION),
    Table("tbl-aliased", "store", "—", "Invariant channels with default and aliased taps, against seed noise",
          "Per block and criterion: scale-invariant channels with the true (default) taps (median over FZ seeds) and "
          "with FZs made for Lucent's aliased taps (B and pre-ReLU taps read as the post-ReLU block output; the "
          "authors' FZs), the Jaccard of the aliased set with each true-tap seed's set, and the true taps' own "
          "seed-to-seed Jaccard (median and range). beyond_noise: even the best aliased-vs-true overlap is below "
          "the lowest seed-to-seed overlap, so the trap changes the set more than the seed does.",
          noise.aliased_against_seed_noise, ALIASED_SEED_INPUTS, section=ALIASED_SECTION),
    Figure("fig-aliased-mix", "store", "—", "Mix ratio with default and aliased taps",
           "Each channel's mix ratio with the default taps against the aliased taps, per block.",
           fg.aliased_mix_scatter, ALIASED_INPUTS, section=ALIASED_SECTION),
    Figure("fig-universality-spectrum", "store", "—", "Skip, overwrite and mix across architectures",
           f"Per block, against its normalised depth (its position over the number of blocks studied): the "
           f"fractions of channels the papers' rules call {SPECTRUM_WORDS}; the median mix ratio; and the fraction "
           "of the block's channels passing each stored invariance criterion. FZ stimuli, first FZ seed. One line "
           "per store: this one and each store passed with --compare.",
           universality.spectrum_figure, {"metrics": METRICS_FZ}, section=UNIVERSALITY_SECTION, across_stores=True),
    Table("tbl-universality-spectrum", "store", "—", "Spectrum and invariant fractions per architecture and block",
          "Per store and block: channels (valid), computed (with a mix ratio), failed FZs, the overwrite, mix and skip "
          "fractions of the computed channels, the median mix ratio, and each stored criterion's invariant fraction "
          "of the block's channels; depth is the block's position over the number of blocks studied.",
          universality.spectrum_table, {"metrics": METRICS_FZ}, section=UNIVERSALITY_SECTION, across_stores=True),
]

FIGURES = [*FIGURES_STORE, *FIGURES_NATURALLY, *FIGURES_INTERPRETING]
CLAIMS = [*CLAIMS_NATURALLY, *CLAIMS_INTERPRETING]


# ---------------------------------------------------------------- third chapter: superposition and alignment

def _alignment_entry(item: Mapping[str, Any]) -> Figure | Table:
    """One of ``analyses.alignment_figures.FIGURES``, as the type its kind names."""
    kind = {entry_type.kind: entry_type for entry_type in (Figure, Table)}[item["kind"]]
    inputs = {name: Selection(group, optional=item.get("optional", False))
              for name, group in item.get("inputs", {}).items()}
    return kind(item["id"], "alignment", item.get("paper_figure", "—"), item["title"], item["caption"],
                item["function"], inputs, item.get("args", {}))


FIGURES_ALIGNMENT = [_alignment_entry(item) for item in af.FIGURES]

"""The report, declared: every figure, table and claim of both papers, where it comes from, how it is checked.

* ``Figure`` / ``Table``: id (a stable label; its HTML anchor is ``report.builder.anchor(id)``), chapter, paper
  figure (the paper's number, which the report shows it under), caption, the analysis function
  (``analyses.figures``, ``analyses.ablation``) and the store groups it reads (``Selection``: group plus an
  xarray ``.sel``), passed to the function by argument name.
* ``Claim``: a number or statement the paper prints (its value read from ``data/published/*.toml``), the
  measure that gives the store's value (``analyses.measures``), the comparison rule (``report.rules``) and its
  tolerance, and the figures/tables it backs.

Pure data: nothing here opens a store. The builder (``report.builder``) and the verifier (``report.verify``,
given ``CLAIMS``) only walk these lists.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

from analyses import ablation, stats
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


@dataclass(frozen=True)
class Selection:
    """One store group, narrowed with ``Dataset.sel(**sel)``; optional groups read as None when absent."""
    group: str
    sel: Mapping[str, Any] = field(default_factory=dict)
    optional: bool = False

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


@dataclass(frozen=True)
class Figure(_Entry):
    """An entry whose function returns a matplotlib figure."""
    kind: ClassVar[str] = "figure"


@dataclass(frozen=True)
class Table(_Entry):
    """An entry whose function returns a pandas table."""
    kind: ClassVar[str] = "table"


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
    requires: tuple[str, ...] = ("paper_setup",)


# ---------------------------------------------------------------- store selections

METRICS_FZ = Selection("metrics", {"stimulus_set": "fz"})
METRICS_BOTH = Selection("metrics")
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

# ---------------------------------------------------------------- tolerances (FZs are stochastic)

SET_TOLERANCE = {"verified": 0.75, "noise": 0.4, "empty_noise": 2}          # Jaccard of channel sets
TOP3_TOLERANCE = {"verified": 0.5, "noise": 0.2, "empty_noise": 0}          # 2 of 3 shared / 1 of 3 shared
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


def _bid(block: str) -> str:
    return block.replace(".", "-")


CLAIMS_NATURALLY = [
    *[Claim(f"claim-naturally-invariant-{_bid(b)}", "naturally", NC["invariant_channels"]["where"],
            f"Scale-invariant channels (mix AND up) of block {b}", NC["invariant_channels"][b], m.invariant_set,
            {"metrics": METRICS_FZ}, r.set_overlap, {"block": b, "criterion": "naturally"}, SET_TOLERANCE,
            ("tbl-naturally-counts", *_grids_showing(b)))
      for b in BLOCKS],
    *[Claim(f"claim-naturally-count-{_bid(b)}", "naturally", NC["invariant_counts"]["where"],
            f"Number of scale-invariant channels in block {b}", NC["invariant_counts"][b], m.invariant_count,
            {"metrics": METRICS_FZ}, r.number_close, {"block": b, "criterion": "naturally"},
            COUNT_TOLERANCE, ("tbl-naturally-counts",))
      for b in BLOCKS],
    *[Claim(f"claim-naturally-percent-{_bid(b)}", "naturally", NC["invariant_percent"]["where"],
            f"Percent of block {b}'s channels that are scale invariant", NC["invariant_percent"][b],
            m.invariant_percent, {"metrics": METRICS_FZ}, r.number_close,
            {"block": b, "criterion": "naturally"}, PERCENT_TOLERANCE, ("tbl-naturally-counts",))
      for b in NC["invariant_percent"] if b in BLOCKS],
    *[Claim(f"claim-naturally-exemplary-{_bid(b)}", "naturally", NC["exemplary_channels"]["where"],
            f"The paper's exemplary channels of block {b} pass the criteria", NC["exemplary_channels"][b],
            m.invariant_set, {"metrics": METRICS_FZ}, r.recall_of, {"block": b, "criterion": "naturally"},
            backs=("fig-naturally-1", "fig-naturally-1-published"))
      for b in ("2.1", "3.1")],
    Claim("claim-naturally-no-invariant", "naturally", NC["no_invariant_blocks"]["where"], NC["no_invariant_blocks"]["text"],
          "none in " + ", ".join(NC["no_invariant_blocks"]["blocks"]), m.no_invariant, {"metrics": METRICS_FZ},
          r.qualitative, {"blocks": NC["no_invariant_blocks"]["blocks"], "criterion": "naturally"},
          backs=("tbl-naturally-counts",)),
    *[Claim(f"claim-naturally-ablation-{_bid(b)}", "naturally", NC["ablation_ratio_below_no_scale"]["where"],
            f"Block {b}: " + NC["ablation_ratio_below_no_scale"]["text"], "below at every scale",
            m.ratio_below_no_scale, {"ablation": ABLATION}, r.qualitative, {"block": b},
            backs=("fig-naturally-2", "tbl-naturally-ablation"))
      for b in NC["ablation_ratio_below_no_scale"]["blocks"]],
    Claim("claim-naturally-unablated-accuracy", "naturally", NC["unablated_accuracy"]["where"],
          NC["unablated_accuracy"]["text"], NC["unablated_accuracy"]["value"], m.unablated_accuracy,
          {"ablation": ABLATION}, r.number_close, tolerance=TOP1_TOLERANCE, backs=("tbl-naturally-ablation",),
          source=NC["unablated_accuracy"]["source"]),
    *[Claim(f"claim-naturally-code-no-scale-{_bid(b)}", "naturally", NC["ablation_invariant_accuracy"]["where"],
            f"Block {b}: top-1 % with the invariant channels ablated, no scale transform",
            {0.0: NC["ablation_invariant_accuracy"][b]["no_scale"]}, m.invariant_accuracies,
            {"ablation": ABLATION}, r.accuracies_close, {"block": b, "scales": (0.0,)}, ABLATED_TOP1_TOLERANCE,
            ("tbl-naturally-ablation", "fig-naturally-2"), NC["ablation_invariant_accuracy"]["source"])
      for b in ("2.1", "3.1")],
    *[Claim(f"claim-naturally-code-scaled-{_bid(b)}", "naturally", NC["ablation_invariant_accuracy"]["where"],
            f"Block {b}: top-1 % with the invariant channels ablated, scales 10-50 % (code's definition)",
            dict(zip(NC["ablation_invariant_accuracy"]["scales"], NC["ablation_invariant_accuracy"][b]["scaled"])),
            m.invariant_accuracies, {"ablation": ABLATION}, r.accuracies_close,
            {"block": b, "scales": tuple(NC["ablation_invariant_accuracy"]["scales"])}, ABLATED_TOP1_TOLERANCE,
            ("tbl-naturally-ablation", "fig-naturally-2"), NC["ablation_invariant_accuracy"]["source"],
            ("paper_setup", "code_scales"))
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
    Claim("claim-interpreting-spectrum-examples", "interpreting", IR["fig1a_spectrum_examples"]["where"],
          IR["fig1a_spectrum_examples"]["text"], "overwrite 38, mix 19, skip 25", m.spectrum_positions,
          {"metrics": METRICS_FZ}, r.qualitative,
          {k: IR["fig1a_spectrum_examples"][k] for k in ("block", "overwrite", "mix", "skip")},
          backs=("fig-interpreting-1a", "fig-interpreting-1-published")),
    Claim("claim-interpreting-fig1b-invariant", "interpreting", IR["fig1b_invariant_examples"]["where"],
          IR["fig1b_invariant_examples"]["text"] + " They pass all three criteria.",
          IR["fig1b_invariant_examples"]["channels"], m.invariant_set, {"metrics": METRICS_FZ}, r.recall_of,
          {"block": "3.1", "criterion": "interpreting"},
          backs=("fig-interpreting-1b", "fig-interpreting-1-published")),
    Claim("claim-interpreting-overwrite-skew", "interpreting", IR["overwrite_skew"]["where"], IR["overwrite_skew"]["text"],
          "M < 1 dominates in " + ", ".join(IR["overwrite_skew"]["blocks"]), m.overwrite_skew, {"metrics": METRICS_FZ},
          r.qualitative, {"blocks": IR["overwrite_skew"]["blocks"]}, backs=("fig-interpreting-2",)),
    Claim("claim-interpreting-simple-less-skewed", "interpreting", IR["simple_blocks_less_skewed"]["where"],
          IR["simple_blocks_less_skewed"]["text"], "simple < downsample overwrite share", m.less_skewed,
          {"metrics": METRICS_FZ}, r.qualitative,
          {k: IR["simple_blocks_less_skewed"][k] for k in ("simple", "downsample")}, backs=("fig-interpreting-2",)),
    Claim("claim-interpreting-final-block-lowest-bin", "interpreting", IR["final_block_lowest_bin"]["where"],
          IR["final_block_lowest_bin"]["text"], "all channels in [0, 0.25)", m.lowest_bin_share,
          {"metrics": METRICS_FZ}, r.qualitative, {k: IR["final_block_lowest_bin"][k] for k in ("block", "bin_high")},
          backs=("fig-interpreting-2",)),
    *[Claim(f"claim-interpreting-weights-{_bid(b)}", "interpreting", IR["skip_weights_smaller"]["where"],
            f"Block {b}: " + IR["skip_weights_smaller"]["text"], "rho < 0, p < 0.05", m.weights_fall_with_mix,
            {"metrics": METRICS_FZ}, r.qualitative,
            {"block": b, "alpha": ALPHA},
            backs=("fig-interpreting-3", "tbl-interpreting-spearman"))
      for b in IR["skip_weights_smaller"]["blocks"]],
    *[Claim(f"claim-interpreting-inhibition-{_bid(b)}", "interpreting", IR["overwrite_inhibition"]["where"],
            f"Block {b}: " + IR["overwrite_inhibition"]["text"], "overwrite < skip, p < 0.05", m.overwrite_inhibited,
            {"metrics": METRICS_FZ, "responses": RESPONSES}, r.qualitative, {"block": b, "alpha": ALPHA},
            backs=("fig-interpreting-4", "tbl-interpreting-activation-anova"))
      for b in IR["overwrite_inhibition"]["blocks"]],
    *[Claim(f"claim-interpreting-tuning-{_bid(b)}", "interpreting", IR["tuning_correlation"]["where"],
            f"Block {b}: " + IR["tuning_correlation"]["text"],
            "overwrite more negative, p < 0.05" if significant else "no significant difference",
            m.tuning_difference, {"metrics": METRICS_FZ}, r.qualitative,
            {"block": b, "alpha": ALPHA, "significant": significant},
            backs=("fig-interpreting-4", "tbl-interpreting-tuning-anova"))
      for significant, key in ((True, "significant"), (False, "not_significant"))
      for b in IR["tuning_correlation"][key]],
    Claim("claim-interpreting-with-invariant", "interpreting", IR["invariant_blocks"]["where"],
          "Blocks 1.1, 2.0, 2.1 and 3.1 have channels meeting all three criteria.",
          "present in " + ", ".join(IR["invariant_blocks"]["with_invariant"]), m.with_invariant,
          {"metrics": METRICS_FZ}, r.qualitative,
          {"blocks": IR["invariant_blocks"]["with_invariant"], "criterion": "interpreting"},
          backs=("fig-interpreting-5", "tbl-interpreting-percent")),
    Claim("claim-interpreting-without-invariant", "interpreting", IR["invariant_blocks"]["where"],
          "Zero channels meet all three criteria in blocks 3.0, 4.0 and 4.1.",
          "none in " + ", ".join(IR["invariant_blocks"]["without_invariant"]), m.no_invariant,
          {"metrics": METRICS_FZ}, r.qualitative,
          {"blocks": IR["invariant_blocks"]["without_invariant"], "criterion": "interpreting"},
          backs=("fig-interpreting-5", "tbl-interpreting-percent")),
    Claim("claim-interpreting-without-mix-few", "interpreting", IR["without_mix_criterion"]["where"],
          "Without the mix criterion only a few channels pass in 4.0 and 4.1.",
          f"at most {FEW_PERCENT:g}% (our reading of 'a few')", m.few_without_mix, {"metrics": METRICS_FZ},
          r.qualitative, {"blocks": IR["without_mix_criterion"]["few_blocks"], "few_percent": FEW_PERCENT},
          backs=("fig-interpreting-5", "tbl-interpreting-percent")),
    Claim("claim-interpreting-without-mix-appreciable", "interpreting", IR["without_mix_criterion"]["where"],
          "Without the mix criterion 3.0 has an appreciable percentage, substantially less than 2.1 and 3.1.",
          f"at least {APPRECIABLE_PERCENT:g}% (our reading of 'appreciable'), below its neighbours",
          m.appreciable_without_mix, {"metrics": METRICS_FZ}, r.qualitative,
          {"block": IR["without_mix_criterion"]["appreciable_block"],
           "neighbours": IR["without_mix_criterion"]["neighbours"], "appreciable_percent": APPRECIABLE_PERCENT},
          backs=("fig-interpreting-5", "tbl-interpreting-percent")),
    *[Claim(f"claim-interpreting-top-sm-{_bid(b)}", "interpreting", IR["top_scale_metric"]["where"],
            f"Block {b}: channels {', '.join(map(str, IR['top_scale_metric'][b]))} are among the top 3 by scale metric.",
            IR["top_scale_metric"][b], m.named_in_top_scale_metric, {"metrics": METRICS_FZ}, r.qualitative,
            {"block": b, "named": IR["top_scale_metric"][b], "count": 3, "criterion": "interpreting"},
            backs=("fig-interpreting-6", "tbl-interpreting-top-sm"))
      for b in IR["top_scale_metric"] if b in BLOCKS],
    *[Claim(f"claim-interpreting-a3-{_bid(b)}", "interpreting", _A3["where"],
            f"Block {b}: channels passing both the FZ and the ImageNet criteria", _A3[b], m.fz_imagenet_set,
            {"metrics": METRICS_BOTH}, r.set_overlap, {"block": b}, SET_TOLERANCE,
            ("fig-interpreting-7", "fig-interpreting-7-agreement", "tbl-interpreting-a3"))
      for b in BLOCKS],
    *[Claim(f"claim-interpreting-a4-{_bid(b)}", "interpreting", IR["top_mixes"]["where"],
            f"Block {b}: the 3 channels with M closest to 1", IR["top_mixes"][b], m.top_mix_set,
            {"metrics": METRICS_FZ}, r.set_overlap, {"block": b}, TOP3_TOLERANCE,
            ("fig-interpreting-8", "tbl-interpreting-a4"))
      for b in BLOCKS],
]

# ---------------------------------------------------------------- this store: default vs aliased taps

FIGURES_STORE = [
    Table("tbl-aliased", "store", "—", "Invariant channels with default and aliased taps",
          "Per block and criterion: scale-invariant channels with the true (default) taps and with Lucent's aliased "
          "taps (B and pre-ReLU taps read as the post-ReLU block output), and their overlap.",
          fg.aliased_comparison_table, ALIASED_INPUTS),
    Figure("fig-aliased-mix", "store", "—", "Mix ratio with default and aliased taps",
           "Each channel's mix ratio with the default taps against the aliased taps, per block.",
           fg.aliased_mix_scatter, ALIASED_INPUTS),
]

FIGURES = [*FIGURES_STORE, *FIGURES_NATURALLY, *FIGURES_INTERPRETING]
CLAIMS = [*CLAIMS_NATURALLY, *CLAIMS_INTERPRETING]


# ---------------------------------------------------------------- third chapter: superposition and alignment

def _alignment_entry(item: Mapping[str, Any]) -> Figure | Table:
    """One of ``analyses.alignment_figures.FIGURES``: tables are labelled ``tbl-``."""
    kind = Table if item["id"].startswith("tbl-") else Figure
    inputs = {name: Selection(group, optional=item.get("optional", False))
              for name, group in item.get("inputs", {}).items()}
    return kind(item["id"], "alignment", item.get("paper_figure", "—"), item["title"], item["caption"],
                item["function"], inputs, item.get("args", {}))


FIGURES_ALIGNMENT = [_alignment_entry(item) for item in af.FIGURES]

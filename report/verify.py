"""Checking a store against the published numbers: measures, comparison rules, badges.

A claim (declared in ``report.spec``) names a *measure* (store datasets → the store's value), the
published value, and a *rule* (published, measured, tolerance → ``Outcome``). Rules give one of four badges:

* ``verified``: agrees within the tight tolerance;
* ``within noise``: agrees only within the loose tolerance that stochastic FZs and natural-image sets allow;
* ``deviates``: disagrees beyond that;
* ``not comparable``: the store cannot speak to the published number (other weights, another profile,
  missing data); its own value is still computed and shown.

Channel sets are compared by overlap (Jaccard, precision, recall), counts and percentages by tolerance,
qualitative claims (signs, which blocks skew) by rule.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import click
import numpy as np
import xarray as xr

from analyses import ablation as ablation_analysis
from analyses import figures, stats
from repro.model import IMAGENET_FILE_SHA256_PREFIX

VERIFIED, WITHIN_NOISE, DEVIATES, NOT_COMPARABLE = "verified", "within noise", "deviates", "not comparable"
BADGES = (VERIFIED, WITHIN_NOISE, DEVIATES, NOT_COMPARABLE)
IMAGENET_WEIGHTS = "imagenet"
RESNET18_FILE_PREFIX = IMAGENET_FILE_SHA256_PREFIX["resnet18"]  # the paper's network
# Profile settings that change published numbers; a store differing from profiles/paper.toml in any of
# them is not comparable.
PAPER_SETTINGS = ("model.arch", "model.image_size", "fz.steps", "fz.lr", "fz.objective", "fz.jitter",
                  "stimulus.crop", "stimulus.shrink", "stimulus.pad", "metrics.mix_low", "metrics.mix_high")


OWN_WORDS = {VERIFIED: "holds", WITHIN_NOISE: "holds weakly", DEVIATES: "fails"}


@dataclass(frozen=True)
class Outcome:
    """A claim's badge, the store's value and the rule's detail. When the claim cannot be compared,
    ``own`` is the rule's own badge on this store's numbers (what the store shows, not a verdict on the
    paper) and ``reason`` the claim's own reason beyond the store-wide one (``comparability``)."""
    badge: str
    measured: Any
    detail: str
    own: str | None = None
    reason: str = ""

    @property
    def own_words(self) -> str:
        return OWN_WORDS.get(self.own, "")


@dataclass(frozen=True)
class Evidence:
    """What a qualitative measure found: ``holds``, ``weakly`` (right direction, not significant or not
    everywhere) or ``fails``, with a one-line summary of the numbers."""
    level: str
    summary: str

    def __str__(self) -> str:
        return self.summary


class MissingInput(Exception):
    """The store lacks what a claim measures (a group, a block, a condition)."""


# ---------------------------------------------------------------- comparability

def imagenet_weights(attrs: Mapping) -> bool:
    return (attrs.get("weights") == IMAGENET_WEIGHTS
            or str(attrs.get("weights_file_sha256", "")).startswith(RESNET18_FILE_PREFIX))


def _setting(profile: Mapping, dotted: str):
    value: Any = profile
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def store_profile(attrs: Mapping) -> dict:
    try:
        return json.loads(attrs.get("profile") or "{}")
    except (TypeError, ValueError):
        return {}


@functools.lru_cache(maxsize=1)
def paper_profile() -> dict:
    from repro import profiles

    return profiles.load("paper")


def profile_differences(attrs: Mapping) -> list[str]:
    """Result-changing settings in which the store's profile differs from the paper profile."""
    mine, paper = store_profile(attrs), paper_profile()
    if not mine:
        return [] if attrs.get("profile_name") == "paper" else [f"profile {attrs.get('profile_name')!r} (no settings recorded)"]
    differing = [key for key in PAPER_SETTINGS if _setting(mine, key) != _setting(paper, key)]
    return [f"{key} differs" if isinstance(_setting(paper, key), Mapping) else
            f"{key} = {_setting(mine, key)!r} (paper: {_setting(paper, key)!r})" for key in differing]


def comparability(attrs: Mapping) -> tuple[bool, str]:
    """Whether the store's published-number claims can be checked, and why not."""
    reasons = []
    if not imagenet_weights(attrs):
        file_hash = str(attrs.get("weights_file_sha256", ""))[:8] or "none"
        reasons.append(f"weights {attrs.get('weights', '')!r} (file sha256 {file_hash}…) are not torchvision's "
                       f"resnet18 IMAGENET1K_V1 ({RESNET18_FILE_PREFIX}…)")
    differences = profile_differences(attrs)
    if differences:
        reasons.append("profile differs from the paper's: " + "; ".join(differences))
    return not reasons, "; ".join(reasons)


def requirement_failures(requires: Sequence[str], attrs: Mapping, ablation_attrs: Mapping | None = None) -> list[str]:
    """Short reasons a claim with these requirements cannot be compared on this store (the store-wide
    reason in full is ``comparability``'s)."""
    reasons = []
    if "paper_setup" in requires:
        if not imagenet_weights(attrs):
            reasons.append("weights are not IMAGENET1K_V1")
        if profile_differences(attrs):
            reasons.append(f"profile {attrs.get('profile_name', '')!r} differs from the paper's")
    if "code_scales" in requires:
        definition = _setting(store_profile(attrs), "ablation.scale_definition")
        definition = (ablation_attrs or {}).get("scale_definition", definition)
        if definition != "code":
            reasons.append(f"the authors' code comments use the code's scale definition; this store's ablation "
                           f"used {definition!r} (rerun `repro ablate --scale-definition code`, or the whole code reading: `--reading code`)")
    return reasons


# ---------------------------------------------------------------- rules

def _tolerance(published: float, absolute: float, relative: float) -> float:
    return max(absolute, relative * abs(published))


def number_close(published: float, measured: float, verified_abs: float = 0.0, verified_rel: float = 0.0,
                 noise_abs: float = 0.0, noise_rel: float = 0.0) -> Outcome:
    """A count, percentage or accuracy within max(abs, rel * published) of the published value."""
    if measured is None or not np.isfinite(measured):
        return Outcome(NOT_COMPARABLE, measured, "the store gives no value")
    difference = float(measured) - float(published)
    detail = f"difference {difference:+.3g}"
    if abs(difference) <= _tolerance(published, verified_abs, verified_rel):
        return Outcome(VERIFIED, measured, detail)
    if abs(difference) <= _tolerance(published, noise_abs, noise_rel):
        return Outcome(WITHIN_NOISE, measured, detail)
    return Outcome(DEVIATES, measured, detail)


def overlap(published: Sequence[int], measured: Sequence[int]) -> dict[str, float]:
    """Jaccard, precision (store channels that are published) and recall (published channels found)."""
    published, measured = set(published), set(measured)
    shared = len(published & measured)
    union = len(published | measured)
    return {"jaccard": shared / union if union else 1.0,
            "precision": shared / len(measured) if measured else float(not published),
            "recall": shared / len(published) if published else 1.0}


def set_overlap(published: Sequence[int], measured: Sequence[int], verified: float = 0.75, noise: float = 0.4,
                empty_noise: int = 2) -> Outcome:
    """Channel sets by Jaccard index; an empty published set tolerates ``empty_noise`` channels as noise."""
    scores = overlap(published, measured)
    detail = "Jaccard {jaccard:.2f}, precision {precision:.2f}, recall {recall:.2f}".format(**scores)
    if not published:
        badge = VERIFIED if not measured else WITHIN_NOISE if len(measured) <= empty_noise else DEVIATES
        return Outcome(badge, list(measured), f"{len(measured)} channels where the paper has none")
    badge = VERIFIED if scores["jaccard"] >= verified else WITHIN_NOISE if scores["jaccard"] >= noise else DEVIATES
    return Outcome(badge, list(measured), detail)


def recall_of(published: Sequence[int], measured: Sequence[int], verified: float = 0.8, noise: float = 0.5) -> Outcome:
    """Named channels (a paper's examples) found among the store's passing channels."""
    recall = overlap(published, measured)["recall"]
    found = sorted(set(published) & set(measured))
    badge = VERIFIED if recall >= verified else WITHIN_NOISE if recall >= noise else DEVIATES
    return Outcome(badge, found, f"{len(found)} of {len(published)} named channels pass in the store (recall {recall:.2f})")


def qualitative(published: str, measured: Evidence) -> Outcome:
    """A qualitative claim: the measure's evidence decides."""
    badge = {"holds": VERIFIED, "weakly": WITHIN_NOISE, "fails": DEVIATES}[measured.level]
    return Outcome(badge, measured, measured.summary)


def accuracies_close(published: Mapping[float, float], measured: Mapping[float, float], verified_abs: float = 0.5,
                     noise_abs: float = 2.0) -> Outcome:
    """Accuracies (top-1 %) at matching scales, by the largest absolute difference."""
    shared = [scale for scale in published if scale in measured and np.isfinite(measured[scale])]
    if not shared:
        return Outcome(NOT_COMPARABLE, measured, "the store has none of these scales")
    worst = max(abs(measured[scale] - published[scale]) for scale in shared)
    badge = VERIFIED if worst <= verified_abs else WITHIN_NOISE if worst <= noise_abs else DEVIATES
    return Outcome(badge, measured, f"largest difference {worst:.3g} points over {len(shared)} scales")


# ---------------------------------------------------------------- measures (store → value)

MIX_LOW, MIX_HIGH = 2 / 3, 3 / 2  # the mix criterion's bounds (both papers)


def _block(dataset: xr.Dataset, block: str) -> str:
    """``block``, after checking the store has it and its mix ratios are computed (for every stimulus set
    the dataset holds: top-9 needs the natural group)."""
    if block not in stats.blocks_of(dataset):
        raise MissingInput(f"block {block} is not in this store")
    if "mix" in dataset:
        mix = dataset["mix"].sel(block=block, channel=stats.valid_channels(dataset, block))
        computed = mix.notnull().any("channel") if "stimulus_set" in mix.dims else mix.notnull().any()
        if not bool(computed.all()):
            raise MissingInput(f"block {block}'s metrics are not computed yet"
                               + (" (top-9 needs the natural and image_cache groups)" if "stimulus_set" in mix.dims else ""))
    return block


def invariant_set(metrics: xr.Dataset, block: str, criterion: str) -> list[int]:
    return stats.invariant_channels(metrics, _block(metrics, block), criterion)


def invariant_count(metrics: xr.Dataset, block: str, criterion: str) -> int:
    return len(invariant_set(metrics, block, criterion))


def invariant_percent(metrics: xr.Dataset, block: str, criterion: str) -> float:
    return float(stats.block_counts(metrics.sel(block=[_block(metrics, block)]), criterion).loc[block, "percent"])


def fz_imagenet_set(metrics: xr.Dataset, block: str, criterion: str = "interpreting") -> list[int]:
    return figures.fz_and_imagenet(metrics, _block(metrics, block), criterion)


def top_mix_set(metrics: xr.Dataset, block: str, count: int = 3) -> list[int]:
    return stats.top_mixes(metrics, _block(metrics, block), count)


def no_invariant(metrics: xr.Dataset, blocks: Sequence[str], criterion: str, few: int = 2) -> Evidence:
    """None of ``blocks`` has a passing channel (weakly: each has at most ``few``)."""
    counts = {block: invariant_count(metrics, block, criterion) for block in blocks}
    level = "holds" if not any(counts.values()) else "weakly" if max(counts.values()) <= few else "fails"
    return Evidence(level, ", ".join(f"{block}: {count}" for block, count in counts.items()))


def with_invariant(metrics: xr.Dataset, blocks: Sequence[str], criterion: str) -> Evidence:
    """Every one of ``blocks`` has a passing channel (weakly: all but one)."""
    counts = {block: invariant_count(metrics, block, criterion) for block in blocks}
    empty = sum(count == 0 for count in counts.values())
    level = "holds" if empty == 0 else "weakly" if empty == 1 else "fails"
    return Evidence(level, ", ".join(f"{block}: {count}" for block, count in counts.items()))


def _mix(metrics: xr.Dataset, block: str) -> np.ndarray:
    return stats.per_channel(metrics, "mix", _block(metrics, block)).to_numpy()


def overwrite_fraction(metrics: xr.Dataset, block: str) -> float:
    return float(np.mean(_mix(metrics, block) < 1))


def overwrite_skew(metrics: xr.Dataset, blocks: Sequence[str]) -> Evidence:
    """Most channels of every block are overwrite (M < 1); weakly: on average over the blocks."""
    fractions = {block: overwrite_fraction(metrics, block) for block in blocks}
    level = ("holds" if min(fractions.values()) > 0.5 else
             "weakly" if np.mean(list(fractions.values())) > 0.5 else "fails")
    return Evidence(level, "overwrite share " + ", ".join(f"{b}: {f:.0%}" for b, f in fractions.items()))


def less_skewed(metrics: xr.Dataset, simple: Sequence[str], downsample: Sequence[str]) -> Evidence:
    """Every simple block has a smaller overwrite share than every downsample block (weakly: on average)."""
    simple_share = {block: overwrite_fraction(metrics, block) for block in simple}
    down_share = {block: overwrite_fraction(metrics, block) for block in downsample}
    level = ("holds" if max(simple_share.values()) < min(down_share.values()) else
             "weakly" if np.mean(list(simple_share.values())) < np.mean(list(down_share.values())) else "fails")
    shares = {**simple_share, **down_share}
    return Evidence(level, "overwrite share " + ", ".join(f"{b}: {f:.0%}" for b, f in shares.items()))


def lowest_bin_share(metrics: xr.Dataset, block: str, bin_high: float, all_share: float = 0.95,
                     most_share: float = 0.8) -> Evidence:
    """Nearly all of the block's channels have M < ``bin_high`` (and how many of those are non-zero)."""
    mix = _mix(metrics, block)
    lowest = mix[mix < bin_high]
    share, nonzero = float(np.mean(mix < bin_high)), float(np.mean(lowest > 0)) if len(lowest) else 0.0
    level = "holds" if share >= all_share else "weakly" if share >= most_share else "fails"
    return Evidence(level, f"{share:.0%} of channels below {bin_high}; {nonzero:.0%} of those non-zero")


def weights_fall_with_mix(metrics: xr.Dataset, block: str, alpha: float) -> Evidence:
    """|bn2| and mean |conv2| weights have significantly negative Spearman rho with M (weakly: negative only)."""
    row = stats.weight_mix_correlations(metrics, [_block(metrics, block)]).loc[block]
    found = {name: (row[f"{name}_rho"], row[f"{name}_p"]) for name in ("bn2", "conv2")}
    if any(not np.isfinite(rho) for rho, _ in found.values()):
        raise MissingInput(f"block {block}'s weight correlations are undefined (constant or missing weights)")
    negative = all(rho < 0 for rho, _ in found.values())
    significant = all(rho < 0 and p < alpha for rho, p in found.values())
    level = "holds" if significant else "weakly" if negative else "fails"
    return Evidence(level, "; ".join(f"{name}: rho {rho:.2f}, p {p:.1e}" for name, (rho, p) in found.items()))


def _anova_summary(result: Mapping[str, float]) -> str:
    return (f"skip mean {result['mean_skip']:.3g} (n={result['n_skip']}), overwrite mean "
            f"{result['mean_overwrite']:.3g} (n={result['n_overwrite']}), F {result['f']:.3g}, p {result['p']:.1e}")


def overwrite_inhibited(metrics: xr.Dataset, responses: xr.Dataset, block: str, alpha: float) -> Evidence:
    """B_c(X_I) is lower for overwrite than for skip channels, significantly by one-way ANOVA."""
    result = stats.activation_mix(metrics, responses, [_block(metrics, block)]).loc[block]
    lower = result["mean_overwrite"] < result["mean_skip"]
    level = "holds" if lower and result["p"] < alpha else "weakly" if lower else "fails"
    return Evidence(level, _anova_summary(result))


def tuning_difference(metrics: xr.Dataset, block: str, alpha: float, significant: bool) -> Evidence:
    """Overwrite channels' input-block tuning rho is significantly more negative than skip channels'
    (``significant=True``), or not significantly different (``False``)."""
    if not stats.per_channel(metrics, "tuning_rho", _block(metrics, block)).notna().any():
        raise MissingInput("tuning correlations need the natural group")
    result = stats.tuning_mix(metrics, [block]).loc[block]
    more_negative = result["mean_overwrite"] < result["mean_skip"]
    is_significant = bool(result["p"] < alpha)
    if significant:
        level = "holds" if more_negative and is_significant else "weakly" if more_negative else "fails"
    else:
        level = "holds" if not is_significant else "weakly" if not more_negative else "fails"
    return Evidence(level, _anova_summary(result))


def percents_without_mix(metrics: xr.Dataset, blocks: Sequence[str]) -> dict[str, float]:
    counts = stats.block_counts(metrics.sel(block=[_block(metrics, block) for block in blocks]),
                                "interpreting_without_mix")
    return {block: float(counts.loc[block, "percent"]) for block in blocks}


def few_without_mix(metrics: xr.Dataset, blocks: Sequence[str], few_percent: float) -> Evidence:
    """Without the mix criterion, at most ``few_percent`` % of each block's channels pass (weakly: twice that)."""
    percents = percents_without_mix(metrics, blocks)
    worst = max(percents.values())
    level = "holds" if worst <= few_percent else "weakly" if worst <= 2 * few_percent else "fails"
    return Evidence(level, ", ".join(f"{b}: {p:.1f}%" for b, p in percents.items()))


def appreciable_without_mix(metrics: xr.Dataset, block: str, neighbours: Sequence[str],
                            appreciable_percent: float) -> Evidence:
    """Without the mix criterion, ``block`` has at least ``appreciable_percent`` % passing, fewer than its
    neighbours (weakly: some, fewer than its neighbours)."""
    percents = percents_without_mix(metrics, [block, *neighbours])
    below = all(percents[block] < percents[neighbour] for neighbour in neighbours)
    level = ("holds" if below and percents[block] >= appreciable_percent else
             "weakly" if below and percents[block] > 0 else "fails")
    return Evidence(level, ", ".join(f"{b}: {p:.1f}%" for b, p in percents.items()))


def named_in_top_scale_metric(metrics: xr.Dataset, block: str, named: Sequence[int], count: int,
                              criterion: str) -> Evidence:
    """The paper's named channels are among the store's top ``count`` by scale metric (weakly: they pass the
    criteria but rank lower)."""
    top = stats.top_by_scale_metric(metrics, _block(metrics, block), count, criterion)
    passing = set(stats.invariant_channels(metrics, block, criterion))
    level = "holds" if set(named) <= set(top) else "weakly" if set(named) <= passing else "fails"
    return Evidence(level, f"store top {count}: {' '.join(map(str, top)) or 'none'}; "
                           f"named passing: {' '.join(str(c) for c in named if c in passing) or 'none'}")


def spectrum_positions(metrics: xr.Dataset, block: str, overwrite: int, mix: int, skip: int) -> Evidence:
    """The named overwrite/mix/skip channels fall in M <= 2/3, 2/3 < M < 3/2, M >= 3/2 (weakly: ordered)."""
    named = {"overwrite": overwrite, "mix": mix, "skip": skip}
    ratios = stats.per_channel(metrics, "mix", _block(metrics, block))
    missing = [channel for channel in named.values() if channel not in ratios.index]
    if missing:
        raise MissingInput(f"block {block} has no channel {', '.join(map(str, missing))}")
    values = {kind: float(ratios[channel]) for kind, channel in named.items()}
    placed = (values["overwrite"] <= MIX_LOW and MIX_LOW < values["mix"] < MIX_HIGH and values["skip"] >= MIX_HIGH)
    ordered = values["overwrite"] < values["mix"] < values["skip"]
    level = "holds" if placed else "weakly" if ordered else "fails"
    return Evidence(level, ", ".join(f"{kind} channel {channel}: M {values[kind]:.2f}" for kind, channel in named.items()))


def _scale_column(ablation: xr.Dataset, block: str, condition: str) -> xr.DataArray:
    if block not in [str(value) for value in ablation["block"].values]:
        raise MissingInput(f"block {block} was not ablated in this store")
    if condition not in ablation["condition"].values:
        raise MissingInput(f"the ablation has no {condition!r} condition")
    return ablation["accuracy"].sel(block=block, condition=condition).mean("trial", skipna=True)


def ratio_below_no_scale(ablation: xr.Dataset, block: str) -> Evidence:
    """The mean accuracy ratio is below the no-scale ratio at every scale (weakly: on average)."""
    _scale_column(ablation, block, "invariant")
    if 0.0 not in ablation["scale"].values:
        raise MissingInput("the ablation has no no-scale (scale 0) condition")
    ratios = ablation_analysis.accuracy_ratios(ablation, block)
    base = float(ratios["no_scale_ratio"])
    scaled = ratios["mean"].sel(scale=ratios["scale"] > 0).values
    if not np.isfinite(scaled).any() or not np.isfinite(base):
        raise MissingInput(f"block {block}'s ablation is not finished")
    level = "holds" if (scaled < base).all() else "weakly" if np.nanmean(scaled) < base else "fails"
    return Evidence(level, f"no-scale ratio {base:.4f}; scaled " + ", ".join(f"{r:.4f}" for r in scaled))


def unablated_accuracy(ablation: xr.Dataset) -> float:
    """Top-1 % of the unablated model without a scale transform."""
    if "none" not in ablation["condition"].values:
        raise MissingInput("the ablation has no unablated ('none') condition")
    return float(ablation["accuracy"].sel(condition="none", scale=0.0).mean(skipna=True))


def invariant_accuracies(ablation: xr.Dataset, block: str, scales: Sequence[float]) -> dict[float, float]:
    """Top-1 % with the block's invariant channels ablated, at each of ``scales``."""
    column = _scale_column(ablation, block, "invariant")
    by_scale = {round(float(scale), 6): float(value) for scale, value in zip(column["scale"].values, column.values)}
    return {float(scale): by_scale[round(float(scale), 6)] for scale in scales if round(float(scale), 6) in by_scale}


# ---------------------------------------------------------------- evaluation and the claims table

@dataclass(frozen=True)
class Result:
    claim: Any  # report.spec.Claim
    outcome: Outcome


def evaluate_claim(claim, inputs: Mapping[str, xr.Dataset | None], attrs: Mapping,
                   ablation_attrs: Mapping | None = None) -> Outcome:
    """The claim's outcome on datasets already selected by its spec entry."""
    missing = [name for name, dataset in inputs.items() if dataset is None]
    if missing:
        groups = ", ".join(claim.inputs[name].group for name in missing)
        return Outcome(NOT_COMPARABLE, None, f"the store has no {groups} group yet",
                       reason=f"the store has no {groups} group yet")
    try:
        measured = claim.measure(**inputs, **claim.args)
    except (MissingInput, KeyError) as error:
        message = str(error).strip("'\"")
        return Outcome(NOT_COMPARABLE, None, message, reason=message)
    reasons = requirement_failures(claim.requires, attrs, ablation_attrs)
    if reasons:
        ruled = claim.rule(claim.published, measured, **claim.tolerance)
        own = ruled.badge if ruled.badge != NOT_COMPARABLE else None
        return Outcome(NOT_COMPARABLE, measured, ruled.detail, own, "; ".join(claim_reasons(claim.requires, attrs,
                                                                                          ablation_attrs)))
    return claim.rule(claim.published, measured, **claim.tolerance)


def claim_reasons(requires: Sequence[str], attrs: Mapping, ablation_attrs: Mapping | None = None) -> list[str]:
    """The reasons a claim cannot be compared beyond the store-wide one (weights, profile)."""
    return requirement_failures([need for need in requires if need != "paper_setup"], attrs, ablation_attrs)


def evaluate(store, claims=None) -> list[Result]:
    """Every claim of the spec (or ``claims``) on ``store``."""
    from report import spec

    claims = spec.CLAIMS if claims is None else claims
    loader = spec.Loader(store)
    attrs = store.attrs
    ablation_attrs = store.group_attrs("ablation") if store.has("ablation") else None
    return [Result(claim, evaluate_claim(claim, loader.inputs(claim.inputs), attrs, ablation_attrs))
            for claim in claims]


def short(value: Any, limit: int = 60) -> str:
    """A value as one short line: channel lists as counts and the first channels."""
    if value is None:
        text = "—"
    elif isinstance(value, (list, tuple, set)):
        text = f"n={len(value)}: " + " ".join(map(str, value)) if value else "none"
    elif isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, Mapping):
        text = ", ".join(f"{key:g}: {val:.4g}" if isinstance(key, float) else f"{key}: {val}" for key, val in value.items())
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summary(results: Sequence[Result]) -> dict[str, int]:
    return {badge: sum(result.outcome.badge == badge for result in results) for badge in BADGES}


def print_claims(store) -> int:
    """Print every claim with the paper's value, the store's and the badge; return the number of deviations."""
    results = evaluate(store)
    comparable, why = comparability(store.attrs)
    click.echo(f"store {store.path}: " + ("comparable with the papers" if comparable else f"not comparable: {why}"))
    columns = ("claim", "where", "published", "store", "badge", "detail")
    rows = [(r.claim.id, r.claim.where, short(r.claim.published, 40), short(r.outcome.measured, 40),
             r.outcome.badge + (f" (store: {r.outcome.own_words})" if r.outcome.own else ""),
             "; ".join(filter(None, (r.outcome.detail, r.outcome.reason if r.outcome.reason != r.outcome.detail else ""))))
            for r in results]
    widths = [max(len(columns[i]), *(len(row[i]) for row in rows)) if i < 5 else 0 for i in range(6)]
    for row in (columns, *rows):
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    counts = summary(results)
    click.echo(", ".join(f"{count} {badge}" for badge, count in counts.items()))
    return counts[DEVIATES]

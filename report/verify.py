"""Checking a store against the published numbers: comparability, claim evaluation, the claims table.

A claim (declared in ``report.spec`` and passed in) names a *measure* (``analyses.measures``: store
datasets → the store's value), the published value, and a *rule* (``report.rules``: published, measured,
tolerance → ``Outcome``).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import click
import xarray as xr

from analyses.measures import MissingInput
from report.loader import Loader
from report.rules import BADGES, DEVIATES, NOT_COMPARABLE, Outcome
from report.spec import ReferenceRun
from repro.hashing import IMAGENET_FILE_SHA256_PREFIX

IMAGENET_WEIGHTS = "imagenet"
RESNET18_FILE_PREFIX = IMAGENET_FILE_SHA256_PREFIX["resnet18"]  # the paper's network
# Profile settings that change published numbers; a store differing from profiles/paper.toml in any of
# them is not comparable.
PAPER_SETTINGS = ("model.arch", "model.image_size", "fz.steps", "fz.lr", "fz.objective", "fz.jitter",
                  "stimulus.crop", "stimulus.shrink", "stimulus.pad", "metrics.mix_low", "metrics.mix_high")


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


def requirement_failures(requires: Sequence, attrs: Mapping, ablation_attrs: Mapping | None = None) -> list[str]:
    """Short reasons a claim with these requirements cannot be compared on this store (the store-wide
    reason in full is ``comparability``'s)."""
    reasons = []
    if "paper_setup" in requires:
        if not imagenet_weights(attrs):
            reasons.append("weights are not IMAGENET1K_V1")
        if profile_differences(attrs):
            reasons.append(f"profile {attrs.get('profile_name', '')!r} differs from the paper's")
    for need in requires:
        if isinstance(need, ReferenceRun):
            if attrs.get("profile_name") != need.profile:
                reasons.append(f"the reference is profile {need.profile!r}'s; this store is {attrs.get('profile_name')!r}")
            elif need.weights_sha256 and attrs.get("weights_sha256") and attrs.get("weights_sha256") != need.weights_sha256:
                reasons.append("the reference was made with other weights")
    if "code_scales" in requires:
        definition = _setting(store_profile(attrs), "ablation.scale_definition")
        definition = (ablation_attrs or {}).get("scale_definition", definition)
        if definition != "code":
            reasons.append(f"the authors' code comments use the code's scale definition; this store's ablation "
                           f"used {definition!r} (rerun `repro ablate --scale-definition code`, or the whole code reading: `--reading code`)")
    return reasons


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


def claim_reasons(requires: Sequence, attrs: Mapping, ablation_attrs: Mapping | None = None) -> list[str]:
    """The reasons a claim cannot be compared beyond the store-wide one (weights, profile)."""
    return requirement_failures([need for need in requires if need != "paper_setup"], attrs, ablation_attrs)


def evaluate(store, claims: Sequence) -> list[Result]:
    """Each of ``claims`` (``report.spec.CLAIMS``, or a few) on ``store``."""
    loader = Loader(store)
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


def print_claims(store, claims: Sequence) -> int:
    """Print each claim with the paper's value, the store's and the badge; return the number of deviations."""
    results = evaluate(store, claims)
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

"""Comparison rules: (published, measured, tolerance) → ``Outcome``, one of four badges.

* ``verified``: agrees within the tight tolerance;
* ``within noise``: agrees only within the loose tolerance that stochastic FZs and natural-image sets allow;
* ``deviates``: disagrees beyond that;
* ``not comparable``: the store cannot speak to the published number (other weights, another profile,
  missing data); its own value is still computed and shown.

Channel sets are compared by overlap (Jaccard, precision, recall), counts and percentages by tolerance,
qualitative claims (signs, which blocks skew) by the measure's ``Evidence``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from analyses.measures import Evidence

VERIFIED, WITHIN_NOISE, DEVIATES, NOT_COMPARABLE = "verified", "within noise", "deviates", "not comparable"
BADGES = (VERIFIED, WITHIN_NOISE, DEVIATES, NOT_COMPARABLE)
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

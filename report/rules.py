"""Comparison rules: (published, measured, tolerance) → ``Outcome``, one of four badges.

* ``verified``: agrees within the tight tolerance;
* ``within noise``: agrees only within the loose tolerance that stochastic FZs and natural-image sets allow;
* ``deviates``: disagrees beyond that;
* ``not comparable``: the store cannot speak to the published number (other weights, another profile,
  missing data); its own value is still computed and shown.

Channel sets are compared by overlap (Jaccard, precision, recall), counts and percentages by tolerance,
qualitative claims (signs, which blocks skew) by the measure's ``Evidence``. A store with several FZ seeds
computes each channel set per seed (``analyses.measures.SeededSet``); its overlap with the published set is
the median over seeds, and it is ``within noise`` exactly when it lies within the store's own seed-to-seed
overlap (``analyses.noise``). With one seed that floor is unknown, the fixed loose tolerance decides, and
the detail says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from analyses.levels import Level
from analyses.measures import Evidence, floor_of, seed_lists

VERIFIED, WITHIN_NOISE, DEVIATES, NOT_COMPARABLE = "verified", "within noise", "deviates", "not comparable"
BADGES = (VERIFIED, WITHIN_NOISE, DEVIATES, NOT_COMPARABLE)
# A qualitative rule's level as a badge; the badge a store's own numbers give, as the level it shows.
BADGE_OF_LEVEL = {Level.HOLDS: VERIFIED, Level.WEAKLY: WITHIN_NOISE, Level.FAILS: DEVIATES}
LEVEL_OF_BADGE = {badge: level for level, badge in BADGE_OF_LEVEL.items()}


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
        level = LEVEL_OF_BADGE.get(self.own)
        return level.words if level else ""


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
    """Channel sets by Jaccard index (median over the store's seeds); an empty published set tolerates
    ``empty_noise`` channels (per seed, median) as noise.

    ``within noise``: below ``verified`` but within the store's seed-to-seed overlap; with one seed (floor
    unknown), at least ``noise``."""
    lists, floor = seed_lists(measured), floor_of(measured)
    seeds = f" (median over {len(lists)} seeds)" if len(lists) > 1 else ""
    if not published:
        size = float(np.median([len(channels) for channels in lists]))
        badge = VERIFIED if size == 0 else WITHIN_NOISE if size <= empty_noise else DEVIATES
        return Outcome(badge, list(measured), f"{size:g} channels{seeds} where the reference has none; "
                                              f"{floor.describe()}")
    scores = {key: float(np.median([overlap(published, channels)[key] for channels in lists]))
              for key in ("jaccard", "precision", "recall")}
    detail = "Jaccard {jaccard:.2f}, precision {precision:.2f}, recall {recall:.2f}".format(**scores) + seeds
    jaccard = scores["jaccard"]
    close = floor.contains(jaccard) if floor.known else jaccard >= noise
    badge = VERIFIED if jaccard >= verified else WITHIN_NOISE if close else DEVIATES
    return Outcome(badge, list(measured), f"{detail}; {floor.describe()}")


def recall_of(published: Sequence[int], measured: Sequence[int], verified: float = 0.8, noise: float = 0.5) -> Outcome:
    """Named channels (a paper's examples) found among the store's passing channels (first seed; the
    detail adds the recall's median over seeds and the set's seed noise floor)."""
    recall = overlap(published, measured)["recall"]
    found = sorted(set(published) & set(measured))
    badge = VERIFIED if recall >= verified else WITHIN_NOISE if recall >= noise else DEVIATES
    lists = seed_lists(measured)
    over_seeds = (f", median over {len(lists)} seeds {np.median([overlap(published, m)['recall'] for m in lists]):.2f}"
                  if len(lists) > 1 else "")
    return Outcome(badge, found, f"{len(found)} of {len(published)} named channels pass in the store "
                                 f"(recall {recall:.2f}{over_seeds}); {floor_of(measured).describe()}")


def qualitative(published: str, measured: Evidence) -> Outcome:
    """A qualitative claim: the measure's evidence decides."""
    badge = BADGE_OF_LEVEL[Level(measured.level)]
    return Outcome(badge, measured, measured.summary)


def same_level(published: str, measured: Evidence) -> Outcome:
    """A qualitative rule's outcome against a reference run's outcome of the same rule: the same level is
    verified, a step apart (holds / holds weakly / fails) within noise, two steps apart deviates."""
    badge = (VERIFIED, WITHIN_NOISE, DEVIATES)[Level(measured.level).steps_from(published)]
    return Outcome(badge, measured, f"the store: {measured.level}, the reference run: {published}; {measured.summary}")


def accuracies_close(published: Mapping[float, float], measured: Mapping[float, float], verified_abs: float = 0.5,
                     noise_abs: float = 2.0, unit: str = "points") -> Outcome:
    """Accuracies (top-1 %, or ratios: ``unit``) at matching scales, by the largest absolute difference."""
    shared = [scale for scale in published if scale in measured and np.isfinite(measured[scale])]
    if not shared:
        return Outcome(NOT_COMPARABLE, measured, "the store has none of these scales")
    worst = max(abs(measured[scale] - published[scale]) for scale in shared)
    badge = VERIFIED if worst <= verified_abs else WITHIN_NOISE if worst <= noise_abs else DEVIATES
    return Outcome(badge, measured, f"largest difference {worst:.3g} {unit} over {len(shared)} scales")

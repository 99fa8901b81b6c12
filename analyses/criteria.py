"""The scale-invariance criteria, one registry entry each, read by every stage, statistic and page.

A criterion is a conjunction of the per-channel tests the metrics stage computes (``FLAGS``, see
``repro.metrics.channel_metrics``): ``mix_ok`` (mix_low < M < mix_high), ``up_ok`` (up_delta > 0) and
``down_ok`` (down_delta > 0). An entry gives its name, the flags it ANDs under the papers' reading, how a
reader knows it and, where a reading item of the ``metrics`` table changes which flags it ANDs, that item
and the flags each of its values gives (``interpreting``: ``metrics.interpreting_criterion = "mix_up"``
drops down, as the authors' code does).

A *stored* criterion is a metrics column, ``invariant_<name>``, with its pass frequency over the FZ seeds
(``<column>_frequency``) and robust label (``<column>_robust``); the ablation stage ablates a stored
criterion's robust channels, a reference run records each stored criterion's robust set and count, the
channel browser shows it, and the seed noise floors cover every criterion. A criterion that is not stored
(``interpreting_without_mix``) is computed from the flags where it is read.

Adding a criterion is one entry::

    register(Criterion("up_down", ("up_ok", "down_ok"), "up and down criteria"))
"""
from __future__ import annotations

import functools
import operator
from dataclasses import dataclass, field
from typing import Any, Mapping

MIX_LOW, MIX_HIGH = 2 / 3, 3 / 2  # the mix criterion's bounds in both papers (the paper profile's defaults)
FLAGS = ("mix_ok", "up_ok", "down_ok")  # the single tests, each a metrics column


@dataclass(frozen=True)
class Criterion:
    name: str  # as profiles, statistics and figures call it: "naturally"
    flags: tuple[str, ...]  # the flags it ANDs under the papers' reading
    words: str  # as a reader knows it: "first paper's criteria (mix and up)"
    stored: bool = True  # a metrics column with seed frequencies and a robust label
    reading_item: str = ""  # the ``metrics`` setting (also a metrics group attr) that changes its flags
    variants: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # that setting's values → flags

    @property
    def column(self) -> str:
        return f"invariant_{self.name}"

    @property
    def tests(self) -> tuple[str, ...]:
        """Its flags as the papers name the tests: ("mix", "up")."""
        return tuple(flag.removesuffix("_ok") for flag in self.flags)

    def flags_under(self, settings: Mapping[str, Any]) -> tuple[str, ...]:
        """The flags it ANDs under the reading in ``settings`` (the ``metrics`` table, or a metrics group's
        attrs); the papers' flags where the reading item is not recorded."""
        if not self.reading_item:
            return self.flags
        return self.variants.get(settings.get(self.reading_item), self.flags)

    def passes(self, flags: Mapping[str, Any], settings: Mapping[str, Any]):
        """The AND of its flags (boolean arrays by flag name) under the reading in ``settings``."""
        return functools.reduce(operator.and_, (flags[name] for name in self.flags_under(settings)))


CRITERIA: dict[str, Criterion] = {}


def register(criterion: Criterion) -> Criterion:
    CRITERIA[criterion.name] = criterion
    return criterion


def stored() -> list[Criterion]:
    """The criteria with a metrics column, in registry order."""
    return [criterion for criterion in CRITERIA.values() if criterion.stored]


def stored_columns() -> tuple[str, ...]:
    return tuple(criterion.column for criterion in stored())


register(Criterion("naturally", ("mix_ok", "up_ok"), "first paper's criteria (mix and up)"))
register(Criterion("interpreting", ("mix_ok", "up_ok", "down_ok"), "three criteria (mix, up and down)",
                   reading_item="interpreting_criterion",
                   variants={"mix_up_down": ("mix_ok", "up_ok", "down_ok"), "mix_up": ("mix_ok", "up_ok")}))
# Paper 2's Fig. 5 yellow bars; no reading changes it.
register(Criterion("interpreting_without_mix", ("up_ok", "down_ok"), "up and down criteria", stored=False))

"""How a qualitative claim's rule comes out on a store's numbers: one enum, and its words.

A measure (``analyses.measures``) returns ``Evidence`` with one of these levels; ``report.rules`` turns a
level into a badge, a reference file (``report.reference``) records the level by its value, and the report
says it in the words below.
"""
from __future__ import annotations

import enum


class Level(enum.StrEnum):
    """A rule's outcome, strongest first. The value is how a reference file records it."""
    HOLDS = "holds"
    WEAKLY = "weakly"  # the right direction, but not significant or not everywhere
    FAILS = "fails"

    @property
    def words(self) -> str:
        """As a sentence about one rule says it: "holds weakly"."""
        return WORDS[self][0]

    @property
    def plural(self) -> str:
        """As a sentence about several rules says it: "hold weakly"."""
        return WORDS[self][1]

    def steps_from(self, other: Level | str) -> int:
        """How many levels apart the two are (0, 1 or 2)."""
        order = list(Level)
        return abs(order.index(self) - order.index(Level(other)))


WORDS = {Level.HOLDS: ("holds", "hold"), Level.WEAKLY: ("holds weakly", "hold weakly"), Level.FAILS: ("fails", "fail")}

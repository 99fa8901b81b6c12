"""The registry of stages: each stage that computes into the store, its command-line options, and the
pipeline's steps. ``repro pipeline`` is a loop over ``PIPELINE``; ``repro <stage>`` commands are made from
``STAGES`` (``repro.cli``). Adding a stage is one module with a ``run`` and one entry here.

A stage module's ``run(store, model, weights, profile, **arguments, executor=..., device=...)`` builds its
``repro.stage.Stage`` and hands it to ``repro.stage.run_stage``. Modules are imported when a stage runs, so
listing the commands loads no torch.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from repro.errors import UserError
from repro.objectives import OBJECTIVES


def parse_list(text: str | None, option: str = "the list") -> list[str] | None:
    """``a,b`` → ["a", "b"]; None when not given; a given list must name something."""
    if text is None:
        return None
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise UserError(f"{option} {text!r} names nothing; leave it out for the profile's default")
    return items


def parse_channels(text: str | None, option: str = "--channels") -> list[int] | None:
    """``0-15,32,40-41`` → [0, ..., 15, 32, 40, 41]."""
    if text is None:
        return None
    channels = []
    try:
        for piece in parse_list(text, option):
            low, _, high = piece.partition("-")
            channels.extend(range(int(low), int(high or low) + 1))
    except (ValueError, TypeError):
        raise UserError(f"channels {text!r}: expected a list like 0-15,32") from None
    return channels


def resolved(path: Path | None) -> str | None:
    """An image folder as stored: absolute, symlinks resolved."""
    return str(path.expanduser().resolve()) if path else None


def channel_sets(items: tuple[str, ...]) -> dict[str, list[int]] | None:
    """``("2.1=13,15", "3.1=4")`` → {"2.1": [13, 15], "3.1": [4]}; None when none is given."""
    chosen = {}
    for item in items:
        block, _, listed = item.partition("=")
        if not listed:
            raise UserError(f"--channels {item!r}: expected BLOCK=LIST such as 2.1=13,15")
        chosen[block.strip()] = parse_channels(listed)
    return chosen or None


@dataclass(frozen=True)
class Option:
    """One command-line option of a stage: it overrides a profile ``setting`` or sets a ``run`` keyword
    ``argument``; ``read`` turns the option's value into the setting's or argument's (None: not given)."""

    flags: tuple[str, ...]
    help: str
    setting: str = ""
    argument: str = ""
    read: Callable[[Any], Any] = lambda value: value
    click: Mapping[str, Any] = field(default_factory=dict)  # type, is_flag, multiple, ...

    @property
    def name(self) -> str:
        return (self.setting or self.argument).replace(".", "_")


@dataclass(frozen=True)
class StageEntry:
    """A stage as the command line and the pipeline know it."""

    name: str  # the command: `repro NAME`
    help: str
    module: str  # its ``run`` computes into the store
    options: tuple[Option, ...] = ()
    takes_profile: bool = True  # False: the stage runs on an existing store with the store's profile

    def run(self, *args, **kwargs):
        return importlib.import_module(self.module).run(*args, **kwargs)

    def read_options(self, values: Mapping[str, Any]) -> tuple[dict, dict]:
        """(profile settings, run arguments) from the command's option values."""
        settings, arguments = {}, {}
        for option in self.options:
            value = option.read(values[option.name])
            if option.setting:
                settings[option.setting] = value
            elif value is not None:
                arguments[option.argument] = value
        return settings, arguments


BLOCKS_HELP = "Comma-separated blocks, e.g. 1.1,2.1 (default: the profile's)."
IMAGES = Option(("--images",), "ImageFolder root (default: the profile's / $RESIDUAL_STREAM_IMAGES).",
                setting="natural.images", read=resolved, click={"type": Path})

STAGES = {entry.name: entry for entry in [
    StageEntry("fz", "Feature visualizations (FZs) of center neurons, all channels of a tap in one batch.", "repro.fz", (
        Option(("--blocks",), BLOCKS_HELP, argument="blocks", read=lambda text: parse_list(text, "--blocks")),
        Option(("--taps",), "Comma-separated taps among I,B,O (default: all).", argument="taps",
               read=lambda text: parse_list(text, "--taps")),
        Option(("--channels",), "Channel list such as 0-15 (default: all).", argument="channels",
               read=parse_channels),
        Option(("--steps",), "Optimization steps (default: the profile's).", setting="fz.steps", click={"type": int}),
        Option(("--objective",), "Center neuron or whole-channel mean.", setting="fz.objective",
               click={"type": "choice", "choices": list(OBJECTIVES)}),
        Option(("--aliased",), "Reference compatibility: Lucent's aliased taps.", setting="model.aliased",
               click={"is_flag": True, "default": None}),
    )),
    StageEntry("natural", "Natural-image center activations of every tap, and each channel's top-9 images.",
               "repro.natural", (
        IMAGES,
        Option(("--blocks",), BLOCKS_HELP, argument="blocks", read=lambda text: parse_list(text, "--blocks")),
        Option(("--float16",), "Store activations as float16.", setting="natural.dtype",
               read=lambda flag: "float16" if flag else None, click={"is_flag": True, "default": None}),
    )),
    StageEntry("metrics", "Stimulus responses and mix-ratio / scale-invariance metrics from the stored FZs "
               "(and natural images).", "repro.metrics", takes_profile=False),
    StageEntry("ablate", "Ablate invariant vs random channels and measure top-1 under scale transforms.",
               "repro.ablate", (
        IMAGES,
        Option(("--blocks",), "Blocks to ablate, e.g. 2.1,3.1 (default: the profile's).", setting="ablation.blocks",
               read=lambda text: parse_list(text, "--blocks")),
        Option(("--criterion",), "Which invariance criterion (a stored one of analyses.criteria: naturally, "
               "interpreting, ...); checked with the profile.", setting="ablation.criterion"),
        Option(("--channels",), "BLOCK=LIST, e.g. 2.1=13,15,18 (instead of metrics).", argument="channel_sets",
               read=channel_sets, click={"multiple": True}),
        Option(("--trials",), "Accepted random trials per block.", setting="ablation.trials", click={"type": int}),
        Option(("--ablation",), "Mean or zero ablation.", setting="ablation.ablation",
               click={"type": "choice", "choices": ["mean", "zero"]}),
        Option(("--scale-definition",), "The papers' or the code's crop at a scale.",
               setting="ablation.scale_definition", click={"type": "choice", "choices": ["paper", "code"]}),
    )),
    StageEntry("alignment", "Train TopK SAEs and compare representations: recovery vs neurons, and two "
               "trained networks.", "repro.alignment"),
]}


# ---------------------------------------------------------------- the pipeline

ALIASED_FZ, ALIASED_GROUPS = "fz_aliased", ("responses_aliased", "metrics_aliased")


@dataclass(frozen=True)
class Step:
    """One step of ``repro pipeline``: a stage run with settings changed for it and ``run`` keywords."""

    title: str
    stage: str
    when: Callable[[Mapping], bool] = lambda profile: True
    settings: Callable[[Mapping], Mapping] = lambda profile: {}
    arguments: Mapping[str, Any] = field(default_factory=dict)


def first_seed_aliased(profile: Mapping) -> Mapping:
    """The aliased comparison's FZs: Lucent's by-reference taps (the authors' FZs), the first seed only."""
    return {"model.aliased": True, "fz.seeds": list(profile["fz"]["seeds"][:1])}


# The aliased comparison, measured with the true taps like every other FZ (FZ stimuli only).
ALIASED_STEPS = (
    Step("fz (aliased taps, first seed)", "fz", when=lambda p: p["fz"]["compare_aliased"],
         settings=first_seed_aliased, arguments={"group": ALIASED_FZ, "reuse": "fz"}),
    Step("metrics (aliased FZs)", "metrics", when=lambda p: p["fz"]["compare_aliased"],
         arguments={"fz_group": ALIASED_FZ, "groups": ALIASED_GROUPS, "top9": False}),
)

PIPELINE = (
    Step("fz (center neuron)", "fz"),
    Step("fz (whole channel, for the grids)", "fz", when=lambda p: p["fz"]["channel_grids"],
         settings=lambda p: {"fz.objective": "channel"}),
    Step("natural images", "natural"),
    Step("metrics", "metrics"),
    *ALIASED_STEPS,
    Step("ablation", "ablate"),
    Step("alignment", "alignment"),
)

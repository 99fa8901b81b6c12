"""Typed settings: every table of a profile as a frozen dataclass, checked once when the profile is loaded.

The field names are the TOML keys; the types are checked (an int where an int is due, a list of floats, a
table of tables); unknown keys are refused naming the nearest known one; a missing key is an error. The
defaults live only in the base profile (``profiles/paper.toml``), never here. ``typed(profile)`` gives the
frozen ``Profile`` (what ``profiles.load`` and ``profiles.override`` return); stages read its tables
(``profile.fz.steps``), and ``profile["fz"]`` is the table as written, which identities and provenance record.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from analyses.criteria import CRITERIA
from analyses.criteria import stored as stored_criteria
from repro.errors import UserError
from repro.objectives import OBJECTIVES

LARGEST_INT = 2**53  # no setting needs more; larger values overflow the arrays they size
POSITIVE = {"check": "positive"}
NON_NEGATIVE = {"check": "non-negative"}


FAMILIES = ("resnet", "convnext", "vit")  # repro.families' adapters, named here without importing torch


def choice(*values: str) -> dict:
    return {"choices": values}


@dataclass(frozen=True)
class ModelSettings:
    arch: str
    weights: str
    weights_sha256: str
    image_size: int = field(metadata=POSITIVE)
    blocks: tuple[str, ...]
    taps: tuple[str, ...]
    aliased: bool
    normalize_mean: tuple[float, ...]
    normalize_std: tuple[float, ...]
    widths: tuple[int, ...]
    stem: str = field(metadata=choice("imagenet", "small"))
    num_classes: int = field(metadata=POSITIVE)
    # The one optional key: "" (absent) infers the family from the model's blocks. The base profile leaves
    # it out so that the profiles written before it existed keep their identity.
    family: str = field(default="", metadata={"check": "family"})


@dataclass(frozen=True)
class FZSettings:
    steps: int = field(metadata=POSITIVE)
    lr: float = field(metadata=NON_NEGATIVE)  # 0 keeps the initial image: how tests read its objective
    seeds: tuple[int, ...] = field(metadata={"check": "distinct"})
    trace_every: int = field(metadata=POSITIVE)
    channel_batch: int = field(metadata=POSITIVE)
    batch_images: int = field(metadata=POSITIVE)
    micro_batch: int = field(metadata=POSITIVE)
    resample: str = field(metadata=choice("staged", "fused"))
    forward_size: str = field(metadata=choice("drawn", "canvas"))
    objective: str = field(metadata=choice(*OBJECTIVES))
    decorrelate: bool
    fft: bool
    random_scale: tuple[float, ...]
    rotate_degrees: int = field(metadata=NON_NEGATIVE)
    channel_grids: bool
    compare_aliased: bool
    precision: str = field(metadata=choice("float32", "bfloat16"))
    pad_from_jitter: int = field(metadata=NON_NEGATIVE)
    jitter: dict[str, dict[str, int]]
    input_jitter: str = field(metadata=choice("schedule", "previous_output"))


@dataclass(frozen=True)
class StimulusSettings:
    crop: int = field(metadata=POSITIVE)
    shrink: int = field(metadata=POSITIVE)
    pad: int = field(metadata=NON_NEGATIVE)
    antialias: bool


@dataclass(frozen=True)
class NaturalSettings:
    images: str
    resize: int = field(metadata=POSITIVE)
    crop: int = field(metadata=POSITIVE)
    top_k: int = field(metadata=POSITIVE)
    batch_size: int = field(metadata=POSITIVE)
    workers: int = field(metadata=NON_NEGATIVE)
    shard_size: int = field(metadata=POSITIVE)
    dtype: str = field(metadata=choice("float32", "float16"))


@dataclass(frozen=True)
class MetricsSettings:
    mix_low: float = field(metadata=POSITIVE)
    mix_high: float = field(metadata=POSITIVE)
    mix_clamp: float = field(metadata=POSITIVE)
    robust_fraction: float = field(metadata={"check": "fraction"})
    batch_size: int = field(metadata=POSITIVE)
    delta_relu: str = field(metadata=choice("unscaled", "both"))
    direction: str = field(metadata=choice("delta", "normalised"))
    mix_edges: str = field(metadata=choice("paper", "code"))
    top9_relu: str = field(metadata=choice("of_mean", "per_image"))
    top9_png: bool
    interpreting_criterion: str = field(metadata=choice(*CRITERIA["interpreting"].variants))


@dataclass(frozen=True)
class AblationSettings:
    blocks: tuple[str, ...]
    criterion: str  # a stored criterion of analyses.criteria, checked when the profile is (see RELATIONS)
    stimulus_set: str = field(metadata=choice("fz", "top9"))
    trials: int = field(metadata=POSITIVE)
    scales: tuple[float, ...]
    scale_definition: str = field(metadata=choice("paper", "code"))
    resize: str = field(metadata=choice("tensor", "pil"))
    ablation: str = field(metadata=choice("mean", "zero"))
    seed: int
    batch_size: int = field(metadata=POSITIVE)
    max_draws: int = field(metadata=POSITIVE)
    screen_tolerance: dict[str, float]


@dataclass(frozen=True)
class AlignmentSettings:
    features: int = field(metadata=POSITIVE)
    active_probability: float = field(metadata={"check": "fraction"})
    neurons: tuple[int, ...]
    seeds: int = field(metadata=POSITIVE)
    train_stimuli: int = field(metadata=POSITIVE)
    eval_stimuli: int = field(metadata=POSITIVE)
    sae_latents: int = field(metadata=POSITIVE)
    sae_topk: int = field(metadata=POSITIVE)
    sae_steps: int = field(metadata=POSITIVE)
    sae_lr: float = field(metadata=POSITIVE)
    sae_batch_size: int = field(metadata=POSITIVE)
    partner_weights: str
    partner_weights_sha256: str
    blocks: tuple[str, ...]
    tap: str = field(metadata=choice("I", "B", "O"))
    cross_metrics: tuple[str, ...]
    network_sae_expansion: int = field(metadata=POSITIVE)
    network_sae_topk_fraction: float = field(metadata=POSITIVE)
    network_sae_samples: int = field(metadata=POSITIVE)
    network_sae_steps: int = field(metadata=POSITIVE)
    max_stimuli: int = field(metadata=POSITIVE)
    bootstrap: int = field(metadata=POSITIVE)
    batch_size: int = field(metadata=POSITIVE)
    seed: int
    threads: int = field(metadata=POSITIVE)
    # Optional keys, left out of the base profile so that the profiles written before them keep their
    # identity. partner_profile: a profile whose [model] table builds the partner (any family, its own
    # adapter; "" = this profile's model); partner_blocks: its blocks, paired in order with the blocks
    # compared ([] = the same labels).
    partner_profile: str = ""
    partner_blocks: tuple[str, ...] = ()


@dataclass(frozen=True)
class ToyTrainSettings:
    seed: int
    threads: int = field(metadata=POSITIVE)
    optimizer: str = field(metadata=choice("adamw", "sgd"))
    epochs: int = field(metadata=POSITIVE)
    low_res_epochs: int = field(metadata=NON_NEGATIVE)
    low_res_size: int = field(metadata=POSITIVE)
    batch_size: int = field(metadata=POSITIVE)
    lr: float = field(metadata=POSITIVE)
    momentum: float
    weight_decay: float
    warmup_epochs: float
    label_smoothing: float
    crop_scale: tuple[float, ...]
    crop_ratio: tuple[float, ...]
    flip: bool
    eval_batch_size: int = field(metadata=POSITIVE)


@dataclass(frozen=True)
class ToySettings:
    seed: int
    classes: tuple[str, ...]
    image_size: int = field(metadata=POSITIVE)
    scale_px: tuple[float, ...]
    max_tilt_deg: float
    train_per_class: int = field(metadata=POSITIVE)
    heldout_per_class: int = field(metadata=POSITIVE)
    data_dir: str
    workers: int = field(metadata=POSITIVE)
    train: ToyTrainSettings


@dataclass(frozen=True)
class RunSettings:
    """Where the units run; never part of a result (a store made on N workers equals the serial one)."""
    local_workers: int = field(metadata=NON_NEGATIVE)  # 0: in this process
    scheduler: str  # address of a running Dask scheduler, "" for none


@dataclass(frozen=True, eq=False)  # equal as mappings (to its record, or another profile's)
class Profile(Mapping):
    """A whole profile: its tables typed (``profile.fz.steps``), and, read by key (``profile["fz"]``), the
    profile as written and recorded (``record``), which is what identity hashes and stored provenance use."""

    name: str
    description: str
    reading: str = field(metadata=choice("paper", "code"))
    model: ModelSettings
    fz: FZSettings
    stimulus: StimulusSettings
    natural: NaturalSettings
    metrics: MetricsSettings
    ablation: AblationSettings
    alignment: AlignmentSettings
    toy: ToySettings | None = None  # only the toy world's profiles have it
    run: RunSettings | None = None  # a store's recorded profile leaves it out (profiles.recorded)
    record: Mapping = field(default_factory=dict, compare=False, repr=False, metadata={"internal": True})

    def __getitem__(self, key: str):
        return self.record[key]

    def __iter__(self):
        return iter(self.record)

    def __len__(self) -> int:
        return len(self.record)

    __hash__ = None  # a mapping over mutable tables


def typed(profile: Mapping, *, where: str = "profile") -> Profile:
    """The frozen, type-checked settings of a profile dict, their relations checked too; it keeps a copy of
    the dict as its ``record``."""
    record = copy.deepcopy(dict(profile.record if isinstance(profile, Profile) else profile))
    built = dataclasses.replace(_build(Profile, record, where, ""), record=record)
    for holds, message in RELATIONS:
        if not holds(built):
            raise UserError(f"{where}: {message(built)}")
    return built


def crop_size(scale: float, resize: int, crop: int, definition: str = "paper") -> int:
    """Side of the center crop taken from the ``resize`` square at scale ``scale`` (a fraction).

    Scale 0 is the standard eval crop. ``paper``: resize - floor(resize * p) (231 px for 10 % at 256);
    ``code``: int(crop * (1 - p)) (201 px for 10 % at crop 224).
    """
    if scale == 0:
        return crop
    if definition == "paper":
        return resize - math.floor(resize * scale)
    if definition == "code":
        return int(crop * (1 - scale))
    raise UserError(f"unknown scale definition {definition!r}; expected paper or code")


def _crops_left(p: Profile) -> bool:
    """Every ablation scale leaves a crop of at least one pixel."""
    return all(crop_size(scale, p.natural.resize, p.natural.crop, p.ablation.scale_definition) >= 1
               for scale in p.ablation.scales if scale != 0)


# Settings that are each valid alone but meaningless together (or need more than one value's check);
# checked with the rest when a profile is loaded, so for every stage before a pipeline starts.
RELATIONS = [
    (lambda p: bool(p.model.blocks), lambda p: "model.blocks must name at least one block"),
    (lambda p: p.metrics.mix_low < p.metrics.mix_high,
     lambda p: f"metrics.mix_low ({p.metrics.mix_low}) must be below metrics.mix_high ({p.metrics.mix_high})"),
    (lambda p: all(0 <= scale < 1 for scale in p.ablation.scales),
     lambda p: f"ablation.scales {list(p.ablation.scales)}: each must lie in [0, 1)"),
    (_crops_left, lambda p: f"ablation.scales {list(p.ablation.scales)} leave no pixel of a "
                            f"{p.natural.crop} px crop at the largest scale"),
    (lambda p: p.alignment.sae_topk <= p.alignment.sae_latents,
     lambda p: f"alignment.sae_topk ({p.alignment.sae_topk}) must be at most alignment.sae_latents "
               f"({p.alignment.sae_latents})"),
    (lambda p: 0 < p.alignment.network_sae_topk_fraction <= 1,
     lambda p: f"alignment.network_sae_topk_fraction must lie in (0, 1], not {p.alignment.network_sae_topk_fraction}"),
    (lambda p: bool(p.fz.random_scale) and all(s > 0 for s in p.fz.random_scale),
     lambda p: f"fz.random_scale {list(p.fz.random_scale)} must be a non-empty list of positive factors"),
    (lambda p: all(v >= 0 for taps in p.fz.jitter.values() for v in taps.values()),
     lambda p: "fz.jitter values must be 0 or more pixels"),
    # read from the registry at each check, so a criterion registered later can be ablated
    (lambda p: p.ablation.criterion in {criterion.name for criterion in stored_criteria()},
     lambda p: f"ablation.criterion must be one of {', '.join(c.name for c in stored_criteria())}, "
               f"not {p.ablation.criterion!r}"),
    (lambda p: p.natural.crop <= p.natural.resize,
     lambda p: f"natural.crop ({p.natural.crop}) must be at most natural.resize ({p.natural.resize})"),
    (lambda p: p.ablation.trials <= p.ablation.max_draws,
     lambda p: f"ablation.trials ({p.ablation.trials}) must be at most ablation.max_draws ({p.ablation.max_draws})"),
    (lambda p: bool(p.alignment.neurons) and min(p.alignment.neurons) >= 1,
     lambda p: f"alignment.neurons {list(p.alignment.neurons)} must list positive sizes"),
    (lambda p: p.alignment.seeds >= 2 and p.alignment.bootstrap >= 2,
     lambda p: f"alignment.seeds ({p.alignment.seeds}) and alignment.bootstrap ({p.alignment.bootstrap}) must be "
               "at least 2 (an interval needs two draws)"),
    (lambda p: min(p.alignment.train_stimuli, p.alignment.eval_stimuli, p.alignment.max_stimuli) >= 10,
     lambda p: "alignment.train_stimuli, eval_stimuli and max_stimuli must be at least 10"),
]


def _build(cls, table: Any, where: str, prefix: str):
    if not isinstance(table, Mapping):
        raise UserError(f"{where}: {prefix.rstrip('.') or 'the profile'} must be a table, not {table!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    hints = typing.get_type_hints(cls)
    for key in table:
        if key not in fields:
            near = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
            hint = f" (did you mean {prefix}{near[0]}?)" if near else f"; known: {', '.join(fields)}"
            raise UserError(f"{where}: unknown setting {prefix}{key}{hint}")
    values = {}
    for name, spec in fields.items():
        if name not in table:
            if spec.default is not dataclasses.MISSING:
                values[name] = spec.default
                continue
            raise UserError(f"{where}: missing setting {prefix}{name} (the base profile sets every key)")
        values[name] = _value(hints[name], table[name], where, f"{prefix}{name}")
        _check(spec.metadata, values[name], where, f"{prefix}{name}")
    return cls(**values)


def _value(kind, value: Any, where: str, key: str):
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Union or origin is getattr(__import__("types"), "UnionType", None):
        present = [arg for arg in args if arg is not type(None)]
        return None if value is None else _value(present[0], value, where, key)
    if dataclasses.is_dataclass(kind):
        return _build(kind, value, where, f"{key}.")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: {key} must be a list, not {value!r}")
        return tuple(_value(args[0], item, where, f"{key}[{i}]") for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise UserError(f"{where}: {key} must be a table, not {value!r}")
        return {str(k): _value(args[1], item, where, f"{key}.{k}") for k, item in value.items()}
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise UserError(f"{where}: {key} must be a finite number, not {value!r}")
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > LARGEST_INT:
            raise UserError(f"{where}: {key} must lie within ±{LARGEST_INT}, not {value}")
        return value
    if kind in (bool, str) and isinstance(value, kind):
        return value
    raise UserError(f"{where}: {key} must be {_kind_name(kind)}, not {value!r}")


def _kind_name(kind) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(kind, str(kind))


def _check(metadata: Mapping, value: Any, where: str, key: str) -> None:
    check = metadata.get("check")
    if check == "positive" and not value > 0:
        raise UserError(f"{where}: {key} must be positive, not {value!r}")
    if check == "non-negative" and not value >= 0:
        raise UserError(f"{where}: {key} must be 0 or more, not {value!r}")
    if check == "fraction" and not 0 < value <= 1:
        raise UserError(f"{where}: {key} must lie in (0, 1], not {value!r}")
    if check == "distinct" and (not value or len(set(value)) != len(value)):
        raise UserError(f"{where}: {key} must be a non-empty list of distinct values, not {list(value)!r}")
    if check == "family" and value and value not in FAMILIES and not re.fullmatch(r"[\w.]+:\w+", value):
        raise UserError(f"{where}: {key} must be {', '.join(FAMILIES)} or package.module:Adapter, not {value!r}")
    if "choices" in metadata and value not in metadata["choices"]:
        raise UserError(f"{where}: {key} must be one of {', '.join(metadata['choices'])}, not {value!r}")


def as_profile(profile: Mapping) -> Profile:
    """A typed profile: itself when it is one, else the dict typed (and checked)."""
    return profile if isinstance(profile, Profile) else typed(profile)

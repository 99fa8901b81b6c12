"""Feature visualizations (FZs) of every tap's center neurons: the papers' Lucent recipe, batched.

The algorithm is the papers' (see docs/method.md, "Feature visualization (FZ)"): Lucent's
``param.image(size, decorrelate=True, fft=True)``, Adam over its parameters, Lucent's transforms chosen
by the tap's jitter, the profile's normalisation, and the objective "minus the center neuron of channel
c at the tap". The stage optimizes FZs by name (``repro.fz_engine``): an FZ (seed, tensor, channel, jitter,
objective, recipe) draws its initial image and every transform setting from a random stream of its own, and
every forward runs a fixed number of images (``fz.micro_batch``), so an FZ is the same array whatever batch,
chunk, selection, worker or resumed run makes it (docs/method.md). How the work is arranged:

* FZs are packed into batches of about ``fz.batch_images``: whole pieces of one tap (the channels still to
  do in one chunk of ``fz.channel_batch``, one seed), several seeds together. The loss is the sum of the
  per-image objectives, so each image receives exactly the gradient of its own objective, and Adam is
  elementwise;
* the forward stops right after the tap and the weights are frozen, so nothing after the tap and no
  weight gradient is computed;
* taps that are the same tensor (``O`` of 2.0 is ``I`` of 2.1) are optimized once when their jitter
  agrees and stored under both labels. When it does not (paper profile: ``O`` of 3.0 has jitter 4,
  ``I`` of 3.1 has 16), they are different FZs and are made separately, unless ``fz.input_jitter =
  "previous_output"`` (the authors' code) gives the I tap its O tap's jitter.

What is done is read from the done units' regions (``covered``): ``repro fz --channels 5`` makes exactly
channel 5 of every seed, and a later full run makes the rest. ``fz.seeds`` lists the seeds: one FZ per seed
and neuron (dim ``seed``); any one of them is the papers' single-FZ method, the others measure how much its
conclusions depend on the seed. ``visualize`` is Lucent's recipe as Lucent runs it (one transform draw for
the whole batch), the reference the engine is compared with (tests, ``benchmarks/``).

Values are the taps' true values (``repro.model.run``); ``model.aliased`` reproduces the by-reference
hook of Lucent (and of the authors' FZs) for reference compatibility only.

Stored: group ``fz`` for the center-neuron objective, ``fz_channel`` for the whole-channel-mean
objective (used by the figure grids), so both can live in one store. Variables:
``image`` uint8 (seed, block, tap, channel, y, x, rgb), saved as Lucent's export does (``x * 255``
truncated); ``activation`` float32 (seed, block, tap, channel): the tap's clean (non-aliased) center value
on the saved uint8 image, whatever the objective; ``initial_objective`` / ``final_objective``: the
objective being maximized (the loss is its negative) at the first step, on the initial image, and at the
last step, each under that step's transform draw; ``objective_trace`` (seed, block, tap, channel,
trace_step): the objective after every ``fz.trace_every`` steps (coordinate: the step number);
``valid`` (block, channel): the channel exists in that block.
"""
from __future__ import annotations

import contextlib
import functools
import copy
import hashlib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torchvision.transforms as T
import xarray as xr
import dask.array as da


from repro import device as devices
from repro import model as taps_model
from repro import profiles
from repro.objectives import OBJECTIVES
from repro.optvis import param as lucent_param
from repro.optvis import transform as lucent_transform
from repro.images import normalize as normalize_image
from repro.errors import UserError
from repro.settings import Profile, as_profile
from repro.fz_engine import fz_names, optimize
from repro.fz_transforms import FZName, recipe_digest
from repro.stage import Group, Part, Stage, run_stage
from repro.store import Store, labels, provenance

# fz.precision: the network's forward and backward under autocast at this dtype (None: float32 throughout).
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}
Label = taps_model.Label


def group_name(objective: str) -> str:
    """The store group of an objective: ``fz`` (center neuron) or ``fz_channel`` (channel mean)."""
    if objective not in OBJECTIVES:
        raise UserError(f"unknown FZ objective {objective!r}; objectives: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[objective].group


# ---------------------------------------------------------------- the recipe


def jitter_of(profile: Mapping, block: str, tap: str) -> int:
    profile = as_profile(profile)
    try:
        return profile.fz.jitter[block][tap]
    except KeyError:
        raise UserError(f"profile {profile.name!r} sets no fz.jitter for block {block} tap {tap}") from None


def tap_jitter(model: torch.nn.Module, profile: Mapping, block: str, tap: str) -> int:
    """The jitter a tap's FZ is made at. ``fz.input_jitter = "previous_output"`` (the code's reading): an I
    tap that is the previous block's O takes that O's jitter, so the two labels share one FZ (the code's
    3.1 I is 3.0's O FZ, made at jitter 4)."""
    profile = as_profile(profile)
    if profile.fz.input_jitter == "previous_output":
        tensor = taps_model.same_tensor(model, block, tap)
        if tensor != (block, tap) and tensor[0] in profile.fz.jitter:
            return jitter_of(profile, *tensor)
    return jitter_of(profile, block, tap)


def check_image_size(model: torch.nn.Module, profile: Mapping, blocks: Iterable[str]) -> None:
    """A model that takes one image size only (a ViT: its positional embedding) needs every tap's FZ cropped
    back to ``model.image_size``, that is a jitter of at least ``fz.pad_from_jitter``: an unpadded FZ's random
    scale changes the image's size. A one-line UserError names the taps that are not."""
    profile = as_profile(profile)
    family = taps_model.family_of(model)
    if not family.fixed_image_size:
        return
    floor = profile.fz.pad_from_jitter
    unpadded = [f"{block}:{tap}" for block in blocks for tap in profile.model.taps
                if tap_jitter(model, profile, block, tap) < floor]
    if unpadded:
        raise UserError(f"family {family.name} takes {profile.model.image_size} px images only, so every FZ must be "
                        f"cropped back: fz.jitter must be at least fz.pad_from_jitter = {floor} for "
                        f"{', '.join(unpadded)}")


def transforms(profile: Mapping, jitter: int) -> list[Callable]:
    """Lucent's transform list for a tap of this jitter (the authors' schedule)."""
    profile = as_profile(profile)
    settings = profile.fz
    degrees = settings.rotate_degrees
    scale_rotate = [lucent_transform.random_scale(list(settings.random_scale)),
                    lucent_transform.random_rotate(list(range(-degrees, degrees + 1)))]
    if jitter < settings.pad_from_jitter:
        return scale_rotate
    if jitter // 2 < 2:
        raise UserError(f"jitter {jitter}: jitter({jitter // 2}) needs jitter >= 4 (Lucent's jitter(d) needs d > 1)")
    return [lucent_transform.pad(jitter), lucent_transform.jitter(jitter), *scale_rotate,
            lucent_transform.jitter(jitter // 2), T.CenterCrop(profile.model.image_size)]


def normalizer(profile: Mapping) -> Callable:
    """Lucent's ImageNet normalisation step, with the profile's mean and std."""
    return functools.partial(normalize_image, profile=profile)


def tap_values(model: torch.nn.Module, pixels: torch.Tensor, block: str, tap: str, channels: torch.Tensor,
               *, objective: str = "neuron", aliased: bool = False) -> torch.Tensor:
    """Image i's objective value for channel ``channels[i]`` (``repro.objectives``), shape [n]."""
    chosen = OBJECTIVES[objective]
    values, _ = taps_model.run(model, pixels, [(block, tap)], stop=True, aliased=aliased, center=chosen.center)
    return chosen.value(values[(block, tap)], channels)


def chunk_seed(seed: int, block: str, tap: str, jitter: int, chunk: int) -> int:
    """A stable 32-bit seed for one chunk (Python's hash() is salted per process)."""
    text = f"{seed}/{block}:{tap}/jitter{jitter}/chunk{chunk}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed the global generators Lucent draws from (torch for the image, numpy for transforms), then restore them."""
    numpy_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)


def prepare(model: torch.nn.Module, device: torch.device | str | None = None, *, channels_last: bool = False
            ) -> torch.nn.Module:
    """A frozen eval-mode copy of the model on ``device`` (default: Lucent's), optionally channels_last."""
    device = devices.resolve(device) if device is not None else devices.lucent_device()
    devices.check_lucent(device)
    prepared = copy.deepcopy(model).eval().requires_grad_(False).to(device)
    if channels_last:
        prepared = prepared.to(memory_format=torch.channels_last)
    return prepared


@dataclass
class FZResult:
    images: torch.Tensor  # [n, 3, H, W] in [0, 1], on the CPU
    initial_objective: torch.Tensor  # [n]: objective at the first step, on the initial image
    final_objective: torch.Tensor  # [n]: objective at the last step
    trace: torch.Tensor | None = None  # [n, steps // trace_every]: objective at steps k, 2k, ... (1-based)
    snapshots: dict[int, torch.Tensor] | None = None  # {step: [n, 3, H, W]} images asked for by ``snapshot_at``


def trace_steps(steps: int, every: int) -> list[int]:
    """The (1-based) steps whose objective ``objective_trace`` records."""
    return list(range(every, steps + 1, every))


def visualize(model: torch.nn.Module, profile: Mapping, block: str, tap: str, channels: Sequence[int], *,
              jitter: int, seed: int, steps: int | None = None, objective: str | None = None,
              aliased: bool | None = None, autocast_dtype: torch.dtype | None = None,
              channels_last: bool = False, progress: Callable[[int], object] | None = None,
              trace_every: int | None = None, snapshot_at: Sequence[int] = ()) -> FZResult:
    """One FZ per channel of tap (block, tap), all optimized as one batch.

    ``model`` should come from ``prepare`` (frozen, eval, on Lucent's device). ``steps``, ``objective``
    and ``aliased`` default to the profile's. ``autocast_dtype`` (default: ``fz.precision``, float32
    being the papers' arithmetic) and ``channels_last`` are speed options. ``trace_every`` (default the
    profile's) sets the objective trace; ``snapshot_at`` keeps the images after those (1-based) steps:
    Adam's trajectory does not depend on the number of steps still to come, so the image after step n of
    a longer run is the image an n-step run returns.
    """
    profile = as_profile(profile)
    settings = profile.fz
    steps = settings.steps if steps is None else int(steps)
    objective = objective or settings.objective
    aliased = profile.model.aliased if aliased is None else bool(aliased)
    autocast_dtype = autocast_dtype or PRECISIONS[settings.precision]
    if steps < 1:
        raise UserError(f"fz.steps must be at least 1, not {steps}")
    group_name(objective)
    device = next(model.parameters()).device
    index = torch.as_tensor(list(channels), dtype=torch.long, device=device)
    size = profile.model.image_size
    amp = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    with seeded(seed), devices.lucent_on(device):
        params, image_f = lucent_param.image(size, batch=len(index), decorrelate=settings.decorrelate,
                                             fft=settings.fft)
        optimizer = torch.optim.Adam(params, lr=settings.lr)
        transform_f = lucent_transform.compose(transforms(profile, jitter) + [normalizer(profile)])
        initial = final = None
        every = settings.trace_every if trace_every is None else int(trace_every)
        traced, snapshots = [], {}
        for step in range(steps):
            optimizer.zero_grad()
            pixels = transform_f(image_f())
            if channels_last:
                pixels = pixels.contiguous(memory_format=torch.channels_last)
            with amp:
                values = tap_values(model, pixels, block, tap, index, objective=objective, aliased=aliased)
            # The sum gives every image the gradient of its own objective alone.
            (-values.float().sum()).backward()
            optimizer.step()
            final = values.detach().float().cpu()
            initial = final if initial is None else initial
            if (step + 1) % every == 0:
                traced.append(final)
            if step + 1 in snapshot_at:
                snapshots[step + 1] = image_f().detach().float().cpu()
            if progress is not None:
                progress(1)
        images = image_f().detach().float().cpu()
    trace = torch.stack(traced, dim=1) if traced else torch.empty(len(index), 0)
    return FZResult(images, initial, final, trace, snapshots)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[n, 3, H, W] in [0, 1] → uint8 [n, H, W, 3], truncated as Lucent's export and the authors' saving do."""
    return (images.permute(0, 2, 3, 1).clamp(0, 1).numpy() * 255).astype(np.uint8)


def measure(model: torch.nn.Module, profile: Mapping, block: str, tap: str, images: np.ndarray,
            channels: Sequence[int]) -> np.ndarray:
    """The clean (non-aliased) center value of channel ``channels[i]`` on saved uint8 image i, one image per
    forward: a convolution's last bits depend on its batch size, and an FZ's value must not."""
    device = next(model.parameters()).device
    pixels = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float() / 255
    index = torch.as_tensor(list(channels), dtype=torch.long, device=device)
    with torch.no_grad():
        values = [tap_values(model, normalizer(profile)(pixels[i:i + 1]), block, tap, index[i:i + 1],
                             objective="neuron", aliased=False) for i in range(len(index))]
    return torch.cat(values).float().cpu().numpy() if values else np.empty(0, np.float32)


# ---------------------------------------------------------------- what to make


@dataclass(frozen=True)
class Selection:
    blocks: tuple[str, ...]
    taps: tuple[str, ...]
    channels: tuple[int, ...]  # sorted; the group's channel coordinate
    layout: taps_model.TapLayout  # the blocks' widths and which tensor each label holds
    image_size: int
    seeds: tuple[int, ...] = (0,)
    trace: tuple[int, ...] = ()  # the steps objective_trace records


@dataclass(frozen=True)
class Job:
    """One set of FZs: a tensor (its canonical label) at one jitter, stored under every label in ``labels``."""
    block: str
    tap: str
    jitter: int
    labels: tuple[Label, ...]
    channels: tuple[int, ...]
    aliased_alike: bool = False  # its aliased reading is its true value (repro.model.aliased_alike)

    @property
    def title(self) -> str:
        return " = ".join(f"{block} {tap}" for block, tap in self.labels)


def select(model: torch.nn.Module, profile: Mapping, blocks: Iterable[str] | None = None,
           taps: Iterable[str] | None = None, channels: Iterable[int] | None = None) -> Selection:
    """The validated selection; None means the profile's blocks, all its taps, all channels."""
    profile = as_profile(profile)
    known = list(taps_model.blocks(model))
    wanted_blocks = list(blocks) if blocks else list(profile.model.blocks)
    wanted_taps = list(taps) if taps else list(profile.model.taps)
    taps_model.check_taps(model, [(b, t) for b in wanted_blocks for t in wanted_taps])
    block_order = [b for b in known if b in set(wanted_blocks)]
    tap_order = [t for t in taps_model.TAPS if t in set(wanted_taps)]
    size = profile.model.image_size
    layout = taps_model.tap_layout(model, block_order)
    widest = layout.max_width
    chosen = sorted(set(channels)) if channels is not None else list(range(widest))
    if not chosen:
        raise UserError("no channels selected")
    outside = [c for c in chosen if not 0 <= c < widest]
    if outside:
        raise UserError(f"channels {outside[:5]} out of range: the widest selected block has {widest} channels")
    settings = profile.fz
    return Selection(tuple(block_order), tuple(tap_order), tuple(chosen), layout, size, settings.seeds,
                     tuple(trace_steps(settings.steps, settings.trace_every)))


def plan(model: torch.nn.Module, profile: Mapping, selection: Selection) -> list[Job]:
    """The jobs: one per (tensor, jitter), so shared tensors at equal jitter are optimized once."""
    grouped: dict[tuple[str, str, int], list[Label]] = {}
    for block in selection.blocks:
        for tap in selection.taps:
            tensor = selection.layout.source[(block, tap)]
            grouped.setdefault((*tensor, tap_jitter(model, profile, block, tap)), []).append((block, tap))
    jobs = []
    for (block, tap, jitter), stored_as in grouped.items():
        width = selection.layout.width(stored_as[0][0])
        alike = all(taps_model.aliased_alike(model, *label) for label in stored_as)
        jobs.append(Job(block, tap, jitter, tuple(stored_as), tuple(c for c in selection.channels if c < width),
                        alike))
    return jobs


def job_profile(profile: Profile, job: Job) -> Profile:
    """The profile a job's FZs are made under: a tap the aliased reading reads truly is made as a true-reading
    FZ, so it has that FZ's name and pixels (and the aliased comparison can reuse it)."""
    if profile.model.aliased and job.aliased_alike:
        return as_profile(profiles.override(profile, {"model.aliased": False}))
    return profile


def chunks(job: Job, channel_batch: int) -> list[tuple[int, ...]]:
    return [job.channels[start:start + channel_batch] for start in range(0, len(job.channels), channel_batch)]


def unit_name(seed: int, label: Label, jitter: int, channels: Sequence[int]) -> str:
    return f"s{seed}:{label[0]}:{label[1]}:j{jitter}:c{channels[0]}-{channels[-1]}"


# ---------------------------------------------------------------- the stage


def template(selection: Selection, channel_batch: int) -> xr.Dataset:
    """The group's layout: every variable's dims, coords, dtype and chunks (no data but ``valid``)."""
    ns, nb, nt, nc = len(selection.seeds), len(selection.blocks), len(selection.taps), len(selection.channels)
    size, nk = selection.image_size, len(selection.trace)
    # every variable chunked as the images: FZs of different channel chunks never share a chunk
    per_tap = (1, 1, 1, min(channel_batch, nc))
    dims = ("seed", "block", "tap", "channel")
    lazy = {
        "image": (dims + ("y", "x", "rgb"),
                  da.zeros((ns, nb, nt, nc, size, size, 3), dtype=np.uint8,
                           chunks=(1, 1, 1, min(channel_batch, nc), size, size, 3))),
        # NaN until made, so channels a partial run left out read as missing, not as zero.
        **{name: (dims, da.full((ns, nb, nt, nc), np.nan, dtype=np.float32, chunks=per_tap))
           for name in ("activation", "initial_objective", "final_objective")},
        "objective_trace": (dims + ("trace_step",),
                            da.full((ns, nb, nt, nc, nk), np.nan, dtype=np.float32, chunks=per_tap + (max(nk, 1),))),
    }
    valid = selection.layout.valid(selection.channels)
    return xr.Dataset({**lazy, "valid": (("block", "channel"), valid)},
                      coords={"seed": np.array(selection.seeds), "block": labels(selection.blocks),
                              "tap": labels(selection.taps), "channel": np.array(selection.channels),
                              "trace_step": np.array(selection.trace, dtype=np.int64)})


def group_settings(profile: Mapping, selection: Selection) -> dict:
    """What the group's layout and values depend on: the model and FZ settings, and the layout."""
    layout = {"blocks": selection.blocks, "taps": selection.taps, "channels": selection.channels,
              "image_size": selection.image_size}
    return {**profiles.read_by(profile, "model", "fz"), "layout": layout}


def covered(store: Store, group: str) -> np.ndarray:
    """[seed, block, tap, channel]: the FZs a done unit wrote (read from the units' regions)."""
    stored = store.dataset(group)
    shape = tuple(stored.sizes[dim] for dim in ("seed", "block", "tap", "channel"))
    made = np.zeros(shape, dtype=bool)
    for marker in store.markers(group).values():
        if "image" in marker["variables"]:  # the FZ images are what later stages read
            region = [slice(*marker["region"].get(dim, [0, size])) for dim, size in zip(
                ("seed", "block", "tap", "channel"), shape)]
            made[tuple(region)] = True
    return made


def done_taps(stored: xr.Dataset, made: np.ndarray) -> set[Label]:
    """(block, tap) labels whose every valid channel has its FZ of every seed (``made``: ``covered``)."""
    valid = stored["valid"].values.astype(bool)
    return {(str(block), str(tap)) for b, block in enumerate(stored["block"].values)
            for t, tap in enumerate(stored["tap"].values) if made[:, b, t][:, valid[b]].all()}


PER_FZ = ("image", "activation", "initial_objective", "final_objective", "objective_trace")


def _unit_part(seed: int, label: Label, channels: Sequence[int], images: np.ndarray, result: FZResult,
               activation: np.ndarray) -> xr.Dataset:
    """One seed's and label's chunk, placed in the group by its seed, block, tap and channel labels."""
    per_tap = ("seed", "block", "tap", "channel")
    lead = (None, None, None)
    return xr.Dataset({
        "image": (per_tap + ("y", "x", "rgb"), images[lead]),
        "activation": (per_tap, activation[lead].astype(np.float32)),
        "initial_objective": (per_tap, result.initial_objective.numpy()[lead].astype(np.float32)),
        "final_objective": (per_tap, result.final_objective.numpy()[lead].astype(np.float32)),
        "objective_trace": (per_tap + ("trace_step",), result.trace.numpy()[lead].astype(np.float32)),
    }, coords={"seed": np.array([seed]), "block": labels([label[0]]), "tap": labels([label[1]]),
               "channel": np.array(channels)})


@dataclass(frozen=True)
class Piece:
    """FZs of one seed in one channel chunk of a job: a contiguous channel range, written as one unit per label."""
    seed: int
    channels: tuple[int, ...]


@dataclass(frozen=True)
class Copy:
    """FZs of one piece taken from another group, where the very same FZs (same names) are made already."""
    job: Job
    piece: Piece
    source: str
    here = True  # read and written in this process, no model needed


@dataclass(frozen=True)
class ReuseSource:
    """What the aliased comparison checks before it copies FZs from another group: that group's attrs, its
    done FZs ([seed, block, tap, channel], ``covered``) and its coordinate labels by dimension."""
    attrs: Mapping
    made: np.ndarray
    index: Mapping[str, list]


@dataclass(frozen=True)
class Batch:
    """FZs optimized together: pieces of one job (one tensor at one jitter), whole chunks, any seeds."""
    job: Job
    pieces: tuple[Piece, ...]


def pack(job: Job, pieces: Sequence[Piece], batch_images: int) -> list[Batch]:
    """Pieces into batches of about ``batch_images`` FZs, in order; a piece is never split (units running
    side by side must not write one chunk), so a piece larger than the budget is a batch of its own."""
    batches, current = [], []
    for piece in pieces:
        if current and sum(len(p.channels) for p in current) + len(piece.channels) > batch_images:
            batches.append(Batch(job, tuple(current)))
            current = []
        current.append(piece)
    return batches + ([Batch(job, tuple(current))] if current else [])


class FZStage(Stage):
    """The FZ stage. Each FZ is a function of its name (``repro.fz_engine``): seed, tensor, channel, jitter,
    objective and recipe. What is still to do is read from the done units' regions; the FZs of one chunk of
    channels still to do form a piece (a contiguous range; one already made inside it is made again,
    identically), and pieces of one tensor, all seeds, are packed into batches of about ``fz.batch_images``.
    The group's layout is every tap and channel of the profile's blocks (plus any other block asked for),
    so runs with different selections fill the same group; ``--channels 5`` makes exactly channel 5."""

    prepare = staticmethod(prepare)

    def __init__(self, store: Store, model: torch.nn.Module, weights_record: Mapping, profile: Mapping, *,
                 blocks: Iterable[str] | None = None, taps: Iterable[str] | None = None,
                 channels: Iterable[int] | None = None, group: str | None = None, reuse: str | None = None):
        profile = as_profile(profile)
        self.store, self.profile, self.objective = store, profile, profile.fz.objective
        self.reuse = reuse  # a group whose FZs of equal names this stage copies instead of making
        self.group = group or group_name(self.objective)
        self.title = f"{self.group} ({self.objective})"
        self.wanted = select(model, profile, blocks, taps, channels)
        profile_blocks = list(profile.model.blocks)
        self.layout = select(model, profile, profile_blocks + [b for b in self.wanted.blocks if b not in profile_blocks])
        wanted_labels = {(b, t) for b in self.wanted.blocks for t in self.wanted.taps}
        check_image_size(model, profile, self.layout.blocks)
        self.every_job = plan(model, profile, self.layout)
        self.jobs = [job for job in self.every_job if wanted_labels & set(job.labels)]
        self.batch = profile.fz.channel_batch
        self.weights_record = weights_record

    def inputs(self) -> list[str]:
        """The group it copies FZs from: checked intact before a copy, and a newer version of it makes the
        copies stale."""
        return [self.reuse] if self.reuse else []

    def groups(self) -> list[Group]:
        same_fz = [" = ".join(f"{b}:{t}" for b, t in job.labels) for job in self.every_job if len(job.labels) > 1]
        attrs = {"objective": self.objective, "aliased": self.profile.model.aliased,
                 "steps": self.profile.fz.steps, "channel_batch": self.batch, "same_fz": same_fz,
                 "resample": self.profile.fz.resample, "forward_size": self.profile.fz.forward_size,
                 "recipe": recipe_digest(self.profile), "trace_every": self.profile.fz.trace_every,
                 **provenance(self.profile, self.weights_record, stage="fz")}
        return [Group(self.group, template(self.layout, self.batch), attrs,
                      group_settings(self.profile, self.layout), frozenset(), count_units=False)]

    def _missing(self, made: np.ndarray, labels: Sequence[Label], channels: Iterable[int]) -> np.ndarray:
        """[seed, channel]: the FZs of these channels some label of the job still lacks (``made``: ``covered``)."""
        blocks, taps, index = list(self.layout.blocks), list(self.layout.taps), list(self.layout.channels)
        index = [index.index(c) for c in channels]
        lacking = np.zeros((len(self.layout.seeds), len(index)), dtype=bool)
        for block, tap in labels:
            lacking |= ~made[:, blocks.index(block), taps.index(tap)][:, index]
        return lacking

    def complete(self, store: Store, group: Group) -> bool:
        if not store.has(group.name):
            return False
        made = covered(store, group.name)
        return all(not self._missing(made, job.labels, job.channels).any() for job in self.every_job)

    def units(self, done: Mapping[str, set[str]]) -> list[Batch | Copy]:
        made, batches = covered(self.store, self.group), []
        source = self._reuse_source()
        for job in self.jobs:
            pieces = []
            for seed_index, seed in enumerate(self.layout.seeds):
                for chunk in chunks(job, self.batch):
                    wanted = [c for c in chunk if c in set(self.wanted.channels)]
                    if not wanted:
                        continue
                    lacking = self._missing(made, job.labels, wanted)[seed_index]
                    todo = [c for c, missing in zip(wanted, lacking) if missing]
                    if todo:
                        pieces.append(Piece(seed, tuple(c for c in chunk if todo[0] <= c <= todo[-1])))
            copies = [Copy(job, piece, self.reuse) for piece in pieces if self._reusable(source, job, piece)]
            batches += copies + pack(job, [p for p in pieces if all(c.piece != p for c in copies)],
                                     self.profile.fz.batch_images)
        return batches

    def _reuse_source(self) -> ReuseSource | None:
        """The ``reuse`` group's attrs, coordinates and done FZs, read once for all pieces."""
        if not self.reuse or not self.store.has(self.reuse):
            return None
        stored = self.store.dataset(self.reuse)
        return ReuseSource(self.store.group_attrs(self.reuse), covered(self.store, self.reuse),
                           {dim: list(stored[dim].values) for dim in ("seed", "block", "tap", "channel")})

    def _reusable(self, source: ReuseSource | None, job: Job, piece: Piece) -> bool:
        """Whether the ``reuse`` group holds this piece's FZs under the same names, made the same way: its
        recipe (the job's), steps, trace, objective and weights equal, and every one of them done there."""
        if source is None:
            return False
        profile = job_profile(self.profile, job)
        same = {"recipe": recipe_digest(profile), "steps": profile.fz.steps, "trace_every": profile.fz.trace_every,
                "objective": self.objective, "weights_sha256": self.weights_record.get("weights_sha256")}
        if any(source.attrs.get(key) != value for key, value in same.items()):
            return False
        index = source.index
        if piece.seed not in index["seed"] or not set(piece.channels) <= set(index["channel"]):
            return False
        rows = [index["channel"].index(c) for c in piece.channels]
        return all(block in index["block"] and tap in index["tap"] and source.made[
            index["seed"].index(piece.seed), index["block"].index(block), index["tap"].index(tap)][rows].all()
            for block, tap in job.labels)

    def compute_here(self, model, unit: Copy) -> Iterator[Part]:
        return copy_piece(self.store, self.group, unit)

    def context(self) -> "BatchContext":
        return BatchContext(self.group, self.profile)

    @staticmethod
    def compute(model: torch.nn.Module, context: "BatchContext", batch: Batch) -> Iterator[Part]:
        return make_batch(model, context, batch)


def run(store: Store, model: torch.nn.Module, weights_record: Mapping, profile: Mapping, *,
        blocks: Iterable[str] | None = None, taps: Iterable[str] | None = None,
        channels: Iterable[int] | None = None, group: str | None = None, reuse: str | None = None, executor=None,
        device: torch.device | str | None = None) -> xr.Dataset:
    """Make the selected FZs into the store (group ``fz`` or ``fz_channel``, or ``group``), skipping those
    made (``FZStage``). Other FZ settings (steps, seeds, recipe, chunking) replace the group, and only it.
    ``reuse``: a group whose FZs of the same names are copied rather than made again (the aliased comparison
    takes the taps its reading reads truly from ``fz``)."""
    stage = FZStage(store, model, weights_record, profile, blocks=blocks, taps=taps, channels=channels, group=group,
                    reuse=reuse)
    run_stage(stage, store, model, weights_record, executor=executor, device=device)
    return store.dataset(stage.group)


def copy_piece(store: Store, group: str, unit: Copy) -> Iterator[Part]:
    """The piece's FZs read from ``unit.source``, written into ``group`` as the units a batch would write."""
    source = store.dataset(unit.source)
    piece = unit.piece
    for label in unit.job.labels:
        part = source[list(PER_FZ)].sel(seed=[piece.seed], block=[label[0]], tap=[label[1]],
                                        channel=list(piece.channels)).load()
        yield Part(group, unit_name(piece.seed, label, unit.job.jitter, piece.channels), part.drop_attrs())


@dataclass(frozen=True)
class BatchContext:
    """What every batch of one run shares (sent to each worker once)."""
    group: str
    profile: Profile


def batch_names(profile: Profile, batch: Batch) -> list[FZName]:
    """The batch's FZ names, piece by piece, seed-major within a piece (``profile``: the job's)."""
    job = batch.job
    return [name for piece in batch.pieces
            for name in fz_names(profile, job.block, job.tap, piece.channels, [piece.seed], jitter=job.jitter,
                                 resample=profile.fz.resample)]


def make_batch(model: torch.nn.Module, context: BatchContext, batch: Batch) -> Iterator[Part]:
    """Optimize one batch's FZs; each piece's images and activations as one unit per label."""
    job = batch.job
    profile = job_profile(context.profile, job)
    result = optimize(model, profile, batch_names(profile, batch), resample=profile.fz.resample)
    start = 0
    for piece in batch.pieces:
        rows = slice(start, start + len(piece.channels))
        start = rows.stop
        images = to_uint8(result.images[rows])
        activation = measure(model, profile, job.block, job.tap, images, piece.channels)
        own = FZResult(result.images[rows], result.initial_objective[rows], result.final_objective[rows],
                       result.trace[rows])
        for label in job.labels:
            part = _unit_part(piece.seed, label, piece.channels, images, own, activation)
            yield Part(context.group, unit_name(piece.seed, label, job.jitter, piece.channels), part)

"""The alignment stage: sparse autoencoders on superposed toy systems and on two trained networks.

Notation (Liu et al. 2026 → here): n features z ∈ ℝⁿ → k latents (columns of Z); m neurons → d; y = Az with
A ∈ ℝ^{m×n} → X = Z A with A (k × d), rows of Z being stimuli.

Two parts, each written as units of group ``alignment``:

* **Recovery vs neurons** (units ``recovery-d{d}``): for each d in ``alignment.neurons`` and each of
  ``alignment.seeds`` draws, two systems X = Z A and Y = Z B carry the same k sparse latents (active with
  probability p, U[0, 1]) through independent N(0, 1) matrices into d neurons. Each system gets an
  unsupervised TopK SAE trained on its own activity (``repro.sae.train_sae``; it never sees Z) and the
  supervised reference (``train_supervised_sae``, trained to predict Z). On fresh evaluation stimuli the
  two systems are compared per representation (raw neurons, ``sae``, ``sae_supervised``: the latents'
  activations as the encoder gives them, in the units of the activity, since the atoms have unit norm)
  with every metric of ``analyses.alignment_bootstrap.METRICS``: no matching to the ground truth is used.
  Ground truth enters only the evaluation ``ground_truth_r``: the Hungarian mean r between a system's units
  and the true latents (mean over the two systems). Intervals: mean ± t-quantile · sd / √seeds (95 %).
* **Two networks** (unit ``networks``): the store's network and ``alignment.partner_weights`` (the toy
  network trained with another seed) read the store's cached images; at each block's tap (post-ReLU) the
  center neurons are the stimuli's raw representation; an unsupervised TopK SAE per network and block,
  trained on the tap's vectors at random positions of the same images, gives the SAE representation.
  Matching blocks are compared with every metric, other block pairs with ``alignment.cross_metrics``; each
  value carries a 95 % percentile bootstrap interval over images (``alignment.bootstrap`` resamples, the
  SAEs fixed), and the SAE − raw gain a paired-bootstrap interval.

Group ``alignment`` (dims ``representation``, ``metric``, ``d``, ``seed``, ``pair``):
``recovery`` (representation, metric, d, seed); ``recovery_mean`` / ``recovery_low`` / ``recovery_high``
(representation, metric, d); ``recovery_closed_form`` (metric, d): the raw closed forms;
``network`` / ``network_low`` / ``network_high`` (representation, metric, pair); ``network_gain`` /
``network_gain_low`` / ``network_gain_high`` (metric, pair): SAE minus raw. Coordinates ``block_a``,
``block_b`` (pair). NaN marks what a part does not compute (no supervised SAE for networks, no ground
truth for them, the metrics left out for cross-block pairs).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Iterator, Mapping, Sequence

import click
import dask.array as da
import numpy as np
import torch
import xarray as xr
from scipy import stats
from threadpoolctl import threadpool_limits

from analyses import alignment as al
from analyses import alignment_bootstrap as ab
from analyses import superposition as sp
from repro import images as imgs
from repro import profiles, resources
from repro.errors import UserError
from repro.settings import AlignmentSettings, Profile, as_profile
from repro.model import ModelSpec, block_widths, family_of, load_model, run as run_model
from repro.sae import SAESettings, train_sae, train_supervised_sae
from repro import device as devices
from repro.stage import Group, Part, Stage, run_stage
from repro.store import Store, labels, provenance

GROUP = "alignment"
REPRESENTATIONS = ("raw", "sae", "sae_supervised")
METRICS = (*ab.METRICS, "ground_truth_r")
NETWORKS_UNIT = "networks"
LEVEL = 0.95


# ---------------------------------------------------------------- settings


Settings = AlignmentSettings  # the profile's [alignment] table (repro.settings), as the stage reads it


def check(settings: Settings) -> None:
    """What only this stage knows: the names of its cross-block metrics."""
    unknown = sorted(set(settings.cross_metrics) - set(ab.METRICS))
    if unknown:
        raise UserError(f"alignment.cross_metrics: unknown metric(s) {', '.join(unknown)}; "
                        f"choose from {', '.join(ab.METRICS)}")


def stage_settings(profile: Mapping) -> Settings:
    settings = as_profile(profile).alignment
    check(settings)
    return settings


def sae_settings(settings: Settings, seed: int, latents: int | None = None, topk: int | None = None,
                 steps: int | None = None) -> SAESettings:
    return SAESettings(latents=latents or settings.sae_latents, topk=topk or settings.sae_topk,
                       steps=steps or settings.sae_steps, lr=settings.sae_lr, batch_size=settings.sae_batch_size,
                       seed=seed, threads=settings.threads)


def recorded_settings(settings: Settings) -> dict:
    """The settings a group records: the optional partner keys only when set, so groups made before they
    existed keep their settings."""
    return {key: value for key, value in asdict(settings).items()
            if key not in ("partner_profile", "partner_blocks") or value}


def partner_path(settings: Settings) -> str:
    """The partner's weights: ``random:SEED``, or a path (``resources.locate``: the current directory, else
    the shipped checkpoints)."""
    weights = settings.partner_weights
    if not weights or weights.startswith("random:") or weights == "imagenet":
        return weights
    return str(resources.locate(weights))


# ---------------------------------------------------------------- group layout


def pair_list(blocks: Sequence[str], partner_blocks: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """Matching blocks first (the i-th block of each network: equal labels when the partner is the same
    architecture), then every other ordered pair (the store's network's block, the partner's)."""
    partner_blocks = list(partner_blocks or blocks)
    return (list(zip(blocks, partner_blocks))
            + [(a, b) for i, a in enumerate(blocks) for j, b in enumerate(partner_blocks) if i != j])


def pair_label(block_a: str, block_b: str) -> str:
    return f"{block_a}~{block_b}"


def _nan(shape) -> da.Array:
    return da.full(shape, np.nan, dtype=np.float64, chunks=-1)


def template(settings: Settings, blocks: Sequence[str], partner_blocks: Sequence[str] | None = None) -> xr.Dataset:
    pairs = pair_list(blocks, partner_blocks)
    r, m, d, s, p = len(REPRESENTATIONS), len(METRICS), len(settings.neurons), settings.seeds, len(pairs)
    per_d = ("representation", "metric", "d")
    per_pair = ("representation", "metric", "pair")
    return xr.Dataset(
        {
            "recovery": (per_d + ("seed",), da.full((r, m, d, s), np.nan, chunks=(r, m, 1, s))),
            **{name: (per_d, da.full((r, m, d), np.nan, chunks=(r, m, 1)))
               for name in ("recovery_mean", "recovery_low", "recovery_high")},
            "recovery_closed_form": (("metric", "d"), da.full((m, d), np.nan, chunks=(m, 1))),
            **{name: (per_pair, _nan((r, m, p))) for name in ("network", "network_low", "network_high")},
            **{name: (("metric", "pair"), _nan((m, p)))
               for name in ("network_gain", "network_gain_low", "network_gain_high")},
        },
        coords={"representation": labels(REPRESENTATIONS), "metric": labels(METRICS),
                "d": np.asarray(settings.neurons, dtype=np.int64), "seed": np.arange(s),
                "pair": labels(pair_label(a, b) for a, b in pairs),
                "block_a": ("pair", labels(a for a, _ in pairs)), "block_b": ("pair", labels(b for _, b in pairs))},
    )


# ---------------------------------------------------------------- recovery vs neurons


def _draw_systems(settings: Settings, d: int, rng: np.random.Generator) -> dict:
    k, p = settings.features, settings.active_probability
    Z_train = sp.sample_sparse_latents(settings.train_stimuli, k, p, rng)
    Z_eval = sp.sample_sparse_latents(settings.eval_stimuli, k, p, rng)
    mixing = {"X": sp.superposition_matrix(k, d, rng), "Y": sp.superposition_matrix(k, d, rng)}
    return {"Z_train": Z_train, "Z_eval": Z_eval, "mixing": mixing}


def recovery_draw(settings: Settings, d: int, seed: int) -> dict[tuple[str, str], float]:
    """One draw at d neurons: {(representation, metric): value} comparing systems X and Y."""
    rng = np.random.default_rng([settings.seed, d, seed])
    drawn = _draw_systems(settings, d, rng)
    Z_train, Z_eval = drawn["Z_train"], drawn["Z_eval"]
    representations = {}
    for system, A in drawn["mixing"].items():
        train, evaluation = Z_train @ A, Z_eval @ A
        sae_seed = int(rng.integers(2**31))
        representations[("raw", system)] = evaluation
        unsupervised = train_sae(train, sae_settings(settings, sae_seed))
        representations[("sae", system)] = unsupervised.encode(evaluation)
        supervised = train_supervised_sae(train, Z_train, sae_settings(settings, sae_seed, latents=settings.features))
        representations[("sae_supervised", system)] = supervised.encode(evaluation)
    named = {f"{kind}:{system}": values for (kind, system), values in representations.items()}
    scores = ab.score_pairs(named, [(f"{kind}:X", f"{kind}:Y", ab.METRICS) for kind in REPRESENTATIONS], n_boot=0)
    values = {(kind, metric): scores.value[(f"{kind}:X", f"{kind}:Y", metric)]
              for kind in REPRESENTATIONS for metric in ab.METRICS}
    for kind in REPRESENTATIONS:
        values[(kind, "ground_truth_r")] = float(np.mean(
            [al.hungarian_matching(representations[(kind, system)], Z_eval) for system in ("X", "Y")]))
    return values


def raw_closed_forms(settings: Settings, d: int) -> dict[str, float]:
    """The raw systems' closed forms at d (n → ∞): debiased CKA d/(d+k+1), RSA with γ of the latents, and
    the ridge R² bound min(d, k)/k of the population OLS fit."""
    k = settings.features
    gamma = sp.latent_gamma("sparse", settings.active_probability)
    return {"cka_debiased": sp.expected_linear_cka(k, d, d), "rsa": sp.expected_rsa(k, d, d, gamma),
            "ridge_r2": sp.expected_regression_r2(k, d)}


def t_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float, float]:
    """Mean and the t-interval of the mean over draws (NaN draws left out)."""
    finite = np.asarray(values, float)
    finite = finite[np.isfinite(finite)]
    if finite.size < 2:
        return (float(finite.mean()) if finite.size else float("nan")), float("nan"), float("nan")
    mean, half = finite.mean(), stats.t.ppf(0.5 + level / 2, finite.size - 1) * finite.std(ddof=1) / np.sqrt(finite.size)
    return float(mean), float(mean - half), float(mean + half)


def recovery_part(settings: Settings, d: int) -> xr.Dataset:
    shape = (len(REPRESENTATIONS), len(METRICS), 1, settings.seeds)
    values = np.full(shape, np.nan)
    for seed in range(settings.seeds):
        for (kind, metric), value in recovery_draw(settings, d, seed).items():
            values[REPRESENTATIONS.index(kind), METRICS.index(metric), 0, seed] = value
    summary = np.apply_along_axis(t_interval, -1, values)  # (r, m, 1, 3)
    closed = np.full((len(METRICS), 1), np.nan)
    for metric, value in raw_closed_forms(settings, d).items():
        closed[METRICS.index(metric), 0] = value
    per_d = ("representation", "metric", "d")
    return xr.Dataset({
        "recovery": (per_d + ("seed",), values),
        "recovery_mean": (per_d, summary[..., 0]), "recovery_low": (per_d, summary[..., 1]),
        "recovery_high": (per_d, summary[..., 2]), "recovery_closed_form": (("metric", "d"), closed),
    })


# ---------------------------------------------------------------- two networks


def _usable_images(cache: xr.Dataset, limit: int, rng: np.random.Generator) -> np.ndarray:
    usable = np.flatnonzero(~cache.corrupt.values)
    if usable.size < 10:
        raise UserError(f"the alignment stage needs at least 10 decodable images; the store has {usable.size}")
    return usable if usable.size <= limit else np.sort(rng.choice(usable, limit, replace=False))


def tap_vectors(networks: Mapping[str, tuple[torch.nn.Module, Sequence[str]]], cache: xr.Dataset, chosen: np.ndarray,
                profile: Mapping, settings: Settings, rng: np.random.Generator) -> tuple[dict, dict]:
    """Per (network, block): the post-ReLU tap's center vectors (images × channels) and its vectors at
    random positions of the same images (the SAE's training data). ``networks``: name → (model, its blocks),
    the i-th blocks of the networks compared with each other; they share the positions where their maps
    have one size, and a network of another map size draws its own."""
    per_image = max(1, -(-settings.network_sae_samples // chosen.size))
    centres = {(name, block): [] for name, (_, blocks) in networks.items() for block in blocks}
    samples = {key: [] for key in centres}
    with torch.inference_mode():
        for start in range(0, chosen.size, settings.batch_size):
            rows = chosen[start:start + settings.batch_size]
            inputs = imgs.eval_from_cache(cache.pixels.values[rows], profile, cache.resized_height.values[rows],
                                          cache.resized_width.values[rows])
            maps = {name: run_model(model, inputs.to(next(model.parameters()).device),
                                    [(block, settings.tap) for block in blocks], stop=True)[0]
                    for name, (model, blocks) in networks.items()}
            for index in range(len(next(iter(networks.values()))[1])):
                positions, drawn_for = None, None
                for name, (_, blocks) in networks.items():
                    tensor = torch.relu(maps[name][(blocks[index], settings.tap)])
                    _, channels, height, width = tensor.shape
                    if drawn_for != height * width:
                        positions, drawn_for = rng.integers(0, height * width, size=(rows.size, per_image)), height * width
                    tensor = tensor.flatten(2).float().cpu()  # N, C, H·W
                    centres[(name, blocks[index])].append(tensor[:, :, (height // 2) * width + width // 2].numpy())
                    picked = torch.gather(tensor, 2, torch.from_numpy(positions)[:, None, :].expand(-1, channels, -1))
                    samples[(name, blocks[index])].append(picked.permute(0, 2, 1).reshape(-1, channels).numpy())
    join = lambda parts: {key: np.concatenate(value).astype(np.float64) for key, value in parts.items()}
    return join(centres), join(samples)


def unexplained_variance(activity: np.ndarray, reconstruction: np.ndarray) -> float:
    """Fraction of the activity's variance (about its mean) the reconstruction leaves unexplained."""
    total = np.sum((activity - activity.mean(axis=0)) ** 2)
    return float(np.sum((activity - reconstruction) ** 2) / total) if total > 0 else float("nan")


def network_representations(centres: dict, samples: dict, settings: Settings) -> tuple[dict[str, np.ndarray], dict]:
    """{"{network}:{block}:{raw|sae}": images × units}: the raw center vectors and the SAE codes of them; and
    each SAE's fraction of unexplained variance on those center vectors."""
    representations, unexplained = {}, {}
    for (network, block), centre in centres.items():
        channels = centre.shape[1]
        chosen = sae_settings(settings, settings.seed, latents=settings.network_sae_expansion * channels,
                              topk=max(1, round(settings.network_sae_topk_fraction * channels)),
                              steps=settings.network_sae_steps)
        sae = train_sae(samples[(network, block)], chosen)
        representations[f"{network}:{block}:raw"] = centre
        representations[f"{network}:{block}:sae"] = sae.encode(centre)
        unexplained[f"{network}:{block}"] = round(unexplained_variance(centre, sae.reconstruct(centre)), 4)
    return representations, unexplained


def network_part(scores: ab.PairScores, blocks: Sequence[str], settings: Settings,
                 partner_blocks: Sequence[str] | None = None) -> xr.Dataset:
    pairs = pair_list(blocks, partner_blocks)
    shape = (len(REPRESENTATIONS), len(METRICS), len(pairs))
    value, low, high = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    gain, gain_low, gain_high = (np.full(shape[1:], np.nan) for _ in range(3))
    for p, (block_a, block_b) in enumerate(pairs):
        for metric in ab.METRICS:
            keys = {kind: (f"a:{block_a}:{kind}", f"b:{block_b}:{kind}", metric) for kind in ("raw", "sae")}
            if keys["raw"] not in scores.value:
                continue
            m = METRICS.index(metric)
            for kind, key in keys.items():
                r = REPRESENTATIONS.index(kind)
                value[r, m, p] = scores.value[key]
                low[r, m, p], high[r, m, p] = ab.percentile_interval(scores.replicates[key], LEVEL)
            gain[m, p] = scores.value[keys["sae"]] - scores.value[keys["raw"]]
            gain_low[m, p], gain_high[m, p] = ab.percentile_interval(
                scores.replicates[keys["sae"]] - scores.replicates[keys["raw"]], LEVEL)
    per_pair = ("representation", "metric", "pair")
    return xr.Dataset({"network": (per_pair, value), "network_low": (per_pair, low), "network_high": (per_pair, high),
                       "network_gain": (("metric", "pair"), gain), "network_gain_low": (("metric", "pair"), gain_low),
                       "network_gain_high": (("metric", "pair"), gain_high)})


def compare_networks(store: Store, model: torch.nn.Module, partner: torch.nn.Module, profile: Mapping,
                     blocks: Sequence[str], settings: Settings,
                     partner_blocks: Sequence[str] | None = None) -> tuple[xr.Dataset, dict]:
    """Every metric works on two widths (a partner of another family may have others), so none is required."""
    rng = np.random.default_rng([settings.seed, 1])
    cache = imgs.open_cache(store)
    chosen = _usable_images(cache, settings.max_stimuli, rng)
    partner_blocks = list(partner_blocks or blocks)
    centres, samples = tap_vectors({"a": (model, blocks), "b": (partner, partner_blocks)}, cache, chosen, profile,
                                   settings, rng)
    representations, unexplained = network_representations(centres, samples, settings)
    pairs = []
    for index, (block_a, block_b) in enumerate(pair_list(blocks, partner_blocks)):
        metrics = ab.METRICS if index < len(blocks) else settings.cross_metrics  # the matching pairs come first
        pairs += [(f"a:{block_a}:{kind}", f"b:{block_b}:{kind}", metrics) for kind in ("raw", "sae")]
    scores = ab.score_pairs(representations, pairs, settings.bootstrap, seed=[settings.seed, 2])
    return network_part(scores, blocks, settings, partner_blocks), {"network_images": int(chosen.size),
                                                     "network_sae_samples": int(samples[("a", blocks[0])].shape[0]),
                                                     "network_sae_unexplained_variance": unexplained}


# ---------------------------------------------------------------- the stage


def partner_model_table(profile: Mapping, settings: Settings) -> Mapping:
    """The [model] table that builds the partner: this profile's, or ``alignment.partner_profile``'s (a
    network of any family; its own weights unless ``partner_weights`` names others)."""
    if not settings.partner_profile:
        return {**profile["model"], "weights": partner_path(settings),
                "weights_sha256": settings.partner_weights_sha256}
    table = profiles.load(settings.partner_profile)["model"]
    if settings.partner_weights:
        table = {**table, "weights": partner_path(settings), "weights_sha256": settings.partner_weights_sha256}
    return table


def load_partner(profile: Mapping, settings: Settings) -> tuple[torch.nn.Module, dict]:
    return load_model(ModelSpec.from_profile(partner_model_table(profile, settings)))


def check_partner_image_size(partner: torch.nn.Module, profile: Mapping) -> None:
    """A partner that runs at one image size only (a ViT's positional embedding) must take the images both
    networks are shown: the store's natural images at ``natural.crop``."""
    _, shown = imgs.natural_sizes(profile)
    size = getattr(partner, "image_size", None)
    if family_of(partner).fixed_image_size and size is not None and int(size) != shown:
        raise UserError(f"alignment.partner_profile: the partner network runs at {int(size)} px only, and both "
                        f"networks are shown the natural images at natural.crop = {shown} px: choose a partner of "
                        "that image size or another crop")


def partner_blocks(partner: torch.nn.Module, settings: Settings, blocks: Sequence[str]) -> list[str]:
    """The partner's blocks paired with ``blocks``, checked against the partner (one line when they do not fit)."""
    chosen = list(settings.partner_blocks or blocks)
    known = list(block_widths(partner))
    unknown = [block for block in chosen if block not in known]
    if unknown:
        raise UserError(f"alignment.partner_blocks: the partner network has no block(s) {', '.join(unknown)}; "
                        f"it has {', '.join(known)}")
    if len(chosen) != len(blocks):
        raise UserError(f"alignment.partner_blocks names {len(chosen)} blocks for the {len(blocks)} blocks compared "
                        f"({', '.join(blocks)}); pair them one to one")
    return chosen


@dataclass(frozen=True)
class RecoveryContext:
    """What every recovery unit shares (sent to each worker once)."""

    settings: Settings


@dataclass(frozen=True)
class NetworksUnit:
    """The two networks' comparison: run in this process, where the partner network was loaded."""

    partner: torch.nn.Module
    profile: Profile
    blocks: tuple[str, ...]
    partner_blocks: tuple[str, ...] = ()
    here = True


def recovery_unit(d: int) -> str:
    """The unit of every draw at d neurons."""
    return f"recovery-d{d}"


def make_recovery(model: None, context: RecoveryContext, unit: tuple[int, int]) -> Iterator[Part]:
    """Unit ``recovery-d{d}``: every draw at d neurons (no network is used); returns (unit, seconds)."""
    index, d = unit
    started = time.perf_counter()
    with threadpool_limits(limits=context.settings.threads):
        part = recovery_part(context.settings, d)
    yield Part(GROUP, recovery_unit(d), part, region={
        "representation": slice(None), "metric": slice(None), "d": slice(index, index + 1), "seed": slice(None)})
    return recovery_unit(d), round(time.perf_counter() - started, 1)


def make_networks(model: torch.nn.Module, store: Store, unit: NetworksUnit, settings: Settings) -> Iterator[Part]:
    """Unit ``networks``: the store network against the partner, block by block; returns (unit, seconds)."""
    started = time.perf_counter()
    with threadpool_limits(limits=settings.threads):
        part, facts = compare_networks(store, model, unit.partner, unit.profile, list(unit.blocks), settings,
                                       list(unit.partner_blocks))
    store.update_attrs(GROUP, **facts)  # before the unit's marker: a done unit always has its facts
    yield Part(GROUP, NETWORKS_UNIT, part, region={"representation": slice(None), "metric": slice(None),
                                                   "pair": slice(None)})
    return NETWORKS_UNIT, round(time.perf_counter() - started, 1)


class AlignmentStage(Stage):
    """The alignment stage: a unit per number of neurons d (the superposed toy systems, on the executor,
    no network used), and the two networks' unit, run here with their forward passes on the run's device
    (the SAEs train on the CPU)."""

    title = "alignment recovery"
    uses_model = False  # the recovery units use none; the networks unit runs here

    def __init__(self, store: Store, weights: Mapping, profile: Mapping, device=None):
        self.store, self.weights, self.profile = store, weights, as_profile(profile)
        self.settings = settings = stage_settings(profile)
        self.blocks = list(settings.blocks or self.profile.model.blocks)
        has_partner = bool(settings.partner_weights or settings.partner_profile)
        self.partner, self.partner_record = load_partner(profile, settings) if has_partner else (None, {})
        if has_partner:
            check_partner_image_size(self.partner, profile)
        self.partner_blocks = partner_blocks(self.partner, settings, self.blocks) if has_partner else list(self.blocks)
        if self.partner is not None:
            if store.fresh:
                raise UserError("the alignment of two networks reads the store's image cache, which --new-store "
                                "would remove: run `repro natural` first, without --new-store")
            store.require_intact([imgs.CACHE_GROUP], units=False)
            imgs.open_cache(store)  # the networks need the store's images: fail now, not after the simulations
            self.partner = devices.place(self.partner, devices.resolve(device))

    def inputs(self) -> list[str]:
        return [imgs.CACHE_GROUP] if self.partner is not None else []

    def groups(self) -> list[Group]:
        settings, record = self.settings, self.partner_record
        attrs = provenance(self.profile, self.weights, stage=GROUP, partner_weights=settings.partner_weights,
                           partner_weights_file_sha256=record.get("weights_file_sha256", ""),
                           partner_state_sha256=record.get("weights_sha256", ""),
                           interval_level=LEVEL, bootstrap=settings.bootstrap, draws=settings.seeds)
        settings_read = {"alignment": recorded_settings(settings), "blocks": self.blocks,
                         "partner_state_sha256": record.get("weights_sha256", "")}
        units = {recovery_unit(d) for d in settings.neurons} | ({NETWORKS_UNIT} if self.partner is not None else set())
        return [Group(GROUP, template(settings, self.blocks, self.partner_blocks), attrs, settings_read,
                      frozenset(units))]

    def units(self, done: Mapping[str, set[str]]) -> list:
        done = done[GROUP]
        todo = [(index, d) for index, d in enumerate(self.settings.neurons) if recovery_unit(d) not in done]
        if self.partner is not None and NETWORKS_UNIT not in done:
            todo.append(NetworksUnit(self.partner, self.profile, tuple(self.blocks), tuple(self.partner_blocks)))
        return todo

    def context(self) -> RecoveryContext:
        return RecoveryContext(self.settings)

    def compute_here(self, model, unit: NetworksUnit) -> Iterator[Part]:
        return make_networks(model, self.store, unit, self.settings)

    @staticmethod
    def compute(model, context: RecoveryContext, unit) -> Iterator[Part]:
        return make_recovery(model, context, unit)

    def finish(self, results: list[tuple[str, float]]) -> Mapping[str, Mapping]:
        settings = self.settings
        timings = dict(self.store.group_attrs(GROUP).get("unit_seconds", {}))
        for unit, seconds in results:
            timings[unit] = seconds
            if unit == NETWORKS_UNIT:
                click.echo(f"alignment: two networks, {len(pair_list(self.blocks, self.partner_blocks))} block pairs, "
                           f"{settings.bootstrap} bootstrap resamples, in {seconds} s")
            else:
                click.echo(f"alignment: {unit} ({settings.seeds} draws) in {seconds} s")
        networks = "compared" if self.partner is not None else "no partner network in this profile"
        return {GROUP: {"unit_seconds": timings, "networks": networks}}


def run(store: Store, model: torch.nn.Module, weights: Mapping, profile: Mapping, *,
        device: torch.device | str | None = None, executor=None) -> None:
    """Compute and store group ``alignment`` (see the module docstring); done units are skipped."""
    stage = AlignmentStage(store, weights, profile, device=device)
    run_stage(stage, store, model, weights, executor=executor, device=device)

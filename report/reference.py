"""A profile's own reference: numbers of a longer run, and the papers' claim rules that judge later stores by them.

The papers' numbers apply only to a store made with their weights and settings. For another world (the toy
profile) the reference is a store of the same profile made with more effort (more FZ seeds, more steps):
``repro reference --store REF.zarr --out data/published/toy.toml --command "..."`` writes its numbers, and
``claims`` turns them into claims judged with the papers' rules (``report.spec``, ``report.rules``):

* per block and stored criterion (``analyses.criteria``: ``naturally`` = mix ∧ up, ``interpreting`` = mix ∧
  up ∧ down): the robust set (channels passing in at least ``metrics.robust_fraction`` of the reference's
  seeds), each channel's pass frequency, and the count (median over seeds), judged by overlap against the
  store's seed noise and by tolerance;
* per block: the 3 channels whose mix ratio is closest to 1 (median over seeds of |M − 1|);
* per ablated block: the mean accuracy ratio (invariant / random sets) per scale;
* the papers' qualitative rules evaluated on the reference run, each judged by the store's own outcome.

The file names the profile, the command that made the reference store and the settings it differs by, so
the reference can be remade.
"""
from __future__ import annotations

import datetime as dt
import json
import tomllib
from pathlib import Path
from typing import Mapping

import numpy as np
import xarray as xr

from analyses import criteria, measures, noise, stats
from report import rules, spec
from report.loader import Loader
from repro import resources
from repro.errors import UserError

PUBLISHED: Path | None = None  # the shipped data/published folder unless set
KIND = "reference"


def path_for(profile_name: str) -> Path:
    return (PUBLISHED or resources.shipped("published")) / f"{profile_name}.toml"


def numbers(metrics: xr.Dataset) -> dict:
    """{block: {criterion: {channels, frequency, count}, top_mixes}} from an FZ-stimulus metrics dataset."""
    fraction = float(metrics.attrs.get("robust_fraction", 0.5))
    result = {}
    for block in stats.blocks_of(metrics):
        entry = {}
        for criterion in criteria.stored():
            per_seed = noise.seed_lists(metrics, block, "criterion", criterion.name)
            counted = {}
            for channels in per_seed.values():
                for channel in channels:
                    counted[channel] = counted.get(channel, 0) + 1
            frequency = {c: n / len(per_seed) for c, n in counted.items()}
            robust = sorted(c for c, f in frequency.items() if f >= fraction - 1e-9)
            entry[criterion.name] = {"channels": robust, "frequency": [round(frequency[c], 4) for c in robust],
                                     "count": float(np.median([len(v) for v in per_seed.values()]))}
        distance = (metrics["mix"] - 1).__abs__()
        distance = distance.median("seed") if "seed" in distance.dims else distance
        median = stats.per_channel(metrics.assign(mix_distance=distance), "mix_distance", block).dropna()
        entry["top_mixes"] = [int(c) for c in median.sort_values(kind="stable").index[:3]]
        result[block] = entry
    return result


def _toml_value(value) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return repr(float(value)) if isinstance(value, float) else str(int(value))


def extra_tables(ablation: Mapping, levels: Mapping) -> str:
    """The ablation ratios and the rules' outcomes, as TOML tables after the blocks."""
    lines = []
    for block, entry in ablation.items():
        lines += [f'[ablation."{block}"]', f"scales = {_toml_value(entry['scales'])}",
                  f"mean_ratio = {_toml_value(entry['mean_ratio'])}", ""]
    if levels:
        lines.append("[rules]")
        lines += [f"{_toml_value(claim_id)} = {_toml_value(level)}" for claim_id, level in levels.items()]
        lines.append("")
    return "\n".join(lines)


def to_toml(blocks: Mapping, *, profile: str, command: str, store_attrs: Mapping, seeds: list[int],
            made_with: str = "") -> str:
    lines = [f"# Reference numbers of profile {profile!r}, judged by the report with the papers' claim rules.",
             f"kind = {_toml_value(KIND)}", f"profile = {_toml_value(profile)}", f"command = {_toml_value(command)}",
             f"made_with_profile = {_toml_value(made_with or profile)}", f"seeds = {_toml_value(list(seeds))}",
             f"weights_sha256 = {_toml_value(str(store_attrs.get('weights_sha256', '')))}",
             f"git_commit = {_toml_value(str(store_attrs.get('git_commit', '')))}",
             f"created = {_toml_value(dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds'))}", ""]
    for block, entry in blocks.items():
        for criterion in (stored.name for stored in criteria.stored() if stored.name in entry):
            lines.append(f'[blocks."{block}".{criterion}]')
            lines += [f"{key} = {_toml_value(value)}" for key, value in entry[criterion].items()]
            lines.append("")
        lines.append(f'[blocks."{block}"]')
        lines.append(f"top_mixes = {_toml_value(entry['top_mixes'])}")
        lines.append("")
    return "\n".join(lines)


def load(path: Path) -> dict | None:
    """The reference in ``path``, or None when there is none (a published paper file is not one)."""
    if not path.is_file():
        return None
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path}: not valid TOML ({error})") from None
    return data if data.get("kind") == KIND else None


def ablation_numbers(ablation: xr.Dataset) -> dict:
    """{block: {scales, mean_ratio}}: the mean accuracy ratio (invariant / random sets) per scale."""
    result = {}
    for block in [str(b) for b in ablation["block"].values]:
        ratios = measures.ablation_ratios(ablation, block)
        result[block] = {"scales": list(ratios), "mean_ratio": [round(v, 6) for v in ratios.values()]}
    return result


def rule_levels(store) -> dict:
    """{claim id: its ``Level``}: the papers' qualitative rules (signs of statistics, which blocks skew,
    ablation below the no-scale ratio) evaluated on this store's own numbers."""
    # Rules about channels the papers name are about ImageNet's network, not another world's.
    named = (measures.named_in_top_scale_metric, measures.spectrum_positions)
    loader, levels = Loader(store), {}
    for claim in spec.CLAIMS:
        if claim.rule is not rules.qualitative or claim.measure in named:
            continue
        inputs = loader.inputs(claim.inputs)
        if any(dataset is None for dataset in inputs.values()):
            continue
        try:
            levels[claim.id] = claim.measure(**inputs, **claim.args).level
        except (measures.MissingInput, KeyError):
            continue  # the rule cannot be evaluated on this store (a block it does not study)
    return levels


def write(store, out: Path, command: str, judged_profile: str | None = None) -> Path:
    """Write the reference numbers of ``store`` (its metrics with FZ stimuli, every seed) to ``out``, as the
    reference of ``judged_profile`` (default: the store's own profile; a longer run of a profile is made with
    a profile based on it, e.g. ``profiles/toy_reference.toml``, and judges the profile it is based on)."""
    if not store.has("metrics"):
        raise UserError(f"store {store.path} has no metrics group; run `repro pipeline` first")
    metrics = store.dataset("metrics").sel(stimulus_set="fz").load()
    attrs = store.group_attrs("metrics")
    profile = judged_profile or str(attrs.get("profile_name", ""))
    seeds = noise.seeds_of(metrics)
    ablation = ablation_numbers(store.dataset("ablation")) if store.has("ablation") else {}
    text = to_toml(numbers(metrics), profile=profile, command=command, store_attrs=attrs, seeds=seeds,
                   made_with=str(attrs.get("profile_name", "")))
    out.write_text(text + extra_tables(ablation, rule_levels(store)))
    return out


# ---------------------------------------------------------------- the claims a reference makes


def claims(reference: Mapping) -> list[spec.Claim]:
    """The papers' claim rules applied to a reference run's numbers: channel sets by overlap against the
    store's seed noise, counts by tolerance, top-3 mixes by overlap, ablation ratios by tolerance, and the
    papers' qualitative rules by the reference run's outcome of them."""
    profile = str(reference["profile"])
    where = f"data/published/{profile}.toml"
    need = (spec.ReferenceRun(profile, str(reference.get("weights_sha256", ""))),)
    made = []
    for block, entry in reference.get("blocks", {}).items():
        bid = spec.block_id(block)
        for criterion in criteria.stored():
            if criterion.name not in entry:  # a criterion registered after the reference was written
                continue
            numbers_ = entry[criterion.name]
            words = " AND ".join(criterion.tests)
            made += [
                spec.Claim(id=f"claim-reference-{criterion.name}-{bid}", paper="reference", where=where,
                           text=f"Block {block}: channels passing {words} in the reference run",
                           published=list(numbers_["channels"]), measure=measures.invariant_set,
                           inputs={"metrics": spec.METRICS_FZ_SEEDS}, rule=rules.set_overlap,
                           args={"block": block, "criterion": criterion.name}, tolerance=spec.SET_TOLERANCE,
                           source="reference", requires=need),
                spec.Claim(id=f"claim-reference-{criterion.name}-count-{bid}", paper="reference", where=where,
                           text=f"Block {block}: number of channels passing {words}", published=numbers_["count"],
                           measure=measures.invariant_count, inputs={"metrics": spec.METRICS_FZ},
                           rule=rules.number_close, args={"block": block, "criterion": criterion.name},
                           tolerance=spec.COUNT_TOLERANCE, source="reference", requires=need)]
        made.append(spec.Claim(id=f"claim-reference-top-mixes-{bid}", paper="reference", where=where,
                               text=f"Block {block}: the 3 channels with M closest to 1",
                               published=list(entry["top_mixes"]), measure=measures.top_mix_set,
                               inputs={"metrics": spec.METRICS_FZ_SEEDS}, rule=rules.set_overlap,
                               args={"block": block}, tolerance=spec.TOP3_TOLERANCE, source="reference",
                               requires=need))
    for block, entry in reference.get("ablation", {}).items():
        made.append(spec.Claim(id=f"claim-reference-ablation-{spec.block_id(block)}", paper="reference", where=where,
                               text=f"Block {block}: mean accuracy ratio (invariant / random sets) at every scale",
                               published=dict(zip(entry["scales"], entry["mean_ratio"])),
                               measure=measures.ablation_ratios, inputs={"ablation": spec.ABLATION},
                               rule=rules.accuracies_close, args={"block": block}, tolerance=spec.RATIO_TOLERANCE,
                               source="reference", requires=need))
    by_id = {claim.id: claim for claim in spec.CLAIMS}
    for claim_id, level in reference.get("rules", {}).items():
        if claim_id in by_id:
            paper = by_id[claim_id]
            made.append(spec.Claim(id=f"claim-reference-rule-{claim_id.removeprefix('claim-')}", paper="reference",
                                   where=where, text=f"{paper.text} (the papers' rule on the reference run: {level})",
                                   published=level, measure=paper.measure, inputs=paper.inputs, rule=rules.same_level,
                                   args=paper.args, source="reference", requires=need))
    return made


def of_profile(profile_name: str) -> dict | None:
    """The reference of a profile, or None when it has none."""
    return load(path_for(profile_name)) if profile_name else None


def claims_for(profile_name: str) -> list[spec.Claim]:
    """The papers' claims, and the profile's own reference claims when it has a reference file."""
    reference = of_profile(profile_name)
    return spec.CLAIMS + (claims(reference) if reference else [])

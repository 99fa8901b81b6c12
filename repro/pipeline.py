"""Every stage of a profile into one store: FZs (center neuron and whole channel), natural images,
metrics, ablation and alignment. Each stage skips the units already done, so a rerun with nothing changed is quick."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from repro import ablate, alignment, fz, metrics, natural, profiles, resources
from repro import device as devices
from repro.errors import UserError
from repro.executor import Serial
from repro.model import ModelSpec, blocks as model_blocks, load_model
from repro.store import Store

def toy_images(profile: dict) -> Path:
    """The toy world's held-out split, generated from the profile's seed unless already there."""
    from repro.toy import data as toy_data
    from repro.toy import train as toy_train

    settings = profile["toy"]
    data_dir = resources.output(settings["data_dir"])
    split_dir = data_dir / toy_train.HELDOUT
    wanted = {"seed": int(settings["seed"]), "per_class": int(settings["heldout_per_class"])}
    manifest = split_dir / toy_data.MANIFEST_NAME
    if manifest.is_file() and _matches(json.loads(manifest.read_text()), wanted):
        return split_dir
    click.echo(f"generating the toy world's held-out split in {split_dir}")
    split = toy_train.heldout_split(profile, workers=int(settings["workers"]))
    return toy_data.write_split(data_dir, split)


def _matches(manifest: dict, wanted: dict) -> bool:
    return all(manifest.get(key) == value for key, value in wanted.items())


def images_for(profile: dict) -> Path:
    if profile["natural"].get("images"):
        return Path(profile["natural"]["images"])
    if "toy" in profile:
        return toy_images(profile)
    raise UserError(f"profile {profile['name']!r} needs an image folder: pass --images or set "
                    f"{profiles.IMAGES_ENV}")


ALIASED_FZ, ALIASED_GROUPS = "fz_aliased", ("responses_aliased", "metrics_aliased")


def aliased_stages(store: Store, model, record, profile: dict, run_on: dict) -> list:
    """The aliased comparison: FZs made with Lucent's by-reference taps (the authors' FZs), one seed,
    measured with the true taps like every other FZ (FZ stimuli only)."""
    aliased = profiles.override(profile, {"model.aliased": True, "fz.seeds": list(profile["fz"]["seeds"][:1])})
    return [("fz (aliased taps, first seed)",
             lambda: fz.run(store, model, record, aliased, group=ALIASED_FZ, **run_on)),
            ("metrics (aliased FZs)", lambda: metrics.run(store, model, record, profile, fz_group=ALIASED_FZ,
                                                          groups=ALIASED_GROUPS, top9=False, **run_on))]


def check_stage_settings(model, profile: dict) -> None:
    """What each stage checks of its settings against the model, before any stage writes anything."""
    every_block = list(model_blocks(model))
    for table, blocks in (("model", profile["model"]["blocks"]), ("ablation", profile["ablation"]["blocks"]),
                          ("alignment", profile["alignment"]["blocks"])):
        unknown = [block for block in blocks if block not in every_block]
        if unknown:
            raise UserError(f"{table}.blocks names unknown block(s) {', '.join(unknown)}; this model has "
                            f"blocks {', '.join(every_block)}")
    ablate.Settings.from_profile(profile)
    alignment.Settings.from_profile(profile)
    natural.Settings.from_profile(profile)


def run(profile_name: str, store_path: Path, *, new_store: bool = False, device: str = "auto",
        reading: str | None = None, executor_for=None) -> Store:
    """Every stage on one device, its units on one executor (one cluster for the whole pipeline when
    distributed): ``executor_for(profile, device)`` opens it; in-process without one."""
    profile = profiles.override(profiles.load(profile_name), {"reading": reading})
    device = devices.resolve(device)  # once, for every stage
    profile = profiles.override(profile, {"natural.images": str(images_for(profile))})
    Store(store_path).check_path()
    model, record = load_model(ModelSpec.from_profile(profile["model"]))
    check_stage_settings(model, profile)
    store = Store.for_run(store_path, profile, record, new=new_store)
    store.start_fresh()  # the whole run's input is valid: only now, and only here, is the store emptied
    with (executor_for(profile, device) if executor_for else Serial()) as executor:
        run_on = {"device": device, "executor": executor}
        stages = [("fz (center neuron)", lambda: fz.run(store, model, record, profile, **run_on))]
        if profile["fz"]["channel_grids"]:
            channel_profile = profiles.override(profile, {"fz.objective": "channel"})
            stages.append(("fz (whole channel, for the grids)",
                           lambda: fz.run(store, model, record, channel_profile, **run_on)))
        stages += [
            ("natural images", lambda: natural.run(store, model, record, profile, **run_on)),
            ("metrics", lambda: metrics.run(store, model, record, profile, **run_on)),
        ]
        if profile["fz"]["compare_aliased"]:
            stages += aliased_stages(store, model, record, profile, run_on)
        stages += [
            ("ablation", lambda: ablate.run(store, model, record, profile, **run_on)),
            ("alignment", lambda: alignment.run(store, model, record, profile, **run_on)),
        ]
        for title, stage in stages:
            started = time.perf_counter()
            click.echo(f"== {title}")
            stage()
            click.echo(f"   {title}: {time.perf_counter() - started:.1f} s")
    return store

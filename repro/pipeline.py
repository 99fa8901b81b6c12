"""Every stage of a profile into one store: FZs (center neuron and whole channel), natural images,
metrics, ablation and alignment. Each stage skips the units already done, so a rerun with nothing changed is quick."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import click

from repro import alignment, fz, profiles, resources
from repro import device as devices
from repro.errors import UserError
from repro.executor import Serial
from repro.model import ModelSpec, ResNetFamily, blocks as model_blocks, family_of, load_model
from repro.settings import Profile
from repro.stages import PIPELINE, STAGES
from repro.store import Store

def toy_images(profile: Mapping) -> Path:
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


def images_for(profile: Mapping) -> Path:
    if profile["natural"].get("images"):
        return Path(profile["natural"]["images"])
    if "toy" in profile:
        return toy_images(profile)
    raise UserError(f"profile {profile['name']!r} needs an image folder: pass --images or set "
                    f"{profiles.IMAGES_ENV}")


def check_stage_settings(model, profile: Profile) -> None:
    """What each stage checks of its settings against the model, before any stage writes anything."""
    every_block = list(model_blocks(model))
    for table, blocks in (("model", profile["model"]["blocks"]), ("ablation", profile["ablation"]["blocks"]),
                          ("alignment", profile["alignment"]["blocks"])):
        unknown = [block for block in blocks if block not in every_block]
        if unknown:
            raise UserError(f"{table}.blocks names unknown block(s) {', '.join(unknown)}; this model has "
                            f"blocks {', '.join(every_block)}")
    family = family_of(model)
    if not isinstance(family, ResNetFamily):  # aliased taps are a trait of torchvision's in-place ReLU
        aliased = [key for key, on in (("model.aliased", profile["model"].get("aliased")),
                                       ("fz.compare_aliased", profile["fz"].get("compare_aliased"))) if on]
        if aliased:
            raise UserError(f"{' and '.join(aliased)}: aliased taps reproduce an in-place ReLU of torchvision's "
                            f"ResNets; family {family.name} has none (set them to false)")
    fz.check_image_size(model, profile, profile["model"]["blocks"])
    alignment.check(profile.alignment)


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
        run_steps(PIPELINE, store, model, record, profile, device=device, executor=executor)
    return store


def timed(title: str, action: Callable[[], Any]) -> Any:
    """Run one pipeline step under its title, saying how long it took."""
    started = time.perf_counter()
    click.echo(f"== {title}")
    value = action()
    click.echo(f"   {title}: {time.perf_counter() - started:.1f} s")
    return value


def run_steps(steps, store: Store, model, record, profile: Mapping, *, device=None, executor=None) -> None:
    """The steps that apply to ``profile``, in order, each under its title."""
    for step in steps:
        if step.when(profile):
            stage_profile = profiles.override(profile, step.settings(profile))
            timed(step.title, lambda: STAGES[step.stage].run(store, model, record, stage_profile, **step.arguments,
                                                              device=device, executor=executor))

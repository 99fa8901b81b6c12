"""The compute side of the `repro` command line: the stages, the pipeline, profiles, taps, and a store's status
and check. ``residual_stream.cli`` joins these commands with the report's (``report.commands``) into the
`repro` program, so that the compute side never imports the report."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import click

from repro import profiles, stages
from repro.errors import UserError
from repro.settings import Profile
from repro.store import Store, disk_error


def resolve_profile(profile_name: str | None, store_path: Path | None, settings: dict) -> Profile:
    """The profile for this run: the named one, else the one the existing store was made with."""
    if profile_name:
        base = profiles.load(profile_name)
    elif store_path is not None and Store(store_path).exists():
        base = profiles.with_reading_defaults(Store(store_path).profile)
    else:
        raise UserError("no --profile given and no existing store to take one from")
    return profiles.override(base, settings)


DEVICE_OPTION = click.option("--device", "device_name", default="auto", show_default=True,
                             help="auto (CUDA when available), cpu or cuda: decided once for the whole run.")


def open_run(profile_name, store_path, weights, new_store, settings=None, device_name="auto"):
    """Profile, model, weights record, store and device for one stage run, all checked before any work."""
    profile = resolve_profile(profile_name, store_path, {"model.weights": weights, **(settings or {})})
    if weights:  # a weights override drops the profile's pinned hash
        profile = profiles.override(profile, {"model.weights_sha256": ""})
    from repro.model import ModelSpec, load_model  # torch loads only for commands that compute

    Store(store_path).check_path()  # before loading weights: a wrong --store is the cheaper mistake
    click.get_current_context().meta[STORE_IN_USE] = Path(store_path)
    from repro import device as devices

    device = devices.resolve(device_name)
    model, record = load_model(ModelSpec.from_profile(profile["model"]))
    store = Store.for_run(store_path, profile, record, new=new_store)  # created at the first declaration
    return profile, model, record, store, device


reading_option = click.option(
    "--reading", type=click.Choice(["paper", "code"]),
    help="The papers' text or the authors' code, for every reading item the profile does not set itself.")


def run_options(function):
    """Options every stage that computes shares."""
    for option in reversed([
        click.option("--profile", "profile_name", help="Profile name (profiles/NAME.toml) or path; default: the store's."),
        click.option("--weights", help="imagenet, random:SEED, or a path to a state_dict (overrides the profile)."),
        click.option("--store", "store_path", type=click.Path(path_type=Path), required=True, help="The run's zarr store."),
        click.option("--new-store", is_flag=True, help="Start a fresh store (every group is removed) once the run's input is valid."),
        DEVICE_OPTION,
        reading_option,
    ]):
        function = option(function)
    return function


def executor_options(function):
    """``--local-workers`` / ``--scheduler``: where the stage's units run (see ``repro.executor``)."""

    @functools.wraps(function)
    def wrapper(*args, local_workers, scheduler, **kwargs):
        click.get_current_context().meta["placement"] = (local_workers, scheduler)
        return function(*args, **kwargs)

    for option in reversed([
        click.option("--local-workers", type=click.IntRange(min=0), default=None,
                     help="Run the units on N Dask worker processes here (default: in this process; "
                          "$RESIDUAL_STREAM_LOCAL_WORKERS, the profile's run.local_workers)."),
        click.option("--scheduler", default=None,
                     help="Run the units on the Dask cluster at ADDRESS (tcp://host:8786; $RESIDUAL_STREAM_SCHEDULER)."),
    ]):
        wrapper = option(wrapper)
    return wrapper


def stage_executor(profile, device):
    """The executor of this command's units, from its options, the environment and the profile; its
    workers compute on ``device``'s kind (the run's resolved device: one GPU per local worker for CUDA)."""
    from repro import executor

    local_workers, scheduler = click.get_current_context().meta.get("placement", (None, None))
    return executor.open_executor(executor.placement(profile, local_workers, scheduler, device=device))


class Commands(click.Group):
    """The command group; input errors the OS reports become one line, Ctrl-C exit 130."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (KeyboardInterrupt, click.exceptions.Abort):
            raise Interrupted("interrupted; rerun to resume (finished units are kept)") from None
        except OSError as error:
            known = disk_error(error, ctx.meta.get(STORE_IN_USE, Path.cwd()))
            if known is None:
                raise
            raise known from None


STORE_IN_USE = "repro.store_path"  # context meta: the store a command writes, named in disk errors


class Interrupted(click.ClickException):
    exit_code = 130


@click.group(cls=Commands, help=__doc__)
@click.version_option(package_name="residual-stream")
def main():
    # OpenMP threads that spin while waiting stall badly when the cores are shared; speed only, never results.
    # Set before any command imports torch (the library itself leaves the environment alone).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@main.group()
def profile():
    """Profiles: the settings of an experiment."""


@profile.command("show")
@click.argument("name")
def profile_show(name):
    """Print the resolved settings of profile NAME."""
    resolved = profiles.load(name)
    click.echo(f"# profile {resolved['name']} (identity hash {profiles.identity_hash(resolved)})")
    click.echo(profiles.to_json(resolved))


@profile.command("list")
def profile_list():
    """List the profiles shipped with the package."""
    for name in profiles.available():
        click.echo(name)


@main.command()
@click.option("--model", "arch", default=None, help="Architecture (resnet18, resnet34, resnet50).")
@click.option("--profile", "profile_name", default="paper", show_default=True)
@click.option("--image-size", type=int, default=None, help="Defaults to the profile's.")
def taps(arch, profile_name, image_size):
    """List blocks, taps, shapes and center positions."""
    from repro.model import ModelSpec, describe_taps, load_model

    profile = profiles.override(profiles.load(profile_name), {"model.arch": arch, "model.weights": "random:0"})
    size = image_size or profile["model"]["image_size"]
    model, _ = load_model(ModelSpec.from_profile(profile["model"]))
    studied = set(profile["model"]["blocks"])
    click.echo(f"{profile['model']['arch']} at {size} px (C x H x W; center = (H//2, W//2); * = studied block)")
    for info in describe_taps(model, size):
        mark = "*" if info.block in studied else " "
        same = f"  same tensor as {info.same_as}" if info.same_as else ""
        click.echo(f"{mark} {info.block} {info.tap}  {info.channels:4d} x {info.height:3d} x {info.width:3d}"
                   f"  center {info.center}{same}")


def stage_option(option: stages.Option):
    """A stage's option as a click option (its ``click`` extras: type, is_flag, multiple, choices)."""
    extras = dict(option.click)
    if extras.get("type") == "choice":
        extras["type"] = click.Choice(extras.pop("choices"))
    elif extras.get("type") is Path:
        extras["type"] = click.Path(path_type=Path)
    return click.option(*option.flags, option.name, help=option.help, **extras)


def stage_command(entry: stages.StageEntry) -> click.Command:
    """``repro NAME``: the stage of the registry entry on one store, its options read by the entry."""

    def command(store_path, weights, device_name, reading, profile_name=None, new_store=False, **values):
        settings, arguments = entry.read_options(values)
        profile, model, record, store, device = open_run(profile_name, store_path, weights, new_store,
                                                         {"reading": reading, **settings}, device_name)
        with stage_executor(profile, device) as executor:
            entry.run(store, model, record, profile, **arguments, device=device, executor=executor)

    command.__doc__ = entry.help
    for option in reversed(entry.options):
        command = stage_option(option)(command)
    command = executor_options(command)
    command = (run_options if entry.takes_profile else store_options)(command)
    return click.command(entry.name)(command)


def store_options(function):
    """Options of a stage that runs on an existing store with the store's profile."""
    for option in reversed([
        click.option("--store", "store_path", type=click.Path(path_type=Path), required=True),
        click.option("--weights", help="Weights, when the store's cannot be loaded by name here (hash must match)."),
        DEVICE_OPTION,
        reading_option,
    ]):
        function = option(function)
    return function


for _entry in stages.STAGES.values():
    main.add_command(stage_command(_entry))


@main.command()
@click.option("--store", "store_path", type=click.Path(path_type=Path), required=True)
def status(store_path):
    """Every group of a store: complete, partial or stale (and why), with its units done."""
    store = Store.existing(store_path)
    identity = store.attrs.get("identity", {})
    click.echo(f"{store.path}: {identity.get('arch', '?')}, weights {str(identity.get('weights_sha256', ''))[:12]}, "
               f"{identity.get('image_size', '?')} px")
    for state in store.status():
        expected = f"/{state.units_expected}" if state.units_expected else ""
        why = f"  ({state.why})" if state.why else ""
        click.echo(f"  {state.name:<12} {state.state:<9} {state.units_done}{expected} units{why}")


@main.command()
@click.option("--store", "store_path", type=click.Path(path_type=Path), required=True)
@click.option("--repair", is_flag=True, help="Un-mark damaged units, drop invalid markers, re-declare or remove "
                                            "damaged groups, so the next run recomputes only what was lost.")
def check(store_path, repair):
    """Verify every group's metadata, every chunk of its declaration-time arrays and done units (crc32c),
    and every marker; exit 1 listing what is damaged."""
    store = Store.existing(store_path)
    damage = store.check()
    if not damage:
        click.echo(f"{store.path}: every group's metadata, declaration-time arrays, done units and markers are sound")
        return
    for item in damage:
        click.echo(f"damaged: {item.describe()}")
    if repair:
        store.repair(damage)
        for scope, done in REPAIRED.items():
            count = sum(item.scope == scope for item in damage)
            if count:
                click.echo(f"{done} {count}")
        click.echo("rerun the stages (or `repro pipeline`) to recompute what was repaired")
        return
    click.echo(f"{len(damage)} problem(s); `repro check --store {store.path} --repair` repairs them")
    raise click.exceptions.Exit(1)


REPAIRED = {"unit": "un-marked damaged units:", "marker": "removed invalid markers:",
            "markers-node": "rewrote the metadata of marker folders:",
            "declaration": "marked for re-declaration (groups with damaged coordinates or masks):",
            "group": "removed groups with unreadable metadata:"}


@main.command()
@click.option("--profile", "profile_name", default="toy", show_default=True)
@click.option("--store", "store_path", type=click.Path(path_type=Path), required=True)
@click.option("--new-store", is_flag=True)
@DEVICE_OPTION
@reading_option
@executor_options
def pipeline(profile_name, store_path, new_store, device_name, reading):
    """Run every stage of a profile into one store (done units are skipped)."""
    from repro import pipeline as pipeline_stages

    click.get_current_context().meta[STORE_IN_USE] = Path(store_path)
    pipeline_stages.run(profile_name, store_path, new_store=new_store, device=device_name, reading=reading,
                        executor_for=stage_executor)


def _register_optional_groups():
    try:
        from repro.toy.commands import toy_group
    except ImportError:
        return
    main.add_command(toy_group, "toy")


_register_optional_groups()

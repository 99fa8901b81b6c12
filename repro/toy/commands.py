"""``repro toy data`` and ``repro toy train``: the toy world's images and network, from a profile."""
from __future__ import annotations

import shlex
import time
from pathlib import Path

import click
from tqdm import tqdm

from repro import profiles, resources
from repro.errors import UserError


@click.group("toy")
def toy_group():
    """The offline toy world: shapes at many scales, and a ResNet-18 trained on them."""


@toy_group.command("data")
@click.option("--profile", "profile_name", default="toy", show_default=True)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Root folder (default: the profile's toy.data_dir).")
def data_command(profile_name, out_dir):
    """Write the train and held-out splits as ImageFolders, each with a toy_manifest.json."""
    from repro.toy import data, train

    profile = profiles.load(profile_name)
    toy, world = train.toy_settings(profile), train.world_of(profile)
    root = out_dir or resources.output(toy["data_dir"])
    per_class = {train.TRAIN: int(toy["train_per_class"]), train.HELDOUT: int(toy["heldout_per_class"])}
    started = time.perf_counter()
    folders = data.write_imagefolder(root, int(toy["seed"]), per_class, world, workers=int(toy.get("workers", 1)))
    for name, folder in folders.items():
        click.echo(f"{folder}: {per_class[name] * len(world.classes)} images, {len(world.classes)} classes")
    click.echo(f"written in {time.perf_counter() - started:.1f} s")


@toy_group.command("train")
@click.option("--profile", "profile_name", default="toy", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="State_dict path (default: the profile's model.weights).")
def train_command(profile_name, out):
    """Train the profile's network on the toy world; writes OUT and OUT with .json (the training record)."""
    from repro.toy import train

    profile = profiles.load(profile_name)
    command = ["repro", "toy", "train", "--profile", profile_name] + (["--out", str(out)] if out else [])
    out = out or Path(profile["model"]["weights"])
    if out.suffix not in (".pt", ".pth"):
        raise UserError(f"--out {out}: expected a .pt or .pth path for the state_dict")
    bar = tqdm(unit="step", desc="training", dynamic_ncols=True)

    def progress(step: int, total: int, loss: float) -> None:
        bar.total = total
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    try:
        record = train.run(profile, out, progress, command=shlex.join(command))
    finally:
        bar.close()
    click.echo(f"held-out top-1 {record['heldout_accuracy']:.2%} on {record['heldout_images']} images; "
               f"trained in {record['train_seconds']:.0f} s ({record['epochs']} epochs, "
               f"{record['train_images']} images)")
    click.echo(f"weights {out} ({record['bytes'] / 1e6:.1f} MB, sha256 {record['sha256']})")
    if record["sha256"] != profile["model"].get("weights_sha256"):
        click.echo(f"to use them, set model.weights_sha256 = \"{record['sha256']}\" in the profile")

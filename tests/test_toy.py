"""The toy world: deterministic images, balanced classes, object scales over >= 4x, an ImageFolder that
torchvision reads, and the shipped network's held-out accuracy as recorded."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torchvision.datasets import ImageFolder

from repro import profiles
from repro.errors import UserError
from repro.model import ModelSpec, file_sha256, load_model
from repro.toy import data, train
from repro.toy.commands import toy_group

WORLD = data.ToyWorld()


@pytest.fixture(scope="module")
def toy_profile() -> dict:
    return profiles.load("toy")


def test_same_seed_gives_identical_images():
    first = data.generate(WORLD, 3, "heldout", 2)
    second = data.generate(WORLD, 3, "heldout", 2)
    assert first.images.tobytes() == second.images.tobytes()
    assert first.records == second.records


def test_different_seed_or_split_gives_different_images():
    base = data.generate(WORLD, 3, "heldout", 2).images
    assert not np.array_equal(base, data.generate(WORLD, 4, "heldout", 2).images)
    assert not np.array_equal(base, data.generate(WORLD, 3, "train", 2).images)


def test_any_image_is_reproducible_alone():
    split = data.generate(WORLD, 5, "train", 2)
    pixels, record = data.render(WORLD, 5, "train", 13)
    assert np.array_equal(pixels, split.images[13])
    assert record == split.records[13]


def test_parallel_generation_gives_the_same_bytes():
    world = data.ToyWorld(image_size=32, scale_min=6, scale_max=28)
    alone = data.generate(world, 1, "train", 30, workers=1)
    parallel = data.generate(world, 1, "train", 30, workers=2)
    assert alone.images.tobytes() == parallel.images.tobytes()


def test_classes_are_balanced_and_in_order():
    split = data.generate(WORLD, 0, "train", 7)
    assert np.bincount(split.labels).tolist() == [7] * len(WORLD.classes)
    assert split.labels[:len(WORLD.classes)].tolist() == list(range(len(WORLD.classes)))
    assert WORLD.folders == sorted(WORLD.folders)


def test_object_scales_span_the_promised_range(toy_profile):
    world = train.world_of(toy_profile)
    assert world.scale_max / world.scale_min >= 4
    scales = data.generate(world, 0, "heldout", 20).scales
    assert scales.min() >= world.scale_min and scales.max() <= world.scale_max
    assert scales.max() / scales.min() >= 4


@pytest.mark.parametrize("scale", [12.0, 30.0, 56.0])
def test_scale_is_the_drawn_size(scale):
    """A disc recorded at scale s covers pi (s/2)^2 pixels."""
    mask = data._mask("disc", 64, np.array([32.0, 32.0]), scale / 2, 0.0)
    assert mask.sum() == pytest.approx(math.pi * (scale / 2) ** 2, rel=0.02)


def _colour_and_size(split: data.ToySplit) -> np.ndarray:
    return np.column_stack([split.images.reshape(len(split.labels), -1, 3).mean(axis=1), np.log(split.scales)])


def test_colour_and_size_do_not_tell_classes_apart():
    """Colour and size are drawn independently of the class: nearest class means on them are near chance."""
    fit, check = data.generate(WORLD, 0, "train", 40), data.generate(WORLD, 0, "heldout", 40)
    features, probes = _colour_and_size(fit), _colour_and_size(check)
    scale = features.std(axis=0)
    centroids = np.stack([features[fit.labels == label].mean(axis=0) for label in range(len(WORLD.classes))])
    distances = np.linalg.norm((probes[:, None, :] - centroids[None]) / scale, axis=2)
    assert (distances.argmin(axis=1) == check.labels).mean() < 0.2


def test_imagefolder_is_readable_by_torchvision(tmp_path):
    folders = data.write_imagefolder(tmp_path, 2, {"train": 2, "heldout": 1})
    dataset = ImageFolder(str(folders["train"]))
    manifest = data.read_manifest(folders["train"])
    assert dataset.classes == WORLD.folders
    assert len(dataset) == 2 * len(WORLD.classes)
    relative = [str(Path(path).relative_to(folders["train"])) for path, _ in dataset.samples]
    by_path = dict(zip(manifest["images"]["path"], manifest["images"]["label"]))
    assert {path: by_path[path] for path in relative} == {path: label for path, (_, label) in zip(relative, dataset.samples)}
    assert manifest["seed"] == 2 and manifest["per_class"] == 2 and len(manifest["images"]["scale_px"]) == 20
    image, label = dataset[0]
    pixels, record = data.render(WORLD, 2, "train", int(Path(dataset.samples[0][0]).stem))
    assert np.array_equal(np.asarray(image), pixels) and label == record.label
    assert len(ImageFolder(str(folders["heldout"]))) == len(WORLD.classes)


def test_concurrent_writers_of_a_split_leave_one_whole_split_and_other_settings_are_replaced(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    data.write_split(tmp_path, data.generate(WORLD, 3, "heldout", 1))  # another setting's split is there
    abandoned = tmp_path / ".heldout-999999999-killed"  # a writer killed mid-write (no such process)
    (abandoned / "c00_disc").mkdir(parents=True)
    split = data.generate(WORLD, 2, "heldout", 2)
    with ThreadPoolExecutor(4) as pool:
        written = set(pool.map(lambda _: data.write_split(tmp_path, split), range(4)))
    assert written == {tmp_path / "heldout"}
    assert data.read_manifest(tmp_path / "heldout")["seed"] == 2
    assert len(ImageFolder(str(tmp_path / "heldout"))) == 2 * len(WORLD.classes)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["heldout"]
    kept = (tmp_path / "heldout").stat().st_ino
    data.write_split(tmp_path, split)  # an equal split already there stays, untouched
    assert (tmp_path / "heldout").stat().st_ino == kept
    assert (tmp_path / "heldout").stat().st_mode & 0o777 == tmp_path.stat().st_mode & 0o777


def test_wrong_weights_hash_is_refused(toy_profile):
    spec = ModelSpec.from_profile({**toy_profile["model"], "weights_sha256": "0" * 64})
    with pytest.raises(UserError, match="SHA-256 mismatch"):
        load_model(spec)


@pytest.mark.parametrize("name", ["toy", "toy_seed1"])
def test_shipped_network_reaches_its_recorded_accuracy(name):
    toy_profile = profiles.load(name)
    weights = Path(toy_profile["model"]["weights"])
    record = json.loads(weights.with_suffix(".json").read_text())
    assert toy_profile["model"]["weights_sha256"] == record["sha256"] == file_sha256(weights)
    assert weights.stat().st_size <= 10 * 2**20
    model, _ = load_model(ModelSpec.from_profile(toy_profile["model"]))
    heldout = train.heldout_split(toy_profile)
    result = train.evaluate(model, heldout, toy_profile, batch_size=500)
    assert result["images"] == record["heldout_images"]
    assert result["accuracy"] >= 0.90
    assert result["accuracy"] == pytest.approx(record["heldout_accuracy"], abs=0.005)


def test_tiny_profile_trains_end_to_end(tmp_path):
    profile = profiles.load("tiny")
    out = tmp_path / "tiny.pt"
    record = train.run(profile, out, command="test")
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["sha256"] == file_sha256(out) == record["sha256"]
    assert saved["heldout_images"] == 2 * len(profile["toy"]["classes"])
    spec = ModelSpec.from_profile({**profile["model"], "weights": str(out), "weights_sha256": record["sha256"]})
    model, _ = load_model(spec)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, len(profile["toy"]["classes"]))


def test_cli_writes_data_and_trains(tmp_path):
    runner = CliRunner()
    written = runner.invoke(toy_group, ["data", "--profile", "tiny", "--out", str(tmp_path / "data")])
    assert written.exit_code == 0, written.output
    assert len(ImageFolder(str(tmp_path / "data" / "train"))) == 40
    assert (tmp_path / "data" / "heldout" / data.MANIFEST_NAME).is_file()
    trained = runner.invoke(toy_group, ["train", "--profile", "tiny", "--out", str(tmp_path / "w.pt")])
    assert trained.exit_code == 0, trained.output
    assert "held-out top-1" in trained.output and (tmp_path / "w.json").is_file()


def test_profile_and_class_count_must_agree():
    profile = profiles.override(profiles.load("tiny"), {"model.num_classes": 3})
    with pytest.raises(UserError, match="num_classes"):
        train.world_of(profile)

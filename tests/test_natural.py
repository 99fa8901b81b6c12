"""The natural-image stage: activations, top-k exemplars, the decoded-image cache, corrupt images, resume."""
from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from click.testing import CliRunner
from PIL import Image
from torchvision import datasets, transforms
from torchvision.transforms import functional as TF

from repro import images as imgs
from repro import natural, profiles
from repro.cli import main
from repro.model import ModelSpec, load_model
from repro.store import Store
from conftest import make_image_folder

SMALL_MODEL = {
    "model.widths": [8, 8, 16, 16], "model.stem": "small", "model.num_classes": 10, "model.weights": "random:0",
    "model.image_size": 32, "natural.resize": 37, "natural.crop": 32,
    "natural.batch_size": 3, "natural.shard_size": 4, "natural.workers": 0,
}
ALL_BLOCKS = ["1.0", "1.1", "2.0", "2.1", "3.0", "3.1", "4.0", "4.1"]


def small_profile(image_folder, **settings) -> dict:
    return profiles.override(profiles.load("paper"), {**SMALL_MODEL, "natural.images": str(image_folder), **settings})


def run_stage(tmp_path, profile, name="run.zarr", blocks=None) -> Store:
    model, record = load_model(ModelSpec.from_profile(profile["model"]))
    store = Store.create_or_open(tmp_path / name, profile, record)
    natural.run(store, model, record, profile, blocks=blocks)
    return store


# ---------------------------------------------------------------- an independent reference


def hooked_center_values(model, batch) -> dict[tuple[str, str], np.ndarray]:
    """Every tap's center values through plain torchvision forward hooks that clone (no repro.model)."""
    captured, handles = {}, []
    named = [(f"{stage}.{i}", block) for stage in range(1, 5) for i, block in enumerate(getattr(model, f"layer{stage}"))]

    def keep(key):
        return lambda module, args, output: captured.__setitem__(key, output.clone())

    def keep_input(key):
        return lambda module, args: captured.__setitem__(key, args[0].clone())

    for name, block in named:
        handles.append(block.bn2.register_forward_hook(keep((name, "B"))))
        # The block's ReLU runs twice; its last call's input is bn2 + identity, before the in-place ReLU.
        handles.append(block.relu.register_forward_pre_hook(keep_input((name, "O"))))
        if block.downsample is not None:
            handles.append(block.downsample.register_forward_hook(keep((name, "I"))))
        else:
            handles.append(block.register_forward_pre_hook(keep_input((name, "block input"))))
    with torch.no_grad():
        model(batch)
    for handle in handles:
        handle.remove()
    for position, (name, block) in enumerate(named):
        if block.downsample is None:
            captured[(name, "I")] = captured[(named[position - 1][0], "O")] if position else captured[(name, "block input")]
    return {key: value[:, :, value.shape[2] // 2, value.shape[3] // 2].numpy()
            for key, value in captured.items() if key[1] != "block input"}


def reference(profile, image_folder):
    """(center values of every tap, ImageFolder samples) with torchvision's own ImageFolder and transform."""
    model, _ = load_model(ModelSpec.from_profile(profile["model"]))
    natural_settings, model_settings = profile["natural"], profile["model"]
    folder = datasets.ImageFolder(str(image_folder), transform=transforms.Compose([
        transforms.Resize(natural_settings["resize"]), transforms.CenterCrop(natural_settings["crop"]),
        transforms.ToTensor(), transforms.Normalize(model_settings["normalize_mean"], model_settings["normalize_std"]),
    ]))
    batch = torch.stack([folder[i][0] for i in range(len(folder))])
    return hooked_center_values(model, batch), folder


def full_sort_top_k(activation: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by sorting every image: value descending, then lower image index; NaN never ranks."""
    index = np.broadcast_to(np.arange(activation.shape[-1]), activation.shape)
    order = np.lexsort((index, -activation), axis=-1)[..., :k]
    values = np.take_along_axis(activation, order, axis=-1)
    return np.where(np.isnan(values), -1, order), values


# ---------------------------------------------------------------- activations and top-k



@pytest.fixture(scope="module")
def shared_folder(tmp_path_factory) -> Path:
    """The image_folder layout, built once for the tests that only read it."""
    return make_image_folder(tmp_path_factory.mktemp("shared") / "val")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, shared_folder):
    profile = small_profile(shared_folder)
    return run_stage(tmp_path_factory.mktemp("small_run"), profile, blocks=ALL_BLOCKS), profile


def test_activations_equal_hooked_torchvision(small_run, shared_folder):
    store, profile = small_run
    image_folder = shared_folder
    stored = store.dataset("natural").load()
    expected, folder = reference(profile, image_folder)
    assert list(stored.path.values) == [Path(path).relative_to(image_folder).as_posix() for path, _ in folder.samples]
    assert list(stored.label.values) == folder.targets
    for block in ["1.0", "1.1", "2.0", "2.1", "3.1", "4.0", "4.1"]:
        width = expected[(block, "O")].shape[1]
        assert stored.valid.sel(block=block).values.sum() == width
        assert np.isnan(stored.activation.sel(block=block, channel=slice(width, None)).values).all()
        for tap in "IBO":
            got = stored.activation.sel(block=block, tap=tap, channel=slice(0, width - 1)).values.T
            np.testing.assert_allclose(got, expected[(block, tap)], rtol=1e-5, atol=1e-6, err_msg=f"{block} {tap}")
    # A tensor two taps share is stored identically under both labels.
    xr.testing.assert_identical(stored.activation.sel(block="2.1", tap="I", drop=True),
                                stored.activation.sel(block="2.0", tap="O", drop=True))


def test_top_images_equal_a_full_sort(small_run):
    store, profile = small_run
    stored = store.dataset("natural").load()
    k = profile["natural"]["top_k"]
    assert stored.sizes["rank"] == k == 9
    images, values = full_sort_top_k(stored.activation.values, k)
    np.testing.assert_array_equal(stored.top_images.values, images)
    np.testing.assert_array_equal(stored.top_values.values, values)
    assert stored.top_images.dtype == np.int64 and stored.top_values.dtype == np.float32
    assert store.group_attrs("natural")["complete"] and store.group_attrs("natural")["corrupt_images"] == []


def test_top_k_breaks_ties_by_lower_index_and_merges_shards_exactly():
    rng = np.random.default_rng(1)
    values = rng.integers(0, 4, (5, 30)).astype(np.float32)  # many ties
    values[0, 3] = np.nan
    values[1, :27], values[1, 27:] = np.nan, 2.0  # fewer finite values than k, all tied
    expected_images, expected_values = full_sort_top_k(values, 6)
    merged = None
    for start in range(0, 30, 7):  # uneven shards
        shard = natural.top_k(values[:, start:start + 7], np.arange(start, min(start + 7, 30)), 6)
        merged = shard if merged is None else natural.merge_top_k(merged, shard, 6)
    np.testing.assert_array_equal(merged[1], expected_images)
    np.testing.assert_array_equal(merged[0], expected_values)
    assert list(merged[1][1]) == [27, 28, 29, -1, -1, -1]


def test_standard_resnet18_two_taps(tmp_path):
    image_folder = make_image_folder(tmp_path / "val", {"n01": [(40, 30), (33, 45)], "n02": [(50, 50)]})
    profile = profiles.override(profiles.load("paper"), {
        "model.weights": "random:0", "natural.images": str(image_folder), "natural.workers": 0,
        "natural.batch_size": 2, "natural.shard_size": 2,
    })
    stored = run_stage(tmp_path, profile, blocks=["2.0", "4.1"]).dataset("natural").load()
    expected, _ = reference(profile, image_folder)
    assert list(stored.block.values) == ["2.0", "4.1"] and stored.sizes["channel"] == 512
    assert stored.valid.sel(block="2.0").values.sum() == 128
    for block, tap, width in [("2.0", "I", 128), ("4.1", "B", 512), ("4.1", "O", 512)]:
        got = stored.activation.sel(block=block, tap=tap, channel=slice(0, width - 1)).values.T
        np.testing.assert_allclose(got, expected[(block, tap)], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- the decoded-image cache


@pytest.mark.parametrize("resize, crop", [(37, 32), (256, 224), (35, 32), (40, 31)])
def test_cache_reproduces_the_eval_transform_exactly(image_folder, resize, crop):
    profile = profiles.override(profiles.load("paper"), {"natural.resize": resize, "natural.crop": crop})
    reference_transform = imgs.eval_transform(profile)
    listing = imgs.find_images(image_folder)
    for index in range(len(listing)):
        decoded = imgs.load_rgb(listing.absolute(index))
        square, (height, width) = imgs.cache_square(decoded, resize)
        assert square.shape == (resize, resize, 3) and square.dtype == np.uint8
        expected = reference_transform(decoded)[None]
        got = imgs.eval_from_cache(square[None], profile, [height], [width])
        assert torch.equal(got, expected), listing.paths[index]
        if (resize - crop) % 4 == 0:
            assert torch.equal(imgs.eval_from_cache(square[None], profile), expected)
        resized = transforms.Resize(resize)(decoded)
        for size in {resize, resize - 1, crop, crop - 3, resize // 2}:  # the ablation's scale crops
            direct = np.asarray(TF.center_crop(resized, size))
            cut = imgs.center_crop_from_cache(square[None], size, [height], [width])[0].numpy()
            np.testing.assert_array_equal(cut, direct)


def test_cache_without_sizes_refuses_an_inexact_crop():
    squares = np.zeros((1, 37, 37, 3), np.uint8)
    with pytest.raises(ValueError, match="multiple of 4"):
        imgs.center_crop_from_cache(squares, 32)
    assert imgs.center_crop_from_cache(squares, 33).shape == (1, 33, 33, 3)


def test_stored_cache_holds_the_squares(small_run, shared_folder):
    store, profile = small_run
    image_folder = shared_folder
    cache = imgs.open_cache(store).load()
    listing = imgs.find_images(image_folder)
    assert list(cache.path.values) == list(listing.paths)
    for index in range(len(listing)):
        square, (height, width) = imgs.cache_square(imgs.load_rgb(listing.absolute(index)), 37)
        np.testing.assert_array_equal(cache.pixels.values[index], square)
        assert (cache.resized_height.values[index], cache.resized_width.values[index]) == (height, width)
    inputs = imgs.eval_from_cache(cache.pixels.values, profile, cache.resized_height.values, cache.resized_width.values)
    assert inputs.shape == (len(listing), 3, 32, 32)


# ---------------------------------------------------------------- corrupt images


def test_corrupt_images_are_reported_and_excluded(tmp_path, image_folder):
    truncated = image_folder / "n01440764" / "img1.JPEG"
    truncated.write_bytes(truncated.read_bytes()[:200])
    (image_folder / "n01484850" / "broken.jpg").write_bytes(b"not a jpeg at all")
    profile = small_profile(image_folder, **{"natural.workers": 1})  # decoding errors caught inside a worker
    with pytest.warns(imgs.CorruptImageWarning, match="2 of 13 images could not be decoded"):
        store = run_stage(tmp_path, profile)
    stored = store.dataset("natural").load()
    bad = ["n01440764/img1.JPEG", "n01484850/broken.jpg"]
    assert store.group_attrs("natural")["corrupt_images"] == bad
    assert store.group_attrs("image_cache")["corrupt_images"] == bad
    assert list(stored.path.values[stored.corrupt.values]) == bad
    bad_index = np.flatnonzero(stored.corrupt.values)
    assert np.isnan(stored.activation.isel(image=bad_index).values).all()
    assert not np.isin(stored.top_images.values, bad_index).any()
    assert (stored.top_images.sel(channel=0).values[..., :9] >= 0).all()  # 11 valid images fill the top 9
    assert imgs.open_cache(store).corrupt.values[bad_index].all()


def test_float16_cube_keeps_float32_top_values(tmp_path, small_run, shared_folder):
    single = small_run[0].dataset("natural").load()
    half = run_stage(tmp_path, small_profile(shared_folder, **{"natural.dtype": "float16"}), blocks=ALL_BLOCKS)
    half = half.dataset("natural").load()
    assert half.activation.dtype == np.float16
    np.testing.assert_array_equal(half.activation.values, single.activation.values.astype(np.float16))
    np.testing.assert_array_equal(half.top_images.values, single.top_images.values)
    np.testing.assert_array_equal(half.top_values.values, single.top_values.values)


# ---------------------------------------------------------------- resume after SIGKILL

def paused_repro(arguments: list[str]) -> None:
    """`repro ARGUMENTS`, pausing after each unit it writes so that the test can kill it mid-run every time."""
    write_unit = Store.write_unit

    def paused_write_unit(*args, **kwargs):
        write_unit(*args, **kwargs)
        time.sleep(0.8)

    Store.write_unit = paused_write_unit
    main(arguments, prog_name="repro")


def write_profile(path: Path, image_folder: Path) -> Path:
    path.write_text(f"""base = "paper"
name = "natural-test"
[model]
widths = [8, 8, 16, 16]
stem = "small"
num_classes = 10
weights = "random:0"
image_size = 32
[natural]
images = "{image_folder}"
resize = 37
crop = 32
batch_size = 3
shard_size = 4
workers = 0
""")
    return path


def kill_after_first_shard(arguments: list[str], store: Path, timeout: float = 180.0) -> None:
    # A spawned child (a fork of a test process that already runs the shared Dask cluster's threads can inherit
    # their held locks and hang); it is killed with SIGKILL, which it cannot catch.
    process = multiprocessing.get_context("spawn").Process(target=paused_repro, args=(arguments,))
    process.start()
    deadline = time.monotonic() + timeout
    try:
        # Kill once shard 0 is done and shard 1's cache unit is written (mostly before its natural unit is).
        while len(Store(store).done("image_cache")) < 2:
            if not process.is_alive():
                pytest.fail(f"the run ended (exit code {process.exitcode}) before it could be killed")
            if time.monotonic() > deadline:
                pytest.fail("the run did not finish a shard in time")
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.join(timeout=30)
        assert process.exitcode == -signal.SIGKILL
    finally:
        if process.is_alive():
            process.kill()
            process.join()


def assert_same_groups(first: Store, second: Store) -> None:
    for group in ("natural", "image_cache"):
        a, b = first.dataset(group).load(), second.dataset(group).load()
        xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
        for key in ("complete", "corrupt_images", "settings", "settings_digest"):
            assert a.attrs[key] == b.attrs[key], (group, key)
        assert first.done(group) == second.done(group)


def test_killed_run_resumes_to_the_identical_result(tmp_path, image_folder, monkeypatch):
    profile = write_profile(tmp_path / "profile.toml", image_folder)
    killed, uninterrupted = tmp_path / "killed.zarr", tmp_path / "uninterrupted.zarr"
    arguments = ["natural", "--profile", str(profile), "--store"]
    kill_after_first_shard(arguments + [str(killed)], killed)
    assert not Store(killed).group_attrs("natural")["complete"]
    done_when_killed = Store(killed).done("natural")
    assert "shard-00000" in done_when_killed
    left = [shard for shard in range(3) if natural.shard_unit(shard) not in done_when_killed]

    computed = []
    make_shard = natural.make_shard
    monkeypatch.setattr(natural, "make_shard", lambda model, context, shard: computed.append(shard)
                        or make_shard(model, context, shard))
    runner = CliRunner()
    for store in (killed, uninterrupted):
        result = runner.invoke(main, arguments + [str(store)])
        assert result.exit_code == 0, result.output
    assert computed == left + [0, 1, 2]  # the rerun computed only the shards left
    assert Store(killed).done("natural") == {f"shard-{s:05d}" for s in range(3)} | {"top-k"}
    assert_same_groups(Store(killed), Store(uninterrupted))


# ---------------------------------------------------------------- bad input


def run_cli_on(tmp_path, images: Path):
    profile = write_profile(tmp_path / "profile.toml", images)
    return CliRunner().invoke(main, ["natural", "--profile", str(profile), "--images", str(images),
                                     "--store", str(tmp_path / "bad.zarr")])


def test_missing_image_folder_exits_2(tmp_path):
    result = run_cli_on(tmp_path, tmp_path / "nowhere")
    assert result.exit_code == 2 and "does not exist" in result.output


def test_empty_image_folder_exits_2(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli_on(tmp_path, tmp_path / "empty")
    assert result.exit_code == 2 and "class folder" in result.output


def test_flat_folder_without_class_folders_exits_2(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (40, 30)).save(flat / "a.JPEG")
    result = run_cli_on(tmp_path, flat)
    assert result.exit_code == 2 and "ImageFolder layout" in result.output


def test_class_folders_without_images_exit_2(tmp_path):
    (tmp_path / "classes" / "n01").mkdir(parents=True)
    (tmp_path / "classes" / "n01" / "notes.txt").write_text("no images here")
    result = run_cli_on(tmp_path, tmp_path / "classes")
    assert result.exit_code == 2 and "no valid file" in result.output.lower()

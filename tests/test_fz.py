"""The batched FZ engine: same gradients as single-image FZs, true tap values, stored layout, resumability."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from click.testing import CliRunner
from lucent.optvis import param as lucent_param
from lucent.optvis import transform as lucent_transform

from repro import fz, profiles
from repro import model as taps_model
from repro.cli import main
from repro.errors import UserError
from repro.model import ModelSpec, load_model
from repro.store import Store

TINY_MODEL = {"model.widths": [8, 8, 16, 16], "model.stem": "small", "model.num_classes": 10,
              "model.weights": "random:0", "model.image_size": 32}
# Jitter 0 everywhere: on 32 px images the paper's 4-16 px jitter would swamp the image.
NO_JITTER = {block: {"I": 0, "B": 0, "O": 0} for block in ("1.1", "2.0", "2.1", "3.0", "3.1", "4.0", "4.1")}
# What the subprocess and this process must share for bitwise-identical results.
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def tiny_profile(**settings) -> dict:
    """The paper's profile on a small random resnet18 at 32 px."""
    base = {**TINY_MODEL, "fz.steps": 32, "fz.channel_batch": 4, "fz.jitter": NO_JITTER, "fz.seeds": [0]}
    return profiles.override(profiles.load("paper"), {**base, **settings})



@pytest.fixture(scope="module")
def tiny():
    profile = tiny_profile()
    model, record = load_model(ModelSpec.from_profile(profile["model"]))
    return profile, model, record


@pytest.fixture(scope="module")
def stored(tiny, tmp_path_factory):
    """FZs of blocks 2.0 and 2.1, channels 0-3 (2.0 O and 2.1 I are one tensor at equal jitter)."""
    profile, model, record = tiny
    store = Store.create_or_open(tmp_path_factory.mktemp("fz") / "run.zarr", profile, record)
    dataset = fz.run(store, model, record, profile, blocks=["2.0", "2.1"], channels=range(4))
    # The group's layout is the whole profile; the selection filled blocks 2.0 and 2.1, channels 0-3.
    return store, dataset.sel(seed=0, block=["2.0", "2.1"], channel=slice(0, 3)).load()


def reference_taps(model: torch.nn.Module, pixels: torch.Tensor) -> dict:
    """Every block's I, B, O maps from one plain torchvision forward, by cloning hooks and by-hand sums."""
    seen, handles = {}, []
    named = taps_model.blocks(model)
    for name, block in named.items():
        handles.append(block.register_forward_pre_hook(
            lambda module, args, name=name: seen.__setitem__((name, "input"), args[0].clone())))
        handles.append(block.bn2.register_forward_hook(
            lambda module, args, out, name=name: seen.__setitem__((name, "bn2"), out.clone())))
    with torch.no_grad():
        model(pixels)
    for handle in handles:
        handle.remove()
    taps, previous_output = {}, None
    with torch.no_grad():
        for name, block in named.items():
            block_input = seen[(name, "input")]
            identity = block.downsample(block_input) if block.downsample is not None else block_input
            output = seen[(name, "bn2")] + identity
            if block.downsample is not None:
                taps[(name, "I")] = identity
            else:
                taps[(name, "I")] = block_input if previous_output is None else previous_output
            taps[(name, "B")] = seen[(name, "bn2")]
            taps[(name, "O")] = output
            previous_output = output
    return taps


def center(maps: torch.Tensor) -> torch.Tensor:
    return maps[:, :, maps.shape[-2] // 2, maps.shape[-1] // 2]


def normalized(profile, images: torch.Tensor) -> torch.Tensor:
    model = profile["model"]
    return T.Normalize(model["normalize_mean"], model["normalize_std"])(images)


# ---------------------------------------------------------------- the algorithm


@pytest.mark.parametrize("objective", ["neuron", "channel"])
def test_each_image_gets_the_gradient_of_its_own_single_image_objective(tiny, objective):
    profile, model, _ = tiny
    prepared = fz.prepare(model)
    channels = [0, 5, 9, 15]
    index = torch.tensor(channels)
    # Jitter 16 exercises the whole transform list (pad, jitter, scale, rotate, jitter, crop).
    transform_f = lucent_transform.compose(fz.transforms(profile, 16) + [fz.normalizer(profile)])
    with fz.seeded(3):
        params, image_f = lucent_param.image(32, batch=len(channels))
    np.random.seed(11)
    batch_loss = -fz.tap_values(prepared, transform_f(image_f()), "3.1", "B", index, objective=objective).sum()
    batch_loss.backward()
    for i, channel in enumerate(channels):
        single_params, single_f = lucent_param.image(32, batch=1)
        with torch.no_grad():
            single_params[0].copy_(params[0][i:i + 1])
        np.random.seed(11)  # the same transform draw
        loss = -fz.tap_values(prepared, transform_f(single_f()), "3.1", "B", torch.tensor([channel]),
                              objective=objective).sum()
        loss.backward()
        expected = single_params[0].grad[0]
        assert expected.abs().max() > 0
        torch.testing.assert_close(params[0].grad[i], expected, rtol=1e-4, atol=1e-6 * expected.abs().max().item())


def test_b_tap_objective_is_the_true_bn2_value_not_the_post_relu_output(tiny):
    profile, model, _ = tiny
    # Identity transforms and lr 0: the step's objective is the tap's value on the returned image itself.
    still = profiles.override(profile, {"fz.lr": 0.0, "fz.random_scale": [1.0], "fz.rotate_degrees": 0})
    prepared = fz.prepare(model)
    channels = list(range(8))
    true = fz.visualize(prepared, still, "2.1", "B", channels, jitter=0, seed=5, steps=1, aliased=False)
    aliased = fz.visualize(prepared, still, "2.1", "B", channels, jitter=0, seed=5, steps=1, aliased=True)
    torch.testing.assert_close(true.images, aliased.images)
    taps = reference_taps(model, normalized(profile, true.images))
    bn2 = center(taps[("2.1", "B")])[torch.arange(8), channels]
    post_relu = torch.relu(center(taps[("2.1", "O")]))[torch.arange(8), channels]
    assert (bn2 - post_relu).abs().max() > 0.05, "choose a setting where bn2 and the block output differ"
    torch.testing.assert_close(true.final_objective, bn2, rtol=1e-3, atol=1e-4)
    # The reference-compatibility switch reproduces Lucent's by-reference hook: the post-ReLU output.
    torch.testing.assert_close(aliased.final_objective, post_relu, rtol=1e-3, atol=1e-4)


def test_same_seed_same_fz_and_chunk_seeds_differ(tiny):
    profile, model, _ = tiny
    prepared = fz.prepare(model)
    first, again = (fz.visualize(prepared, profile, "1.1", "B", [0, 1], jitter=0, seed=7, steps=3) for _ in range(2))
    assert torch.equal(first.images, again.images)
    seeds = {fz.chunk_seed(0, "3.0", "O", jitter, chunk) for jitter in (4, 16) for chunk in range(3)}
    assert len(seeds) == 6


# ---------------------------------------------------------------- what is made


def test_plan_shares_a_tensor_only_when_its_jitter_agrees():
    profile = profiles.override(profiles.load("paper"), {"model.weights": "random:0"})
    model, _ = load_model(ModelSpec.from_profile(profile["model"]))
    jobs = fz.plan(model, profile, fz.select(model, profile))
    by_label = {label: job for job in jobs for label in job.labels}
    assert by_label[("2.1", "I")] is by_label[("2.0", "O")]  # jitter 0 and 0: one FZ set
    assert by_label[("4.1", "I")] is by_label[("4.0", "O")]  # 16 and 16
    assert by_label[("3.1", "I")] is not by_label[("3.0", "O")]  # 16 and 4: two FZ sets of one tensor
    assert (by_label[("3.1", "I")].block, by_label[("3.1", "I")].tap) == ("3.0", "O")
    assert sum(len(job.channels) for job in jobs) == 4672 + 256


def test_selection_layout_and_valid_channels(tiny):
    profile, model, _ = tiny
    selection = fz.select(model, profile, blocks=["3.0", "2.1"], taps=["O", "B"], channels=[9, 0, 2])
    assert selection.blocks == ("2.1", "3.0") and selection.taps == ("B", "O") and selection.channels == (0, 2, 9)
    layout = fz.template(selection, 4)
    assert layout["valid"].sel(block="2.1").values.tolist() == [True, True, False]  # block 2.1 has 8 channels
    assert layout["valid"].sel(block="3.0").values.all()
    assert layout["image"].dims == ("seed", "block", "tap", "channel", "y", "x", "rgb") and layout["image"].dtype == np.uint8
    with pytest.raises(UserError, match="out of range"):
        fz.select(model, profile, blocks=["2.1"], channels=[8])


# ---------------------------------------------------------------- the stored group


def test_stored_activation_is_a_plain_torchvision_forward_on_the_saved_image(tiny, stored):
    profile, model, _ = tiny
    _, dataset = stored
    for block in ("2.0", "2.1"):
        images = torch.from_numpy(dataset["image"].sel(block=block).values)  # tap, channel, y, x, rgb
        taps, channels, size = images.shape[0], images.shape[1], images.shape[2]
        pixels = images.reshape(-1, size, size, 3).permute(0, 3, 1, 2).float() / 255
        reference = reference_taps(model, normalized(profile, pixels))
        for t, tap in enumerate(dataset["tap"].values):
            rows = torch.arange(t * channels, (t + 1) * channels)
            expected = center(reference[(block, str(tap))])[rows, torch.arange(channels)]
            stored_values = torch.from_numpy(dataset["activation"].sel(block=block, tap=tap).values)
            torch.testing.assert_close(stored_values, expected, rtol=1e-4, atol=1e-4)


def test_objective_rises_well_above_its_initial_value(stored):
    _, dataset = stored
    gain = dataset["final_objective"] - dataset["initial_objective"]
    start = float(abs(dataset["initial_objective"]).max())
    assert start < 0.5  # a near-grey start
    # Every FZ's objective rises to several times the largest starting value within the tiny run's 8 steps.
    assert float(gain.min()) > 3 * start and float(gain.min()) > 1.0
    assert float((dataset["activation"] - dataset["initial_objective"]).min()) > 3 * start  # on the saved image too


def test_stored_group_layout(stored):
    store, dataset = stored
    assert dataset["image"].dtype == np.uint8 and dataset["image"].dims == ("block", "tap", "channel", "y", "x", "rgb")
    assert dataset["image"].shape == (2, 3, 4, 32, 32, 3)
    for name in ("activation", "initial_objective", "final_objective"):
        assert dataset[name].dtype == np.float32 and dataset[name].dims == ("block", "tap", "channel")
        assert not np.isnan(dataset[name].values).any()
    assert dataset["valid"].values.all()
    attrs = store.group_attrs("fz")
    assert attrs["objective"] == "neuron" and attrs["aliased"] is False and attrs["steps"] == 32
    assert attrs["stage"] == "fz" and attrs["profile_hash"]
    assert not attrs["complete"]  # only blocks 2.0 and 2.1, channels 0-3 of the profile's layout were made
    assert "2.0:O = 2.1:I" in attrs["same_fz"]
    # One FZ set for the shared tensor, stored under both labels.
    np.testing.assert_array_equal(dataset["image"].sel(block="2.0", tap="O"), dataset["image"].sel(block="2.1", tap="I"))
    assert not np.array_equal(dataset["image"].sel(block="2.0", tap="B"), dataset["image"].sel(block="2.1", tap="B"))
    assert len(store.done("fz")) == 2 * 3  # (block, tap) units of one chunk each


def test_channel_objective_goes_to_its_own_group(tiny, stored):
    profile, model, record = tiny
    store, _ = stored
    channel_profile = profiles.override(profile, {"fz.objective": "channel", "fz.steps": 2})
    dataset = fz.run(store, model, record, channel_profile, blocks=["1.1"], taps=["B"], channels=[0, 1])
    assert store.group_attrs("fz_channel")["objective"] == "channel"
    made = dataset["activation"].sel(block="1.1", tap="B")
    assert not made.sel(channel=[0, 1]).isnull().any() and made.sel(channel=slice(8, None)).isnull().all()
    assert store.done("fz_channel") == {"s0:1.1:B:j0:c0-1"}  # exactly the FZs asked for (each is its name's)
    assert len(store.done("fz")) == 2 * 3  # the center-neuron group is untouched


# ---------------------------------------------------------------- the command line


RESUME_PROFILE = """\
base = "paper"
name = "fz-resume-test"

[model]
weights = "random:0"
widths = [8, 8, 16, 16]
stem = "small"
num_classes = 10
image_size = 32

[fz]
steps = 16
channel_batch = 2
seeds = [0, 1]

[fz.jitter]
"2.1" = { I = 0, B = 0, O = 0 }
"""
RESUME_ARGS = ["--blocks", "2.1", "--taps", "B,O", "--channels", "0-5"]  # 2 seeds x 2 taps x 3 chunks = 12 units


def done_units(path: Path) -> set:
    try:
        return Store(path).done("fz")
    except Exception:  # the attrs may be mid-write; ask again
        return set()


class KillAfterFirstUnit(threading.Thread):
    """Watches a store and SIGKILLs the process writing it as soon as a unit is marked done."""

    def __init__(self, process: subprocess.Popen, store_path: Path, timeout: float = 240):
        super().__init__(daemon=True)
        self.process, self.store_path, self.timeout = process, store_path, timeout
        self.failure = ""

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while not done_units(self.store_path):
            if self.process.poll() is not None:
                self.failure = f"repro fz ended (exit {self.process.returncode}) before any unit was done"
                return
            if time.monotonic() > deadline:
                self.failure = f"no unit done within {self.timeout} s"
                return
            time.sleep(0.01)
        self.process.send_signal(signal.SIGKILL)


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    profile_path = tmp_path / "resume.toml"
    profile_path.write_text(RESUME_PROFILE)
    killed, whole = tmp_path / "killed.zarr", tmp_path / "whole.zarr"
    arguments = ["fz", "--profile", str(profile_path), *RESUME_ARGS]
    runner = CliRunner()
    log_path = tmp_path / "killed.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(Path(sys.executable).parent / "repro"), *arguments, "--store", str(killed)],
                                   stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **ONE_THREAD_ENV})
        watcher = KillAfterFirstUnit(process, killed)
        watcher.start()
        try:
            # The uninterrupted run, made here while the subprocess starts up.
            result = runner.invoke(main, [*arguments, "--store", str(whole)])
            assert result.exit_code == 0, result.output
            watcher.join(timeout=300)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=60)
    assert not watcher.failure, f"{watcher.failure}: {log_path.read_text()[-2000:]}"
    done_at_kill = Store(killed).done("fz")
    assert 0 < len(done_at_kill) < 6, f"the kill should land mid-run, done: {sorted(done_at_kill)}"
    assert not Store(killed).group_attrs("fz")["complete"]
    result = runner.invoke(main, [*arguments, "--store", str(killed)])  # the rerun resumes
    assert result.exit_code == 0, result.output
    resumed, uninterrupted = Store(killed).dataset("fz").load(), Store(whole).dataset("fz").load()
    assert Store(killed).done("fz") == Store(whole).done("fz") and len(Store(whole).done("fz")) == 12
    for name in ("image", "activation", "initial_objective", "final_objective", "valid"):
        np.testing.assert_array_equal(resumed[name].values, uninterrupted[name].values, err_msg=name)


@pytest.mark.parametrize("flag, value, message", [("--blocks", "9.9", "unknown block '9.9'"),
                                                   ("--taps", "X", "unknown tap 'X'")])
def test_unknown_block_or_tap_exits_2_with_a_clear_message(tmp_path, flag, value, message):
    profile_path = tmp_path / "tiny.toml"
    profile_path.write_text(RESUME_PROFILE)
    result = CliRunner().invoke(main, ["fz", "--profile", str(profile_path), "--store", str(tmp_path / "s.zarr"),
                                       flag, value])
    assert result.exit_code == 2
    assert message in result.output

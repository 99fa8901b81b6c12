"""Nothing silently wrong: damage to any kind of file of a store is found by `repro check`, repaired so a rerun
ends identical to an undamaged store (or refused in one line), a run interrupted before a group's finish is
finished by the rerun, `--new-store` empties the store once and first, inputs are fingerprinted by content,
and settings are checked for meaning before anything is written.

The stores come from a small twin of the tiny profile (two blocks; every kind of group), built in-process;
kills run `repro` in a forked process (``store_runs``)."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image

from repro import pipeline, profiles
from repro.store import FAULT_ENV, FAULT_SIGNAL_ENV, UNITS, Store
from residual_stream.cli import main
from repro.hashing import group_digest
from store_runs import repro

pytestmark = pytest.mark.slow

SMALL = '''base = "tiny"
name = "small"
[model]
blocks = ["2.1", "3.1"]
[alignment]
blocks = ["2.1", "3.1"]
'''


def one_line(result) -> str:
    """A refused in-process run: exit 2, the message as the last line, no traceback."""
    assert result.exit_code == 2, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: ") and "Traceback" not in result.output, result.output
    return lines[-1]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def small_profile(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("profile") / "small.toml"
    path.write_text(SMALL)
    return path


@pytest.fixture(scope="module")
def done(small_profile, tmp_path_factory) -> Path:
    """A complete store of the small profile: what every repaired or resumed store must equal."""
    store = tmp_path_factory.mktemp("done") / "done.zarr"
    pipeline.run(str(small_profile), store)
    assert {state.state for state in Store(store).status()} == {"complete"}
    return store


@pytest.fixture
def copy(done, tmp_path) -> Path:
    target = tmp_path / "copy.zarr"
    shutil.copytree(done, target)
    return target


def tiny_images() -> Path:
    """The toy world's held-out split the tiny profiles read (made once by the first pipeline run)."""
    return pipeline.toy_images(profiles.load("tiny"))


def digests(store: Path) -> dict[str, str]:
    return {group: group_digest(store, group) for group in Store(store).groups()}


def rerun(profile: Path, store: Path) -> None:
    result = run("pipeline", "--profile", profile, "--store", store)
    assert result.exit_code == 0, (result.output[-3000:], result.exception)


# ---------------------------------------------------------------- 1. --new-store


def test_new_store_on_a_complete_copy_remakes_everything_and_loses_nothing(small_profile, copy, done):
    result = run("pipeline", "--profile", small_profile, "--new-store", "--store", copy)
    assert result.exit_code == 0, result.output[-3000:]
    assert result.output.count("started a fresh store") == 1
    assert "already complete" not in result.output
    assert digests(copy) == digests(done)
    assert {state.state for state in Store(copy).status()} == {"complete"}


def test_new_store_on_one_stage_is_not_ignored(small_profile, copy):
    result = run("fz", "--profile", small_profile, "--new-store", "--store", copy)
    assert result.exit_code == 0, result.output[-3000:]
    assert "started a fresh store" in result.output and "already complete" not in result.output
    assert Store(copy).groups() == ["fz"]


def test_new_store_refused_input_removes_nothing(small_profile, copy, done, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(SMALL.replace('name = "small"', 'name = "small"\n[ablation]\nscales = [0.1, 1.5]'))
    assert "ablation.scales" in one_line(run("pipeline", "--profile", bad, "--new-store", "--store", copy))
    assert digests(copy) == digests(done)


# ---------------------------------------------------------------- 2. check covers every chunk


READERS = {"fz": ("metrics", ("responses", "metrics")), "metrics": ("ablate", ("ablation",)),
           "natural": ("metrics", ("responses", "metrics"))}


@pytest.mark.parametrize("damage", ["rm metrics/channel/c/0", "rm fz/valid/c/0/0", "rm ablation/ablation_value/c/0/0",
                                    "flip fz/channel/c/0", "flip natural/valid/c/0/0"])
def test_declaration_time_arrays_are_checked_and_rewritten(damage, small_profile, copy, done):
    act, path = damage.split()
    target = copy / path
    if act == "rm":
        target.unlink()
    else:
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    group = path.split("/")[0]
    found = run("check", "--store", copy)
    assert found.exit_code == 1 and f"damaged: {group} group: declaration-time chunk" in found.output, found.output
    reader = READERS.get(group)
    if reader:  # no stage computes from a damaged coordinate or mask
        command, made = reader
        for name in made:
            shutil.rmtree(copy / name)
        profile = ["--profile", small_profile] if command == "ablate" else []
        assert "repro check" in one_line(run(command, "--store", copy, *profile))
    repaired = run("check", "--store", copy, "--repair")
    assert repaired.exit_code == 0 and "marked for re-declaration" in repaired.output, repaired.output
    assert run("check", "--store", copy).exit_code == 0
    assert {state.name: state.state for state in Store(copy).status()}[group] == "damaged"
    rerun(small_profile, copy)
    assert digests(copy) == digests(done)
    assert {state.state for state in Store(copy).status()} == {"complete"}


def test_unreadable_group_metadata_is_one_line_everywhere_and_repaired(small_profile, copy, done):
    (copy / "metrics" / "zarr.json").write_text("garbage{")
    status = run("status", "--store", copy)
    assert status.exit_code == 0 and "damaged" in status.output, status.output
    found = run("check", "--store", copy)
    assert found.exit_code == 1 and "metrics group: its metadata" in found.output, found.output
    assert "repro check" in one_line(run("pipeline", "--profile", small_profile, "--store", copy))
    assert run("check", "--store", copy, "--repair").exit_code == 0
    rerun(small_profile, copy)
    assert digests(copy) == digests(done)


def test_unreadable_marker_folder_metadata_is_one_line_and_rewritten(small_profile, copy, done):
    (copy / "metrics" / UNITS / "zarr.json").write_text("garbage")
    assert "metrics markers: its marker folder's metadata" in one_line(run("verify", "--store", copy))
    repaired = run("check", "--store", copy, "--repair")
    assert repaired.exit_code == 0 and "rewrote the metadata of marker folders: 1" in repaired.output
    assert run("check", "--store", copy).exit_code == 0
    assert Store(copy).done("metrics") == Store(done).done("metrics")
    assert run("verify", "--store", copy).exit_code == 0


def test_a_lost_array_metadata_is_repaired_and_the_rerun_ends_complete(small_profile, copy, done):
    (copy / "natural" / "activation" / "zarr.json").unlink()
    found = run("check", "--store", copy)
    assert found.exit_code == 1 and "array activation's metadata" in found.output, found.output
    assert run("check", "--store", copy, "--repair").exit_code == 0
    rerun(small_profile, copy)
    assert digests(copy) == digests(done)
    assert {state.state for state in Store(copy).status()} == {"complete"}


def test_a_garbage_marker_is_found_and_its_unit_recomputed(small_profile, copy, done):
    marker = sorted((copy / "fz" / UNITS).glob("*/zarr.json"))[3]
    marker.write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"unit": 7}}))
    found = run("check", "--store", copy)
    assert found.exit_code == 1 and "its marker is not a valid marker" in found.output, found.output
    assert run("check", "--store", copy, "--repair").exit_code == 0
    rerun(small_profile, copy)
    assert digests(copy) == digests(done)
    assert Store(copy).done("fz") == Store(done).done("fz")


@pytest.mark.parametrize("damage", ["dim name", "span"])
def test_a_marker_whose_region_lies_outside_the_group_is_found_and_its_unit_recomputed(damage, small_profile, copy,
                                                                                        done):
    """A valid-looking marker with a damaged region (a dim renamed by one byte, a bound past the dim) would mark
    other values done: check names it, repair un-marks the unit, the rerun remakes it."""
    marker = sorted((copy / "fz" / UNITS).glob("*/zarr.json"))[3]
    node = json.loads(marker.read_text())
    region = node["attributes"]["region"]
    if damage == "dim name":
        region["bl5ck"] = region.pop("block")
    else:
        region["channel"] = [region["channel"][0], 10_000]
    marker.write_text(json.dumps(node))
    found = run("check", "--store", copy)
    assert found.exit_code == 1 and "its marker's region" in found.output, found.output
    assert run("check", "--store", copy, "--repair").exit_code == 0
    rerun(small_profile, copy)
    assert digests(copy) == digests(done)
    assert Store(copy).done("fz") == Store(done).done("fz")


# ---------------------------------------------------------------- 3. finishing is part of the protocol


@pytest.mark.parametrize("stage, group, finish_attr", [
    (("metrics",), "metrics", "failed_fz_count"),
    (("alignment", "--profile", "{profile}"), "alignment", "network_images"),
    (("natural", "--profile", "{profile}", "--images", "{images}"), "natural", "corrupt_images"),
])
def test_a_kill_between_the_last_unit_and_finish_is_finished_by_the_rerun(stage, group, finish_attr, small_profile,
                                                                           copy, done):
    args = [a.format(profile=small_profile, images=tiny_images()) for a in stage]
    shutil.rmtree(copy / group)
    killed = repro(*args, "--store", copy, fault="finishing")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    state = {s.name: s for s in Store(copy).status()}[group]
    assert state.state == "unfinished" and state.units_done == state.units_expected, state
    resumed = repro(*args, "--store", copy)
    assert resumed.returncode == 0 and "already complete" not in resumed.stderr, resumed.stderr[-2000:]
    assert Store(copy).group_attrs(group)["complete"] and finish_attr in Store(copy).group_attrs(group)
    assert group_digest(copy, group) == group_digest(done, group)


def test_ctrl_c_before_finish_on_dask_workers_is_one_line_and_the_rerun_finishes(copy, done):
    for group in ("responses", "metrics"):
        shutil.rmtree(copy / group)
    # Python keeps SIGINT ignored in a child whose parent ignored it; a Ctrl-C must reach this run whatever the
    # test process inherited from earlier tests.
    command = [sys.executable, "-c", "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
               "from repro.cli import main; main()", "metrics", "--store", str(copy), "--local-workers", "2"]
    environment = {**os.environ, FAULT_ENV: "finishing", FAULT_SIGNAL_ENV: "INT"}
    stopped = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr and "cannot schedule" not in stopped.stderr, stopped.stderr[-3000:]
    assert stopped.stderr.strip().splitlines()[-1] == "Error: interrupted; rerun to resume (finished units are kept)"
    assert {s.name: s.state for s in Store(copy).status()}["metrics"] == "unfinished"
    resumed = subprocess.run(command[:-2], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert group_digest(copy, "metrics") == group_digest(done, "metrics")
    assert Store(copy).group_attrs("metrics")["complete"]


# ---------------------------------------------------------------- 4. inputs by content


def test_an_image_edited_in_place_at_the_same_size_makes_natural_recompute(small_profile, copy, tmp_path):
    folder = tmp_path / "images"
    for label in ("a", "b"):
        for index in range(3):
            (folder / label).mkdir(parents=True, exist_ok=True)
            shade = (40 * index, 90 if label == "a" else 180, 60)
            Image.new("RGB", (40, 40), shade).save(folder / label / f"{index}.bmp")  # uncompressed: size fixed
    args = ("natural", "--profile", small_profile, "--images", folder, "--store", copy)
    assert run(*args).exit_code == 0
    assert "already complete" in run(*args).output
    edited = folder / "a" / "1.bmp"
    size = edited.stat().st_size
    with Image.open(edited) as image:
        pixels = image.copy()
    pixels.putpixel((20, 20), (255, 0, 255))
    pixels.save(edited)
    os.utime(edited, ns=(edited.stat().st_atime_ns, edited.stat().st_mtime_ns + 10**9))
    assert edited.stat().st_size == size
    changed = run(*args)
    assert changed.exit_code == 0 and "already complete" not in changed.output, changed.output[-2000:]
    assert "natural: replacing the stored group (settings changed: images" in changed.output


# ---------------------------------------------------------------- 5. settings checked for meaning first


@pytest.mark.parametrize("text, message", [
    ("[fz]\nlr = inf\n", "fz.lr must be a finite number"),
    ("[fz]\nlr = nan\n", "fz.lr must be a finite number"),
    ("[ablation]\nscales = [0.1, 1.5]\n", "ablation.scales"),
    ("[metrics]\nmix_low = 0.9\nmix_high = 0.2\n", "metrics.mix_low (0.9) must be below"),
    ("[model]\nblocks = []\n", "model.blocks must name at least one block"),
    ("[ablation]\nblocks = [\"9.9\"]\n", "ablation.blocks names unknown block(s) 9.9"),
])
def test_a_meaningless_setting_is_refused_before_anything_is_written(text, message, tmp_path):
    profile = tmp_path / "bad.toml"
    profile.write_text('base = "tiny"\n' + text)
    store = tmp_path / "never.zarr"
    assert message in one_line(run("pipeline", "--profile", profile, "--store", store))
    assert not store.exists()


def test_metrics_that_leave_nothing_to_ablate_leave_nothing_stale(small_profile, copy, tmp_path):
    narrow = tmp_path / "narrow.toml"
    narrow.write_text(f'base = "{small_profile}"\nname = "small"\n[metrics]\nmix_low = 0.5\nmix_high = 0.5000001\n')
    result = run("pipeline", "--profile", narrow, "--store", copy)
    assert result.exit_code == 0, result.output[-3000:]
    assert "nothing to ablate" in result.output
    assert "ablation" not in Store(copy).groups()
    assert "stale" not in {state.state for state in Store(copy).status()}
    assert run("verify", "--store", copy).exit_code == 0


# ---------------------------------------------------------------- 6. one line, not a traceback


def test_bad_profiles_and_flags_are_one_line(tmp_path):
    itself = tmp_path / "itself.toml"
    itself.write_text(f'base = "{itself}"\n')
    assert "cycle" in one_line(run("profile", "show", itself))
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b'base = "tiny"\nname = "\xff\xfe"\n')
    assert "not UTF-8" in one_line(run("profile", "show", binary))
    store = tmp_path / "s.zarr"
    assert "fz.steps must lie within" in one_line(run("fz", "--profile", "tiny", "--store", store,
                                                      "--steps", "99999999999999999999999"))
    assert "--blocks" in one_line(run("fz", "--profile", "tiny", "--store", store, "--blocks", " , "))
    assert not store.exists()


def test_weights_of_another_architecture_or_an_empty_file_are_one_line_with_the_reason(tmp_path):
    other = tmp_path / "resnet50.pt"
    torch.save(torchvision.models.resnet50().state_dict(), other)
    message = one_line(run("fz", "--profile", "tiny", "--weights", other, "--store", tmp_path / "s.zarr"))
    assert "unexpected keys" in message and "shape mismatches" in message and "another architecture" in message
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert "the file is empty" in one_line(run("fz", "--profile", "tiny", "--weights", empty,
                                               "--store", tmp_path / "s.zarr"))


def test_an_out_of_space_error_names_the_store(small_profile, tmp_path, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Store, "write_unit", full)
    store = tmp_path / "s.zarr"
    message = one_line(run("fz", "--profile", small_profile, "--store", store))
    assert f"no space left on the device at {store}" in message


def test_a_stage_without_inputs_checks_no_other_group(copy):
    """The FZ stage (true reading) and the natural stage read no group: damage elsewhere (or another process's
    unit half-written there) is not theirs to refuse on; ``check`` of an empty list checks nothing."""
    chunk = next(p for p in _damage_targets(copy / "ablation") if "/c/" in p.as_posix())
    chunk.unlink()
    store = Store(copy)
    assert store.check(["ablation"]) and store.check()
    assert store.check([]) == []
    store.require_intact([])


def test_the_aliased_stage_refuses_to_copy_from_a_damaged_fz(copy, small_profile):
    """The aliased FZs copy the taps they read truly from ``fz``: a done chunk missing there stops the copy
    (a fill value would otherwise be copied in as an FZ)."""
    chunk = next(p for p in _damage_targets(copy / "fz") if "/image/c/" in p.as_posix())
    chunk.unlink()
    shutil.rmtree(copy / "fz_aliased")
    message = one_line(run("pipeline", "--profile", small_profile, "--store", copy))
    assert "is damaged (fz" in message and "repro check" in message, message
    assert not Store(copy).done("fz_aliased")


# ---------------------------------------------------------------- widened: random damage, random kills


def _damage_targets(store: Path) -> list[Path]:
    """Every file a store holds that a stage wrote: chunks, array and group metadata, markers."""
    return sorted(p for p in store.rglob("*") if p.is_file() and not p.relative_to(store).parts[0].startswith("_")
                  and len(p.relative_to(store).parts) > 1)


def test_random_damage_is_reported_and_repaired_to_the_undamaged_store(small_profile, done, tmp_path):
    """50 draws (fixed seed): a random file of a random group removed, truncated, flipped or replaced by garbage;
    `check` reports it, `check --repair` and a rerun give the undamaged digests, or a stage refuses in one line."""
    rng = random.Random(2512)
    expected = digests(done)
    outcomes = {"repaired": 0, "refused": 0}
    for draw in range(50):
        store = tmp_path / f"d{draw}.zarr"
        shutil.copytree(done, store)
        groups = Store(store).groups()
        group = rng.choice(groups)
        target = rng.choice(_damage_targets(store / group))
        act = rng.choice(["remove", "truncate", "flip", "garbage"])
        data = target.read_bytes()
        if act == "remove":
            target.unlink()
        elif act == "truncate":
            target.write_bytes(data[: len(data) // 2])
        elif act == "flip":
            position = rng.randrange(len(data)) if data else 0
            target.write_bytes(data[:position] + bytes([data[position] ^ 0x5A]) + data[position + 1:] if data else b"x")
        else:
            target.write_bytes(b"\x00garbage\xff" * 3)
        where = f"draw {draw}: {act} {target.relative_to(store)}"
        found = run("check", "--store", store)
        if found.exit_code == 0:
            # Only harmless damage may pass: metadata parsed the same (a flipped byte inside a string
            # attribute, say), so every array and done unit still reads as before.
            assert digests(store) == expected, where
            continue
        assert found.exit_code == 1 and "damaged:" in found.output, (where, found.output)
        assert run("check", "--store", store, "--repair").exit_code == 0, where
        result = run("pipeline", "--profile", small_profile, "--store", store)
        if result.exit_code == 2:
            one_line(result)
            outcomes["refused"] += 1
            continue
        assert result.exit_code == 0, (where, result.output[-2000:])
        assert digests(store) == expected, where
        assert run("check", "--store", store).exit_code == 0, where
        outcomes["repaired"] += 1
        shutil.rmtree(store)
    print(f"random damage: {outcomes}")
    assert outcomes["repaired"] >= 40


STAGES = {"fz": ("fz", "--profile", "{profile}"),
          "natural": ("natural", "--profile", "{profile}", "--images", "{images}"),
          "metrics": ("metrics",), "ablate": ("ablate", "--profile", "{profile}"),
          "alignment": ("alignment", "--profile", "{profile}")}
STAGE_GROUPS = {"fz": ("fz",), "natural": ("natural", "image_cache"), "metrics": ("responses", "metrics"),
                "ablate": ("ablation",), "alignment": ("alignment",)}
POINTS = {"staged": 1, "declared": 1, "unit-written": 6, "unit-marked": 6, "finishing": 1}


def test_a_kill_at_a_random_instant_of_a_random_stage_resumes_identical(small_profile, done, tmp_path):
    """20 draws (fixed seed): a stage killed at the K-th time it reaches a random point of the store protocol
    (declaring, writing a unit, marking it, finishing), then rerun, equals the uninterrupted store."""
    rng = random.Random(1204)
    killed_count = 0
    for draw in range(20):
        stage = rng.choice(sorted(STAGES))
        point = rng.choice(sorted(POINTS))
        nth = rng.randint(1, POINTS[point])
        store = tmp_path / f"k{draw}.zarr"
        shutil.copytree(done, store)
        for group in STAGE_GROUPS[stage]:
            shutil.rmtree(store / group)
        args = [a.format(profile=small_profile, images=tiny_images()) for a in STAGES[stage]] + ["--store", str(store)]
        killed = repro(*args, fault=f"{point}@{nth}")
        killed_count += killed.returncode == -signal.SIGKILL
        assert killed.returncode in (0, -signal.SIGKILL), (stage, point, nth, killed.stderr[-2000:])
        resumed = repro(*args)
        assert resumed.returncode == 0, (stage, point, nth, resumed.stderr[-2000:])
        for group in STAGE_GROUPS[stage]:
            assert group_digest(store, group) == group_digest(done, group), (stage, point, nth, group)
            assert Store(store).group_attrs(group)["complete"], (stage, point, nth, group)
        shutil.rmtree(store)
    print(f"random kills: {killed_count} of 20 draws killed the stage")
    assert killed_count >= 12

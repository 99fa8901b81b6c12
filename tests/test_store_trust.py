"""The store under ordinary acts: kills at exact instants, two writers, overrides, rebuilt inputs, damaged
chunks, bad profiles and OS errors. Stages run as users run them (the `repro` command, in a subprocess
where a kill or a second process is the point), on the tiny profile."""
from __future__ import annotations

import errno
import os
import shutil
import signal
from pathlib import Path

import pytest
import xarray as xr
from click.testing import CliRunner

from repro.hashing import group_digest
from store_runs import finished, one_line_error, repro, start
from repro import pipeline, profiles
from repro.store import Store
from residual_stream.cli import main

pytestmark = pytest.mark.slow
GROUPS = ("fz", "fz_channel", "natural", "image_cache", "responses", "metrics", "ablation")


@pytest.fixture(scope="module")
def tiny_images() -> Path:
    return pipeline.toy_images(profiles.load("tiny"))


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, tiny_images) -> Path:
    """One uninterrupted tiny pipeline run: what every resumed or concurrent run must equal."""
    store = tmp_path_factory.mktemp("baseline") / "base.zarr"
    result = repro("pipeline", "--profile", "tiny", "--store", store)
    assert result.returncode == 0, result.stderr[-3000:]
    return store


@pytest.fixture
def copied(baseline, tmp_path) -> Path:
    target = tmp_path / "copy.zarr"
    shutil.copytree(baseline, target)
    return target


STAGE_COMMANDS = {
    "fz": (("fz",), ("fz",)),
    "natural": (("natural", "--images", "{images}"), ("natural", "image_cache")),
    "metrics": (("metrics",), ("responses", "metrics")),
    "ablate": (("ablate",), ("ablation",)),
}


def stage_args(stage: str, store: Path, images: Path) -> list[str]:
    args = [a.format(images=images) for a in STAGE_COMMANDS[stage][0]]
    profile = [] if stage == "metrics" else ["--profile", "tiny"]
    return [*args, *profile, "--store", str(store)]


@pytest.mark.parametrize("stage, point", [
    ("fz", "declared"), ("natural", "declared"), ("metrics", "declared"), ("ablate", "declared"),
    ("fz", "staged"), ("fz", "unit-written"),
])
def test_a_kill_at_an_exact_instant_resumes_to_identical_arrays(stage, point, copied, baseline, tiny_images):
    produced = STAGE_COMMANDS[stage][1]
    for group in produced:
        shutil.rmtree(copied / group)
    killed = repro(*stage_args(stage, copied, tiny_images), fault=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    Store(copied).status()  # readable at any instant
    resumed = repro(*stage_args(stage, copied, tiny_images))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for group in produced:
        assert group_digest(copied, group) == group_digest(baseline, group), group
        assert Store(copied).done(group) == Store(baseline).done(group)
    leftovers = [p.name for p in copied.iterdir() if p.name.startswith(("_staging", "_trash"))]
    assert not leftovers and not list(copied.rglob("*.partial"))
    assert "not recognized" not in resumed.stderr


@pytest.mark.parametrize("stage", ["fz", "natural"])
@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "existing"])
def test_two_writers_end_with_a_single_writers_store(stage, existing, tmp_path, baseline, tiny_images):
    store = tmp_path / "shared.zarr"
    if existing:  # a store that already holds a partial group
        extra = ["--blocks", "1.1"]
        first = repro(*stage_args(stage, store, tiny_images), *extra)
        assert first.returncode == 0, first.stderr[-2000:]
    runs = [start(*stage_args(stage, store, tiny_images)) for _ in range(2)]
    results = [(done.returncode, done.stdout, done.stderr) for done in map(finished, runs)]
    codes = sorted(code for code, _, _ in results)
    assert codes[0] == 0 and codes[1] in (0, 2), [r[2][-1500:] for r in results]
    for code, _, stderr in results:
        assert "Traceback" not in stderr, stderr[-2000:]
        if code == 2:
            assert "being written by another process" in stderr.strip().splitlines()[-1]
    finish = repro(*stage_args(stage, store, tiny_images))  # what a user does after a refusal
    assert finish.returncode == 0, finish.stderr[-2000:]
    for group in STAGE_COMMANDS[stage][1]:
        assert group_digest(store, group) == group_digest(baseline, group), group


def test_an_override_replaces_only_its_own_group(copied):
    before = {group: group_digest(copied, group) for group in GROUPS}
    result = repro("ablate", "--store", copied, "--trials", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ablation: replacing the stored group (settings changed: ablation.trials 2 → 1)" in result.stderr
    after = {group: group_digest(copied, group) for group in GROUPS}
    assert after["ablation"] != before["ablation"]
    assert {g: d for g, d in after.items() if g != "ablation"} == {g: d for g, d in before.items() if g != "ablation"}
    assert all(state.state == "complete" for state in Store(copied).status())

    steps = repro("fz", "--store", copied, "--steps", "3", "--blocks", "1.1")
    assert steps.returncode == 0 and "fz.steps 8 → 3" in steps.stderr, steps.stderr[-2000:]
    states = {state.name: state for state in Store(copied).status()}
    assert states["fz"].state == "partial"
    # The aliased FZs copied some taps from the replaced fz, so they and what was made from them are stale too.
    assert {name for name, s in states.items() if s.state == "stale"} == {
        "responses", "metrics", "ablation", "fz_aliased", "responses_aliased", "metrics_aliased"}
    assert group_digest(copied, "natural") == before["natural"]


def test_other_images_make_metrics_and_ablation_stale(copied, tiny_images, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_images, other)
    next(iter(sorted(other.rglob("*.png")) or sorted(other.rglob("*.*")))).unlink()
    result = repro("natural", "--store", copied, "--images", other)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "natural: replacing the stored group" in result.stderr
    status = repro("status", "--store", copied)
    lines = {line.split()[0]: line for line in status.stdout.splitlines()[1:]}
    for group in ("responses", "metrics", "ablation"):
        assert "stale" in lines[group], status.stdout
    assert "was rebuilt after 'metrics' was made" in lines["metrics"]
    assert "complete" in lines["fz"]
    refused = repro("report", "--store", copied, "--out", tmp_path / "report")
    assert "stale" in one_line_error(refused)
    assert "stale" in one_line_error(repro("verify", "--store", copied))
    again = repro("metrics", "--store", copied)
    assert again.returncode == 0, again.stderr[-2000:]
    states = {state.name: state.state for state in Store(copied).status()}
    assert states["metrics"] == "complete" and states["ablation"] == "stale"


def test_damaged_chunks_are_found_refused_and_recomputed_after_repair(copied, baseline, tiny_images):
    image_chunks = sorted((copied / "fz" / "image" / "c").rglob("*"))
    deleted = next(p for p in image_chunks if p.is_file())
    deleted.unlink()
    activation = next(p for p in sorted((copied / "natural" / "activation" / "c").rglob("*")) if p.is_file())
    activation.write_bytes(activation.read_bytes()[:-7])

    check = repro("check", "--store", copied)
    assert check.returncode == 1, check.stdout + check.stderr
    damaged = [line for line in check.stdout.splitlines() if line.startswith("damaged:")]
    assert any(line.startswith("damaged: fz unit") and "missing" in line for line in damaged), check.stdout
    assert any(line.startswith("damaged: natural unit") and "does not decode" in line for line in damaged)

    for group in ("responses", "metrics"):
        shutil.rmtree(copied / group)
    refused = repro("metrics", "--store", copied)
    assert "repro check" in one_line_error(refused)
    assert not Store(copied).has("metrics")

    repaired = repro("check", "--store", copied, "--repair")
    assert repaired.returncode == 0 and "un-marked" in repaired.stdout
    assert repro("check", "--store", copied).returncode == 0
    done_fz = Store(copied).done("fz")
    assert len(done_fz) == len(Store(baseline).done("fz")) - 1
    for stage, groups in (("fz", ["fz"]), ("natural", ["natural", "image_cache"])):
        rerun = repro(*stage_args(stage, copied, tiny_images))
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        for group in groups:
            assert group_digest(copied, group) == group_digest(baseline, group), group
    assert repro("check", "--store", copied).returncode == 0


def test_metrics_computes_the_blocks_whose_fzs_are_done(tmp_path):
    store = tmp_path / "partial.zarr"
    runner = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()
    made = runner.invoke(main, ["fz", "--profile", "tiny", "--store", str(store), "--blocks", "2.1"])
    assert made.exit_code == 0, made.output
    result = runner.invoke(main, ["metrics", "--store", str(store)])
    assert result.exit_code == 0, result.output
    assert "skipping 6 block(s): 1.1 (FZs of tap I, B, O not done)" in result.stderr
    metrics = Store(store).dataset("metrics")
    assert metrics.mix.sel(block="2.1", stimulus_set="fz").notnull().any()
    assert metrics.mix.sel(block="1.1").isnull().all()
    assert Store(store).group_state("metrics").state == "partial"
    more = runner.invoke(main, ["fz", "--store", str(store), "--blocks", "1.1"])
    assert more.exit_code == 0, more.output
    again = runner.invoke(main, ["metrics", "--store", str(store)])
    assert again.exit_code == 0 and "replacing" not in again.stderr
    assert Store(store).dataset("metrics").mix.sel(block="1.1", stimulus_set="fz").notnull().any()


BAD_PROFILES = {
    "typo": ("[fz]\nstpes = 2\n", "unknown setting fz.stpes (did you mean fz.steps?)"),
    "type": ('[fz]\nsteps = "eight"\n', "fz.steps must be an integer, not 'eight'"),
    "negative": ("[fz]\nsteps = -1\n", "fz.steps must be positive"),
    "choice": ('[natural]\ndtype = "int8"\n', "natural.dtype must be one of float32, float16"),
    "table": ("fz = 3\n", "fz must be a table"),
}


@pytest.mark.parametrize("case", sorted(BAD_PROFILES))
def test_a_bad_profile_is_one_line_and_leaves_no_store(case, tmp_path):
    text, message = BAD_PROFILES[case]
    profile = tmp_path / "bad.toml"
    profile.write_text('base = "tiny"\n' + text)
    store = tmp_path / "never.zarr"
    result = CliRunner().invoke(main, ["fz", "--profile", str(profile), "--store", str(store)])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not store.exists()


def test_a_missing_key_is_named(tmp_path):
    profile = tmp_path / "alone.toml"
    profile.write_text((profiles.PROFILE_DIR / "paper.toml").read_text().replace("lr = 0.05\n", ""))
    result = CliRunner().invoke(main, ["profile", "show", str(profile)])
    assert result.exit_code == 2 and "missing setting fz.lr" in result.output


def test_negative_steps_on_the_command_line_leave_no_store_and_the_fix_works(tmp_path):
    store = tmp_path / "s.zarr"
    runner = CliRunner()
    refused = runner.invoke(main, ["fz", "--profile", "tiny", "--store", str(store), "--steps", "-1"])
    assert refused.exit_code == 2 and "fz.steps must be positive" in refused.output
    assert not store.exists()
    fixed = runner.invoke(main, ["fz", "--profile", "tiny", "--store", str(store), "--steps", "2", "--blocks", "1.1"])
    assert fixed.exit_code == 0, fixed.output


def test_new_store_validates_before_it_removes_anything(copied):
    before = {group: group_digest(copied, group) for group in ("fz", "natural")}
    refused = CliRunner().invoke(main, ["fz", "--profile", "tiny", "--store", str(copied), "--new-store",
                                        "--blocks", "9.9"])
    assert refused.exit_code == 2 and "9.9" in refused.output
    assert {group: group_digest(copied, group) for group in ("fz", "natural")} == before
    fresh = CliRunner().invoke(main, ["fz", "--profile", "tiny", "--store", str(copied), "--new-store",
                                      "--blocks", "1.1", "--steps", "2"])
    assert fresh.exit_code == 0, fresh.output
    assert Store(copied).groups() == ["fz"]


def test_store_paths_that_cannot_be_used_are_one_line(tmp_path, copied, monkeypatch):
    runner = CliRunner()
    a_file = tmp_path / "file.zarr"
    a_file.write_text("not a store")
    result = runner.invoke(main, ["fz", "--profile", "tiny", "--store", str(a_file)])
    assert result.exit_code == 2 and "is a file" in result.output
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    result = runner.invoke(main, ["fz", "--profile", "tiny", "--store", str(foreign)])
    assert result.exit_code == 2 and "not a residual-stream store" in result.output
    result = runner.invoke(main, ["status", "--store", str(a_file)])
    assert result.exit_code == 2 and "is a file" in result.output

    # A read-only store: nothing to compute is fine, something to compute is one line.
    monkeypatch.setattr(Store, "writable", lambda self: False)
    done = runner.invoke(main, ["fz", "--profile", "tiny", "--store", str(copied)])
    assert done.exit_code == 0 and "already complete" in done.output, done.output
    result = runner.invoke(main, ["fz", "--profile", "tiny", "--store", str(copied), "--steps", "3"])
    assert result.exit_code == 2 and "not writable" in result.output
    assert Store(copied).group_state("fz").state == "complete"


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only file system")])
def test_os_errors_while_writing_are_one_line(code, words, tmp_path, monkeypatch):
    def failing(self, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path / "s.zarr" / "fz" / "image" / "c" / "0"))

    monkeypatch.setattr(xr.Dataset, "to_zarr", failing)
    result = CliRunner().invoke(main, ["fz", "--profile", "tiny", "--store", str(tmp_path / "s.zarr"),
                                       "--blocks", "1.1", "--steps", "1"])
    assert result.exit_code == 2 and words in result.output and "rerun" in result.output, result.output


def test_ctrl_c_says_how_to_resume_and_exits_130(tmp_path, monkeypatch):
    from repro import fz

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fz, "optimize", interrupted)  # the engine the stage runs
    result = CliRunner().invoke(main, ["fz", "--profile", "tiny", "--store", str(tmp_path / "s.zarr"),
                                       "--blocks", "1.1"])
    assert result.exit_code == 130 and "interrupted; rerun to resume" in result.output, result.output
    assert Store(tmp_path / "s.zarr").done("fz") == set()


def test_unreadable_images_fail_the_run_and_are_not_recorded_as_corrupt(tmp_path, tiny_images, monkeypatch):
    from repro import images as imgs

    store = tmp_path / "s.zarr"
    victim = sorted(p for p in tiny_images.rglob("*") if p.is_file() and p.suffix != ".json")[3]
    real = Path.read_bytes

    def unreadable(path):
        if path == victim:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", unreadable)
    profile = tmp_path / "serial.toml"  # in-process decoding, so the patched read applies
    profile.write_text('base = "tiny"\n[natural]\nworkers = 0\n')
    args = ["natural", "--profile", str(profile), "--store", str(store), "--images", str(tiny_images)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "cannot read image" in result.output and "Permission denied" in result.output
    monkeypatch.setattr(Path, "read_bytes", real)
    fixed = CliRunner().invoke(main, args)
    assert fixed.exit_code == 0, fixed.output
    assert Store(store).group_attrs("natural")["corrupt_images"] == []
    assert imgs.CACHE_GROUP in Store(store).groups()


def test_a_folder_of_undecodable_files_is_exit_2(tmp_path):
    folder = tmp_path / "junk" / "class_a"
    folder.mkdir(parents=True)
    for name in ("a.jpg", "b.png"):
        (folder / name).write_bytes(b"not an image at all")
    profile = tmp_path / "serial.toml"
    profile.write_text('base = "tiny"\n[natural]\nworkers = 0\n')
    result = CliRunner().invoke(main, ["natural", "--profile", str(profile), "--store", str(tmp_path / "s.zarr"),
                                       "--images", str(tmp_path / "junk")])
    assert result.exit_code == 2 and "none of the 2 images" in result.output, result.output
    assert not Store(tmp_path / "s.zarr").group_attrs("natural").get("complete")


def test_a_relative_image_folder_is_stored_resolved(tmp_path, tiny_images, monkeypatch):
    shutil.copytree(tiny_images, tmp_path / "imgs")
    monkeypatch.chdir(tmp_path)
    profile = tmp_path / "serial.toml"
    profile.write_text('base = "tiny"\n[natural]\nworkers = 0\n')
    result = CliRunner().invoke(main, ["natural", "--profile", str(profile), "--store", "s.zarr", "--images", "imgs"])
    assert result.exit_code == 0, result.output
    attrs = Store(tmp_path / "s.zarr").group_attrs("natural")
    assert attrs["images_root"] == str((tmp_path / "imgs").resolve())
    assert '"images": "' + str((tmp_path / "imgs").resolve()) in attrs["profile"]


def test_too_little_disk_for_the_first_unit_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    store = tmp_path / "s.zarr"
    result = CliRunner().invoke(main, ["fz", "--profile", "tiny", "--store", str(store), "--blocks", "1.1"])
    assert result.exit_code == 2 and "not enough free space" in result.output, result.output
    assert not store.exists()

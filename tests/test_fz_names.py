"""An FZ is a function of its name: made alone, in a full run, on Dask workers, under another batch budget
or after a kill, it is the same array."""
import numpy as np
import pytest

from repro import fz, profiles
from repro.fz_engine import fz_names, optimize
from repro.model import ModelSpec, load_model
from repro.store import Store
from repro.hashing import group_digest
from store_runs import repro

VARIABLES = ("image", "activation", "initial_objective", "final_objective", "objective_trace")
BLOCK = "3.1"


@pytest.fixture(scope="module")
def tiny():
    profile = profiles.load("tiny")
    model, record = load_model(ModelSpec.from_profile(profile["model"]))
    return profile, model, record


@pytest.fixture(scope="module")
def full(tiny, tmp_path_factory):
    """Every FZ of block 3.1, both seeds, in one run."""
    profile, model, record = tiny
    store = Store.create_or_open(tmp_path_factory.mktemp("full") / "s.zarr", profile, record)
    fz.run(store, model, record, profile, blocks=[BLOCK])
    return store


def one_fz(store: Store, seed: int, tap: str, channel: int):
    return store.dataset("fz").sel(seed=seed, block=BLOCK, tap=tap, channel=channel).load()


def assert_same_fz(a, b):
    np.testing.assert_array_equal(a["image"].values, b["image"].values)
    np.testing.assert_array_equal(a["activation"].values, b["activation"].values)
    # The objectives are read during the optimization, from a batch's forward: a convolution's last bits
    # depend on its batch size, so they agree to float rounding (the images, and so the FZ, exactly).
    for name in ("initial_objective", "final_objective", "objective_trace"):
        np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-5, atol=1e-6)


def test_an_fz_made_alone_is_the_fz_of_a_full_run(tiny, full, tmp_path):
    profile, model, record = tiny
    alone = Store.create_or_open(tmp_path / "alone.zarr", profile, record)
    fz.run(alone, model, record, profiles.override(profile, {"fz.seeds": [1]}), blocks=[BLOCK], taps=["B"],
           channels=[5])
    made = alone.dataset("fz")
    assert made["activation"].notnull().sum() == 1  # exactly one FZ: channel 5, seed 1
    assert_same_fz(one_fz(alone, 1, "B", 5), one_fz(full, 1, "B", 5))


def test_the_batch_budget_changes_no_fz(tiny, full, tmp_path):
    profile, model, record = tiny
    small = Store.create_or_open(tmp_path / "small.zarr", profile, record)
    fz.run(small, model, record, profiles.override(profile, {"fz.batch_images": 3}), blocks=[BLOCK])
    for seed in (0, 1):
        for tap in ("I", "B", "O"):
            for channel in (0, 7, 15):
                assert_same_fz(one_fz(small, seed, tap, channel), one_fz(full, seed, tap, channel))


def test_two_workers_make_the_fzs_of_one_process(tiny, full, tmp_path, scheduler):
    from repro.executor import DaskExecutor

    profile, model, record = tiny
    address, client = scheduler
    workers = Store.create_or_open(tmp_path / "workers.zarr", profile, record)
    fz.run(workers, model, record, profile, blocks=[BLOCK], executor=DaskExecutor(client))
    for seed in (0, 1):
        for channel in range(16):
            assert_same_fz(one_fz(workers, seed, "O", channel), one_fz(full, seed, "O", channel))


def test_two_seeds_of_one_neuron_draw_differently_and_a_stored_fz_is_its_names(tiny, full):
    profile, model, _ = tiny
    jitter = fz.jitter_of(profile, BLOCK, "B")
    names = fz_names(profile, BLOCK, "B", [5], [0, 1], jitter=jitter, resample=profile["fz"]["resample"])
    assert names[0].text != names[1].text
    result = optimize(fz.prepare(model), profile, names, resample=profile["fz"]["resample"])
    assert not np.array_equal(result.images[0].numpy(), result.images[1].numpy())
    for seed in (0, 1):
        np.testing.assert_array_equal(fz.to_uint8(result.images[seed:seed + 1])[0], one_fz(full, seed, "B", 5)["image"].values)


def test_a_run_killed_mid_batch_resumes_to_the_same_arrays(tmp_path):
    args = ("fz", "--profile", "tiny", "--weights", "random:0", "--blocks", BLOCK, "--taps", "B", "--channels", "0-5")
    whole, resumed = tmp_path / "whole.zarr", tmp_path / "resumed.zarr"
    assert repro(*args, "--store", str(whole)).returncode == 0
    killed = repro(*args, "--store", str(resumed), fault="unit-marked@1")  # after the batch's first piece
    assert killed.returncode != 0
    done = Store(resumed).done("fz")
    assert 0 < len(done) < len(Store(whole).done("fz"))
    assert repro(*args, "--store", str(resumed)).returncode == 0
    assert group_digest(resumed, "fz") == group_digest(whole, "fz")


def test_the_aliased_comparison_copies_the_taps_its_reading_reads_truly(tiny, tmp_path, monkeypatch):
    """A downsample block's I reads the same tensor under the aliased reading: the aliased group takes those
    FZs from ``fz`` (no optimization), and they are what making them would give; B and O are made."""
    from repro.stages import first_seed_aliased

    profile, model, record = tiny
    aliased = profiles.override(profile, first_seed_aliased(profile))
    store = Store.create_or_open(tmp_path / "s.zarr", profile, record)
    fz.run(store, model, record, profile, blocks=["2.0"])
    made = []
    real_optimize = fz.optimize

    def counting(model, profile, names, **kwargs):
        made.extend((name.block, name.tap) for name in names)
        return real_optimize(model, profile, names, **kwargs)

    monkeypatch.setattr(fz, "optimize", counting)
    fz.run(store, model, record, aliased, blocks=["2.0"], group="fz_aliased", reuse="fz")
    assert made and ("2.0", "I") not in made and {("2.0", "B"), ("2.0", "O")} <= set(made)
    copied = store.dataset("fz_aliased").sel(seed=0, block="2.0", tap="I").load()
    np.testing.assert_array_equal(copied["image"].values,
                                  store.dataset("fz").sel(seed=0, block="2.0", tap="I")["image"].values)
    # Made rather than copied (no group to reuse), the same arrays.
    alone = Store.create_or_open(tmp_path / "alone.zarr", profile, record)
    fz.run(alone, model, record, aliased, blocks=["2.0"], taps=["I"], group="fz_aliased")
    assert_same_fz(alone.dataset("fz_aliased").sel(seed=0, block="2.0", tap="I").load(), copied)
    stored = store.dataset("fz_aliased")
    assert {("2.0", t) for t in "IBO"} <= fz.done_taps(stored, fz.covered(store, "fz_aliased"))

"""The store contract: identity checks, units written before they are marked done, provenance."""
import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

from repro import profiles
from repro.cli import main
from repro.errors import UserError
from repro.store import Store, labels

WEIGHTS = {"weights": "random:0", "weights_sha256": "a" * 64, "weights_file_sha256": ""}


def tiny_profile(**settings):
    return profiles.override(profiles.load("paper"), {"model.weights": "random:0", **settings})


def template(n_images=6):
    return xr.Dataset(
        {"activation": (("block", "image"), np.full((2, n_images), np.nan, dtype="float32"))},
        coords={"block": labels(["1.1", "2.0"]), "image": np.arange(n_images)},
    ).chunk({"image": 3})


def test_units_are_written_then_marked_done_and_read_back(tmp_path):
    store = Store.create_or_open(tmp_path / "s.zarr", tiny_profile(), WEIGHTS)
    store.declare("natural", template(), {"stage": "test"}, settings={"images": "six"})
    assert store.done("natural") == set()
    part = xr.Dataset({"activation": (("block", "image"), np.ones((2, 3), "float32"))},
                      coords={"block": labels(["1.1", "2.0"]), "image": np.arange(3, 6)})
    store.write_unit("natural", "shard-1", part)
    assert store.done("natural") == {"shard-1"}
    # Declaring again with the same settings keeps what is written.
    store.declare("natural", template(), {"stage": "test"}, settings={"images": "six"})
    values = store.dataset("natural").activation.sel(block="2.0").values
    assert np.isnan(values[:3]).all() and (values[3:] == 1).all()
    store.finish("natural")
    opened = xr.open_zarr(tmp_path / "s.zarr", group="natural")  # consolidated: what users open
    assert opened.attrs["complete"] is True
    assert list(opened.block.values) == ["1.1", "2.0"]


def test_provenance_is_recorded(tmp_path):
    store = Store.create_or_open(tmp_path / "s.zarr", tiny_profile(), WEIGHTS)
    attrs = store.attrs
    for key in ("package_version", "git_commit", "torch_version", "torchvision_version", "weights_sha256",
                "profile", "profile_hash", "created", "identity"):
        assert attrs[key], key
    assert store.profile["model"]["weights"] == "random:0"


def test_a_store_for_another_model_is_refused_and_other_settings_are_welcome(tmp_path):
    path = tmp_path / "s.zarr"
    Store.create_or_open(path, tiny_profile(), WEIGHTS)
    with pytest.raises(UserError, match="weights_sha256.*--new-store"):
        Store.create_or_open(path, tiny_profile(), {**WEIGHTS, "weights_sha256": "b" * 64})
    with pytest.raises(UserError, match="image_size"):
        Store.create_or_open(path, tiny_profile(**{"model.image_size": 64}), WEIGHTS)
    # Settings are each group's own: the store takes a run with other steps or image folder.
    Store.create_or_open(path, tiny_profile(**{"fz.steps": 3, "natural.images": "/elsewhere"}), WEIGHTS)
    fresh = Store.create_or_open(path, tiny_profile(), {**WEIGHTS, "weights_sha256": "b" * 64}, new=True)
    assert fresh.attrs["identity"]["weights_sha256"] == "b" * 64


def test_a_group_with_other_settings_is_replaced_alone(tmp_path, capsys):
    store = Store.create_or_open(tmp_path / "s.zarr", tiny_profile(), WEIGHTS)
    part = template().isel(image=slice(0, 3)).fillna(1.0)
    for name in ("natural", "other"):
        store.declare(name, template(), {}, settings={"images": "six"})
        store.write_unit(name, "shard-0", part)
    store.declare("natural", template(), {}, settings={"images": "seven"})
    assert "natural: replacing the stored group (settings changed: images \"six\" → \"seven\")" in capsys.readouterr().err
    assert store.done("natural") == set() and store.done("other") == {"shard-0"}


def test_a_group_made_from_a_replaced_input_is_stale(tmp_path):
    store = Store.create_or_open(tmp_path / "s.zarr", tiny_profile(), WEIGHTS)
    store.declare("natural", template(), {}, settings={"images": "six"})
    store.declare("metrics", template(), {}, settings={}, inputs=["natural"])
    store.declare("ablation", template(), {}, settings={}, inputs=["metrics"])
    store.finish("metrics")
    assert store.group_state("metrics").state == "complete"
    store.declare("natural", template(), {}, settings={"images": "seven"})
    states = {state.name: state for state in store.status()}
    assert states["metrics"].state == "stale" and "'natural' was rebuilt" in states["metrics"].why
    assert states["ablation"].state == "stale" and "'metrics' is stale" in states["ablation"].why
    assert states["natural"].state == "partial"


def test_each_unit_has_its_own_marker_so_concurrent_writers_keep_every_mark(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    store = Store.create_or_open(tmp_path / "s.zarr", tiny_profile(), WEIGHTS)
    store.declare("natural", xr.Dataset({"activation": (("image",), np.full(40, np.nan, "float32"))},
                                        coords={"image": np.arange(40)}).chunk({"image": 1}), {}, settings={})
    writers = [Store(store.path) for _ in range(4)]  # separate handles, as separate processes would have

    def write(index):
        part = xr.Dataset({"activation": (("image",), np.array([index], "float32"))}, coords={"image": [index]})
        writers[index % 4].write_unit("natural", f"image-{index}", part)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(40)))
    assert store.done("natural") == {f"image-{i}" for i in range(40)}
    assert (store.dataset("natural").activation.values == np.arange(40)).all()
    markers = list((store.path / "natural" / "_units").glob("*/zarr.json"))
    assert len(markers) == 40


def test_a_directory_that_is_not_a_store_is_refused(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a residual-stream store"):
        Store.create_or_open(tmp_path / "other", tiny_profile(), WEIGHTS)
    with pytest.raises(UserError, match="no residual-stream store"):
        Store.existing(tmp_path / "missing.zarr")


def test_profile_show_and_overrides():
    result = CliRunner().invoke(main, ["profile", "show", "paper"])
    assert result.exit_code == 0
    assert '"steps": 2560' in result.output and '"image_size": 224' in result.output
    profile = profiles.override(profiles.load("paper"), {"fz.steps": 7, "model.weights": None})
    assert profile["fz"]["steps"] == 7 and profile["model"]["weights"] == "imagenet"
    assert profiles.identity_hash(profile) != profiles.identity_hash(profiles.load("paper"))


def test_paper_profile_carries_the_method():
    paper = profiles.load("paper")
    assert paper["model"]["blocks"] == ["1.1", "2.0", "2.1", "3.0", "3.1", "4.0", "4.1"]
    assert paper["fz"]["steps"] == 2560 and paper["fz"]["lr"] == 0.05
    jitter = paper["fz"]["jitter"]
    assert jitter["1.1"]["B"] == 0 and jitter["2.1"]["I"] == 0 and jitter["2.1"]["B"] == 4
    assert jitter["3.0"]["O"] == 4 and jitter["3.1"]["B"] == 16 and jitter["4.1"]["O"] == 16

"""End to end: `repro pipeline` then `repro report` on the tiny twin of the embedded default, as `make report`
runs them on the toy profile."""
import json
import re
import time
from pathlib import Path

import pytest
import xarray as xr
from click.testing import CliRunner

from residual_stream.cli import main
from test_alignment_stage import check_alignment_group
from repro.hashing import group_digest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    profile = root / "tiny-here.toml"
    profile.write_text(f'base = "tiny"\nname = "tiny"\n\n[toy]\ndata_dir = "{root / "data"}"\n')
    store, out = root / "run.zarr", root / "report"
    runner = CliRunner()
    first = runner.invoke(main, ["pipeline", "--profile", str(profile), "--store", str(store)])
    assert first.exit_code == 0, first.output
    report = runner.invoke(main, ["report", "--store", str(store), "--out", str(out)])
    assert report.exit_code == 0, report.output
    return runner, profile, store, out


def test_every_stage_lands_in_the_store(built):
    _, _, store, _ = built
    for group in ("fz", "fz_channel", "natural", "image_cache", "responses", "metrics"):
        dataset = xr.open_zarr(store, group=group)
        assert dataset.attrs["complete"], group
        assert dataset.attrs["profile_name"] == "tiny" and dataset.attrs["weights_sha256"]
    metrics = xr.open_zarr(store, group="metrics")
    assert set(metrics.block.values) == {"1.1", "2.0", "2.1", "3.0", "3.1", "4.0", "4.1"}
    assert metrics.mix.sel(stimulus_set="fz").notnull().any()
    alignment = xr.open_zarr(store, group="alignment").load()
    assert alignment.attrs["profile_name"] == "tiny"
    check_alignment_group(alignment)


def test_every_group_equals_the_recorded_digests(built):
    """The store's arrays are those recorded in tests/data/tiny_digests.json (made by
    ``python benchmarks/store_digests.py STORE`` on this profile): a change of code that should leave
    results alone is checked against it. On another CPU or torch build floats may differ in the last bits;
    then record the digests anew there."""
    _, _, store, _ = built
    recorded = json.loads((Path(__file__).parent / "data" / "tiny_digests.json").read_text())
    assert {group: group_digest(store, group) for group in recorded} == recorded


def test_every_stage_on_two_dask_workers_equals_the_serial_store(built, scheduler):
    from repro import executor
    from repro.store import Store
    from test_scaleout import assert_equal_stores

    runner, profile, store, _ = built
    address, client = scheduler
    workers = store.parent / "workers.zarr"
    result = runner.invoke(main, ["pipeline", "--profile", str(profile), "--store", str(workers), "--scheduler", address])
    assert result.exit_code == 0, result.output
    groups = ["fz", "fz_channel", "natural", "image_cache", "responses", "metrics", "ablation", "alignment"]
    assert_equal_stores(store, workers, groups)
    # Each worker built its models once (one per preparation: fz's copy, the placed one), not per unit; the
    # alignment stage's recovery units need none.
    built_models = client.run(executor.models_built)
    assert len(built_models) == 2 and all(1 <= count <= 2 for count in built_models.values()), built_models
    assert sum(len(Store(workers).done(group)) for group in groups) > 3 * 2


def test_the_report_has_every_chapter(built):
    _, _, _, out = built
    site = out / "_site"
    for page in ("index.html", "naturally-computed.html", "interpreting.html", "alignment.html"):
        assert (site / page).is_file(), page
    chapter = (site / "alignment.html").read_text()
    assert "not built" not in chapter  # every alignment entry, the store-reading ones included, was made
    assert re.search(r"toy\s+networks", chapter) and re.search(r"Liu\s+et\s+al\.\s+2026", chapter)
    assert "not comparable" in (site / "interpreting.html").read_text()


def test_a_rerun_with_nothing_changed_is_quick(built):
    runner, profile, store, out = built
    started = time.perf_counter()
    again = runner.invoke(main, ["pipeline", "--profile", str(profile), "--store", str(store)])
    report = runner.invoke(main, ["report", "--store", str(store), "--out", str(out)])
    assert again.exit_code == 0 and report.exit_code == 0, again.output + report.output
    assert time.perf_counter() - started < 30


def test_the_readme_slicing_example_runs_on_the_store(built):
    _, _, store, _ = built
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Slicing the store", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(example.replace("build/toy.zarr", str(store)), {})


def test_the_groups_table_lists_every_group_of_the_store(built):
    import re
    from repro.store import Store

    _, _, store, out = built
    rows = re.findall(r"^\| (\w+) \| (yes|no) \|", (out / "index.qmd").read_text(), re.M)
    present = {group for group, state in rows if state == "yes"}
    assert {"fz_aliased", "alignment"} <= present and present == set(Store(store).groups()), rows

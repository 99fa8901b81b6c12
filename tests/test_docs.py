"""The documents in docs/: the worked analyses of ``docs/store.md`` run against a store the pipeline made,
``docs/method.md`` names every reading setting and ships with the package."""
from __future__ import annotations

import re
import tomllib
import warnings
from pathlib import Path

import pytest

from repro import fz, metrics, natural, pipeline, profiles, reading, resources
from repro.model import ModelSpec, load_model
from repro.store import Store

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLE_STORE = "build/toy.zarr"  # the path the examples name; replaced by the test store's


def python_blocks(path: Path) -> list[str]:
    """The fenced ```python blocks of a markdown file, in order."""
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.M | re.S)


@pytest.fixture(scope="module")
def docs_store(tmp_path_factory) -> Path:
    """The tiny profile's FZs, natural images and metrics (the groups the examples read), as the pipeline
    makes them."""
    root = tmp_path_factory.mktemp("docs")
    profile = profiles.override(profiles.load("tiny"), {
        "toy.data_dir": str(root / "data"), "fz.channel_grids": False, "fz.compare_aliased": False})
    profile = profiles.override(profile, {"natural.images": str(pipeline.images_for(profile))})
    model, record = load_model(ModelSpec.from_profile(profile["model"]))
    store = Store.create_or_open(root / "run.zarr", profile, record)
    fz.run(store, model, record, profile)
    natural.run(store, model, record, profile)
    with warnings.catch_warnings():  # random-weight FZs fail some channels; the examples handle them
        warnings.simplefilter("ignore", metrics.FailedFZWarning)
        metrics.run(store, model, record, profile)
    return store.path


STORE_EXAMPLES = python_blocks(DOCS / "store.md")


def test_store_md_has_its_worked_examples():
    assert len(STORE_EXAMPLES) >= 4  # the status snippet and the three worked analyses
    assert all(EXAMPLE_STORE in block for block in STORE_EXAMPLES)


@pytest.mark.parametrize("index", range(len(STORE_EXAMPLES)))
def test_store_md_example_runs(docs_store, index, capsys):
    code = STORE_EXAMPLES[index].replace(EXAMPLE_STORE, str(docs_store))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices of padded channels
        exec(compile(code, f"docs/store.md, python block {index + 1}", "exec"), {"__name__": "docs_example"})
    assert capsys.readouterr().out  # every example shows its result


def test_store_md_names_every_group_and_variable_the_store_has(docs_store):
    import xarray as xr

    text = (DOCS / "store.md").read_text()
    store = Store(docs_store)
    for group in store.groups():
        assert f"`{group}`" in text, group
        dataset = xr.open_zarr(docs_store, group=group)
        for name in [*dataset.data_vars, *dataset.coords]:
            assert f"`{name}`" in text or f"`<flag>_{name.split('_')[-1]}`" in text, (group, name)
        for key in store.group_attrs(group):
            assert f"`{key}`" in text, (group, key)


def test_method_md_lists_every_reading_item_with_its_settings():
    text = (DOCS / "method.md").read_text()
    differences = text.split("## Where the authors' code differs from the papers", 1)[1]
    for item, settings in reading.CODE_ITEMS.items():
        start = differences.index(f"\n{item}. ")
        end = differences.find(f"\n{item + 1}. ", start)
        entry = differences[start:end if end > 0 else None]
        for key, code_value in settings.items():
            assert f"`{key}`" in entry, (item, key)
            shown = str(code_value).lower() if isinstance(code_value, bool) else f'"{code_value}"'
            assert shown in entry, (item, key, shown)
    assert "\n8. " in differences  # the one difference no setting reproduces
    for heading in ("### The in-place trap", "## Feature visualization (FZ)", "## Stimulus transforms",
                    "## Metrics", "## Ablation", "## Superposition and alignment"):
        assert heading in text, heading


def test_method_md_links_nowhere_the_report_cannot_follow():
    """The report renders it as a page: no relative links, no raw HTML."""
    text = (DOCS / "method.md").read_text()
    assert not re.search(r"\]\((?!https?://)[^)]*\)", text)
    assert not re.search(r"<(a|div|span|img|nav|table)\b", text)


def test_docs_ship_with_the_package_and_are_found_from_a_checkout():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "repro._shipped.docs" in setuptools["packages"]
    assert setuptools["package-dir"]["repro._shipped.docs"] == "docs"
    assert "*.md" in setuptools["package-data"]["repro._shipped.docs"]
    assert {"method.md", "store.md"} <= {path.name for path in resources.shipped("docs").glob("*.md")}
    assert resources.document("method.md").startswith("# The method")


def test_nothing_refers_to_the_old_method_file():
    old = "METHOD" + ".md"
    suffixes = {".py", ".md", ".toml", ".qmd", ".css", ".txt", ".cfg"}
    offenders = [str(path.relative_to(ROOT)) for path in ROOT.rglob("*")
                 if path.suffix in suffixes and path.is_file()
                 and not {".git", ".venv", "build"} & set(path.relative_to(ROOT).parts)
                 and old in path.read_text(errors="ignore")]
    assert not offenders

"""The registries of what varies. Criteria: one entry reaches the metrics stage, the statistics, the seed
noise floors, a reference run and `repro verify`, and the channel browser. Outcome levels: one enum, whose
words no other module spells."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from analyses import criteria, noise, stats
from analyses.levels import WORDS, Level
from test_seeds import BLOCKS, build


@pytest.fixture
def up_down(monkeypatch):
    """A criterion this test alone defines, as one registry entry: up ∧ down, stored as a metrics column."""
    criterion = criteria.Criterion("up_down", ("up_ok", "down_ok"), "up and down criteria (stored)")
    monkeypatch.setitem(criteria.CRITERIA, criterion.name, criterion)
    return criterion


def test_a_criterion_registered_once_reaches_metrics_noise_floors_verify_and_unit_pages(up_down, tmp_path,
                                                                                       monkeypatch):
    from report import builder, reference, rules, units
    from report.loader import Loader
    from residual_stream.cli import main

    store = build(tmp_path, [0, 1])
    metrics = store.dataset("metrics").load()
    # The metrics stage stores its column, seed frequency and robust label, equal to up ∧ down by hand.
    by_hand = metrics["up_ok"] & metrics["down_ok"]
    assert up_down.column == "invariant_up_down"
    assert (metrics[up_down.column] == by_hand).all()
    frequency = by_hand.astype(float).mean("seed").where(metrics["valid"]).sel(stimulus_set="fz")
    stored = metrics[f"{up_down.column}_frequency"].sel(stimulus_set="fz")  # no natural images: FZs only
    np.testing.assert_allclose(stored.values, frequency.values, atol=1e-6)
    assert f"{up_down.column}_robust" in metrics
    fz = metrics.sel(stimulus_set="fz")
    for block in BLOCKS:
        one = stats.first_seed(fz)
        valid = one["valid"].sel(block=block).values.astype(bool)
        passing = (one["up_ok"] & one["down_ok"]).sel(block=block).values & valid
        assert stats.invariant_channels(one, block, "up_down") == [int(c) for c in np.flatnonzero(passing)]

    # The seed noise floors list it, with its lists' mean size counted by hand.
    floors = noise.floors_table(fz)
    mine = floors[floors["list"] == "up_down"].set_index("block")
    assert list(mine.index) == BLOCKS
    for block in BLOCKS:
        sizes = [int((by_hand.sel(seed=s, block=block, stimulus_set="fz") & metrics["valid"].sel(block=block)).sum())
                 for s in (0, 1)]
        assert mine.loc[block, "mean_size"] == pytest.approx(np.mean(sizes))

    # A reference run records it, and `repro verify` judges the store by it.
    published = tmp_path / "published"
    published.mkdir()
    profile_name = str(store.attrs["profile_name"])
    monkeypatch.setattr(reference, "PUBLISHED", published)
    written = reference.load(reference.write(store, published / f"{profile_name}.toml", "repro pipeline"))
    assert all(up_down.name in written["blocks"][block] for block in BLOCKS)
    printed = CliRunner().invoke(main, ["verify", "--store", str(store.path)])
    assert printed.exit_code == 0, printed.output
    for block in BLOCKS:
        bid = block.replace(".", "-")
        lines = [line for line in printed.output.splitlines() if f"claim-reference-up_down-{bid} " in line]
        # The store that made the reference agrees with it within its own seed noise.
        assert len(lines) == 1 and (rules.VERIFIED in lines[0] or rules.WITHIN_NOISE in lines[0]), lines
        assert any(f"claim-reference-up_down-count-{bid} " in line for line in printed.output.splitlines())

    # The channel browser shows it on the block page (a column) and on each unit page (a row).
    site = tmp_path / "site"
    units.write(store, Loader(store), builder.StoreContext.of(store), site, {}, None, [("index", "What this store is")])
    block_page = (site / "units" / f"{BLOCKS[0]}.html").read_text()
    assert "invariant (up, down)" in block_page
    unit_page = (site / "units" / f"{BLOCKS[0]}:0.html").read_text()
    assert f"<td>{up_down.column}</td>" in unit_page and f"<td>{up_down.column}_frequency</td>" in unit_page


def test_a_criterion_under_a_reading_follows_the_recorded_setting():
    interpreting = criteria.CRITERIA["interpreting"]
    assert interpreting.flags_under({}) == ("mix_ok", "up_ok", "down_ok")  # not recorded: the papers' reading
    assert interpreting.flags_under({"interpreting_criterion": "mix_up"}) == ("mix_ok", "up_ok")
    flags = {"mix_ok": np.array([True, True]), "up_ok": np.array([True, True]), "down_ok": np.array([True, False])}
    assert interpreting.passes(flags, {"interpreting_criterion": "mix_up_down"}).tolist() == [True, False]
    assert interpreting.passes(flags, {"interpreting_criterion": "mix_up"}).tolist() == [True, True]
    assert criteria.CRITERIA["naturally"].flags_under({"interpreting_criterion": "mix_up"}) == ("mix_ok", "up_ok")


ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("analyses", "report", "repro")


def _string_constants(tree: ast.AST):
    """Every string literal of a module except docstrings (prose about the levels is allowed)."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node


def test_outcome_words_are_spelled_only_by_the_level_enum():
    words = {word for level in Level for word in (level.value, *WORDS[level])}
    assert words == {"holds", "weakly", "fails", "holds weakly", "hold", "hold weakly", "fail"}
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "analyses" / "levels.py":
                continue
            for node in _string_constants(ast.parse(path.read_text(), str(path))):
                text = node.value.strip(" .,;:()")
                if text in words or "holds weakly" in node.value or "hold weakly" in node.value:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not found, "outcome words outside analyses/levels.py:\n" + "\n".join(found)


def test_the_level_enum_is_the_one_the_rules_and_the_measures_use():
    from analyses import measures
    from report import rules

    assert set(rules.BADGE_OF_LEVEL) == set(Level)
    assert [rules.BADGE_OF_LEVEL[level] for level in Level] == [rules.VERIFIED, rules.WITHIN_NOISE, rules.DEVIATES]
    assert rules.Outcome(rules.NOT_COMPARABLE, None, "", own=rules.WITHIN_NOISE).own_words == "holds weakly"
    assert Level.FAILS.steps_from("holds") == 2 and Level("weakly") is Level.WEAKLY
    # A measure's evidence carries the enum, which a reference file records by its plain value.
    evidence = measures.no_invariant(_no_channels_pass(), ["2.1"], "naturally")
    assert evidence.level is Level.HOLDS and f"{evidence.level}" == "holds"


def _no_channels_pass():
    import xarray as xr

    flags = np.zeros((1, 4), dtype=bool)
    return xr.Dataset({name: (("block", "channel"), flags) for name in criteria.FLAGS}
                      | {"valid": (("block", "channel"), ~flags), "mix": (("block", "channel"), np.ones((1, 4)))},
                      coords={"block": ["2.1"], "channel": np.arange(4)})

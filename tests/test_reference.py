"""A profile's reference numbers beyond channel sets: ablation ratios and the papers' qualitative rules."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from analyses.measures import Evidence
from report import rules, spec, verify
from report import reference
from test_report import root_attrs

SCALES = [0.0, 0.1, 0.2]
TOY = {**root_attrs(), "profile_name": "toy"}


def ablation_dataset(rng: np.random.Generator, shift: float = 0.0) -> xr.Dataset:
    """Accuracies (block, condition, trial, scale): the invariant set's in trial 0, five random sets."""
    accuracy = rng.uniform(60, 70, size=(2, 3, 5, len(SCALES)))
    accuracy[:, 1, 1:] = np.nan  # the invariant set is one set: trial 0 only
    accuracy[:, 1, 0] += shift
    return xr.Dataset({"accuracy": (("block", "condition", "trial", "scale"), accuracy)},
                      coords={"block": ["2.1", "3.1"], "condition": ["none", "invariant", "random"],
                              "trial": np.arange(5), "scale": SCALES})


def test_ablation_ratios_round_trip_and_a_shifted_store_deviates():
    made = ablation_dataset(np.random.default_rng(0))
    numbers = reference.ablation_numbers(made)
    accuracy = made["accuracy"].sel(block="3.1")
    by_hand = (accuracy.sel(condition="invariant", trial=0) / accuracy.sel(condition="random")).mean("trial").values
    assert numbers["3.1"]["scales"] == SCALES
    assert numbers["3.1"]["mean_ratio"] == pytest.approx(by_hand, abs=1e-6)
    claims = [c for c in reference.claims({"profile": "toy", "blocks": {}, "ablation": numbers})]
    assert [c.id for c in claims] == ["claim-reference-ablation-2-1", "claim-reference-ablation-3-1"]
    same = [verify.evaluate_claim(c, {"ablation": made}, TOY) for c in claims]
    assert all(o.badge == rules.VERIFIED for o in same), same
    shifted = ablation_dataset(np.random.default_rng(0), shift=10.0)  # invariant set 10 points better
    moved = [verify.evaluate_claim(c, {"ablation": shifted}, TOY) for c in claims]
    assert all(o.badge == rules.DEVIATES for o in moved), moved
    assert "in ratio" in moved[0].detail


@pytest.mark.parametrize("store_level, reference_level, badge", [
    ("holds", "holds", rules.VERIFIED), ("weakly", "holds", rules.WITHIN_NOISE),
    ("fails", "holds", rules.DEVIATES), ("fails", "weakly", rules.WITHIN_NOISE)])
def test_a_rule_is_judged_by_the_reference_runs_outcome_of_it(store_level, reference_level, badge):
    assert rules.same_level(reference_level, Evidence(store_level, "numbers")).badge == badge


def test_reference_rule_claims_reuse_the_papers_measures():
    qualitative = [c for c in spec.CLAIMS if c.rule is rules.qualitative]
    chosen = qualitative[0]
    claims = reference.claims({"profile": "toy", "blocks": {}, "rules": {chosen.id: "fails", "claim-none": "holds"}})
    assert len(claims) == 1  # an id the papers do not have is ignored
    assert claims[0].measure is chosen.measure and claims[0].inputs == chosen.inputs and claims[0].published == "fails"
    assert claims[0].requires == (spec.ReferenceRun("toy", ""),)

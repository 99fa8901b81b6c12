"""Unit matching, ridge at fixed folds, the bootstrap's weighted statistics, the TopK SAEs (torch), the
orthogonal-mixing and overlap-map closed forms, the ``alignment`` group's contract and the second toy network.

Each computation is checked against a straightforward one written here: resampled matrices built
explicitly, sklearn's Ridge fold by fold, brute-force matchings, Monte Carlo over fresh draws (seed printed).
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner
from scipy import stats
from scipy.spatial.distance import pdist
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.metrics import r2_score

from analyses import alignment as al
from analyses import alignment_bootstrap as ab
from analyses import alignment_figures as af
from analyses import superposition as sp
from helpers import assert_matches_monte_carlo, fresh_rng, one_blas_thread  # noqa: F401 (an autouse fixture)
from repro import alignment as stage
from repro import profiles
from repro.cli import main
from repro.errors import UserError
from repro.model import file_sha256
from repro.sae import SAESettings, topk_codes, train_sae, train_supervised_sae


# ---------------------------------------------------------------- unit matching

def test_hungarian_matching_recovers_a_known_permutation():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((300, 12))
    order = rng.permutation(12)
    Y = 1.7 * X[:, order] + 0.05 * rng.standard_normal((300, 12))
    rows, cols, r = al.matched_pairs(X, Y)
    assert np.array_equal(order[cols], rows)  # Y's unit j is X's unit order[j]
    assert np.all(r > 0.99) and al.hungarian_matching(X, Y) == pytest.approx(r.mean())


def test_matching_scores_equal_brute_force():
    rng = np.random.default_rng(4)
    R = rng.uniform(-1, 1, (5, 5))
    best = max(np.mean([R[i, p[i]] for i in range(5)]) for p in itertools.permutations(range(5)))
    assert al.hungarian_matching(correlations=R) == pytest.approx(best)
    semi = (np.mean([max(row) for row in R]) + np.mean([max(col) for col in R.T])) / 2
    assert al.semi_matching(correlations=R) == pytest.approx(semi)
    assert al.soft_matching(correlations=R) == pytest.approx(best)  # equal sizes: a permutation is optimal
    # Unequal sizes 3 × 6: the transport plan with marginals 1/3, 1/6 is a matching of each row, copied twice,
    # to the six columns, with mass 1/6 per pair.
    R = rng.uniform(-1, 1, (3, 6))
    doubled = np.repeat(R, 2, axis=0)
    best = max(np.mean([doubled[i, p[i]] for i in range(6)]) for p in itertools.permutations(range(6)))
    assert al.soft_matching(correlations=R) == pytest.approx(best, abs=1e-9)


def test_unit_correlations_equal_corrcoef():
    rng = np.random.default_rng(5)
    X, Y = rng.standard_normal((50, 4)), rng.standard_normal((50, 3))
    Y[:, 2] = 1.0  # a silent unit correlates with nothing
    expected = np.corrcoef(X.T, Y[:, :2].T)[:4, 4:]
    R = al.unit_correlations(X, Y)
    assert np.allclose(R[:, :2], expected) and np.all(R[:, 2] == 0)


# ---------------------------------------------------------------- ridge

def test_ridge_predictions_equal_sklearn_ridge_fold_by_fold():
    rng = np.random.default_rng(6)
    X = rng.standard_normal((120, 9)) * rng.uniform(0.2, 3, 9) + 4
    Y = X @ rng.standard_normal((9, 3)) + rng.standard_normal((120, 3))
    folds = rng.permutation(np.arange(120) % 4)
    expected = np.empty_like(Y)
    for fold in range(4):
        test = folds == fold
        expected[test] = Ridge(alpha=7.0).fit(X[~test], Y[~test]).predict(X[test])
    assert np.allclose(al.ridge_predictions(X, Y, 7.0, folds), expected)
    assert al.ridge_r2(X, Y, 7.0, folds) == pytest.approx(r2_score(Y, expected, multioutput="variance_weighted"))


def test_ridge_penalty_is_the_one_ridgecv_picks():
    rng = np.random.default_rng(7)
    for n, d in [(80, 5), (200, 40), (60, 30)]:
        X = rng.standard_normal((n, d)) * rng.uniform(0.1, 4, d)
        Y = X @ rng.standard_normal((d, 4)) * 0.2 + rng.standard_normal((n, 4)) * rng.uniform(0.5, 3)
        assert al.ridge_penalty(X, Y) == RidgeCV(alphas=al.RIDGE_ALPHAS).fit(X, Y).alpha_


# ---------------------------------------------------------------- bootstrap statistics

def debiased_cka_without_copies(X, Y, rows):
    """Debiased CKA of a resample from explicit n × n Gram matrices with copies of a stimulus zeroed (features
    centred once, on all stimuli: with copies left out the estimator is no longer exactly shift-invariant)."""
    Xr, Yr = (X - X.mean(axis=0))[rows], (Y - Y.mean(axis=0))[rows]
    same = rows[:, None] == rows[None, :]
    K, L = np.where(same, 0, Xr @ Xr.T), np.where(same, 0, Yr @ Yr.T)
    n = len(rows)

    def hsic(A, B):
        one = np.ones(n)
        return (np.trace(A @ B) + (one @ A @ one) * (one @ B @ one) / ((n - 1) * (n - 2))
                - 2 / (n - 2) * (one @ A @ B @ one)) / (n * (n - 3))
    return hsic(K, L) / math.sqrt(hsic(K, K) * hsic(L, L))


def rsa_without_copies(X, Y, rows):
    keep = pdist(rows[:, None].astype(float)) > 0
    return stats.pearsonr(pdist(X[rows], "sqeuclidean")[keep], pdist(Y[rows], "sqeuclidean")[keep]).statistic


def test_resample_statistics_equal_explicitly_resampled_matrices():
    rng = np.random.default_rng(8)
    Z = sp.sample_sparse_latents(60, 10, 0.3, rng)
    X, Y = Z @ rng.standard_normal((10, 6)) + 2, Z @ rng.standard_normal((10, 8))
    systems = ab._Systems({"x": X, "y": Y}, np.random.default_rng(0))
    everything = ab._Resample(np.ones(60), systems)
    assert everything.metric("x", "y", "cka") == pytest.approx(al.linear_cka(X, Y), abs=1e-12)
    assert everything.metric("x", "y", "cka_debiased") == pytest.approx(al.linear_cka(X, Y, debiased=True), abs=1e-12)
    assert everything.metric("x", "y", "rsa") == pytest.approx(al.rsa(X, Y).value, abs=1e-12)
    rows = rng.integers(0, 60, 60)
    resample = ab._Resample(np.bincount(rows, minlength=60), systems)
    assert len(set(rows)) < 60  # the resample has copies
    assert resample.metric("x", "y", "cka") == pytest.approx(al.linear_cka(X[rows], Y[rows]), abs=1e-12)
    assert resample.metric("x", "y", "cka_debiased") == pytest.approx(debiased_cka_without_copies(X, Y, rows), abs=1e-12)
    assert resample.metric("x", "y", "rsa") == pytest.approx(rsa_without_copies(X, Y, rows), abs=1e-12)
    assert np.allclose(resample.correlations("x", "y"), np.corrcoef(X[rows].T, Y[rows].T)[:6, 6:])
    forward = systems.predictions("x", "y")[rows]
    backward = systems.predictions("y", "x")[rows]
    centred_x, centred_y = X - X.mean(axis=0), Y - Y.mean(axis=0)
    expected = (r2_score(centred_y[rows], forward, multioutput="variance_weighted")
                + r2_score(centred_x[rows], backward, multioutput="variance_weighted")) / 2
    assert resample.metric("x", "y", "ridge_r2") == pytest.approx(expected, abs=1e-12)


def test_score_pairs_intervals_cover_the_value_and_gains_are_paired():
    rng = np.random.default_rng(9)
    Z = rng.standard_normal((150, 5))
    reps = {"a": Z @ rng.standard_normal((5, 5)), "b": Z @ rng.standard_normal((5, 5)),
            "c": rng.standard_normal((150, 5))}
    scores = ab.score_pairs(reps, [("a", "b", ["cka_debiased"]), ("a", "c", ["cka_debiased"])], n_boot=60, seed=1)
    low, high = ab.percentile_interval(scores.replicates[("a", "b", "cka_debiased")])
    assert low <= scores.value[("a", "b", "cka_debiased")] <= high
    gain = scores.replicates[("a", "b", "cka_debiased")] - scores.replicates[("a", "c", "cka_debiased")]
    assert ab.percentile_interval(gain)[0] > 0.2  # shared latents align far better than noise
    with pytest.raises(ValueError, match="unknown"):
        ab.score_pairs(reps, [("a", "b", ["nonsense"])], n_boot=2)


# ---------------------------------------------------------------- TopK SAEs (torch)

def test_topk_keeps_the_k_largest_and_passes_gradients_to_them_only():
    import torch
    pre = torch.relu(torch.randn(20, 12, generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    codes = topk_codes(pre, 3)
    kept = codes.detach() > 0
    assert (kept.sum(dim=1) <= 3).all()
    expected = torch.zeros_like(pre).scatter(1, pre.detach().topk(3, dim=1).indices, 1.0).bool() & (pre.detach() > 0)
    assert torch.equal(kept, expected)
    codes.sum().backward()
    assert torch.equal(pre.grad.bool(), expected)


def test_supervised_sae_recovers_planted_latents_where_compressed_sensing_allows():
    """k = 64 latents active with p = 0.05 (s ≈ 3.2 per stimulus): the ℓ1 phase transition needs about
    2 s log(k/s) ≈ 19 random measurements; at d = 48 the supervised SAE must recover every latent, at d = 6
    (below s log(k/s)) it cannot."""
    rng = fresh_rng("supervised SAE")
    k, p = 64, 0.05
    recovered = {}
    for d in (6, 48):
        Z_train, Z_test = sp.sample_sparse_latents(3000, k, p, rng), sp.sample_sparse_latents(1000, k, p, rng)
        A = sp.superposition_matrix(k, d, rng)
        sae = train_supervised_sae(Z_train @ A, Z_train, SAESettings(latents=k, topk=8, steps=500, lr=0.01,
                                                                     batch_size=4096, seed=0))
        codes = sae.encode(Z_test @ A)
        recovered[d] = np.diag(al.unit_correlations(codes, Z_test))  # latent i is trained to be feature i
    print({d: (float(r.mean()), float(r.min())) for d, r in recovered.items()})
    assert recovered[48].mean() > 0.95 and recovered[48].min() > 0.85
    assert recovered[6].mean() < 0.8


def test_unsupervised_sae_reduces_reconstruction_error_and_keeps_unit_atoms():
    rng = np.random.default_rng(10)
    Z = sp.sample_sparse_latents(2000, 16, 0.1, rng)
    X = Z @ sp.superposition_matrix(16, 12, rng)
    short = train_sae(X, SAESettings(latents=16, topk=3, steps=5, seed=1))
    trained = train_sae(X, SAESettings(latents=16, topk=3, steps=400, seed=1))

    def error(sae):
        import torch
        y = torch.as_tensor(X, dtype=torch.float32) / sae.scale
        return float((sae.module(y)[1] - y).pow(2).sum(dim=1).mean())
    assert error(trained) < 0.5 * error(short)
    assert np.allclose(np.linalg.norm(trained.dictionary(), axis=1), 1, atol=1e-5)
    assert (np.count_nonzero(trained.encode(X), axis=1) <= 3).all()
    with pytest.raises(UserError, match="topk"):
        SAESettings(latents=4, topk=5)


# ---------------------------------------------------------------- closed forms: mixing control and the map

@pytest.mark.parametrize("k, d", [(64, 8), (64, 32), (32, 20)])
def test_orthogonal_mixing_closed_forms_match_monte_carlo(k, d):
    rng = fresh_rng(f"orthogonal k={k} d={d}")
    gamma = sp.latent_gamma("sparse", 0.1)
    draws = [(sp.orthogonal_matrix(k, d, rng), sp.orthogonal_matrix(k, d, rng)) for _ in range(300)]
    cka = [sp.linear_cka_one_draw(A, B) for A, B in draws]
    rsa_values = [sp.rsa_one_draw(A, B, gamma) for A, B in draws]
    # CKA is exact in expectation (the denominator is constant); RSA is a ratio of expectations.
    assert_matches_monte_carlo(cka, sp.expected_orthogonal_cka(k, d), 0.0, "orthogonal CKA")
    assert_matches_monte_carlo(rsa_values, sp.expected_orthogonal_rsa(k, d, gamma), 0.004, "orthogonal RSA")
    assert_matches_monte_carlo([sp.regression_r2_one_draw(A, B) for A, B in draws], d / k, 0.0, "orthogonal R²")
    # The same tolerance rejects the Gaussian formula where the two formulas are far enough apart for 300
    # draws to tell (at k = 64, d = 8 they differ by 0.015, about the bound itself: a coin flip, not a test).
    mean, se = np.mean(cka), np.std(cka, ddof=1) / math.sqrt(len(cka))
    gaussian = sp.expected_linear_cka(k, d, d)
    if abs(sp.expected_orthogonal_cka(k, d) - gaussian) > 0.05:
        assert abs(mean - gaussian) > 4 * se + 0.01


def test_orthogonal_mixing_with_enough_neurons_keeps_every_metric_at_one():
    rng = np.random.default_rng(11)
    A, B = sp.orthogonal_matrix(16, 24, rng), sp.orthogonal_matrix(16, 24, rng)
    assert np.allclose(A @ A.T, np.eye(16))
    assert sp.linear_cka_one_draw(A, B) == pytest.approx(1.0)
    assert sp.rsa_one_draw(A, B, 3.0) == pytest.approx(1.0)
    assert sp.regression_r2_one_draw(A, B) == pytest.approx(1.0)
    G = sp.superposition_matrix(16, 16, rng), sp.superposition_matrix(16, 16, rng)
    assert sp.linear_cka_one_draw(*G) < 0.8  # Gaussian mixing deflates even at d = k


def test_overlap_map_agrees_with_its_closed_form_where_the_simulation_decides():
    rng = fresh_rng("overlap map")
    draws = sp.simulate_overlap_map(k_total=64, shared=(8, 32, 56), ds=(4, 16, 64), n=600, n_draws=10, seed=rng)
    cells = sp.overlap_map(draws)
    assert len(cells) == 9
    expected = cells["k_shared"] / 64 - cells["d"] / (cells["d"] + 65)
    assert np.allclose(cells["closed_form"], expected)
    # A cell decides where its interval excludes 0 and its closed form lies beyond the 0.01 finite-n allowance
    # (at k_s = 32, d = 64 the closed form is 0.004: either sign is within it).
    decided = cells[cells["inverts_simulated"].notna() & (cells["closed_form"].abs() > 0.01)]
    assert len(decided) >= 6
    assert (decided["inverts_simulated"].astype(bool) == decided["inverts_closed_form"]).all()
    for side, group in draws.groupby(["side", "size"]):
        assert_matches_monte_carlo(group["value"], group["closed_form"].iloc[0], 0.01, f"map {side}")


# ---------------------------------------------------------------- the stage and its group

TINY = {"features": 16, "sae_latents": 16, "sae_topk": 2, "neurons": [4, 16], "seeds": 2, "train_stimuli": 200,
        "eval_stimuli": 80, "sae_steps": 20, "bootstrap": 3, "threads": 1}


def tiny_settings() -> stage.Settings:
    """The paper profile's [alignment] table with TINY's sizes."""
    paper = profiles.load("paper")
    return stage.stage_settings(profiles.override(paper, {f"alignment.{k}": v for k, v in TINY.items()}))


def test_recovery_part_has_every_representation_and_intervals_over_draws():
    settings = tiny_settings()
    part = stage.recovery_part(settings, 16)
    values = part["recovery"].values  # (representation, metric, 1, seed)
    assert values.shape == (3, len(stage.METRICS), 1, 2) and np.isfinite(values).all()
    mean = part["recovery_mean"].values
    assert np.allclose(mean, values.mean(axis=-1))
    assert (part["recovery_low"].values <= mean + 1e-12).all() and (mean <= part["recovery_high"].values + 1e-12).all()
    closed = part["recovery_closed_form"].values[:, 0]
    assert closed[stage.METRICS.index("cka_debiased")] == pytest.approx(16 / 33)


def test_bad_alignment_settings_exit_2_with_one_line(tmp_path):
    profile = tmp_path / "bad.toml"
    profile.write_text('base = "tiny"\nname = "bad"\n\n[alignment]\nseeds = 1\n')
    result = CliRunner().invoke(main, ["alignment", "--profile", str(profile), "--store", str(tmp_path / "s.zarr")])
    assert result.exit_code == 2
    assert "alignment.seeds" in result.output and len(result.output.strip().splitlines()) == 1
    with pytest.raises(UserError, match="unknown setting alignment.neurons_count"):
        profiles.override(profiles.load("tiny"), {"alignment.neurons_count": 3})


def test_the_stage_needs_the_stores_images_and_says_so_before_computing(tmp_path):
    result = CliRunner().invoke(main, ["alignment", "--profile", "tiny", "--store", str(tmp_path / "s.zarr")])
    assert result.exit_code == 2 and "image cache" in result.output
    assert not (tmp_path / "s.zarr" / "alignment").exists()


def check_alignment_group(dataset: xr.Dataset) -> None:
    """The contract of group ``alignment``, shared with the pipeline test."""
    assert dataset.attrs["complete"] and dataset.attrs["stage"] == "alignment"
    assert list(dataset.representation.values) == ["raw", "sae", "sae_supervised"]
    assert set(ab.METRICS) <= set(dataset.metric.values) and "ground_truth_r" in dataset.metric.values
    assert dataset.recovery.dims == ("representation", "metric", "d", "seed")
    assert dataset.network.dims == ("representation", "metric", "pair")
    assert {"block_a", "block_b"} <= set(dataset.coords)
    blocks = list(dict.fromkeys(dataset.block_a.values))
    assert len(dataset.pair) == len(blocks) ** 2
    for value, low, high in (("recovery_mean", "recovery_low", "recovery_high"),
                             ("network", "network_low", "network_high"),
                             ("network_gain", "network_gain_low", "network_gain_high")):
        finite = np.isfinite(dataset[low].values)
        assert finite.any(), value
        assert (dataset[low].values[finite] <= dataset[high].values[finite] + 1e-12).all(), value
    matched = dataset.sel(pair=dataset.block_a == dataset.block_b)
    assert np.isfinite(matched.network.sel(representation=["raw", "sae"], metric=list(ab.METRICS)).values).all()
    assert np.isnan(dataset.network.sel(representation="sae_supervised").values).all()  # no ground truth there
    assert np.isfinite(dataset.recovery.sel(metric="ground_truth_r").values).all()
    assert dataset.attrs["bootstrap"] >= 2 and dataset.attrs["draws"] == dataset.sizes["seed"]


def test_report_entries_read_the_group_and_state_outcomes():
    ids = [entry["id"] for entry in af.FIGURES]
    assert len(set(ids)) == len(ids) and all(i.startswith(("fig-alignment-", "tbl-alignment-")) for i in ids)
    reading = {entry["id"] for entry in af.FIGURES if entry.get("inputs")}
    assert {"fig-alignment-recovery", "fig-alignment-networks", "tbl-alignment-networks"} <= reading
    notation = af.notation_table()
    assert notation["Liu et al. 2026"].str.contains("y = A z").any()
    assert notation["this package"].str.contains("source: this package").sum() >= 5


# ---------------------------------------------------------------- the second toy network

def test_second_toy_network_is_pinned_by_its_hash_and_trained_with_another_seed():
    twin, toy = profiles.load("toy_seed1"), profiles.load("toy")
    weights = Path(twin["model"]["weights"])
    record = json.loads(weights.with_suffix(".json").read_text())
    assert twin["model"]["weights_sha256"] == record["sha256"] == file_sha256(weights)
    assert record["command"] == "repro toy train --profile toy_seed1"
    assert record["train_seed"] == 1 != json.loads(Path(toy["model"]["weights"]).with_suffix(".json").read_text())[
        "train_seed"]
    assert toy["alignment"]["partner_weights_sha256"] == record["sha256"]
    assert stage.partner_path(stage.stage_settings(toy)) == str(weights)
    assert record["heldout_accuracy"] >= 0.9


def small_alignment_group() -> xr.Dataset:
    """A group ``alignment`` built by the stage's own functions on tiny settings and synthetic networks."""
    settings = tiny_settings()
    blocks = ["1.1", "2.0"]
    dataset = stage.template(settings, blocks).compute()
    for index, d in enumerate(settings.neurons):
        part = stage.recovery_part(settings, d)
        for name in part.data_vars:
            dataset[name][{"d": slice(index, index + 1)}] = part[name].values
    rng = np.random.default_rng(12)
    Z = sp.sample_sparse_latents(120, 12, 0.2, rng)
    representations = {f"{net}:{block}:{kind}": np.maximum(Z @ rng.standard_normal((12, 6 if kind == "raw" else 9)), 0)
                       for net in "ab" for block in blocks for kind in ("raw", "sae")}
    pairs = []
    for block_a, block_b in stage.pair_list(blocks):
        metrics = ab.METRICS if block_a == block_b else settings.cross_metrics
        pairs += [(f"a:{block_a}:{kind}", f"b:{block_b}:{kind}", metrics) for kind in ("raw", "sae")]
    part = stage.network_part(ab.score_pairs(representations, pairs, 20, seed=0), blocks, settings)
    for name in part.data_vars:
        dataset[name][:] = part[name].values
    dataset.attrs.update({"complete": True, "stage": "alignment", "bootstrap": 20, "draws": settings.seeds,
                          "settings": json.dumps({"features": settings.features}), "network_images": 120})
    return dataset


def test_the_group_built_by_the_stage_meets_its_contract_and_feeds_every_entry():
    dataset = small_alignment_group()
    check_alignment_group(dataset)
    findings = af.findings_table(dataset)
    assert {"fig-alignment-recovery", "fig-alignment-networks / fig-alignment-cross-blocks"} <= set(findings["figure"])
    assert findings["finding"].str.contains("toy networks").any()
    networks = af.networks_table(dataset)
    assert len(networks) == 2 * 7 and set(networks["verdict"]) <= {"SAE higher", "raw higher", "no difference shown"}
    for entry in af.FIGURES:
        if entry["id"] in ("tbl-alignment-findings",):
            continue
        result = entry["function"](**({"alignment": dataset} if entry.get("inputs") else {}))
        assert result is not None, entry["id"]

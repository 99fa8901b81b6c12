"""Alignment metrics and superposition closed forms (analyses.alignment, analyses.superposition).

Each metric is checked against a straightforward computation written here (explicit centring matrices,
loops over stimulus pairs and quadruples, numpy least squares). Closed forms are checked against Monte
Carlo on fresh random draws every run; the seed is printed (shown by pytest when a test fails) so a
failure can be replayed. Tolerances: |MC mean − closed form| < 4 · sd / √n_draws plus a stated allowance
for the known bias of the closed form (ratio of expectations, finite n).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats
from sklearn.model_selection import KFold

from analyses import superposition as sp
from helpers import assert_matches_monte_carlo, fresh_rng, one_blas_thread  # noqa: F401 (an autouse fixture)
from analyses.alignment import (RSAResult, RegressionScore, expected_linear_cka, linear_cka, regression_score,
                                rsa)


# ---------------------------------------------------------------- independent reference computations

def cka_by_centring_matrices(X, Y):
    n = X.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = X @ X.T, Y @ Y.T

    def hsic(A, B):
        return np.trace(A @ H @ B @ H)
    return hsic(K, L) / math.sqrt(hsic(K, K) * hsic(L, L))


def unbiased_hsic_by_u_statistic(K, L):
    """HSIC as the U-statistic over distinct index tuples: E[KᵢⱼLᵢⱼ] + E[KᵢⱼL_qr] − 2E[KᵢⱼLᵢ_q]."""
    n = K.shape[0]
    pairs = np.mean([K[i, j] * L[i, j] for i, j in itertools.permutations(range(n), 2)])
    triples = np.mean([K[i, j] * L[i, q] for i, j, q in itertools.permutations(range(n), 3)])
    quadruples = np.mean([K[i, j] * L[q, r] for i, j, q, r in itertools.permutations(range(n), 4)])
    return pairs + quadruples - 2 * triples


def rdm_by_loops(X, kind):
    n = X.shape[0]
    values = []
    for i in range(n):
        for j in range(i + 1, n):
            if kind == "euclidean":
                values.append(np.sum((X[i] - X[j]) ** 2))
            else:
                values.append(1 - np.corrcoef(X[i], X[j])[0, 1])
    return np.array(values)


def ols_by_lstsq(X, Y):
    design = np.column_stack([np.ones(X.shape[0]), X])
    coefficients = np.linalg.lstsq(design, Y, rcond=None)[0]
    return design @ coefficients


def r2_and_median_r(Y, predicted):
    residual = np.sum((Y - predicted) ** 2)
    total = np.sum((Y - Y.mean(axis=0)) ** 2)
    r = [np.corrcoef(predicted[:, j], Y[:, j])[0, 1] for j in range(Y.shape[1])]
    return 1 - residual / total, float(np.median(r))


@pytest.fixture
def pair():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((40, 6))
    Y = X @ rng.standard_normal((6, 9)) + 2.0 * rng.standard_normal((40, 9)) + 3.0
    return X, Y


# ---------------------------------------------------------------- linear CKA

def test_linear_cka_equals_hsic_with_explicit_centring_matrices(pair):
    X, Y = pair
    assert linear_cka(X, Y) == pytest.approx(cka_by_centring_matrices(X, Y), rel=1e-10)


def test_debiased_cka_equals_the_hsic_u_statistic():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((8, 3))
    Y = X[:, :2] @ rng.standard_normal((2, 4)) + rng.standard_normal((8, 4))
    Xc, Yc = X - X.mean(axis=0), Y - Y.mean(axis=0)
    K, L = Xc @ Xc.T, Yc @ Yc.T
    expected = unbiased_hsic_by_u_statistic(K, L) / math.sqrt(
        unbiased_hsic_by_u_statistic(K, K) * unbiased_hsic_by_u_statistic(L, L))
    assert linear_cka(X, Y, debiased=True) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_is_one_for_identical_inputs_and_invariant_to_rotation_and_scaling(pair, debiased):
    X, Y = pair
    rng = np.random.default_rng(11)
    rotation_x = stats.ortho_group.rvs(X.shape[1], random_state=rng)
    rotation_y = stats.ortho_group.rvs(Y.shape[1], random_state=rng)
    assert linear_cka(X, X, debiased) == pytest.approx(1.0)
    assert linear_cka(X, 5.0 * X @ rotation_x + 2.0, debiased) == pytest.approx(1.0)
    reference = linear_cka(X, Y, debiased)
    assert linear_cka(0.3 * X @ rotation_x, 7.0 * Y @ rotation_y - 1.0, debiased) == pytest.approx(reference, rel=1e-9)
    assert linear_cka(X, Y, debiased) == pytest.approx(linear_cka(Y, X, debiased), rel=1e-12)


def test_debiased_cka_is_near_zero_for_independent_inputs_where_biased_is_not():
    rng = fresh_rng("independent")
    values = {False: [], True: []}
    for _ in range(5):
        X, Y = rng.standard_normal((200, 20)), rng.standard_normal((200, 20))
        for debiased in values:
            values[debiased].append(linear_cka(X, Y, debiased))
    # Biased CKA of independent n × d data is about d / (n + d) ≈ 0.09; the debiased one is 0 ± ~0.01.
    assert abs(np.mean(values[True])) < 0.02
    assert np.mean(values[False]) > 0.05


# ---------------------------------------------------------------- RSA

@pytest.mark.parametrize("rdm", ["euclidean", "correlation"])
@pytest.mark.parametrize("compare", ["pearson", "spearman"])
def test_rsa_equals_rdms_built_by_loops(pair, rdm, compare):
    X, Y = pair
    dx, dy = rdm_by_loops(X, rdm), rdm_by_loops(Y, rdm)
    if compare == "spearman":
        dx, dy = stats.rankdata(dx), stats.rankdata(dy)
    result = rsa(X, Y, rdm=rdm, compare=compare)
    assert isinstance(result, RSAResult) and result.n_dropped == 0 and result.n_used == X.shape[0]
    assert float(result) == pytest.approx(np.corrcoef(dx, dy)[0, 1], rel=1e-9)


def test_rsa_of_identical_inputs_is_one(pair):
    X, _ = pair
    assert rsa(X, X).value == pytest.approx(1.0)
    assert rsa(X, X, rdm="correlation", compare="spearman").value == pytest.approx(1.0)


def test_correlation_rsa_drops_constant_stimuli_from_both_systems_and_says_how_many(pair):
    X, Y = (M.copy() for M in pair)
    X[[2, 5]] = 0.0      # all-zero stimuli in X
    Y[9] = 0.0           # one in Y
    Y[5] = 0.0           # already dropped through X: counted once
    X[30] = 4.2          # constant but not zero: also undefined
    result = rsa(X, Y, rdm="correlation")
    keep = np.setdiff1d(np.arange(X.shape[0]), [2, 5, 9, 30])
    assert result.n_dropped == 4 and result.n_used == keep.size
    assert result.value == pytest.approx(rsa(X[keep], Y[keep], rdm="correlation").value)
    assert result.value == pytest.approx(np.corrcoef(rdm_by_loops(X[keep], "correlation"),
                                                     rdm_by_loops(Y[keep], "correlation"))[0, 1])
    assert rsa(X, Y, rdm="euclidean").n_dropped == 0


# ---------------------------------------------------------------- regression

def test_ols_regression_equals_lstsq(pair):
    X, Y = pair
    expected_r2, expected_r = r2_and_median_r(Y, ols_by_lstsq(X, Y))
    score = regression_score(X, Y, "ols")
    assert isinstance(score, RegressionScore) and score.method == "ols"
    assert score.r2 == pytest.approx(expected_r2, rel=1e-9)
    assert score.median_r == pytest.approx(expected_r, rel=1e-9)


def test_ridge_regression_equals_closed_form_ridge_on_out_of_fold_predictions(pair):
    X, Y = pair
    alpha = 3.0
    predicted = np.empty_like(Y)
    for train, test in KFold(5, shuffle=True, random_state=4).split(X):
        mean_x, mean_y = X[train].mean(axis=0), Y[train].mean(axis=0)
        Xc = X[train] - mean_x
        weights = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(X.shape[1]), Xc.T @ (Y[train] - mean_y))
        predicted[test] = (X[test] - mean_x) @ weights + mean_y
    expected_r2, expected_r = r2_and_median_r(Y, predicted)
    score = regression_score(X, Y, "ridge", alphas=[alpha], n_splits=5, seed=4)
    assert score.r2 == pytest.approx(expected_r2, rel=1e-8)
    assert score.median_r == pytest.approx(expected_r, rel=1e-8)
    assert score.alpha == alpha


def test_regression_extremes():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((100, 5))
    assert regression_score(X, X @ rng.standard_normal((5, 3)), "ols").r2 == pytest.approx(1.0)
    unrelated = regression_score(X, rng.standard_normal((100, 4)), "ridge")
    assert unrelated.r2 < 0.05  # out of fold: no better than the mean


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("call, message", [
    (lambda X, Y: linear_cka(X, Y[:-1]), "same number of stimuli"),
    (lambda X, Y: rsa(X, Y[:5]), "same number of stimuli"),
    (lambda X, Y: regression_score(X[:7], Y), "same number of stimuli"),
    (lambda X, Y: linear_cka(np.where(X > 1.5, np.nan, X), Y), "NaN or infinite"),
    (lambda X, Y: rsa(X, np.where(Y > 2, np.inf, Y)), "NaN or infinite"),
    (lambda X, Y: regression_score(X, np.where(Y > 2, -np.inf, Y)), "NaN or infinite"),
    (lambda X, Y: linear_cka(X[:, 0], Y), "2-D array"),
    (lambda X, Y: rsa(X[None], Y), "2-D array"),
    (lambda X, Y: linear_cka(X[:2], Y[:2]), "at least 3 stimuli"),
    (lambda X, Y: linear_cka(X[:3], Y[:3], debiased=True), "at least 4 stimuli"),
    (lambda X, Y: rsa(X[:2], Y[:2]), "at least 3 stimuli"),
    (lambda X, Y: regression_score(X[:4], Y[:4], "ridge"), "at least 5 stimuli"),
    (lambda X, Y: rsa(X, Y, rdm="cosine"), "unknown rdm"),
    (lambda X, Y: rsa(X, Y, compare="kendall"), "unknown compare"),
    (lambda X, Y: regression_score(X, Y, method="lasso"), "unknown method"),
    (lambda X, Y: linear_cka(np.ones_like(X), Y), "constant across stimuli"),
    (lambda X, Y: linear_cka(X, np.full_like(Y, 0.1), debiased=True), "constant across stimuli"),
    (lambda X, Y: regression_score(X, np.full_like(Y, 0.7)), "constant across stimuli"),
    (lambda X, Y: rsa(np.vstack([np.zeros((38, 6)), X[:2]]), Y, rdm="correlation"), "at least 3 stimuli"),
    (lambda X, Y: expected_linear_cka(64, 0, 8), "positive"),
])
def test_bad_input_raises_one_clear_value_error(pair, call, message):
    X, Y = pair
    with pytest.raises(ValueError, match=message):
        call(X, Y)


# ---------------------------------------------------------------- closed forms

def test_closed_form_known_values():
    assert expected_linear_cka(64, 8, 8) == pytest.approx(8 / 73)
    assert expected_linear_cka(100, 100, 100) == pytest.approx(100 / 201)
    assert sp.expected_partial_overlap_cka(128, 128, 128, 16, 16) == pytest.approx(0.110, abs=5e-4)
    assert sp.expected_partial_overlap_cka(64, 128, 128) == pytest.approx(0.5)
    gamma = sp.latent_gamma("sparse", 0.1)
    assert sp.expected_rsa(64, 8, 8, gamma) == pytest.approx(0.325, abs=1e-3)
    assert sp.expected_rsa(64, 8, 8, 0.0) == pytest.approx(expected_linear_cka(64, 8, 8))
    assert sp.expected_regression_r2(64, 8) == pytest.approx(0.125)
    assert sp.expected_regression_median_r(64, 8, exact=False) == pytest.approx(math.sqrt(0.125))


def test_sparse_latent_kurtosis_matches_a_large_sample():
    rng = fresh_rng("kurtosis")
    sample = sp.sample_sparse_latents(1_000_000, 1, 0.1, rng).ravel()
    assert stats.kurtosis(sample) == pytest.approx(sp.sparse_latent_excess_kurtosis(0.1), rel=0.03)


@pytest.mark.parametrize("k, d", [(64, 8), (100, 100), (128, 16)])
def test_expected_cka_and_rsa_match_the_mean_over_random_superpositions(k, d):
    rng = fresh_rng(f"population k={k} d={d}")
    gamma = sp.latent_gamma("sparse", 0.1)
    draws = [(sp.superposition_matrix(k, d, rng), sp.superposition_matrix(k, d, rng)) for _ in range(300)]
    # Allowance 0.003: the closed forms are ratios of expectations; over 20 000 draws the mean ratio
    # differed by at most 0.0016 (RSA, k = 64, d = 8), 0.0008 for CKA.
    assert_matches_monte_carlo([sp.linear_cka_one_draw(A, B) for A, B in draws], expected_linear_cka(k, d, d),
                               0.003, "CKA")
    assert_matches_monte_carlo([sp.rsa_one_draw(A, B, gamma) for A, B in draws], sp.expected_rsa(k, d, d, gamma),
                               0.003, "RSA")
    # The R² of one draw is Beta(d²/2, (k − d)d/2): its mean d/k is exact.
    assert_matches_monte_carlo([sp.regression_r2_one_draw(A, B) for A, B in draws], sp.expected_regression_r2(k, d),
                               0.0, "R²")


def test_expected_cka_uses_the_participation_ratio_for_anisotropic_latents():
    rng = fresh_rng("anisotropic")
    k, d = 64, 16
    cov = np.diag(1 / np.sqrt(np.arange(1, k + 1)))
    r = sp.participation_ratio(cov)
    assert r < 0.75 * k
    values = [sp.linear_cka_one_draw(sp.superposition_matrix(k, d, rng), sp.superposition_matrix(k, d, rng), cov)
              for _ in range(300)]
    assert_matches_monte_carlo(values, expected_linear_cka(k, d, d, r=r), 0.003, "CKA, Σ ≠ I")


def test_sampled_metrics_match_closed_forms_at_finite_n():
    """Debiased CKA, RSA and in-sample OLS computed on sampled sparse latents (n = 1000) vs the closed forms."""
    rng = fresh_rng("sampled")
    draws = sp.simulate_deflation(k=64, ds=(8, 32), n=1000, n_draws=12, seed=rng)
    for (metric, d), group in draws.groupby(["metric", "d"]):
        # Allowances: 0.003 ratio of expectations; RSA + 0.007 for the Pearson correlation's finite-n bias
        # under heavy-tailed latents (−0.002 ± 0.005 at n = 1000); regression + 0.005 for the median-of-d units
        # and the in-sample inflation being first order in d/n.
        allowance = {"rsa": 0.01, "regression_r2": 0.008, "regression_median_r": 0.008}.get(metric, 0.003)
        assert_matches_monte_carlo(group["value"], group["closed_form"].mean(), allowance, f"{metric}, d = {d}")


def test_biased_cka_at_finite_n_follows_the_sample_participation_ratio():
    rng = fresh_rng("finite n")
    n, k, d = 500, 256, 32
    values, closed = [], []
    for _ in range(10):
        Z = sp.sample_gaussian_latents(n, k, rng)
        X, Y = Z @ sp.superposition_matrix(k, d, rng), Z @ sp.superposition_matrix(k, d, rng)
        values.append(linear_cka(X, Y))
        closed.append(expected_linear_cka(k, d, d, r=sp.sample_participation_ratio(Z)))
    assert np.mean(closed) == pytest.approx(0.161, abs=0.003)
    assert_matches_monte_carlo(values, float(np.mean(closed)), 0.005, "biased CKA, n = 500")
    assert np.mean(values) > expected_linear_cka(k, d, d) + 0.03  # inflated over the n → ∞ value 0.111


# ---------------------------------------------------------------- the claims: inversion and recovery

def test_partial_overlap_inverts_the_ordering():
    rng = fresh_rng("inversion")
    draws = sp.simulate_partial_overlap(n=1000, n_draws=10, seed=rng)
    summary = sp.summarize(draws).set_index(["metric", "pair"])
    compressed, partial = sp.INVERSION_PAIRS
    for metric in ("cka", "rsa", "regression_r2"):
        assert summary.loc[(metric, compressed), "mc_mean"] + 0.1 < summary.loc[(metric, partial), "mc_mean"], metric
    assert summary.loc[("cka", compressed), "closed_form"] == pytest.approx(0.110, abs=5e-4)
    assert summary.loc[("cka", partial), "closed_form"] == pytest.approx(0.5)
    for pair_name in sp.INVERSION_PAIRS:
        group = draws[(draws["metric"] == "cka") & (draws["pair"] == pair_name)]
        assert_matches_monte_carlo(group["value"], group["closed_form"].iloc[0], 0.005, f"CKA, {pair_name}")

"""Superposition and alignment: closed forms, latent samplers, seeded simulations and feature recovery.

Setup: latents Z (n × k) with i.i.d. columns of covariance Σ; two
systems X = Z A and Y = Z B with independent N(0, 1) superposition matrices A (k × d₁), B (k × d₂);
P = A Aᵀ, Q = B Bᵀ; participation ratio r = (tr Σ)² / tr(Σ²) (= k for isotropic latents).

Closed forms (n → ∞; the expectations are ratios of expectations, within 0.002 of the mean ratio for
k ≥ 64, d ≥ 4):

* linear CKA, one draw: tr(AᵀΣB BᵀΣA) / √(tr((AᵀΣA)²) tr((BᵀΣB)²)); expected √(d₁d₂ / ((d₁+1+r)(d₂+1+r))).
* partial overlap (k_s of K₁, K₂ latents shared): the CKA is multiplied by k_s / √(K₁K₂).
* RSA (squared-Euclidean RDMs, Pearson), γ = half the latent's excess kurtosis:
  one draw (2⟨P, Q⟩ + γ Σₐ PₐₐQₐₐ) / √((2‖P‖² + γ Σₐ Pₐₐ²)(2‖Q‖² + γ Σₐ Qₐₐ²)); expected
  (2 + γ)√(d₁d₂) / √([2(d₁+k+1) + γ(d₁+2)] [2(d₂+k+1) + γ(d₂+2)]).
* OLS regression X → Y: R² = tr(BᵀΠ_A B) / tr(BᵀB) (Σ = I), expected min(d₁, k)/k (exact: the R² is
  Beta(d₁d₂/2, (k−d₁)d₂/2)); each Y unit's R² is Beta(d₁/2, (k−d₁)/2), so the median per-unit r is
  about √(median of that Beta) ≈ √(min(d₁, k)/k).

* orthogonal mixing (A with orthonormal rows for d ≥ k, orthonormal columns for d < k): P, Q are
  projections, so CKA = tr(PQ)/d with expectation min(d, k)/k exactly; RSA (ratio of expectations)
  (2 + γ)(d/k) / (2 + γ(d + 2)/(k + 2)) for d < k and 1 for d ≥ k; R² min(d, k)/k as for Gaussian mixing.
  Only the regression's deflation is shared by both mixings: it is the one caused by d < k alone.
* the partial-overlap map: the identical-content pair superposed into d neurons (d/(d+K+1)) against a pair
  sharing k_s of K latents without superposition (k_s/K); the ordering inverts where k_s/K > d/(d+K+1).

These closed forms are this package's own derivations (checked here by Monte Carlo), not formulas quoted
from Liu et al.; their notation maps as n features → k, m neurons → d, y = Az → X = Z A (A is k × d).

Simulations take an explicit ``seed`` (an int or a ``numpy.random.Generator``) and return tidy
``pandas.DataFrame``s (one row per draw × condition × metric) with the closed form beside each value;
``summarize`` turns them into closed form vs Monte Carlo mean, sd and a 95 % t-interval of the mean.
Feature recovery with sparse autoencoders trains networks, so it runs in the ``repro alignment`` stage.
"""
from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from threadpoolctl import threadpool_limits

from analyses.alignment import expected_linear_cka, linear_cka, regression_score, rsa

LATENT_KINDS = ("sparse", "gaussian")
MIXINGS = ("gaussian", "orthogonal")
K_FEATURES = 64          # the toy model's features (Longon et al.)
ACTIVE_PROBABILITY = 0.1  # each feature active with probability 0.1, valued U[0, 1]
LEVEL = 0.95              # intervals: the t-interval of the mean over draws at this level

__all__ = [
    "sample_sparse_latents", "sample_gaussian_latents", "sample_latents", "superposition_matrix",
    "orthogonal_matrix", "mixing_matrix", "participation_ratio", "sample_participation_ratio",
    "sparse_latent_excess_kurtosis", "latent_gamma", "linear_cka_one_draw", "expected_linear_cka",
    "expected_orthogonal_cka", "expected_orthogonal_rsa", "partial_overlap_factor", "expected_partial_overlap_cka",
    "rsa_one_draw", "expected_rsa", "regression_r2_one_draw", "in_sample_r2", "expected_regression_r2",
    "expected_regression_median_r", "simulate_deflation", "simulate_sweeps", "simulate_mixing",
    "simulate_partial_overlap", "simulate_overlap_map", "summarize", "INVERSION_PAIRS",
]


def _rng(seed) -> np.random.Generator:
    return np.random.default_rng(seed)


@contextlib.contextmanager
def _one_thread():
    """BLAS on one thread: these matrices are small, and on a busy machine threads contending for cores
    made the simulations ten times slower. The previous setting is restored on exit."""
    with threadpool_limits(limits=1):
        yield


def _single_threaded(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with _one_thread():
            return function(*args, **kwargs)
    return wrapper


# ---------------------------------------------------------------- latents and superposition matrices

def sample_sparse_latents(n: int, k: int, p: float = ACTIVE_PROBABILITY, seed=0) -> np.ndarray:
    """(n × k) latents, each independently active with probability ``p`` and then valued U[0, 1]."""
    if not 0 < p <= 1:
        raise ValueError(f"p must be in (0, 1]; got {p}")
    rng = _rng(seed)
    return (rng.random((n, k)) < p) * rng.random((n, k))


def sample_gaussian_latents(n: int, k: int, seed=0) -> np.ndarray:
    """(n × k) independent standard normal latents."""
    return _rng(seed).standard_normal((n, k))


def sample_latents(kind: str, n: int, k: int, seed=0, p: float = ACTIVE_PROBABILITY) -> np.ndarray:
    """Latents of ``kind`` "sparse" (``sample_sparse_latents``) or "gaussian"."""
    if kind == "sparse":
        return sample_sparse_latents(n, k, p, seed)
    if kind == "gaussian":
        return sample_gaussian_latents(n, k, seed)
    raise ValueError(f"unknown latent kind {kind!r}; choose one of {', '.join(map(repr, LATENT_KINDS))}")


def superposition_matrix(k: int, d: int, seed=0) -> np.ndarray:
    """A random (k × d) superposition matrix with independent N(0, 1) entries (row f embeds feature f)."""
    return _rng(seed).standard_normal((k, d))


def orthogonal_matrix(k: int, d: int, seed=0) -> np.ndarray:
    """A random (k × d) block of a Haar-distributed orthogonal matrix of size max(k, d): orthonormal rows
    (A Aᵀ = I, no superposition) when d ≥ k, orthonormal columns (a random projection) when d < k."""
    return stats.ortho_group.rvs(max(k, d), random_state=_rng(seed))[:k, :d] if max(k, d) > 1 else np.ones((1, 1))


def mixing_matrix(kind: str, k: int, d: int, seed=0) -> np.ndarray:
    """``superposition_matrix`` ("gaussian") or ``orthogonal_matrix`` ("orthogonal")."""
    if kind == "gaussian":
        return superposition_matrix(k, d, seed)
    if kind == "orthogonal":
        return orthogonal_matrix(k, d, seed)
    raise ValueError(f"unknown mixing {kind!r}; choose one of {', '.join(map(repr, MIXINGS))}")


# ---------------------------------------------------------------- latent statistics

def participation_ratio(cov) -> float:
    """(tr Σ)² / tr(Σ²) of a covariance matrix: the effective number of latent dimensions."""
    cov = np.asarray(cov, dtype=float)
    return float(np.trace(cov) ** 2 / np.sum(cov * cov))


def sample_participation_ratio(Z) -> float:
    """Participation ratio of the centred sample covariance of Z (rows are samples). For n samples of k
    isotropic latents it is about k n / (k + n): the r that makes the closed form fit biased CKA at finite n."""
    Z = np.asarray(Z, dtype=float)
    Zc = Z - Z.mean(axis=0)
    return participation_ratio(Zc.T @ Zc / Z.shape[0])


def sparse_latent_excess_kurtosis(p: float = ACTIVE_PROBABILITY) -> float:
    """Excess kurtosis of z = b·u, b ~ Bernoulli(p), u ~ U[0, 1], from its raw moments E zᵐ = p/(m+1)."""
    m1, m2, m3, m4 = (p / (m + 1) for m in (1, 2, 3, 4))
    variance = m2 - m1 ** 2
    fourth_central = m4 - 4 * m1 * m3 + 6 * m1 ** 2 * m2 - 3 * m1 ** 4
    return float(fourth_central / variance ** 2 - 3)


def latent_gamma(kind: str, p: float = ACTIVE_PROBABILITY) -> float:
    """γ of the RSA closed form: half the latent's excess kurtosis (the excess kurtosis of the difference
    of two independent draws). 0 for Gaussian latents; about 6.64 for sparse latents with p = 0.1."""
    if kind == "gaussian":
        return 0.0
    if kind == "sparse":
        return sparse_latent_excess_kurtosis(p) / 2
    raise ValueError(f"unknown latent kind {kind!r}; choose one of {', '.join(map(repr, LATENT_KINDS))}")


# ---------------------------------------------------------------- closed forms

def linear_cka_one_draw(A, B, cov=None) -> float:
    """Population (n → ∞) linear CKA of X = Z A and Y = Z B for given superposition matrices:
    tr(AᵀΣB BᵀΣA) / √(tr((AᵀΣA)²) tr((BᵀΣB)²)); Σ = I when ``cov`` is None."""
    A, B = np.asarray(A, float), np.asarray(B, float)
    weighted_a, weighted_b = (A, B) if cov is None else (np.asarray(cov, float) @ A, np.asarray(cov, float) @ B)
    cross, auto_a, auto_b = A.T @ weighted_b, A.T @ weighted_a, B.T @ weighted_b
    return float(np.sum(cross * cross) / (np.linalg.norm(auto_a) * np.linalg.norm(auto_b)))


def expected_orthogonal_cka(k: int, d: int) -> float:
    """Expected linear CKA (n → ∞) of two independent orthogonal mixings of k isotropic latents into d
    units: P, Q are rank-min(d, k) projections, CKA = tr(PQ)/min(d, k), and E tr(PQ) = d²/k for d < k;
    so min(d, k)/k, exactly (the denominator does not vary)."""
    return min(d, k) / k


def expected_orthogonal_rsa(k: int, d: int, gamma: float) -> float:
    """Expected RSA (squared-Euclidean RDMs, Pearson; ratio of expectations) for orthogonal mixing:
    1 for d ≥ k; for d < k, with E⟨P, Q⟩ = E Σₐ PₐₐQₐₐ = d²/k, ‖P‖² = d and E Σₐ Pₐₐ² = d(d + 2)/(k + 2)
    (Pₐₐ ~ Beta(d/2, (k − d)/2)): (2 + γ)(d/k) / (2 + γ(d + 2)/(k + 2))."""
    if d >= k:
        return 1.0
    return float((2 + gamma) * (d / k) / (2 + gamma * (d + 2) / (k + 2)))


def partial_overlap_factor(k_shared: int, k1: int, k2: int) -> float:
    """k_s / √(K₁K₂): how much sharing only k_s of the K₁ and K₂ latents scales the expected CKA."""
    if not 0 <= k_shared <= min(k1, k2):
        raise ValueError(f"k_shared must be between 0 and min(k1, k2) = {min(k1, k2)}; got {k_shared}")
    return k_shared / math.sqrt(k1 * k2)


def expected_partial_overlap_cka(k_shared: int, k1: int, k2: int, d1: int | None = None,
                                 d2: int | None = None) -> float:
    """Expected linear CKA when the systems share ``k_shared`` of their K₁ and K₂ isotropic latents.

    A system with ``d`` None has no superposition (each latent its own unit, identity embedding; factor 1);
    otherwise its latents are compressed by a random N(0, 1) matrix into d units (factor √(d / (d + K + 1))).
    Result: k_s / √(K₁K₂) × factor₁ × factor₂.
    """
    def compression(d, k):
        return 1.0 if d is None else math.sqrt(d / (d + k + 1))
    return partial_overlap_factor(k_shared, k1, k2) * compression(d1, k1) * compression(d2, k2)


def rsa_one_draw(A, B, gamma: float) -> float:
    """Population RSA (Pearson between squared-Euclidean RDMs) of X = Z A, Y = Z B for i.i.d. latents
    whose pairwise differences have excess kurtosis γ: (2⟨P, Q⟩_F + γ Σₐ PₐₐQₐₐ) / √(… same for P, Q …)."""
    A, B = np.asarray(A, float), np.asarray(B, float)
    P, Q = A @ A.T, B @ B.T
    dp, dq = np.diag(P), np.diag(Q)
    cross = 2 * np.sum(P * Q) + gamma * dp @ dq
    return float(cross / math.sqrt((2 * np.sum(P * P) + gamma * dp @ dp) * (2 * np.sum(Q * Q) + gamma * dq @ dq)))


def expected_rsa(k: int, d1: int, d2: int, gamma: float) -> float:
    """Expected RSA (squared-Euclidean RDMs, Pearson) over random N(0, 1) superpositions of k i.i.d. latents:
    (2 + γ)√(d₁d₂) / √([2(d₁ + k + 1) + γ(d₁ + 2)] [2(d₂ + k + 1) + γ(d₂ + 2)]), γ = half the excess
    kurtosis (``latent_gamma``). Equals the CKA closed form for Gaussian latents (γ = 0)."""
    return float((2 + gamma) * math.sqrt(d1 * d2)
                 / math.sqrt((2 * (d1 + k + 1) + gamma * (d1 + 2)) * (2 * (d2 + k + 1) + gamma * (d2 + 2))))


def regression_r2_one_draw(A, B, cov=None) -> float:
    """Population variance-weighted R² of the OLS regression X → Y:
    tr(BᵀΣA (AᵀΣA)⁺ AᵀΣB) / tr(BᵀΣB); with Σ = I it is tr(Bᵀ Π_A B) / tr(BᵀB)."""
    A, B = np.asarray(A, float), np.asarray(B, float)
    weighted_b = B if cov is None else np.asarray(cov, float) @ B
    weighted_a = A if cov is None else np.asarray(cov, float) @ A
    cross = A.T @ weighted_b
    return float(np.trace(cross.T @ np.linalg.pinv(A.T @ weighted_a) @ cross) / np.trace(B.T @ weighted_b))


def in_sample_r2(r2: float, n_regressors: int, n: int | None) -> float:
    """The expected in-sample OLS R² at n stimuli for a population R² of ``r2`` and ``n_regressors``
    independent regressors (plus intercept): r2 + (1 − r2) · n_regressors / (n − 1), since the unexplained
    part loses n_regressors of its n − 1 degrees of freedom to the fit. ``n`` None: n → ∞, ``r2`` itself."""
    if n is None:
        return float(r2)
    return float(r2 + (1 - r2) * min(n_regressors, n - 1) / (n - 1))


def expected_regression_r2(k: int, d1: int, n: int | None = None) -> float:
    """min(d₁, k) / k: the expected OLS R² of X → Y (exact for isotropic latents as n → ∞). With ``n``, the
    expected in-sample value at n stimuli (``in_sample_r2``; X has rank min(d₁, k))."""
    return in_sample_r2(min(d1, k) / k, min(d1, k), n)


def expected_regression_median_r(k: int, d1: int, exact: bool = True, n: int | None = None) -> float:
    """Median per-unit Pearson r of the OLS regression X → Y (isotropic latents).

    ``exact=True``: √(median of Beta(d₁/2, (k − d₁)/2)), the distribution of one Y unit's R² (``scipy.stats``);
    the median over Y's units approaches it as d₂ grows. ``exact=False``: the approximation √(min(d₁, k)/k).
    With ``n``, each unit's R² is raised to its expected in-sample value first (``in_sample_r2``).
    """
    if d1 >= k:
        return 1.0
    median_r2 = stats.beta(d1 / 2, (k - d1) / 2).median() if exact else d1 / k
    return float(math.sqrt(in_sample_r2(median_r2, d1, n)))


# ---------------------------------------------------------------- Monte Carlo simulations

def summarize(draws: pd.DataFrame) -> pd.DataFrame:
    """Closed form vs Monte Carlo: per condition and metric, the closed form (mean over draws when it
    depends on the draw), the mean and sd of the simulated values, the number of draws, the difference, the
    standard error of the mean and the 95 % t-interval of the mean (mc_low, mc_high)."""
    keys = [c for c in draws.columns if c not in ("draw", "value", "closed_form")]
    grouped = draws.groupby(keys, sort=False)
    table = grouped.agg(closed_form=("closed_form", "mean"), mc_mean=("value", "mean"), mc_sd=("value", "std"),
                        n_draws=("value", "size")).reset_index()
    table["difference"] = table["mc_mean"] - table["closed_form"]
    table["standard_error"] = table["mc_sd"] / np.sqrt(table["n_draws"])
    half = stats.t.ppf(0.5 + LEVEL / 2, np.maximum(table["n_draws"] - 1, 1)) * table["standard_error"]
    table["mc_low"], table["mc_high"] = table["mc_mean"] - half, table["mc_mean"] + half
    return table


@_single_threaded
def simulate_deflation(k: int = K_FEATURES, ds=(4, 8, 16, 32, 64, 128), n: int = 1000, n_draws: int = 8,
                       latent: str = "sparse", p: float = ACTIVE_PROBABILITY, seed=0) -> pd.DataFrame:
    """Alignment of two systems with identical latents and independent random superpositions, vs d / k.

    For each d in ``ds`` and each draw: fresh latents Z (n × k, ``latent`` kind), fresh A, B (k × d,
    N(0, 1)), X = Z A, Y = Z B, then

    * ``cka``: debiased linear CKA; closed form ``expected_linear_cka(k, d, d)``.
    * ``cka_biased``: biased linear CKA; closed form with r = the draw's sample participation ratio.
    * ``rsa``: squared-Euclidean RDMs compared by Pearson; closed form ``expected_rsa`` with γ of the latent.
    * ``regression_r2``: OLS X → Y in sample, variance-weighted R²; closed form min(d, k)/k, raised to its
      in-sample expectation at n (``in_sample_r2``: + (1 − R²) d/(n − 1), 0.01-0.02 at n = 1000).
    * ``regression_median_r``: its median per-unit Pearson r; closed form ``expected_regression_median_r``
      at n.

    Returns one row per (metric, d, draw): metric, k, d, compression (= d/k), latent, gamma, n, draw, value,
    closed_form.
    """
    rng = _rng(seed)
    gamma = latent_gamma(latent, p)
    rows = []
    for d in ds:
        closed = {"cka": expected_linear_cka(k, d, d), "rsa": expected_rsa(k, d, d, gamma),
                  "regression_r2": expected_regression_r2(k, d, n),
                  "regression_median_r": expected_regression_median_r(k, d, n=n)}
        for draw in range(n_draws):
            Z = sample_latents(latent, n, k, rng, p)
            A, B = superposition_matrix(k, d, rng), superposition_matrix(k, d, rng)
            X, Y = Z @ A, Z @ B
            fit = regression_score(X, Y, "ols")
            values = {"cka": linear_cka(X, Y, debiased=True), "cka_biased": linear_cka(X, Y),
                      "rsa": rsa(X, Y).value, "regression_r2": fit.r2, "regression_median_r": fit.median_r}
            closed["cka_biased"] = expected_linear_cka(k, d, d, r=sample_participation_ratio(Z))
            rows += [{"metric": metric, "k": k, "d": d, "compression": d / k, "latent": latent, "p": p,
                      "gamma": gamma, "n": n, "draw": draw, "value": value, "closed_form": closed[metric]}
                     for metric, value in values.items()]
    return pd.DataFrame(rows)


def simulate_sweeps(k: int = K_FEATURES, d: int = 16, ds=(4, 8, 16, 32, 64, 128), ks=(16, 32, 64, 128, 256),
                    ps=(0.02, 0.05, 0.1, 0.3, 1.0), n: int = 1000, n_draws: int = 8, seed=0) -> pd.DataFrame:
    """``simulate_deflation`` swept over d (k fixed), over k (d fixed) and over the active probability p
    (k and d fixed; p changes RSA through γ, not CKA or R²), sparse latents. Rows as ``simulate_deflation``
    plus ``sweep`` ("d", "k" or "p"); each condition has ``n_draws`` draws."""
    rng = _rng(seed)
    parts = [simulate_deflation(k=k, ds=ds, n=n, n_draws=n_draws, seed=rng).assign(sweep="d")]
    parts += [simulate_deflation(k=size, ds=(d,), n=n, n_draws=n_draws, seed=rng).assign(sweep="k") for size in ks]
    parts += [simulate_deflation(k=k, ds=(d,), n=n, n_draws=n_draws, p=p, seed=rng).assign(sweep="p") for p in ps]
    return pd.concat(parts, ignore_index=True)


@_single_threaded
def simulate_mixing(k: int = K_FEATURES, ds=(8, 16, 32, 64, 128, 256), n: int = 1000, n_draws: int = 8,
                    latent: str = "sparse", p: float = ACTIVE_PROBABILITY, seed=0) -> pd.DataFrame:
    """Random Gaussian vs orthogonal mixing of the same latents into d units, for d below and above k.

    Metrics: debiased linear CKA (``cka``), RSA (squared Euclidean, Pearson), in-sample OLS R². Closed forms:
    Gaussian ``expected_linear_cka``, ``expected_rsa``; orthogonal ``expected_orthogonal_cka``,
    ``expected_orthogonal_rsa``; R² min(d, k)/k for both (in sample at n). Returns one row per (mixing,
    metric, d, draw): mixing, metric, k, d, compression, latent, n, draw, value, closed_form.
    """
    rng = _rng(seed)
    gamma = latent_gamma(latent, p)
    closed = {"gaussian": lambda d: {"cka": expected_linear_cka(k, d, d), "rsa": expected_rsa(k, d, d, gamma)},
              "orthogonal": lambda d: {"cka": expected_orthogonal_cka(k, d),
                                       "rsa": expected_orthogonal_rsa(k, d, gamma)}}
    rows = []
    for mixing in MIXINGS:
        for d in ds:
            expected = {**closed[mixing](d), "regression_r2": expected_regression_r2(k, d, n)}
            for draw in range(n_draws):
                Z = sample_latents(latent, n, k, rng, p)
                X, Y = Z @ mixing_matrix(mixing, k, d, rng), Z @ mixing_matrix(mixing, k, d, rng)
                values = {"cka": linear_cka(X, Y, debiased=True), "rsa": rsa(X, Y).value,
                          "regression_r2": regression_score(X, Y, "ols").r2}
                rows += [{"mixing": mixing, "metric": metric, "k": k, "d": d, "compression": d / k, "latent": latent,
                          "n": n, "draw": draw, "value": value, "closed_form": expected[metric]}
                         for metric, value in values.items()]
    return pd.DataFrame(rows)


INVERSION_PAIRS = ("all shared, superposed", "half shared, no superposition")


@_single_threaded
def simulate_partial_overlap(k_total: int = 128, k_shared: int = 64, d: int = 16, n: int = 2000,
                             n_draws: int = 8, latent: str = "sparse", p: float = ACTIVE_PROBABILITY,
                             seed=0) -> pd.DataFrame:
    """The partial-overlap inversion: a pair sharing fewer features can look more aligned.

    * "all shared, superposed": both systems carry the same ``k_total`` latents, each compressed by its own
      random N(0, 1) matrix into ``d`` units. Closed forms: CKA √(d/(d+K+1))² = d/(d+K+1), RSA
      ``expected_rsa(K, d, d, γ)``, R² d/K (in sample at n: ``in_sample_r2``).
    * "half shared, no superposition": each system has ``k_total`` latents, ``k_shared`` of them common and
      the rest its own, one unit per latent (identity embedding, d = K). Closed forms: k_s/K for CKA, RSA
      and R² alike (R² in sample at n: 0.5 + 0.5 · 128/(n − 1)).

    Metrics: debiased linear CKA, RSA (squared Euclidean, Pearson), OLS R². Returns one row per
    (pair, metric, draw): pair, k_total, k_shared, d, latent, n, metric, draw, value, closed_form.
    With the defaults the closed-form CKAs are 0.110 (all 128 shared) and 0.50 (64 of 128 shared).
    """
    rng = _rng(seed)
    gamma = latent_gamma(latent, p)
    closed = {
        INVERSION_PAIRS[0]: {"cka": expected_partial_overlap_cka(k_total, k_total, k_total, d, d),
                             "rsa": expected_rsa(k_total, d, d, gamma),
                             "regression_r2": expected_regression_r2(k_total, d, n)},
        INVERSION_PAIRS[1]: {"cka": partial_overlap_factor(k_shared, k_total, k_total),
                             "rsa": partial_overlap_factor(k_shared, k_total, k_total),
                             "regression_r2": in_sample_r2(k_shared / k_total, k_total, n)},
    }
    sizes = {INVERSION_PAIRS[0]: {"k_shared": k_total, "d": d},
             INVERSION_PAIRS[1]: {"k_shared": k_shared, "d": k_total}}
    rows = []
    for draw in range(n_draws):
        Z = sample_latents(latent, n, k_total, rng, p)
        own = sample_latents(latent, n, k_total - k_shared, rng, p)  # the second system's private latents
        systems = {INVERSION_PAIRS[0]: (Z @ superposition_matrix(k_total, d, rng),
                                        Z @ superposition_matrix(k_total, d, rng)),
                   INVERSION_PAIRS[1]: (Z, np.hstack([Z[:, :k_shared], own]))}
        for pair, (X, Y) in systems.items():
            values = {"cka": linear_cka(X, Y, debiased=True), "rsa": rsa(X, Y).value,
                      "regression_r2": regression_score(X, Y, "ols").r2}
            rows += [{"pair": pair, "k_total": k_total, **sizes[pair], "latent": latent, "n": n, "metric": metric,
                      "draw": draw, "value": value, "closed_form": closed[pair][metric]}
                     for metric, value in values.items()]
    return pd.DataFrame(rows)


@_single_threaded
def simulate_overlap_map(k_total: int = 128, shared=(8, 16, 32, 48, 64, 96, 128), ds=(4, 8, 16, 32, 64, 128, 256),
                         n: int = 1000, n_draws: int = 8, latent: str = "sparse", p: float = ACTIVE_PROBABILITY,
                         seed=0) -> pd.DataFrame:
    """The two sides of the partial-overlap map, each with ``n_draws`` draws of debiased linear CKA:

    * ``side`` "superposed": both systems carry the same K = ``k_total`` latents, each through its own random
      N(0, 1) matrix into d units (d in ``ds``); closed form d/(d + K + 1).
    * ``side`` "overlap": each system has K latents, k_s of them (``shared``) common, the rest its own, one
      unit per latent; closed form k_s/K.

    Returns one row per (side, size, draw): side, k_total, size (d or k_s), n, draw, value, closed_form.
    ``overlap_map`` pairs them into the map over (k_s, d).
    """
    rng = _rng(seed)
    rows = []
    for d in ds:
        for draw in range(n_draws):
            Z = sample_latents(latent, n, k_total, rng, p)
            X, Y = Z @ superposition_matrix(k_total, d, rng), Z @ superposition_matrix(k_total, d, rng)
            rows.append({"side": "superposed", "k_total": k_total, "size": d, "n": n, "draw": draw,
                         "value": linear_cka(X, Y, debiased=True),
                         "closed_form": expected_partial_overlap_cka(k_total, k_total, k_total, d, d)})
    for k_shared in shared:
        for draw in range(n_draws):
            Z = sample_latents(latent, n, k_total, rng, p)
            own = sample_latents(latent, n, k_total - k_shared, rng, p)
            rows.append({"side": "overlap", "k_total": k_total, "size": k_shared, "n": n, "draw": draw,
                         "value": linear_cka(Z, np.hstack([Z[:, :k_shared], own]), debiased=True),
                         "closed_form": partial_overlap_factor(k_shared, k_total, k_total)})
    return pd.DataFrame(rows)


def overlap_map(draws: pd.DataFrame, level: float = LEVEL) -> pd.DataFrame:
    """The map over (k_s shared of K, d neurons) of Δ = CKA(k_s shared, no superposition) − CKA(all K shared,
    superposed into d): positive where the pair sharing fewer features scores higher (the inversion).

    Per cell: closed_form Δ = k_s/K − d/(d + K + 1), the simulated mean Δ, its Welch t-interval at ``level``
    from the two sides' independent draws, ``inverts_closed_form`` (Δ > 0) and ``inverts_simulated``
    (True / False where the interval excludes 0, missing where it does not)."""
    sides = {side: group.groupby("size")["value"].agg(["mean", "var", "size"]) for side, group in draws.groupby("side")}
    closed = {side: group.groupby("size")["closed_form"].first() for side, group in draws.groupby("side")}
    rows = []
    for k_shared, over in sides["overlap"].iterrows():
        for d, sup in sides["superposed"].iterrows():
            variance = over["var"] / over["size"] + sup["var"] / sup["size"]
            freedom = variance ** 2 / ((over["var"] / over["size"]) ** 2 / max(over["size"] - 1, 1)
                                       + (sup["var"] / sup["size"]) ** 2 / max(sup["size"] - 1, 1)) if variance > 0 else 1
            half = stats.t.ppf(0.5 + level / 2, freedom) * math.sqrt(variance)
            delta = over["mean"] - sup["mean"]
            simulated = pd.NA if abs(delta) <= half else bool(delta > 0)
            closed_delta = closed["overlap"][k_shared] - closed["superposed"][d]
            rows.append({"k_shared": int(k_shared), "d": int(d), "k_total": int(draws["k_total"].iloc[0]),
                         "closed_form": closed_delta, "mc_mean": delta, "mc_low": delta - half, "mc_high": delta + half,
                         "n_draws": int(min(over["size"], sup["size"])), "inverts_closed_form": bool(closed_delta > 0),
                         "inverts_simulated": simulated})
    table = pd.DataFrame(rows)
    table["inverts_simulated"] = table["inverts_simulated"].astype("boolean")
    return table


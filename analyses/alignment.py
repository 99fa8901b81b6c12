"""Representational alignment metrics between two systems shown the same stimuli.

Every function takes two activation matrices ``X`` (n × d₁) and ``Y`` (n × d₂) whose **rows are stimuli**
(the same n stimuli, in the same order) and whose columns are units (neurons, channels, features). The
exact variant of each metric is stated in its docstring, since published numbers depend on it:

* ``linear_cka``: linear centred kernel alignment, biased (plug-in HSIC) or debiased (unbiased HSIC).
* ``rsa``: Pearson or Spearman correlation between the upper triangles of two representational
  dissimilarity matrices (squared-Euclidean or correlation distance).
* ``regression_score``: linear regression X → Y, variance-weighted R² and median per-unit Pearson r.
* ``expected_linear_cka``: the closed form for two random superpositions of the same latents.
* ``unit_correlations`` and the unit-matching scores ``hungarian_matching``, ``semi_matching`` and
  ``soft_matching``: how well single units of one system find a counterpart in the other.
* ``ridge_r2``: out-of-fold ridge regression at a fixed penalty over given folds (for resampled stimuli).

Bad input (different numbers of stimuli, NaN or inf, wrong number of dimensions, too few stimuli, an
unknown option) raises one ``ValueError`` saying what is wrong.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import sparse, stats
from scipy.optimize import linear_sum_assignment, linprog
from scipy.spatial.distance import pdist
from sklearn.linear_model import LinearRegression, RidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import KFold, cross_val_predict

RDM_KINDS = {"euclidean": "sqeuclidean", "correlation": "correlation"}  # our name → scipy's pdist metric
COMPARISONS = ("pearson", "spearman")
REGRESSION_METHODS = ("ols", "ridge")
RIDGE_ALPHAS = np.logspace(-4, 6, 21)  # wide on purpose: activations come in any scale


# ---------------------------------------------------------------- validation

def as_stimulus_matrix(values, name: str = "X") -> np.ndarray:
    """``values`` as a finite float64 (stimuli × units) matrix, or one clear ``ValueError``."""
    try:
        matrix = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a numeric 2-D array (stimuli × units): {error}") from None
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (stimuli × units); got {matrix.ndim} dimension(s), "
                         f"shape {matrix.shape}")
    if matrix.shape[1] == 0:
        raise ValueError(f"{name} has no units (shape {matrix.shape})")
    bad = ~np.isfinite(matrix)
    if bad.any():
        raise ValueError(f"{name} contains {int(bad.sum())} NaN or infinite value(s); alignment metrics need "
                         f"finite activations")
    return matrix


def check_pair(X, Y, min_stimuli: int = 3, metric: str = "this metric") -> tuple[np.ndarray, np.ndarray]:
    """Validate two activation matrices for one comparison: 2-D, finite, same stimuli, enough of them."""
    X, Y = as_stimulus_matrix(X, "X"), as_stimulus_matrix(Y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must have the same number of stimuli (rows); got {X.shape[0]} and "
                         f"{Y.shape[0]}")
    if X.shape[0] < min_stimuli:
        raise ValueError(f"{metric} needs at least {min_stimuli} stimuli; got {X.shape[0]}")
    return X, Y


def _check_choice(name: str, value: str, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(repr, allowed))}")
    return value


# ---------------------------------------------------------------- linear CKA

def _unbiased_hsic(gram_dot: float, diag_x: np.ndarray, diag_y: np.ndarray,
                   row_sums_x: np.ndarray, row_sums_y: np.ndarray) -> float:
    """Song et al. (2012) unbiased HSIC from sufficient statistics of two linear Gram matrices K, L.

    With K̃, L̃ the Gram matrices with their diagonals set to zero:
    HSIC_u = [tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1) / ((n−1)(n−2)) − 2/(n−2) · 1ᵀK̃L̃1] / (n(n−3)).
    ``gram_dot`` is ⟨K, L⟩_F (diagonal included), ``row_sums_*`` are K1 and L1 (diagonal included).
    """
    n = diag_x.shape[0]
    trace_kl = gram_dot - diag_x @ diag_y
    off_rows_x, off_rows_y = row_sums_x - diag_x, row_sums_y - diag_y  # K̃1, L̃1
    total_x, total_y = off_rows_x.sum(), off_rows_y.sum()
    return float((trace_kl + total_x * total_y / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (off_rows_x @ off_rows_y))
                 / (n * (n - 3)))


def _hsic_terms(A: np.ndarray, B: np.ndarray, AtB: np.ndarray) -> tuple:
    """(⟨K, L⟩_F, diag K, diag L, K1, L1) for K = A Aᵀ, L = B Bᵀ without forming n × n matrices."""
    return (float(np.sum(AtB * AtB)), np.einsum("ij,ij->i", A, A), np.einsum("ij,ij->i", B, B),
            A @ A.sum(axis=0), B @ B.sum(axis=0))


def linear_cka(X, Y, debiased: bool = False) -> float:
    """Linear centred kernel alignment between two systems (rows are stimuli).

    Both matrices are column-centred first (Xc = H X, H = I − 11ᵀ/n); K = Xc Xcᵀ and L = Yc Ycᵀ.

    * ``debiased=False`` (Kornblith et al. 2019): CKA = HSIC(K, L) / √(HSIC(K, K) HSIC(L, L)) with the
      plug-in HSIC ∝ tr(K H L H), which for centred features equals
      ‖XcᵀYc‖²_F / (‖XcᵀXc‖_F ‖YcᵀYc‖_F). It is biased upwards at finite n (more so for wide X, Y).
    * ``debiased=True``: the same ratio with each HSIC replaced by the unbiased estimator of Song et al.
      (2012), as used for CKA by Nguyen, Raghu & Kornblith (2021):
      HSIC_u(K, L) = [tr(K̃L̃) + 1ᵀK̃1 · 1ᵀL̃1 / ((n−1)(n−2)) − 2/(n−2) · 1ᵀK̃L̃1] / (n(n−3)),
      K̃, L̃ = K, L with zero diagonals (computed on the centred data). Needs n ≥ 4; can be slightly
      negative for unrelated systems; ``nan`` if a self-HSIC estimate is not positive.

    Computed in feature space (O(n·d₁·d₂)), never forming n × n matrices. Invariant to orthogonal
    transforms and isotropic scaling of either system, not to general invertible linear maps.
    Raises ``ValueError`` if either system is constant across stimuli.
    """
    X, Y = check_pair(X, Y, 4 if debiased else 3, "debiased linear CKA" if debiased else "linear CKA")
    for name, matrix in (("X", X), ("Y", Y)):
        if not np.any(np.ptp(matrix, axis=0)):
            raise ValueError(f"{name} is constant across stimuli; CKA is undefined")
    Xc, Yc = X - X.mean(axis=0), Y - Y.mean(axis=0)
    XtY, XtX, YtY = Xc.T @ Yc, Xc.T @ Xc, Yc.T @ Yc
    if not debiased:
        return float(np.sum(XtY * XtY) / (np.linalg.norm(XtX) * np.linalg.norm(YtY)))
    cross = _unbiased_hsic(*_hsic_terms(Xc, Yc, XtY))
    self_x = _unbiased_hsic(*_hsic_terms(Xc, Xc, XtX))
    self_y = _unbiased_hsic(*_hsic_terms(Yc, Yc, YtY))
    if self_x <= 0 or self_y <= 0:
        return float("nan")
    return float(cross / math.sqrt(self_x * self_y))


def expected_linear_cka(k: float, d1: float, d2: float, r: float | None = None) -> float:
    """Closed form for the linear CKA of X = Z A and Y = Z B, averaged over random superposition matrices.

    Z (n × k) has i.i.d. rows with covariance Σ and participation ratio r = (tr Σ)² / tr(Σ²); A (k × d₁)
    and B (k × d₂) have independent N(0, 1) entries. As n → ∞ and taking the ratio of expectations,
    E[CKA] = √(d₁ d₂ / ((d₁ + 1 + r)(d₂ + 1 + r))); for isotropic latents r = k, and with d₁ = d₂ = d
    it is d / (d + k + 1). ``k`` only sets r when ``r`` is None. The ratio-of-expectations error is below
    0.002 for k ≥ 64, d ≥ 4 (Monte Carlo over 20 000 draws).
    """
    r = float(k) if r is None else float(r)
    for name, value in (("k", k), ("d1", d1), ("d2", d2), ("r", r)):
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive number; got {value!r}")
    return math.sqrt(d1 * d2 / ((d1 + 1 + r) * (d2 + 1 + r)))


# ---------------------------------------------------------------- RSA

@dataclass(frozen=True)
class RSAResult:
    """An RSA score with the stimuli it rests on. ``float(result)`` is the score.

    ``n_dropped``: stimuli left out because a correlation-distance RDM is undefined for them (a constant
    row, all-zero included, in either system); always 0 for squared-Euclidean RDMs.
    ``n_used``: stimuli the RDMs were built from.
    """
    value: float
    n_dropped: int
    n_used: int

    def __float__(self) -> float:
        return float(self.value)


def constant_rows(X: np.ndarray) -> np.ndarray:
    """Boolean mask of stimuli whose activity is the same in every unit (all-zero rows included)."""
    return np.ptp(X, axis=1) == 0


def rsa(X, Y, rdm: str = "euclidean", compare: str = "pearson") -> RSAResult:
    """Representational similarity analysis: correlation between two systems' RDMs over the same stimuli.

    RDM (``rdm``): ``"euclidean"`` = squared Euclidean distance between stimuli's activity vectors;
    ``"correlation"`` = 1 − Pearson correlation between them (across units). Comparison (``compare``):
    ``"pearson"`` or ``"spearman"`` correlation between the two RDMs' upper triangles (i < j, diagonal
    excluded), via ``scipy.stats``.

    Correlation-distance RDMs are undefined for stimuli with constant activity (all-zero rows included,
    common after a ReLU): such a stimulus, constant in either system, is dropped from both, and the count
    is returned in ``RSAResult.n_dropped``. Returns ``RSAResult(value, n_dropped, n_used)``; ``value`` is
    NaN when an RDM is constant. Raises ``ValueError`` if fewer than 3 stimuli remain.
    """
    _check_choice("rdm", rdm, tuple(RDM_KINDS))
    _check_choice("compare", compare, COMPARISONS)
    X, Y = check_pair(X, Y, 3, "RSA")
    n_dropped = 0
    if rdm == "correlation":
        keep = ~(constant_rows(X) | constant_rows(Y))
        n_dropped = int((~keep).sum())
        X, Y = X[keep], Y[keep]
        if X.shape[0] < 3:
            raise ValueError(f"RSA with correlation distance needs at least 3 stimuli with non-constant "
                             f"activity in both systems; {X.shape[0]} remain after dropping {n_dropped}")
    dx, dy = pdist(X, RDM_KINDS[rdm]), pdist(Y, RDM_KINDS[rdm])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)  # constant RDM → NaN, documented
        result = stats.pearsonr(dx, dy) if compare == "pearson" else stats.spearmanr(dx, dy)
    return RSAResult(float(result.statistic), n_dropped, int(X.shape[0]))


# ---------------------------------------------------------------- linear regression

@dataclass(frozen=True)
class RegressionScore:
    """How well a linear map from X predicts Y.

    ``r2``: variance-weighted R² = 1 − Σⱼ SS_res,j / Σⱼ SS_tot,j over Y's units (sklearn's
    ``r2_score(multioutput="variance_weighted")``). ``median_r``: median over Y's units of the Pearson r
    between prediction and target (units constant across stimuli are left out). ``method``: "ols"/"ridge".
    ``alpha``: the ridge penalty chosen on the whole data (None for OLS), for reference.
    """
    r2: float
    median_r: float
    method: str
    alpha: float | None = None


def _median_unit_correlation(predicted: np.ndarray, Y: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)  # constant units give NaN, skipped
        r = np.atleast_1d(stats.pearsonr(predicted, Y, axis=0).statistic)
    r = r[np.isfinite(r)]
    return float(np.median(r)) if r.size else float("nan")


def regression_score(X, Y, method: str = "ols", alphas=RIDGE_ALPHAS, n_splits: int = 5,
                     seed: int = 0) -> RegressionScore:
    """Linear regression X → Y (with intercept): variance-weighted R² and median per-unit Pearson r.

    * ``"ols"``: ordinary least squares fitted and scored **in sample**, the variant of the closed form
      R² = tr(Bᵀ Π_A B) / tr(BᵀB). At finite n it is inflated by about (1 − R²) d₁ / n.
    * ``"ridge"``: ``RidgeCV`` (penalty chosen from ``alphas`` by efficient leave-one-out on each training
      fold, one penalty shared by all Y units) inside ``KFold(n_splits, shuffle=True, random_state=seed)``;
      scores use the **out-of-fold** predictions, so R² can be negative for unrelated systems.

    Returns ``RegressionScore(r2, median_r, method, alpha)``. Raises ``ValueError`` if Y is constant.
    """
    _check_choice("method", method, REGRESSION_METHODS)
    X, Y = check_pair(X, Y, max(3, n_splits) if method == "ridge" else 3, f"{method} regression")
    if not np.any(np.ptp(Y, axis=0)):
        raise ValueError("Y is constant across stimuli; R² is undefined")
    if method == "ols":
        predicted, alpha = LinearRegression().fit(X, Y).predict(X), None
    else:
        folds = KFold(n_splits=n_splits, shuffle=True, random_state=seed)
        predicted = cross_val_predict(RidgeCV(alphas=alphas), X, Y, cv=folds)
        alpha = float(RidgeCV(alphas=alphas).fit(X, Y).alpha_)
    r2 = float(r2_score(Y, predicted, multioutput="variance_weighted"))
    return RegressionScore(r2, _median_unit_correlation(predicted, Y), method, alpha)


# ---------------------------------------------------------------- unit matching

def unit_correlations(X, Y) -> np.ndarray:
    """Pearson r between every unit (column) of X and every unit of Y: a (d₁ × d₂) matrix; 0 where a unit is
    constant across stimuli (a silent unit correlates with nothing)."""
    X, Y = check_pair(X, Y, 3, "unit correlations")

    def standardised(M):
        centred = M - M.mean(axis=0)
        norms = np.linalg.norm(centred, axis=0)
        return np.divide(centred, norms, out=np.zeros_like(centred), where=norms > 0)
    return standardised(X).T @ standardised(Y)


def _correlations(X, Y, correlations) -> np.ndarray:
    return unit_correlations(X, Y) if correlations is None else np.asarray(correlations, float)


def hungarian_matching(X=None, Y=None, correlations=None) -> float:
    """One-to-one matching of X's units to Y's maximising the summed signed Pearson r
    (``scipy.optimize.linear_sum_assignment``); the mean r over the min(d₁, d₂) matched pairs. The matching
    uses only the two systems' own units (or ``correlations``, their precomputed r matrix)."""
    R = _correlations(X, Y, correlations)
    rows, cols = linear_sum_assignment(R, maximize=True)
    return float(R[rows, cols].mean())


def matched_pairs(X=None, Y=None, correlations=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Hungarian matching itself: (X's units, Y's units, their r), pairs ordered by X's unit."""
    R = _correlations(X, Y, correlations)
    rows, cols = linear_sum_assignment(R, maximize=True)
    return rows, cols, R[rows, cols]


def semi_matching(X=None, Y=None, correlations=None) -> float:
    """Each unit matched to its best-correlated unit in the other system (many-to-one, as in Li et al. 2016's
    semi-matching): the mean best r of X's units and of Y's units, averaged over the two directions."""
    R = _correlations(X, Y, correlations)
    return float((R.max(axis=1).mean() + R.max(axis=0).mean()) / 2)


def soft_matching(X=None, Y=None, correlations=None) -> float:
    """Soft matching: max Σᵢⱼ Pᵢⱼ rᵢⱼ over transport plans P ≥ 0 whose rows sum to 1/d₁ and columns to 1/d₂
    (each unit spreads unit mass over the other system's units). For d₁ = d₂ the transport polytope is the
    Birkhoff polytope scaled by 1/d, whose vertices are permutations, so the optimum is the Hungarian mean r,
    computed that way; otherwise the linear program is solved by HiGHS (``scipy.optimize.linprog``)."""
    R = _correlations(X, Y, correlations)
    a, b = R.shape
    if a == b:
        return hungarian_matching(correlations=R)
    row_sums = sparse.kron(sparse.eye(a), np.ones((1, b)))
    col_sums = sparse.kron(np.ones((1, a)), sparse.eye(b))
    result = linprog(-R.ravel(), A_eq=sparse.vstack([row_sums, col_sums]).tocsr(),
                     b_eq=np.concatenate([np.full(a, 1 / a), np.full(b, 1 / b)]), bounds=(0, None), method="highs")
    if not result.success:
        raise ValueError(f"soft matching: the transport problem was not solved ({result.message})")
    return float(-result.fun)


# ---------------------------------------------------------------- ridge at a fixed penalty

def ridge_predictions(X, Y, alpha: float, folds) -> np.ndarray:
    """Out-of-fold predictions of ridge regression X → Y with intercept at penalty ``alpha`` (sklearn's
    ``Ridge`` objective ‖y − Xw − b‖² + α‖w‖², intercept unpenalised): each fold label in ``folds`` (one per
    stimulus) is predicted from the others.

    Each fold's normal equations are the whole data's minus the fold's own ([X, 1] augmented, so the
    intercept needs no per-fold centring): one Gram matrix serves every fold."""
    X, Y = check_pair(X, Y, 3, "ridge regression")
    folds = np.asarray(folds)
    if folds.shape != (X.shape[0],) or np.unique(folds).size < 2:
        raise ValueError("folds must give one fold label per stimulus, with at least two folds")
    Z = np.hstack([X - X.mean(axis=0), np.ones((X.shape[0], 1))])  # a common shift keeps it well conditioned
    gram, cross = Z.T @ Z, Z.T @ Y
    penalty = alpha * np.eye(Z.shape[1])
    penalty[-1, -1] = 0.0
    predicted = np.empty_like(Y)
    for fold in np.unique(folds):
        test = folds == fold
        Z_test = Z[test]
        weights = np.linalg.solve(gram - Z_test.T @ Z_test + penalty, cross - Z_test.T @ Y[test])
        predicted[test] = Z_test @ weights
    return predicted


def variance_weighted_r2(Y, predicted) -> float:
    """1 − Σ squared errors / Σ squared deviations from Y's mean, over all units (sklearn's
    ``r2_score(multioutput="variance_weighted")``)."""
    Y, predicted = np.asarray(Y, float), np.asarray(predicted, float)
    total = np.sum((Y - Y.mean(axis=0)) ** 2)
    if not total > 0:
        raise ValueError("Y is constant across stimuli; R² is undefined")
    return float(1 - np.sum((Y - predicted) ** 2) / total)


def ridge_r2(X, Y, alpha: float, folds) -> float:
    """Variance-weighted R² of the out-of-fold ridge predictions (``ridge_predictions``)."""
    return variance_weighted_r2(Y, ridge_predictions(X, Y, alpha, folds))


def ridge_penalty(X, Y, alphas=RIDGE_ALPHAS) -> float:
    """The penalty with the least leave-one-out squared error over all of Y's units, one penalty shared by
    them (the choice ``RidgeCV`` makes), from one eigendecomposition XcᵀXc = V diag(s²) Vᵀ of the centred X:
    with intercept, stimulus i's leave-one-out residual is eᵢ / (1 − hᵢ), hᵢ = 1/n + Σⱼ (Xc vⱼ)ᵢ² / (sⱼ² + α)."""
    X, Y = check_pair(X, Y, 3, "ridge regression")
    Xc, Yc = X - X.mean(axis=0), Y - Y.mean(axis=0)
    eigenvalues, V = np.linalg.eigh(Xc.T @ Xc)
    P = Xc @ V
    projected = P.T @ Yc
    errors = []
    for alpha in alphas:
        inverse = 1 / (np.maximum(eigenvalues, 0) + alpha)
        residual = Yc - P @ (inverse[:, None] * projected)
        leverage = 1 / X.shape[0] + (P ** 2) @ inverse
        errors.append(np.mean((residual / (1 - leverage)[:, None]) ** 2))
    return float(np.asarray(alphas)[int(np.argmin(errors))])

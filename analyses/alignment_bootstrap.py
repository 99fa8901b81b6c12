"""Alignment metrics between named representations of the same stimuli, on all stimuli and on bootstrap
resamples of them (paired: one resample serves every pair, so differences between pairs have intervals too).

``score_pairs(representations, pairs, n_boot, seed)``: ``representations`` maps a name to an (n × units)
matrix (rows are the same n stimuli); ``pairs`` lists (name_a, name_b, metrics). Returns a ``PairScores``
with each metric's value on all stimuli and on each of ``n_boot`` resamples (n stimuli drawn with
replacement). A resample is its count vector c (how often each stimulus was drawn): every statistic below
is a weighted sum over the original stimuli, so no resampled matrix is ever built. Metrics (``METRICS``):

* ``cka``: biased linear CKA; ``cka_debiased``: with the unbiased HSIC (Song et al. 2012). In a resample,
  products between copies of one stimulus are left out like the diagonal (they would otherwise bring back
  the bias the estimator removes); features are centred once, on all stimuli (with copies left out the
  estimator is not exactly shift-invariant). On all stimuli both equal ``analyses.alignment.linear_cka``.
* ``rsa``: Pearson r between squared-Euclidean RDMs, over pairs of distinct stimuli (copies excluded).
* ``ridge_r2``: out-of-fold ridge R², the mean of a → b and b → a, at the penalty ``RidgeCV`` would pick
  on all stimuli (5 folds). The predictions are made once, on all stimuli; a resample recomputes the R²
  over its stimuli (the interval covers which stimuli are scored, not refitting).
* ``hungarian``, ``semi_matching``, ``soft_matching``: unit-matching scores from the units' Pearson r
  (weighted by the counts in a resample).

With K = X Xᵀ (column-centred X) and c the counts (N = Σc = n), a resample's HSIC terms are
tr(K_r L_r) = cᵀ(K∘L)c, 1ᵀK_r L_r 1 = Σₒ cₒ (Kc)ₒ (Lc)ₒ, 1ᵀK_r 1 = cᵀKc; leaving out copies subtracts
cₒ² Kₒₒ Lₒₒ, cₒ Kₒₒ and so on. ``tests/test_alignment_stage.py`` checks them against resampled matrices.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from analyses import alignment as al

METRICS = ("cka", "cka_debiased", "rsa", "ridge_r2", "hungarian", "semi_matching", "soft_matching")
RIDGE_FOLDS = 5


@dataclass
class PairScores:
    """``value[(a, b, metric)]`` on all stimuli; ``replicates[(a, b, metric)]`` an array over resamples."""
    value: dict = field(default_factory=dict)
    replicates: dict = field(default_factory=dict)
    n_boot: int = 0
    n_stimuli: int = 0


class _Systems:
    """The representations, column-centred, with full Gram and squared-distance matrices (and their
    elementwise products per pair) built lazily, and out-of-fold ridge predictions."""

    def __init__(self, representations: Mapping[str, np.ndarray], rng: np.random.Generator):
        self.values = {}
        for name, matrix in representations.items():
            matrix = al.as_stimulus_matrix(matrix, str(name))
            self.values[name] = matrix - matrix.mean(axis=0)
        sizes = {matrix.shape[0] for matrix in self.values.values()}
        if len(sizes) != 1:
            raise ValueError(f"every representation must hold the same stimuli; got row counts {sorted(sizes)}")
        self.n = sizes.pop()
        if self.n < 4:
            raise ValueError(f"alignment metrics need at least 4 stimuli; got {self.n}")
        self.folds = rng.permutation(np.arange(self.n) % RIDGE_FOLDS)
        self._cache: dict = {}

    def _cached(self, key, build):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def gram(self, name: str) -> np.ndarray:
        return self._cached(("gram", name), lambda: self.values[name] @ self.values[name].T)

    def distances(self, name: str) -> np.ndarray:
        def build():
            K = self.gram(name)
            diagonal = np.diag(K)
            return np.maximum(diagonal[:, None] + diagonal[None, :] - 2 * K, 0.0)
        return self._cached(("distances", name), build)

    def product(self, kind: str, a: str, b: str) -> np.ndarray:
        """K_a ∘ K_b (``kind`` "gram") or D_a ∘ D_b ("distances")."""
        matrices = self.gram if kind == "gram" else self.distances
        key = (kind + "_product",) + tuple(sorted((a, b)))
        return self._cached(key, lambda: matrices(a) * matrices(b))

    def predictions(self, a: str, b: str) -> np.ndarray:
        """Out-of-fold ridge predictions of b from a, on all stimuli."""
        def build():
            X, Y = self.values[a], self.values[b]
            return al.ridge_predictions(X, Y, al.ridge_penalty(X, Y), self.folds)
        return self._cached(("ridge", a, b), build)


class _Resample:
    """One resample, as counts c over the original stimuli; per-representation terms built once."""

    def __init__(self, counts: np.ndarray, systems: _Systems):
        self.c, self.systems = counts.astype(np.float64), systems
        self.N = float(counts.sum())
        self._cache: dict = {}

    def _cached(self, key, build):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def _gram_terms(self, name: str):
        """(K c, diag K, cᵀKc) of one representation."""
        def build():
            K = self.systems.gram(name)
            Kc = K @ self.c
            return Kc, np.diag(K).copy(), float(self.c @ Kc)
        return self._cached(("gram", name), build)

    def _hsic(self, a: str, b: str, debiased: bool) -> float:
        return self._cached(("hsic", a, b, debiased), lambda: self._build_hsic(a, b, debiased))

    def _build_hsic(self, a: str, b: str, debiased: bool) -> float:
        c, N = self.c, self.N
        (Kc, k_diag, k_total), (Lc, l_diag, l_total) = self._gram_terms(a), self._gram_terms(b)
        trace = self._cached(("trace", a, b), lambda: float(c @ (self.systems.product("gram", a, b) @ c)))
        if not debiased:
            # ⟨HK_rH, HL_rH⟩ = tr(K_rL_r) − 2/N 1ᵀK_rL_r1 + (1ᵀK_r1)(1ᵀL_r1)/N², divided by N².
            return (trace - 2 / N * float(c @ (Kc * Lc)) + k_total * l_total / N ** 2) / N ** 2
        trace -= float(c ** 2 @ (k_diag * l_diag))  # copies of one stimulus (diagonal included) left out
        rows_k, rows_l = Kc - c * k_diag, Lc - c * l_diag  # row sums of the zeroed K_r, per original stimulus
        value = trace + (c @ rows_k) * (c @ rows_l) / ((N - 1) * (N - 2)) - 2 / (N - 2) * float(c @ (rows_k * rows_l))
        return float(value / (N * (N - 3)))

    def cka(self, a: str, b: str, debiased: bool) -> float:
        self_a, self_b = self._hsic(a, a, debiased), self._hsic(b, b, debiased)
        if self_a <= 0 or self_b <= 0:
            return float("nan")
        return float(self._hsic(a, b, debiased) / math.sqrt(self_a * self_b))

    def rsa(self, a: str, b: str) -> float:
        """Weighted Pearson r over unordered pairs of distinct stimuli, pair (o, o') weighted cₒcₒ'."""
        c = self.c
        pair_weight = (self.N ** 2 - float(c @ c)) / 2

        def upper_sum(F):  # Σ over o < o' of cₒcₒ' Fₒₒ' for a symmetric F with zero diagonal
            return float(c @ (F @ c)) / 2
        Da, Db = self.systems.distances(a), self.systems.distances(b)
        mean_a, mean_b = upper_sum(Da) / pair_weight, upper_sum(Db) / pair_weight
        cov = upper_sum(self.systems.product("distances", a, b)) / pair_weight - mean_a * mean_b
        var_a = upper_sum(self.systems.product("distances", a, a)) / pair_weight - mean_a ** 2
        var_b = upper_sum(self.systems.product("distances", b, b)) / pair_weight - mean_b ** 2
        return float(cov / math.sqrt(var_a * var_b)) if var_a > 0 and var_b > 0 else float("nan")

    def _weighted_r2(self, Y: np.ndarray, predicted: np.ndarray) -> float:
        c = self.c
        mean = c @ Y / self.N
        total = float(c @ np.sum((Y - mean) ** 2, axis=1))
        return 1 - float(c @ np.sum((Y - predicted) ** 2, axis=1)) / total if total > 0 else float("nan")

    def ridge(self, a: str, b: str) -> float:
        values, predictions = self.systems.values, self.systems.predictions
        return (self._weighted_r2(values[b], predictions(a, b)) + self._weighted_r2(values[a], predictions(b, a))) / 2

    def correlations(self, a: str, b: str) -> np.ndarray:
        """Pearson r between every unit of a and of b, each stimulus weighted by its count."""
        def standardised(name):
            def build():
                X = self.systems.values[name]
                centred = X - self.c @ X / self.N
                norms = np.sqrt(self.c @ centred ** 2)
                return np.divide(centred, norms, out=np.zeros_like(centred), where=norms > 0)
            return self._cached(("standardised", name), build)
        return self._cached(("correlations", a, b), lambda: (standardised(a) * self.c[:, None]).T @ standardised(b))

    def metric(self, a: str, b: str, metric: str) -> float:
        if metric in ("cka", "cka_debiased"):
            return self.cka(a, b, metric == "cka_debiased")
        if metric == "rsa":
            return self.rsa(a, b)
        if metric == "ridge_r2":
            return self.ridge(a, b)
        matching = {"hungarian": al.hungarian_matching, "semi_matching": al.semi_matching,
                    "soft_matching": al.soft_matching}
        if metric in matching:
            return matching[metric](correlations=self.correlations(a, b))
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")


def resample_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot × n) counts: how often each stimulus is drawn when n are drawn with replacement."""
    return np.stack([np.bincount(rng.integers(0, n, size=n), minlength=n) for _ in range(n_boot)]) \
        if n_boot else np.zeros((0, n), dtype=np.int64)


def score_pairs(representations: Mapping[str, np.ndarray], pairs: Sequence[tuple[str, str, Sequence[str]]],
                n_boot: int, seed=0) -> PairScores:
    """Each pair's metrics on all stimuli and on ``n_boot`` shared resamples (see the module docstring)."""
    rng = np.random.default_rng(seed)
    systems = _Systems(representations, rng)
    for a, b, metrics in pairs:
        unknown = sorted(set(metrics) - set(METRICS))
        if a not in systems.values or b not in systems.values or unknown:
            raise ValueError(f"pair ({a}, {b}): unknown representation, or unknown metric(s) {unknown}")
    scores = PairScores(n_boot=n_boot, n_stimuli=systems.n)
    everything = _Resample(np.ones(systems.n), systems)
    for a, b, metrics in pairs:
        for metric in metrics:
            scores.value[(a, b, metric)] = everything.metric(a, b, metric)
            scores.replicates[(a, b, metric)] = np.empty(n_boot)
    for replicate, counts in enumerate(resample_counts(systems.n, n_boot, rng)):
        resample = _Resample(counts, systems)
        for a, b, metrics in pairs:
            for metric in metrics:
                scores.replicates[(a, b, metric)][replicate] = resample.metric(a, b, metric)
    return scores


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval; NaN when there are no finite replicates."""
    finite = np.asarray(replicates, float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)

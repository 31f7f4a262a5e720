"""Reader-study statistics, as pure functions on decisions.

Notation: a decision is correct (1) or not (0); k correct of n. "Positive" is "synthetic": sensitivity
is the share of synthetic cases called synthetic, specificity the share of real cases called real.

1. Accuracy k / n with the Wilson 95% score interval (Wilson 1927) and the exact two-sided binomial
   test against chance (0.5: a reader who cannot tell guesses), both from scipy's ``binomtest``.
2. ROC AUC from confidence: each answer becomes a score on one axis, +c for "synthetic" with
   confidence c and -c for "real"; AUC = P(score of a synthetic case > score of a real one) + ½ P(tie),
   which is Mann-Whitney's U / (n_synthetic n_real) (Hanley & McNeil 1982).
3. Agreement between readers beyond chance: Cohen's κ for two (Cohen 1960), Fleiss' κ for three or
   more (Fleiss 1971), on the readers' categorical answers.
4. A pooled accuracy over every reader, with a percentile bootstrap that resamples readers and cases
   both (readers and cases are both samples; resampling only decisions makes the interval too narrow).
5. Power: the decisions a one-sample test of a proportion needs to tell the observed accuracy from
   chance at two-sided level α with power 1 - β (normal approximation, Fleiss et al. 2003, eq. 2.5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

CHANCE = 0.5
"""Accuracy of a guessing reader in the binary and the two-alternative task."""


def accuracy(k: int, n: int, chance: float = CHANCE, confidence: float = 0.95) -> dict[str, Any]:
    """k correct of n: the share, its Wilson interval and the exact two-sided binomial p-value."""
    if n == 0:
        return {"k": 0, "n": 0, "accuracy": None, "ci95": [None, None], "p_value": None}
    test = stats.binomtest(int(k), int(n), chance, alternative="two-sided")
    ci = test.proportion_ci(confidence_level=confidence, method="wilson")
    return {
        "k": int(k),
        "n": int(n),
        "accuracy": k / n,
        "ci95": [float(ci.low), float(ci.high)],
        "p_value": float(test.pvalue),
    }


def sensitivity_specificity(truth_synthetic: Sequence[bool], called_synthetic: Sequence[bool]) -> dict:
    """Sensitivity (synthetic called synthetic) and specificity (real called real), None without cases."""
    t, c = np.asarray(truth_synthetic, bool), np.asarray(called_synthetic, bool)
    sens = float((c & t).sum() / t.sum()) if t.any() else None
    spec = float((~c & ~t).sum() / (~t).sum()) if (~t).any() else None
    return {"sensitivity": sens, "specificity": spec}


def confidence_score(called_synthetic: Sequence[bool], confidence: Sequence[int]) -> np.ndarray:
    """Step 2's score: +confidence for "synthetic", -confidence for "real"."""
    sign = np.where(np.asarray(called_synthetic, bool), 1.0, -1.0)
    return sign * np.asarray(confidence, np.float64)


def roc_auc(truth_synthetic: Sequence[bool], score: Sequence[float]) -> float | None:
    """ROC AUC of ``score`` for "synthetic" (step 2), ties counted half; None with a class empty."""
    t, s = np.asarray(truth_synthetic, bool), np.asarray(score, np.float64)
    n1, n0 = int(t.sum()), int((~t).sum())
    if n1 == 0 or n0 == 0:
        return None
    ranks = stats.rankdata(s)  # average ranks: a tie counts half
    return float((ranks[t].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def cohen_kappa(a: Sequence[Any], b: Sequence[Any]) -> float | None:
    """Cohen's κ of two readers' answers on the same cases: (p_o - p_e) / (1 - p_e)."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError("both readers must answer the same cases")
    if not a:
        return None
    categories = sorted(set(a) | set(b), key=str)
    p_o = sum(x == y for x, y in zip(a, b, strict=True)) / len(a)
    p_e = sum((a.count(c) / len(a)) * (b.count(c) / len(b)) for c in categories)
    return None if p_e == 1 else (p_o - p_e) / (1 - p_e)


def fleiss_kappa(counts: np.ndarray) -> float | None:
    """Fleiss' κ of a table ``counts`` [cases, categories]: how many readers put each case in each category.

    Every case must have the same number of readers m ≥ 2. P_i = (Σ_j n_ij² - m) / (m (m - 1)),
    p_j = Σ_i n_ij / (N m); κ = (mean P_i - Σ p_j²) / (1 - Σ p_j²).
    """
    n = np.asarray(counts, np.float64)
    if n.ndim != 2 or len(n) == 0:
        return None
    m = n.sum(axis=1)
    if not np.all(m == m[0]) or m[0] < 2:
        raise ValueError("Fleiss' κ needs the same number (at least 2) of answers for every case")
    m = m[0]
    p_i = ((n**2).sum(axis=1) - m) / (m * (m - 1))
    p_j = n.sum(axis=0) / (len(n) * m)
    p_e = float((p_j**2).sum())
    return None if p_e == 1 else float((p_i.mean() - p_e) / (1 - p_e))


def category_counts(answers: np.ndarray) -> np.ndarray:
    """[cases, readers] answers -> [cases, categories] counts for fleiss_kappa."""
    categories = sorted({str(x) for x in answers.ravel()})
    return np.stack([(answers.astype(str) == c).sum(axis=1) for c in categories], axis=1)


def agreement(answers: np.ndarray) -> dict[str, Any]:
    """κ of [cases, readers] categorical answers: Cohen's for two readers, Fleiss' for more."""
    readers = answers.shape[1] if answers.ndim == 2 else 0
    if readers < 2 or len(answers) == 0:
        return {"statistic": None, "kappa": None, "cases": int(len(answers)), "readers": readers}
    if readers == 2:
        return {
            "statistic": "Cohen's κ",
            "kappa": cohen_kappa(answers[:, 0], answers[:, 1]),
            "cases": int(len(answers)),
            "readers": 2,
        }
    kappa = fleiss_kappa(category_counts(answers))
    return {"statistic": "Fleiss' κ", "kappa": kappa, "cases": int(len(answers)), "readers": readers}


def pooled_bootstrap(
    correct: np.ndarray, rng: np.random.Generator, resamples: int = 2000, confidence: float = 0.95
) -> dict[str, Any]:
    """Pooled accuracy of ``correct`` [readers, cases] (NaN: not answered), and its percentile interval
    from resampling readers and cases with replacement (step 4)."""
    c = np.asarray(correct, np.float64)
    answered = ~np.isnan(c)
    pooled = float(np.nanmean(c)) if answered.any() else None
    if pooled is None:
        return {"accuracy": None, "ci95": [None, None], "resamples": 0}
    r, n = c.shape
    filled = np.where(answered, c, 0.0)
    values = []
    for _ in range(resamples):
        ri = rng.integers(0, r, r)
        ci = rng.integers(0, n, n)
        weight = answered[np.ix_(ri, ci)].sum()
        if weight:
            values.append(filled[np.ix_(ri, ci)].sum() / weight)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return {"accuracy": pooled, "ci95": [float(lo), float(hi)], "resamples": resamples}


def mann_whitney(real: Sequence[float], synthetic: Sequence[float]) -> dict[str, Any]:
    """Two-sided Mann-Whitney U of ratings (real against synthetic) and P(real rated higher) + ½ P(tie)."""
    real, synthetic = np.asarray(real, np.float64), np.asarray(synthetic, np.float64)
    if len(real) == 0 or len(synthetic) == 0:
        return {"u": None, "p_value": None, "probability_real_higher": None}
    result = stats.mannwhitneyu(real, synthetic, alternative="two-sided")
    return {
        "u": float(result.statistic),
        "p_value": float(result.pvalue),
        "probability_real_higher": float(result.statistic) / (len(real) * len(synthetic)),
    }


def spearman(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Spearman's rank correlation of paired values and its two-sided p-value (scipy); None below 3 pairs
    or with a constant side."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"rho": None, "p_value": None, "n": int(len(x))}
    result = stats.spearmanr(x, y)
    return {"rho": float(result.statistic), "p_value": float(result.pvalue), "n": int(len(x))}


def decisions_needed(
    observed: float, chance: float = CHANCE, alpha: float = 0.05, power: float = 0.8
) -> int | None:
    """Decisions a two-sided test needs to tell accuracy ``observed`` from ``chance`` (step 5):
    n = ((z_{1-α/2} √(p0 q0) + z_{1-β} √(p1 q1)) / (p1 - p0))²; None when observed equals chance."""
    if observed is None or math.isclose(observed, chance):
        return None
    p1 = min(max(observed, 1e-6), 1 - 1e-6)
    z_a, z_b = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    n = (z_a * math.sqrt(chance * (1 - chance)) + z_b * math.sqrt(p1 * (1 - p1))) / (p1 - chance)
    return math.ceil(n * n)


def exact_power(n: int, p1: float, chance: float = CHANCE, alpha: float = 0.05) -> float:
    """Power of the exact two-sided binomial test with n decisions when the true accuracy is p1: the
    probability of the counts k that binomtest rejects at ``alpha`` (the reference decisions_needed
    is checked against)."""
    reject = [k for k in range(n + 1) if stats.binomtest(k, n, chance).pvalue <= alpha]
    return float(stats.binom.pmf(reject, n, p1).sum())

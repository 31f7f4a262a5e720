"""The audit's statistics, as pure functions on similarities.

The held-out baseline. Held-out scans come from the training distribution but were never trained on:
how close they come to their nearest training scan is how close a model that generalises perfectly
comes. So:

1. Threshold: the ``quantile`` (default 0.95) of the held-out scans' nearest-training correlations.
2. Flag each synthetic volume closer than that to its nearest training scan. A model that samples the
   training distribution without copying flags about 1 - quantile of its volumes (5%).
3. The flagged share with a 95% interval for a binomial proportion (Wilson, or Clopper-Pearson; scipy's
   ``binomtest``), and Mann-Whitney U (scipy): are synthetic volumes closer than held-out ones overall?
4. The exceedance test (``exceedance_test``): is the number of flagged volumes larger than chance
   allows? The threshold is itself estimated from a few held-out scans (with 100 of them, the share of
   new scans above their 0.95 quantile is anywhere from about 2% to 10%), so comparing the flagged
   share with a fixed 5% would call a model that copies nothing a copier 40% of the time at
   1,000 synthetic volumes. Exact instead: when synthetic and held-out similarities come from one
   distribution, all orders of the pooled values are equally likely, and the number of synthetic
   values above the r-th largest held-out one follows the negative hypergeometric distribution
   (m synthetic "red", n held-out "blue" balls, drawn from the top until r blue ones; scipy's
   ``nhypergeom``). A threshold between order statistics flags no more than the next held-out value
   below it does, so its p-value is conservative.
5. Verdict (VERDICTS): memorisation suspected when the exceedance test's p-value is below alpha (0.05);
   else "closer" when Mann-Whitney's is.

Authenticity (Alaa et al. 2022, "How faithful is your synthetic data?", section 3.3, as synthcity
computes it): a synthetic volume is unauthentic when it is closer to its nearest training volume t*
than t*'s own nearest other training volume is to t*; the score is the authentic share (1 for a model
that never copies, 0 for one that only copies).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

INTERVALS = {"wilson": "wilson", "clopper-pearson": "exact"}
"""Interval names on the command line -> scipy's BinomTestResult.proportion_ci method."""


def flag_threshold(heldout_similarity: Sequence[float], quantile: float) -> float:
    """The ``quantile`` of the held-out nearest-training similarities (numpy's linear interpolation)."""
    return float(np.quantile(np.asarray(heldout_similarity, dtype=np.float64), quantile))


def proportion_interval(
    k: int, n: int, method: str = "wilson", confidence: float = 0.95
) -> tuple[float, float]:
    """Confidence interval of a binomial proportion k / n: Wilson score or Clopper-Pearson (exact)."""
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method=INTERVALS[method])
    return float(ci.low), float(ci.high)


def mann_whitney(synthetic: Sequence[float], heldout: Sequence[float]) -> dict[str, float]:
    """One-sided Mann-Whitney U: are synthetic similarities larger than held-out ones?

    Returns U (of the synthetic sample), the p-value and U / (n1 n2): the probability that a random
    synthetic volume is closer to the training set than a random held-out one (0.5: no difference).
    """
    synthetic, heldout = np.asarray(synthetic, np.float64), np.asarray(heldout, np.float64)
    result = stats.mannwhitneyu(synthetic, heldout, alternative="greater")
    return {
        "u": float(result.statistic),
        "p_value": float(result.pvalue),
        "probability_closer": float(result.statistic) / (len(synthetic) * len(heldout)),
    }


def authenticity(
    nearest_index: np.ndarray, nearest_similarity: np.ndarray, training_own_similarity: np.ndarray
) -> np.ndarray:
    """Bool [Q]: authentic synthetic volumes (Alaa et al. 2022), in similarity form.

    A volume with nearest training volume t* = ``nearest_index`` at similarity s is unauthentic when
    s > ``training_own_similarity``[t*], the similarity of t* to its own nearest other training volume
    (distance = 1 - similarity: closer than t*'s nearest neighbour).
    """
    return ~(np.asarray(nearest_similarity) > np.asarray(training_own_similarity)[np.asarray(nearest_index)])


@dataclass(frozen=True)
class Verdict:
    key: str
    headline: str
    advice: str


VERDICTS = {
    "memorisation": Verdict(
        "memorisation",
        "Memorisation suspected",
        "More synthetic volumes lie as close to a training scan as only the closest held-out scans do than "
        "chance allows. Look at the flagged pairs; train for fewer steps, on more data, or with more "
        "augmentation.",
    ),
    "closer": Verdict(
        "closer",
        "Closer to the training scans than held-out scans are",
        "The flagged share is not significantly above the expected one, but synthetic volumes are overall "
        "closer to the training set than held-out scans are. Look at the flagged pairs; audit more "
        "volumes for a firmer answer.",
    ),
    "none": Verdict(
        "none",
        "No evidence of memorisation",
        "Synthetic volumes are no closer to their nearest training scans than held-out scans are. This "
        "is not proof of privacy: see the caveats.",
    ),
}


def exceedance_test(n_flagged: int, n_synthetic: int, heldout_similarity: Sequence[float], threshold: float):
    """p-value and expected count of ``n_flagged`` synthetic values above ``threshold`` (step 4 above).

    r is the rank from the top of the largest held-out value at or below ``threshold``; under
    exchangeability the count of synthetic values above it is nhypergeom(M = m + n, n = m, r), whose
    mean is m r / (n + 1). Returns {"p_value": P(count >= n_flagged), "expected": that mean, "rank": r}.
    """
    held = np.asarray(heldout_similarity, dtype=np.float64)
    r = min(int(np.sum(held > threshold)) + 1, len(held))
    null = stats.nhypergeom(len(held) + n_synthetic, n_synthetic, r)
    return {"p_value": float(null.sf(n_flagged - 1)), "expected": float(null.mean()), "rank": r}


def verdict(flag_p_value: float, mann_whitney_p_value: float, alpha: float = 0.05) -> Verdict:
    """Memorisation when more volumes are flagged than chance allows (exceedance test); else "closer"
    when Mann-Whitney's p-value is below ``alpha``; else none."""
    if flag_p_value < alpha:
        return VERDICTS["memorisation"]
    if mann_whitney_p_value < alpha:
        return VERDICTS["closer"]
    return VERDICTS["none"]


def flagging(
    synthetic_similarity: np.ndarray, heldout_similarity: np.ndarray, quantile: float, interval: str
) -> dict[str, Any]:
    """Steps 1-4 of the module docstring: threshold, flags, share, interval, Mann-Whitney and verdict."""
    threshold = flag_threshold(heldout_similarity, quantile)
    flagged = np.asarray(synthetic_similarity) > threshold
    k, n = int(flagged.sum()), len(flagged)
    low, high = proportion_interval(k, n, interval)
    mw = mann_whitney(synthetic_similarity, heldout_similarity)
    exceed = exceedance_test(k, n, heldout_similarity, threshold)
    v = verdict(exceed["p_value"], mw["p_value"])
    return {
        "verdict": v.key,
        "headline": v.headline,
        "advice": v.advice,
        "rule": f"flag a synthetic volume whose nearest-training correlation exceeds the {quantile:g} "
        "quantile of the held-out scans' nearest-training correlations",
        "quantile": quantile,
        "threshold": threshold,
        "flags": flagged,
        "n_flagged": k,
        "n_synthetic": n,
        "flagged_share": k / n,
        "flagged_share_ci95": [low, high],
        "interval": interval,
        "expected_share": exceed["expected"] / n,
        "exceedance_p_value": exceed["p_value"],
        "closer_than_every_heldout": int(
            (np.asarray(synthetic_similarity) > np.max(heldout_similarity)).sum()
        ),
        "mann_whitney": mw,
    }

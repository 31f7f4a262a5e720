"""Reader statistics against scipy and hand computations, and simulated readers of known accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from medddpm.study import statistics as st


def wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize(("k", "n"), [(0, 10), (7, 10), (178, 300), (50, 50)])
def test_accuracy_interval_and_test_match_the_formulas(k, n):
    r = st.accuracy(k, n)
    assert r["ci95"] == pytest.approx(wilson_by_hand(k, n), abs=1e-9)
    assert r["p_value"] == pytest.approx(stats.binomtest(k, n, 0.5).pvalue)
    # two-sided exact p by hand: the probability of every count no likelier than k
    pmf = stats.binom.pmf(np.arange(n + 1), n, 0.5)
    assert r["p_value"] == pytest.approx(min(1.0, pmf[pmf <= pmf[k] * (1 + 1e-7)].sum()))


def test_sensitivity_specificity_by_hand():
    truth = [True, True, True, False, False]
    called = [True, False, True, False, True]
    assert st.sensitivity_specificity(truth, called) == {"sensitivity": 2 / 3, "specificity": 1 / 2}


def test_roc_auc_is_mann_whitney_u_over_the_pairs():
    rng = np.random.default_rng(0)
    truth = rng.random(60) < 0.5
    called = rng.random(60) < np.where(truth, 0.7, 0.3)
    score = st.confidence_score(called, rng.integers(1, 6, 60))
    u = stats.mannwhitneyu(score[truth], score[~truth]).statistic
    assert st.roc_auc(truth, score) == pytest.approx(u / (truth.sum() * (~truth).sum()))
    # by hand on a tiny case with a tie: pairs (s, r): (3>1) (3>2) (2>1) (2=2 -> half)
    assert st.roc_auc([1, 1, 0, 0], [3, 2, 1, 2]) == pytest.approx(3.5 / 4)
    assert st.roc_auc([1, 1], [1, 2]) is None


def test_cohen_kappa_on_a_hand_computed_table():
    # 50 cases: both yes 20, A yes B no 5, A no B yes 10, both no 15 (Wikipedia's example): κ = 0.4
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    p_o, p_e = 35 / 50, (25 / 50) * (30 / 50) + (25 / 50) * (20 / 50)
    assert st.cohen_kappa(a, b) == pytest.approx((p_o - p_e) / (1 - p_e))
    assert st.cohen_kappa(a, b) == pytest.approx(0.4)
    assert st.agreement(np.array([a, b], dtype=object).T)["statistic"] == "Cohen's κ"


def test_fleiss_kappa_on_the_published_example():
    # Fleiss (1971) as Wikipedia tabulates it: 10 cases, 14 raters, 5 categories, κ = 0.210
    table = np.array(
        [
            [0, 0, 0, 0, 14],
            [0, 2, 6, 4, 2],
            [0, 0, 3, 5, 6],
            [0, 3, 9, 2, 0],
            [2, 2, 8, 1, 1],
            [7, 7, 0, 0, 0],
            [3, 2, 6, 3, 0],
            [2, 5, 3, 2, 2],
            [6, 5, 2, 1, 0],
            [0, 2, 2, 3, 7],
        ]
    )
    assert st.fleiss_kappa(table) == pytest.approx(0.20993, abs=1e-4)
    answers = np.array([["a", "b", "a"], ["b", "b", "b"], ["a", "a", "a"], ["b", "a", "a"]], dtype=object)
    counts = st.category_counts(answers)
    assert counts.tolist() == [[2, 1], [0, 3], [3, 0], [2, 1]]
    # by hand: P_i = (5-3)/6, 1, 1, (5-3)/6 -> mean 2/3; p = (7/12, 5/12); P_e = 74/144
    p_e = (7 / 12) ** 2 + (5 / 12) ** 2
    assert st.agreement(answers)["kappa"] == pytest.approx((2 / 3 - p_e) / (1 - p_e))


def test_mann_whitney_and_spearman_are_scipys():
    real, synth = [4, 4, 3, 4, 2, 3], [2, 1, 3, 2, 2]
    ref = stats.mannwhitneyu(real, synth, alternative="two-sided")
    r = st.mann_whitney(real, synth)
    assert (r["u"], r["p_value"]) == pytest.approx((ref.statistic, ref.pvalue))
    assert r["probability_real_higher"] == pytest.approx(ref.statistic / 30)
    x, y = [0.1, 0.5, 0.3, 0.9, 0.7], [0.0, 0.4, 0.5, 1.0, 0.6]
    assert st.spearman(x, y)["rho"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert st.spearman([1, 1, 1], [1, 2, 3])["rho"] is None


@pytest.mark.parametrize("true_accuracy", [0.5, 0.65, 0.9])
def test_simulated_readers_are_recovered_within_their_intervals(true_accuracy):
    """Three readers of known accuracy on 200 cases each: each interval and the pooled bootstrap interval
    hold the truth, and only readers better than chance are significant."""
    rng = np.random.default_rng(int(true_accuracy * 100))
    grid = (rng.random((3, 200)) < true_accuracy).astype(float)
    for row in grid:
        r = st.accuracy(int(row.sum()), len(row))
        assert r["ci95"][0] <= true_accuracy <= r["ci95"][1]
        assert (r["p_value"] < 0.05) == (true_accuracy > 0.5)
    pooled = st.pooled_bootstrap(grid, np.random.default_rng(1), resamples=500)
    assert pooled["ci95"][0] <= true_accuracy <= pooled["ci95"][1]


def test_bootstrap_over_readers_is_wider_when_readers_differ():
    """Readers of 55% and 95%: resampling readers widens the pooled interval beyond Wilson's, which treats
    the 400 decisions as independent."""
    rng = np.random.default_rng(2)
    grid = np.stack([rng.random(200) < 0.55, rng.random(200) < 0.95]).astype(float)
    boot = st.pooled_bootstrap(grid, np.random.default_rng(0), resamples=500)
    wilson = st.accuracy(int(grid.sum()), grid.size)["ci95"]
    assert boot["ci95"][1] - boot["ci95"][0] > 1.5 * (wilson[1] - wilson[0])
    with_gaps = grid.copy()
    with_gaps[0, :10] = np.nan
    assert st.pooled_bootstrap(with_gaps, np.random.default_rng(0), 50)["accuracy"] == pytest.approx(
        np.nanmean(with_gaps)
    )


@pytest.mark.parametrize("observed", [0.594, 0.65, 0.8])
def test_decisions_needed_give_the_power_asked_for(observed):
    n = st.decisions_needed(observed)
    assert 0.7 <= st.exact_power(n, observed) <= 0.9  # the exact test's power saws around 0.8
    assert st.exact_power(n // 2, observed) < 0.7
    assert st.decisions_needed(0.5) is None

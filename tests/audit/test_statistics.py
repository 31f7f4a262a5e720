"""The audit's statistics against hand computations and textbook formulas."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from medddpm.audit.neighbours import nearest_two
from medddpm.audit.statistics import (
    VERDICTS,
    authenticity,
    exceedance_test,
    flag_threshold,
    flagging,
    mann_whitney,
    proportion_interval,
    verdict,
)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (7, 40), (40, 40)])
def test_wilson_interval_is_the_textbook_formula(k: int, n: int):
    z = stats.norm.ppf(0.975)
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    low, high = proportion_interval(k, n, "wilson")
    assert low == pytest.approx(max(0.0, centre - half), abs=1e-12)
    assert high == pytest.approx(min(1.0, centre + half), abs=1e-12)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (40, 40)])
def test_clopper_pearson_interval_is_the_beta_quantiles(k: int, n: int):
    low, high = proportion_interval(k, n, "clopper-pearson")
    assert low == pytest.approx(0.0 if k == 0 else stats.beta.ppf(0.025, k, n - k + 1), abs=1e-9)
    assert high == pytest.approx(1.0 if k == n else stats.beta.ppf(0.975, k + 1, n - k), abs=1e-9)


def test_mann_whitney_probability_is_the_share_of_pairs_where_synthetic_is_closer():
    rng = np.random.default_rng(0)
    synth, held = rng.normal(0.3, 1, 13), rng.normal(0, 1, 9)
    mw = mann_whitney(synth, held)
    closer = np.mean([s > h for s in synth for h in held])  # no ties in continuous draws
    assert mw["probability_closer"] == pytest.approx(closer)
    assert mw["p_value"] == pytest.approx(stats.mannwhitneyu(synth, held, alternative="greater").pvalue)


def test_authenticity_by_hand():
    own = np.array([0.9, 0.5, 0.7])  # each training volume's similarity to its nearest other one
    index = np.array([0, 1, 2, 1])
    similarity = np.array([0.95, 0.4, 0.7, 0.6])
    # closer than its training neighbour's own neighbour (0.95 > 0.9, 0.6 > 0.5) -> unauthentic;
    # equally close (0.7) is authentic: Alaa et al.'s test is a strict inequality
    np.testing.assert_array_equal(authenticity(index, similarity, own), [False, True, True, False])


def test_authenticity_by_hand_on_a_tiny_set_of_volumes():
    """Four training vectors, two synthetic: nearest neighbours and the verdict worked out with corrcoef."""
    rng = np.random.default_rng(1)
    training = rng.uniform(size=(4, 1, 2, 2, 2)).astype(np.float32)
    synthetic = np.stack([training[0] + rng.normal(0, 0.01, (1, 2, 2, 2)), rng.uniform(size=(1, 2, 2, 2))])
    synthetic = synthetic.astype(np.float32)
    flat_t, flat_s = training.reshape(4, -1), synthetic.reshape(2, -1)
    corr_tt = np.corrcoef(flat_t)
    np.fill_diagonal(corr_tt, -np.inf)
    own = corr_tt.max(1)
    corr_st = np.corrcoef(flat_s, flat_t)[:2, 2:]
    expected = corr_st.max(1) <= own[corr_st.argmax(1)]
    mask = torch.ones(2, 2, 2, dtype=torch.bool)
    t, s = torch.from_numpy(training), torch.from_numpy(synthetic)
    nb_t = nearest_two(t, t, mask, mirror=False, exclude_self=True)
    nb_s = nearest_two(s, t, mask, mirror=False)
    got = authenticity(nb_s.index, nb_s.similarity, nb_t.similarity)
    np.testing.assert_array_equal(got, expected)
    assert not got[0]  # the near copy of training volume 0 is unauthentic


def test_threshold_flags_and_verdicts():
    held = np.linspace(0.0, 1.0, 101)
    assert flag_threshold(held, 0.95) == pytest.approx(0.95)
    copies = flagging(np.array([0.99, 0.98, 0.97, 0.2, 0.1]), held, 0.95, "wilson")
    assert copies["n_flagged"] == 3 and copies["flagged_share"] == pytest.approx(0.6)
    assert copies["flagged_share_ci95"] == pytest.approx(list(proportion_interval(3, 5)))
    assert copies["verdict"] == "memorisation" and copies["closer_than_every_heldout"] == 0
    fresh = flagging(np.linspace(0.0, 0.9, 20), held, 0.95, "wilson")
    assert fresh["n_flagged"] == 0 and fresh["verdict"] == "none"
    assert verdict(0.5, 0.001) is VERDICTS["closer"]
    assert verdict(0.01, 0.5) is VERDICTS["memorisation"]


def test_exceedance_p_value_equals_counting_every_order_of_the_pooled_values():
    """Brute force: 4 held-out and 3 synthetic values; every one of the C(7, 3) placements of the
    synthetic ones among the pooled ranks is equally likely under exchangeability."""
    held = np.array([0.1, 0.4, 0.6, 0.8])
    for threshold in (0.05, 0.5, 0.7, 0.9):
        r = min(int((held > threshold).sum()) + 1, 4)
        counts = []
        for top in itertools.combinations(range(7), 3):  # ranks (0 = largest) of the synthetic values
            blue_seen, k = 0, 0
            for rank in range(7):
                if rank in top:
                    k += blue_seen < r
                else:
                    blue_seen += 1
            counts.append(k)
        counts = np.array(counts)
        for k in range(4):
            got = exceedance_test(k, 3, held, threshold)
            assert got["rank"] == r
            assert got["p_value"] == pytest.approx(np.mean(counts >= k))
            assert got["expected"] == pytest.approx(counts.mean())


def test_exceedance_test_holds_its_level_when_nothing_is_copied():
    """1,000 synthetic and 100 held-out similarities from one distribution: the verdict "memorisation"
    comes at most about 5% of the time (comparing the flagged share's interval with a fixed 5%, as the
    audit once did, came 40% of the time in this simulation)."""
    rng = np.random.default_rng(0)
    false_alarms = 0
    trials = 400
    for _ in range(trials):
        held, synth = rng.normal(size=100), rng.normal(size=1000)
        false_alarms += flagging(synth, held, 0.95, "wilson")["verdict"] == "memorisation"
    assert false_alarms / trials <= 0.07

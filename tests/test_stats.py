"""The seed-level statistics checked against scipy and statsmodels, and by simulation: every
reported test and interval keeps its level at the seed counts studies use."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.power import TTestIndPower

from study import stats

ALPHA = 0.05


def within_level(rejections: list[bool] | np.ndarray, alpha: float = ALPHA) -> bool:
    """A rejection rate no higher than alpha plus three binomial standard errors."""
    n = len(rejections)
    return np.mean(rejections) <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / n)


@pytest.mark.parametrize("seeds", [2, 3, 5, 10])
def test_welch_keeps_its_level_and_its_interval_agrees_with_its_test(seeds):
    rng = np.random.default_rng(seeds)
    rejected, excluded = [], []
    for _ in range(2000):
        p, low, high = stats.welch(rng.normal(0, 1, seeds), rng.normal(0, 1, seeds))
        rejected.append(p < ALPHA)
        excluded.append(low > 0 or high < 0)
    assert rejected == excluded
    assert within_level(rejected)
    assert np.mean(rejected) > ALPHA / 3  # a test, not a constant: it does reject at about its level


@pytest.mark.parametrize("seeds", [2, 3, 5, 10])
def test_equivalence_is_claimed_at_most_alpha_often_when_the_difference_is_the_margin(seeds):
    rng = np.random.default_rng(200 + seeds)
    margin = 0.5
    for truth in (margin, -margin):  # on either boundary of the equivalence region
        claimed = [stats.equivalence(rng.normal(truth, 1, seeds), rng.normal(0, 1, seeds), margin) < ALPHA
                   for _ in range(1000)]
        assert within_level(claimed)


def test_equivalence_is_two_one_sided_welch_tests():
    rng = np.random.default_rng(3)
    arm, reference = rng.normal(0.1, 1, 6), rng.normal(0, 2, 4)
    above = scipy_stats.ttest_ind(arm + 1.5, reference, equal_var=False, alternative="greater").pvalue
    below = scipy_stats.ttest_ind(arm - 1.5, reference, equal_var=False, alternative="less").pvalue
    assert stats.equivalence(arm, reference, 1.5) == pytest.approx(max(above, below), rel=1e-9)


@pytest.mark.parametrize(("difference", "n", "alpha"), [(1.0, 3, 0.05), (1.0, 17, 0.05), (0.5, 10, 0.025)])
def test_power_with_equal_spreads_is_statsmodels_two_sample_t_power(difference, n, alpha):
    # Equal SDs and arms: Welch's degrees of freedom are the pooled test's, 2n − 2.
    expected = TTestIndPower().power(effect_size=difference, nobs1=n, alpha=alpha, ratio=1.0)
    assert stats.welch_power(difference, 1.0, 1.0, n, n, alpha) == pytest.approx(expected, rel=1e-6)


def test_power_stays_a_number_when_the_difference_is_many_standard_errors():
    # scipy's noncentral t gives NaN for the far tail P(T ≤ −c) at a large shift.
    assert stats.welch_power(1.0, 0.196, 0.105, 3, 3, 0.025) == pytest.approx(1.0, abs=0.05)
    assert stats.welch_power(1.0, 0.0811, 0.0830, 3, 3, 0.025) == pytest.approx(1.0, abs=1e-6)


def test_power_with_unequal_spreads_matches_a_simulation_of_scipys_welch_test():
    rng = np.random.default_rng(4)
    difference, sds, sizes, alpha = 1.0, (1.5, 0.5), (6, 9), 0.05
    predicted = stats.welch_power(difference, *sds, *sizes, alpha)
    arm = rng.normal(difference, sds[0], (4000, sizes[0]))
    reference = rng.normal(0, sds[1], (4000, sizes[1]))
    simulated = np.mean(scipy_stats.ttest_ind(arm, reference, axis=1, equal_var=False).pvalue < alpha)
    assert simulated == pytest.approx(predicted, abs=3 * math.sqrt(predicted * (1 - predicted) / 4000))


def test_seeds_for_a_margin_are_the_fewest_that_reach_the_power():
    n = stats.seeds_for(0.8, 1.0, 1.0, alpha=0.025)
    assert stats.welch_power(0.8, 1.0, 1.0, int(n), int(n), 0.025) >= 0.8
    assert stats.welch_power(0.8, 1.0, 1.0, int(n) - 1, int(n) - 1, 0.025) < 0.8
    assert n == math.ceil(TTestIndPower().solve_power(effect_size=0.8, alpha=0.025, power=0.8))
    assert math.isnan(stats.seeds_for(1e-6, 1.0, 1.0))  # beyond MAX_SEEDS: no number pretends


@pytest.mark.parametrize("seeds", [3, 5, 10])
@pytest.mark.parametrize("sds", [(1.0, 1.0), (3.0, 1.0)])
def test_the_power_interval_covers_the_true_power_in_most_studies(seeds, sds):
    """Networks drawn with a true difference of the margin: the reported interval holds the true
    power (Welch's at the true SDs, itself checked against simulation above) in ≥ 90 % of studies,
    and the point estimate falls below it about as often as above."""
    rng = np.random.default_rng(400 + seeds)
    margin, family = 1.0, 2
    truth = stats.welch_power(margin, *sds, seeds, seeds, ALPHA / family)
    covered, points = [], []
    for _ in range(1000):
        arm, reference = rng.normal(margin, sds[0], seeds), rng.normal(0.0, sds[1], seeds)
        row = stats.power(arm, reference, margin, family)
        covered.append(row["power_at_margin_low"] <= truth <= row["power_at_margin_high"])
        points.append(row["power_at_margin"])
        assert row["seeds_for_margin_low"] <= row["seeds_for_margin"] <= row["seeds_for_margin_high"] or \
            math.isnan(row["seeds_for_margin_high"])
    assert np.mean(covered) >= 0.9
    # The point is the power at the median of the true SDs: about half the studies lie either side.
    assert not np.isnan(points).any()
    assert 0.35 <= np.mean(np.array(points) < truth) <= 0.65


def test_the_networks_a_margin_needs_bracket_the_true_number_in_most_studies():
    rng = np.random.default_rng(5)
    truth = stats.seeds_for(1.0, 1.0, 1.0, ALPHA)
    rows = [stats.power(rng.normal(0, 1, 5), rng.normal(0, 1, 5), 1.0, 1) for _ in range(1000)]
    assert np.mean([r["seeds_for_margin_low"] <= truth <= r["seeds_for_margin_high"] for r in rows]) >= 0.9


def test_the_sd_interval_is_the_chi_square_interval_of_a_pooled_variance():
    # Equal SDs and arms: Welch–Satterthwaite's ν is 2n − 2, and the interval is the textbook one.
    low, middle, high = stats.sd_scales(1.0, 1.0, 5, 5, confidence=0.9)
    assert (low, middle, high) == pytest.approx(
        [math.sqrt(8 / scipy_stats.chi2.ppf(q, 8)) for q in (0.95, 0.5, 0.05)])


@pytest.mark.slow
@pytest.mark.parametrize("seeds", [2, 3, 5, 10])
def test_the_verdict_calls_identical_arms_better_or_worse_at_most_alpha_often(seeds):
    """A study of two levels against a reference, all three identical: the chance that any
    level is called better or worse (the family-wise error over Holm's family) stays ≤ α."""
    rng = np.random.default_rng(300 + seeds)
    wrong = []
    for _ in range(1000):
        reference, *levels = rng.normal(0, 1, (3, seeds))
        rows = [stats.seed_level(level, reference, margin=0.5) for level in levels]
        p_holm = stats.holm([r["p"] for r in rows], family=2)
        equivalent_holm = stats.holm([r["p_equivalent"] for r in rows], family=2)
        diffs = [r["diff"] for r in rows]
        words = [stats.verdict(*v) for v in zip(p_holm, equivalent_holm, diffs, strict=True)]
        wrong.append(any(word in ("better", "worse") for word in words))
    assert within_level(wrong)


def test_the_verdict_reads_better_worse_equivalent_or_inconclusive():
    assert stats.verdict(0.01, 0.5, -0.1) == "better"
    assert stats.verdict(0.01, 0.5, -0.1, lower_is_better=False) == "worse"
    assert stats.verdict(0.01, 0.01, 0.002) == "worse"  # a difference shown first, even a small one
    assert stats.verdict(0.3, 0.01, 0.002) == "equivalent"
    assert stats.verdict(0.3, 0.2, 0.002) == "inconclusive"
    assert stats.verdict(math.nan, math.nan, 0.002) == "no test"


def test_holm_counts_planned_comparisons_without_a_p_value_as_not_rejected():
    # Family of 3, one lost: p 0.01 and 0.02 get multipliers 3 and 2 (not 2 and 1).
    np.testing.assert_allclose(stats.holm([0.02, 0.01, np.nan], family=3), [0.04, 0.03, np.nan])
    with pytest.raises(ValueError, match="a family of 1"):
        stats.holm([0.01, 0.02], family=1)


def test_hodges_lehmann_by_hand():
    # Walsh averages of 1, 2, 3, 10: 1, 1.5, 2, 5.5, 2, 2.5, 6, 3, 6.5, 10 → median (2.5 + 3) / 2.
    assert stats.hodges_lehmann(np.array([1.0, 2.0, 3.0, 10.0]))[0] == pytest.approx(2.75)
    assert stats.hodges_lehmann(np.array([0.5, 0.5]))[0] == 0.5


def test_rank_biserial_by_hand():
    # |d| ranks: 0.1→1, 0.2→2, 0.3→3, 0.4→4 (the zero is dropped); R+ = 1 + 4, R− = 2 + 3.
    assert stats.rank_biserial(np.array([0.1, -0.2, -0.3, 0.4, 0.0])) == pytest.approx(0.0)
    assert stats.rank_biserial(np.array([-0.1, -0.2, -0.3])) == -1.0
    # Ties share the average rank: |d| = 0.1, 0.1, 0.5 → ranks 1.5, 1.5, 3; R+ = 1.5, R− = 4.5.
    assert stats.rank_biserial(np.array([0.1, -0.1, -0.5])) == pytest.approx((1.5 - 4.5) / 6)


def test_holm_on_a_textbook_example():
    # Sorted p 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 → monotone:
    # 0.02, 0.03, 0.06, 0.06.
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(stats.holm([0.5, np.nan, 0.9]), [1.0, np.nan, 1.0])  # NaN not counted


def test_in_simulated_null_studies_only_the_seed_level_test_keeps_its_error_rate():
    """Two identical arms, 5 networks each: a network's loss on image i is the image's difficulty
    plus a shift of its own (seed-to-seed SD 0.003) plus noise. Across 300 such studies the
    seed-level test rejects at about α; the image-level test, which treats the 1,000 images as
    replications and so mistakes the arms' seed luck for an effect, rejects far more often."""
    rng = np.random.default_rng(42)
    studies, seeds, images = 300, 5, 1000
    primary, per_image = [], []
    for _ in range(studies):
        difficulty = rng.gamma(2.0, 0.05, images)
        arms = [difficulty + rng.normal(0, 0.003, (seeds, 1)) + rng.normal(0, 0.02, (seeds, images))
                for _ in range(2)]
        primary.append(stats.welch(arms[1].mean(1), arms[0].mean(1))[0] < 0.05)
        per_image.append(scipy_stats.wilcoxon(arms[1].mean(0) - arms[0].mean(0)).pvalue < 0.05)
    assert np.mean(primary) <= 0.05 + 0.03
    assert np.mean(per_image) > 0.5



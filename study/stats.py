"""The statistics of one comparison of two arms, on plain arrays: what ``study.analysis`` reports.

**Seed level** (the verdict). One observation per trained network (its mean test loss, say):

- Welch's t-test of the difference of the arms' means, with its 95 % confidence interval
  (estimate, interval and test agree; unequal variances and arm sizes are allowed for).
- Equivalence within ±``margin``: two one-sided Welch tests (TOST, ``statsmodels``); a small p
  says the difference lies inside the margin.
- Power as what it is: the power of the Welch test at α/m (the first step of Holm's procedure
  over m comparisons, the step every level must pass) against a true difference of ±margin, and
  the networks per arm that would give 80 % there. Both depend on the true seed SDs, which a few
  networks estimate poorly, so both are given with a 95 % interval: the variance of the
  difference, s²/n + s_r²/n_r, is taken as its true value times χ²_ν/ν (ν the Welch–Satterthwaite
  degrees of freedom), and the power and the networks are computed at the interval's ends and at
  its median (the point estimate, median-unbiased, where power at the observed SDs is optimistic:
  0.21 reported for a true 0.11 at 3 networks per arm). No "seeds needed" is computed from the
  observed difference: under identical arms that number is noise.

There is no permutation test. It tests that the two arms' networks are exchangeable, not that
their means are equal: measured by simulation (identical means, seed SDs 3:1, equal arms, 4,000
studies each, α = 5 %), the permutation test of the Welch statistic rejects in 6.8 ± 0.4 % of
studies at 5 vs 5 networks and 5.6 ± 0.4 % at 10 vs 10, and at 3 vs 3 it cannot reject at all
(20 splits: p ≥ 0.1). Welch's test, which the verdict rests on, holds its level there.

There is no bootstrap interval over seeds: with 2–10 networks per arm a percentile bootstrap
excludes the truth far more often than 5 % (its resamples cannot vary more than the few values
drawn), and the Welch interval keeps its level (``tests/test_stats.py`` checks both by simulation).

**Verdict.** Per compared level, from Holm-adjusted p-values over one fixed family (the compared
levels the study file names; a level without networks counts as not rejected): ``better`` or
``worse`` when the difference test rejects, else ``equivalent`` when the equivalence test rejects,
else ``inconclusive``; ``no test`` below two networks per arm or without any spread.

**Image level** (the original study's test, reported beside the verdict): the Wilcoxon
signed-rank test on per-sample differences paired by image, the matched-pairs rank-biserial
correlation and the Hodges–Lehmann shift with its test-inversion interval.

Example:
    >>> row = seed_level([0.30, 0.31, 0.29], [0.35, 0.36, 0.34], margin=0.01)
    >>> round(row["diff"], 3), round(row["diff_ci_low"], 3), round(row["diff_ci_high"], 3)
    (-0.05, -0.073, -0.027)
    >>> verdict(holm([row["p"]])[0], holm([row["p_equivalent"]])[0], row["diff"])
    'better'
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, stats
from statsmodels.stats.weightstats import ttost_ind

from study.sections import MIN_SEEDS

ALPHA = 0.05
POWER = 0.8
CONFIDENCE = 0.95  # of the interval around power and the networks a margin needs
SEARCH_LIMIT = 10_000  # the search for the networks a margin needs gives up beyond this
POWER_KEYS = ("sd", "sd_reference", "power_at_margin_low", "power_at_margin", "power_at_margin_high",
              "seeds_for_margin_low", "seeds_for_margin", "seeds_for_margin_high")
VERDICTS = ("better", "worse", "equivalent", "inconclusive", "no test")
SEED_KEYS = ("diff", "diff_ci_low", "diff_ci_high", "p", "p_equivalent")


def holm(p_values: np.ndarray | list[float], family: int | None = None) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values over a family of ``family`` hypotheses (default: the
    p-values given). Hypotheses of the family without a p-value (NaN, or not given at all) count
    as not rejected: they are tests that could not be made, not tests that were never planned.

    Example:
        >>> holm([0.01, 0.04, 0.03]).round(2).tolist()
        [0.03, 0.06, 0.06]
        >>> holm([0.01, np.nan], family=3).round(2).tolist()  # two more planned, one lost
        [0.03, nan]
    """
    p = np.asarray(p_values, dtype=float)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(p) if family is None else family
    if m < len(valid):
        raise ValueError(f"a family of {m} cannot hold {len(valid)} p-values")
    adjusted = np.full_like(p, np.nan)
    running = 0.0
    for rank, index in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[index]))  # step-down, kept monotone
        adjusted[index] = running
    return adjusted


def welch(arm: np.ndarray, reference: np.ndarray,
          confidence: float = 1 - ALPHA) -> tuple[float, float, float]:
    """Welch's two-sided p and the interval of the difference of means (arm − reference) at
    ``confidence`` (95 %; a sequential design's look asks for its nominal level's)."""
    test = stats.ttest_ind(arm, reference, equal_var=False)
    ci = test.confidence_interval(confidence)
    return float(test.pvalue), float(ci.low), float(ci.high)


def equivalence(arm: np.ndarray, reference: np.ndarray, margin: float) -> float:
    """The p of two one-sided Welch tests (TOST) that the difference lies within ±``margin``."""
    p, _, _ = ttost_ind(arm, reference, -margin, margin, usevar="unequal")
    return float(p)


def seed_level(arm: np.ndarray | list[float], reference: np.ndarray | list[float],
               margin: float) -> dict[str, float]:
    """The seed-level tests of one comparison, one value per network in each arm: the
    difference of means with Welch's 95 % interval and p, and the equivalence p within
    ±``margin``."""
    arm, reference = np.asarray(arm, dtype=float), np.asarray(reference, dtype=float)
    row = dict.fromkeys(SEED_KEYS, np.nan)
    if len(arm) and len(reference):
        row["diff"] = float(arm.mean() - reference.mean())
    if min(len(arm), len(reference)) < MIN_SEEDS or (np.ptp(arm) == 0 and np.ptp(reference) == 0):
        return row
    p, low, high = welch(arm, reference)
    return row | {"diff_ci_low": low, "diff_ci_high": high, "p": p,
                  "p_equivalent": equivalence(arm, reference, margin)}


def welch_power(difference: float, sd: float, sd_reference: float, n: int, n_reference: int,
                alpha: float = ALPHA) -> float:
    """The power of the two-sided Welch test at level ``alpha`` against a true ``difference``,
    with arms of ``n`` and ``n_reference`` networks whose seed SDs are ``sd`` and
    ``sd_reference`` (the noncentral t with Welch–Satterthwaite degrees of freedom).

    Example:
        >>> round(welch_power(1.0, 1.0, 1.0, 17, 17), 2)  # one SD apart, 17 per arm
        0.81
    """
    a, b = sd**2 / n, sd_reference**2 / n_reference
    if a + b == 0:
        return math.nan
    df = (a + b) ** 2 / (a**2 / (n - 1) + b**2 / (n_reference - 1))
    shift, critical = abs(difference) / math.sqrt(a + b), stats.t.ppf(1 - alpha / 2, df)
    # The far tail as P(T ≥ c | −shift), not P(T ≤ −c | shift): scipy's nct.cdf gives NaN there
    # once the shift is a few critical values large (a few networks with small spreads).
    return float(stats.nct.sf(critical, df, shift) + stats.nct.sf(critical, df, -shift))


def seeds_for(difference: float, sd: float, sd_reference: float, alpha: float = ALPHA,
              power: float = POWER) -> float:
    """The fewest networks per arm (equal arms) at which the Welch test at ``alpha`` has
    ``power`` against a true ``difference`` (NaN beyond ``SEARCH_LIMIT`` or without spread)."""
    if difference == 0 or sd + sd_reference == 0:
        return math.nan
    low, high = MIN_SEEDS, MIN_SEEDS
    while welch_power(difference, sd, sd_reference, high, high, alpha) < power:
        low, high = high, high * 2
        if high > SEARCH_LIMIT:
            return math.nan
    while low < high:  # power grows with the arms: the first n that reaches it
        middle = (low + high) // 2
        low, high = (middle + 1, high) if welch_power(difference, sd, sd_reference, middle, middle,
                                                      alpha) < power else (low, middle)
    return float(high)


def sd_scales(sd: float, sd_reference: float, n: int, n_reference: int,
              confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """The factors by which to scale both observed seed SDs to reach the lower end, the median and
    the upper end of a ``confidence`` interval of the true ones: the variance of the difference
    s²/n + s_r²/n_r is taken as its true value times χ²_ν/ν, ν the Welch–Satterthwaite degrees
    of freedom (exact for equal SDs and arms, where ν = 2n − 2).

    Example:
        >>> [round(k, 2) for k in sd_scales(1.0, 1.0, 3, 3)]  # ν = 4: the true SDs may be 2.9× larger
        [0.6, 1.09, 2.87]
    """
    a, b = sd**2 / n, sd_reference**2 / n_reference
    nu = (a + b) ** 2 / (a**2 / (n - 1) + b**2 / (n_reference - 1))
    tail = (1 - confidence) / 2
    return tuple(math.sqrt(nu / stats.chi2.ppf(q, nu)) for q in (1 - tail, 0.5, tail))


def power(arm: np.ndarray | list[float], reference: np.ndarray | list[float], margin: float,
          family: int) -> dict[str, float]:
    """Each arm's seed SD; the Welch test's power against a true difference of ``margin`` at
    Holm's first step (α / ``family``) and the networks per arm that would give ``POWER`` there,
    each at the median of the true SDs and at both ends of their ``CONFIDENCE`` interval
    (``sd_scales``). Larger SDs mean less power and more networks, so ``power_at_margin_low`` and
    ``seeds_for_margin_high`` are the values at the upper end.

    Example:
        >>> row = power([0.30, 0.32, 0.31], [0.33, 0.34, 0.32], margin=0.01, family=1)
        >>> [round(row[k], 2) for k in ("power_at_margin_low", "power_at_margin", "power_at_margin_high")]
        [0.06, 0.14, 0.35]
    """
    arm, reference = np.asarray(arm, dtype=float), np.asarray(reference, dtype=float)
    row = dict.fromkeys(POWER_KEYS, np.nan)
    if min(len(arm), len(reference)) < MIN_SEEDS:
        return row
    sd, sd_reference = float(arm.std(ddof=1)), float(reference.std(ddof=1))
    row |= {"sd": sd, "sd_reference": sd_reference}
    if sd + sd_reference == 0:
        return row
    alpha = ALPHA / max(family, 1)
    small, middle, large = sd_scales(sd, sd_reference, len(arm), len(reference))
    for suffix, k in (("_low", large), ("", middle), ("_high", small)):
        row[f"power_at_margin{suffix}"] = welch_power(margin, k * sd, k * sd_reference, len(arm),
                                                      len(reference), alpha)
    for suffix, k in (("_low", small), ("", middle), ("_high", large)):
        row[f"seeds_for_margin{suffix}"] = seeds_for(margin, k * sd, k * sd_reference, alpha)
    return row


def verdict(p_holm: float, p_equivalent_holm: float, diff: float, lower_is_better: bool = True) -> str:
    """One of ``VERDICTS`` from Holm-adjusted p-values: a difference first, then equivalence."""
    if math.isnan(p_holm):
        return "no test"
    if p_holm < ALPHA:
        return "better" if (diff < 0) == lower_is_better else "worse"
    return "equivalent" if p_equivalent_holm < ALPHA else "inconclusive"


def rank_biserial(differences: np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation of paired differences, zeros dropped."""
    d = np.asarray(differences, dtype=float)
    d = d[d != 0]
    if len(d) == 0:
        return float("nan")
    ranks = stats.rankdata(np.abs(d))
    return float((ranks[d > 0].sum() - ranks[d < 0].sum()) / ranks.sum())


def hodges_lehmann(differences: np.ndarray, alpha: float = ALPHA) -> tuple[float, float, float]:
    """The Hodges–Lehmann shift of paired differences d (the median of the Walsh averages
    (dᵢ + dⱼ)/2, i ≤ j: the pseudo-median the signed-rank test is about) and its 1 − alpha
    confidence interval, both by inverting the signed-rank test: the shift δ at which d − δ
    balances its signed ranks, and the shifts at which ``scipy.stats.wilcoxon``'s two-sided
    p-value of d − δ falls to alpha. Bisection, so it scales to thousands of test images.

    Example:
        >>> round(hodges_lehmann(np.array([1.0, 2.0, 3.0, 10.0]))[0], 6)  # Walsh median (2.5 + 3) / 2
        2.75
    """
    d = np.asarray(differences, dtype=float)
    if len(d) == 0 or np.all(d == d[0]):
        value = float(d[0]) if len(d) else float("nan")
        return value, value, value
    low, high = float(d.min()), float(d.max())
    tol = 1e-10 * max(1e-12, high - low)

    def first(condition, a: float, b: float) -> float:
        """The δ in [a, b] where ``condition`` turns from true to false (true at a, false at b)."""
        return optimize.bisect(lambda x: 1.0 if condition(x) else -1.0, a, b, xtol=tol)

    # R+ − R− of d − δ is +1 at δ = min(d), −1 at δ = max(d) and never increases in between.
    above = first(lambda x: rank_biserial(d - x) > 0, low, high)
    below = first(lambda x: rank_biserial(d - x) >= 0, low, high)
    estimate = (above + below) / 2

    def accepted(x: float) -> bool:
        return stats.wilcoxon(d - x).pvalue >= alpha

    ci_low = first(lambda x: not accepted(x), low, estimate) if not accepted(low) else low
    ci_high = first(accepted, estimate, high) if not accepted(high) else high
    return float(estimate), float(ci_low), float(ci_high)


IMAGE_KEYS = ("image_n", "image_n_nonzero", "image_hl_shift", "image_hl_ci_low", "image_hl_ci_high",
              "image_wilcoxon_w", "image_p", "image_rank_biserial")


def image_level(arm: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """The per-sample statistics of one comparison: Wilcoxon on d = arm − reference (paired by
    image), rank-biserial r, and the Hodges–Lehmann shift with its test-inversion CI."""
    d = np.asarray(arm, dtype=float) - np.asarray(reference, dtype=float)
    row = {"image_n": len(d), "image_n_nonzero": int(np.count_nonzero(d))}
    shift, low, high = hodges_lehmann(d)
    row |= {"image_hl_shift": shift, "image_hl_ci_low": low, "image_hl_ci_high": high}
    if row["image_n_nonzero"] == 0:
        return row | {"image_wilcoxon_w": np.nan, "image_p": np.nan, "image_rank_biserial": np.nan}
    test = stats.wilcoxon(d, zero_method="wilcox")
    return row | {"image_wilcoxon_w": float(test.statistic), "image_p": float(test.pvalue),
                  "image_rank_biserial": rank_biserial(d)}

"""The sequential design: its boundaries against scipy's multivariate normal, and its error rates,
interval coverage and stopping by simulation of whole sequences of looks at 2–15 networks per arm."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from study import loading, sequential, stats
from study.boundaries import critical_values, spent
from study.errors import UserError
from study.sections import Design
from study.sequential import decide, replay

from .conftest import SMOKE
from .test_stats import ALPHA, within_level

LR_SPACE = "space={model.attention.layers: {choice: [[], [0]]}, train.lr: {choice: [0.001, 0.003]}}"
UNEVEN = (0.2, 0.45, 0.6, 1.0)  # a failed network makes the looks uneven


def correlation(fractions):
    t = np.asarray(fractions)
    return np.sqrt(np.minimum.outer(t, t) / np.maximum.outer(t, t))


def inside(c, fractions, sides, mean=None):
    """P(every look's z stays inside its boundary), by scipy's multivariate normal."""
    c = np.asarray(c)
    low = -c if sides == 2 else np.full(len(c), -40.0)
    return scipy_stats.multivariate_normal.cdf(c, mean=mean, cov=correlation(fractions), lower_limit=low,
                                               abseps=1e-6, releps=1e-6, rng=0)


@pytest.mark.slow
@pytest.mark.parametrize("spending", ["lan-demets-obrien-fleming", "lan-demets-obrien-fleming-two-sided",
                                      "lan-demets-pocock"])
@pytest.mark.parametrize("sides", [1, 2])
@pytest.mark.parametrize("fractions", [(0.2, 0.4, 0.6, 0.8, 1.0), UNEVEN, tuple(np.arange(2, 15, 2) / 14)])
def test_each_look_spends_what_the_spending_function_says(spending, sides, fractions):
    level = ALPHA / 3 if sides == 1 else ALPHA  # Holm's first step for one of three, too
    c = critical_values(level, fractions, sides, spending, True)
    for k in sorted({1, 2, len(fractions) - 1, len(fractions)}):  # scipy's integral is slow in 7 dimensions
        expected = level if k == len(fractions) else spent(level, fractions[k - 1], sides, spending)
        crossed = 1 - inside(c[:k], fractions[:k], sides)
        assert crossed == pytest.approx(expected, rel=2e-3, abs=2e-6)


def test_the_first_look_alone_is_a_normal_quantile_and_the_forms_differ_as_designed():
    obf = critical_values(ALPHA, (0.2, 1.0), 2, "lan-demets-obrien-fleming", True)
    pocock = critical_values(ALPHA, (0.2, 1.0), 2, "lan-demets-pocock", True)
    first = spent(ALPHA, 0.2, 2, "lan-demets-obrien-fleming")
    assert obf[0] == pytest.approx(scipy_stats.norm.isf(first / 2))
    assert obf[0] > 4 and obf[1] < 2.0  # spends almost nothing early, near 1.96 at the end
    assert pocock[0] < 2.6 and pocock[1] > obf[1]


# Lan–DeMets O'Brien–Fleming-type boundaries at equally spaced looks, one-sided α = 0.025, as
# published (Jennison & Turnbull 2000, ch. 7; gsDesign's sfLDOF): the two-sided test at α = 0.05
# spends α/2 on each side and has the same boundaries.
PUBLISHED = {3: (3.7103, 2.5114, 1.9930), 4: (4.3326, 2.9631, 2.3590, 2.0141),
             5: (4.8769, 3.3569, 2.6803, 2.2898, 2.0310)}


@pytest.mark.parametrize("looks", sorted(PUBLISHED))
def test_the_default_spending_gives_the_published_boundaries(looks):
    fractions = tuple(k / looks for k in range(1, looks + 1))
    assert Design(start=2, step=1, max=3).spending == "lan-demets-obrien-fleming"
    assert critical_values(0.025, fractions, 1, "lan-demets-obrien-fleming", True) == pytest.approx(
        PUBLISHED[looks], abs=2e-4)
    assert critical_values(ALPHA, fractions, 2, "lan-demets-obrien-fleming", True) == pytest.approx(
        PUBLISHED[looks], abs=2e-4)


def test_the_two_sided_alpha_form_spends_more_at_the_first_look_and_older_files_keep_their_meaning():
    thirds = (1 / 3, 2 / 3, 1.0)
    assert critical_values(ALPHA, thirds, 2, "lan-demets-obrien-fleming-two-sided", True) == pytest.approx(
        (3.395, 2.407, 2.015), abs=1e-3)
    assert spent(ALPHA, 1 / 3, 2, "lan-demets-obrien-fleming-two-sided") > 3 * spent(
        ALPHA, 1 / 3, 2, "lan-demets-obrien-fleming")
    # A study file written before the names changed is read with the functions it was run with.
    assert Design(start=3, step=3, max=9, spending="obrien-fleming").spending == \
        "lan-demets-obrien-fleming-two-sided"
    assert Design(start=3, step=3, max=9, spending="pocock").spending == "lan-demets-pocock"


@pytest.mark.parametrize("shift", [0.0, 1.5, 2.8])
def test_the_designs_power_is_scipys_multivariate_normal(shift):
    design = Design(start=3, step=3, max=15)
    fractions = [n / 15 for n in design.looks()]
    c = critical_values(ALPHA, tuple(fractions), 2, design.spending, True)
    mean = shift * np.sqrt(fractions)
    assert sequential.power(design, shift) == pytest.approx(1 - inside(c, fractions, 2, mean), abs=5e-5)


def simulate(design, difference, runs, margin=0.5, sd=1.0, sd_reference=1.0, levels=1, failed=(), seed=0):
    """Whole sequential comparisons of ``levels`` arms (each ``difference`` from the reference)
    with normal per-network values, as ``study run`` makes them: the decisions look by look. The
    arms' networks at positions ``failed`` fail (the same in every run: each pattern of failures
    has its own boundaries, which take a second to compute)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(runs):
        values = {level: rng.normal(difference, sd, design.max) for level in range(levels)}
        reference = rng.normal(0.0, sd_reference, design.max)
        for v in values.values():
            v[list(failed)] = np.nan
        out.append(replay(values, reference, design, margin))
    return out


@pytest.mark.parametrize("design", [Design(start=2, step=2, max=8), Design(start=3, step=3, max=15),
                                    Design(start=3, step=3, max=15, spending="lan-demets-pocock")])
@pytest.mark.slow
def test_identical_arms_are_called_different_at_most_alpha_often_over_all_looks(design):
    runs = simulate(design, 0.0, 1000)
    assert within_level([d[0].verdict in ("better", "worse") for d in runs])


@pytest.mark.slow
def test_the_error_holds_with_unequal_spreads_and_failed_networks():
    runs = simulate(Design(start=3, step=3, max=12), 0.0, 1000, sd=3.0, failed=(1, 7, 8), seed=1)
    assert within_level([d[0].verdict in ("better", "worse") for d in runs])
    assert {(d[0].n, d[0].n_reference) for d in runs if d[0].look == 3} == {(6, 9)}  # a smaller arm


@pytest.mark.slow
def test_holm_over_three_levels_keeps_the_family_wise_error():
    runs = simulate(Design(start=3, step=3, max=9), 0.0, 600, levels=3, seed=2)
    assert within_level([any(d.verdict in ("better", "worse") for d in r.values()) for r in runs])


@pytest.mark.slow
def test_equivalence_is_claimed_at_most_alpha_often_when_the_difference_is_the_margin():
    design = Design(start=4, step=4, max=16)
    runs = simulate(design, 1.0, 1000, margin=1.0, sd=0.6, sd_reference=0.6, seed=3)
    assert within_level([d[0].verdict == "equivalent" for d in runs])
    assert np.mean([d[0].verdict == "better" or d[0].verdict == "worse" for d in runs]) > 0.3


@pytest.mark.slow
def test_the_repeated_interval_covers_the_truth_whatever_the_look_it_stopped_at():
    runs = simulate(Design(start=3, step=3, max=15), 1.0, 1000, seed=4)
    looks = [d[0].look for d in runs]
    assert min(looks) < max(looks)  # stops at different looks
    assert within_level([not d[0].ci_low <= 1.0 <= d[0].ci_high for d in runs])


@pytest.mark.slow
def test_a_secondary_measure_at_the_stopping_look_keeps_its_level_with_its_own_spending():
    """Identical arms; each network's secondary measure (accuracy, say) correlates with its loss
    (ρ = −0.7). The loss decides where each of two levels stops; the secondary is tested there with
    its own spending (``decide`` on its values, what ``study analyze`` does), Holm over the two:
    better or worse in ≤ α of studies. Its repeated p-values only fall from look to look, so no
    earlier look's report said otherwise. Fixed-size tests at each reported look do not hold."""
    design, rho = Design(start=3, step=3, max=12), -0.7
    rng = np.random.default_rng(7)
    own, fixed = [], []
    for _ in range(600):
        loss = rng.normal(0.0, 1.0, (3, design.max))  # the reference, then two levels
        accuracy = rho * loss + math.sqrt(1 - rho**2) * rng.normal(0.0, 1.0, loss.shape)
        decided = replay({1: loss[1], 2: loss[2]}, loss[0], design, margin=0.5, family=2)
        p_own, p_fixed = [], []
        for level, d in decided.items():
            n = design.looks()[d.look - 1]
            p_own.append(decide(accuracy[level][:n], accuracy[0][:n], design, margin=0.5).p)
            p_fixed.append([stats.welch(accuracy[level][:m], accuracy[0][:m])[0]
                            for m in design.looks()[:d.look]])
        own.append((stats.holm(p_own, 2) < ALPHA).any())
        looks = max(len(p) for p in p_fixed)
        fixed.append(any((stats.holm([p[min(k, len(p) - 1)] for p in p_fixed], 2) < ALPHA).any()
                         for k in range(looks)))
    assert within_level(own)
    assert np.mean(fixed) > ALPHA + 0.02  # what the report printed before: interim verdicts over α


def test_a_clear_difference_stops_early_and_spends_fewer_networks():
    runs = simulate(Design(start=3, step=3, max=15), 1.5, 300, seed=5)
    assert np.mean([d[0].verdict == "worse" for d in runs]) > 0.9  # the arm's loss is higher
    assert np.mean([d[0].n for d in runs]) < 11


def test_a_decision_is_final_and_a_family_of_one_is_decide_itself():
    design = Design(start=3, step=3, max=9)
    rng = np.random.default_rng(6)
    for _ in range(30):
        arm, reference = rng.normal(0.8, 1, 9), rng.normal(0, 1, 9)
        settled = replay({"a": arm}, reference, design, 0.3)["a"]
        alone = decide(arm[:design.looks()[settled.look - 1]], reference[:design.looks()[settled.look - 1]],
                       design, 0.3)
        assert (alone.verdict, alone.p) == (settled.verdict, settled.p)


def test_a_look_that_only_lost_networks_adds_no_information():
    design = Design(start=3, step=3, max=9)
    arm, reference = [1.0, 1.2, 0.9, math.nan, math.nan, math.nan], [1.1, 1.0, 1.3, 1.2, 0.9, 1.0]
    before, after = decide(arm[:3], reference[:3], design, 0.1), decide(arm, reference, design, 0.1)
    assert after.look == 2 and after.n == 3 and after.n_reference == 6
    assert after.verdict == "continue" and after.p <= before.p


def test_too_few_values_for_the_first_look_is_an_error():
    with pytest.raises(ValueError, match="first look needs 3"):
        decide([1.0, 2.0], [1.0, 2.0, 3.0], Design(start=3, step=3, max=9), 0.1)


def test_the_study_file_gives_a_design_where_the_compared_networks_are():
    study = loading.load(SMOKE, ["search.seeds={start: 2, step: 2, max: 5}"])
    assert study.design().looks() == [2, 4, 5] and study.looks() == [2, 4, 5]
    assert [study.seeds("tune", k) for k in (1, 2, 3)] == [[0, 1], [2, 3], [4]]
    assert study.n_networks() == 2 * 5
    selecting = loading.load(SMOKE, [LR_SPACE, "search.seeds=2",
                                    "search.confirm_seeds={start: 3, step: 2, max: 7}"])
    assert selecting.seeds("confirm", 1) == [2, 3, 4] and selecting.seeds("confirm", 3) == [7, 8]
    assert selecting.n_networks() == 4 * 2 + 2 * 7


@pytest.mark.parametrize("sets, message", [
    (["search.seeds={start: 3, step: 2, max: 3}"], "search.seeds: max (3) must exceed start (3)"),
    (["search.seeds={start: 1, step: 1, max: 3}"], "search.seeds.start: Input should be greater"),
    (["search.seeds={start: 2, step: 1, max: 3, spending: even}"], "search.seeds.spending: Input should be"),
    (["search.confirm_seeds={start: 2, step: 1, max: 3}"], "give the sequential design as search.seeds"),
    ([LR_SPACE, "search.seeds={start: 2, step: 1, max: 3}"],
     "give the design as search.confirm_seeds"),
])
def test_a_design_in_the_wrong_place_or_shape_is_one_message(sets, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        loading.load(SMOKE, sets)

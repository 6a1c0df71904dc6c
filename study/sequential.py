"""Seeds on demand: a group-sequential design that trains the compared networks in rounds.

``search.seeds: {start: 3, step: 3, max: 15}`` (``search.confirm_seeds`` in a study that
selects) trains ``start`` networks per arm, then looks: a level whose comparison with the
reference is decided stops; the others, and the reference while any is undecided, get ``step``
more networks (fresh seeds), up to ``max``. Each look tests what ``study.stats`` tests at a
fixed size, the difference of mean test loss (Welch) and equivalence within ``analysis.margin``
(two one-sided Welch tests), against boundaries that keep the error rates over all looks:

- **Alpha spending** (Lan–DeMets) over the information fraction t = I / I_max (I = 1 / (1/n +
  1/n_reference), I_max at ``max`` per arm, so a failed network lowers t and its look spends
  less), by the function ``spending`` names, with boundaries from the joint distribution of the
  looks' statistics: ``study.boundaries`` explains both. A look's Welch p-value is compared with
  the look's nominal level (the "nominal p" approach for t statistics), which keeps each look's
  marginal level exact; the overall level at 2–15 networks per arm is checked by simulation
  (``tests/test_sequential.py``).
- **Equivalence** has its own one-sided spending of α for each of the two one-sided tests; both
  must cross at the same look. Stopping for a difference only removes chances to claim
  equivalence and the reverse, so each error rate stays ≤ α.
- **Repeated p-values** (the smallest level whose boundary a test has crossed at some look so
  far) turn each comparison into one p per look, valid over the whole sequence. Holm's procedure
  over the study's fixed family runs on them at every look (which is the graphical Holm
  procedure for group-sequential tests of Maurer & Bretz, 2013); a level's verdict is final once
  made.
- **What is reported** after a data-dependent stop: the repeated p-value, the difference of the
  arms' means at the stopping look (which, after an early stop, overstates the difference on
  average), and the **repeated confidence interval** (the Welch interval at the look's nominal
  level), which covers the true difference with probability ≥ 95 % whatever the look at which
  the design stopped.

Example:
    >>> design = Design(start=3, step=3, max=9)
    >>> design.looks()
    [3, 6, 9]
    >>> arm, reference = [0.30, 0.33, 0.27], [0.36, 0.33, 0.39]
    >>> d = decide(arm, reference, design, margin=0.005)
    >>> d.verdict, d.look, round(d.p, 2)  # 3 networks per arm: too early to spend much α
    ('continue', 1, 0.45)
    >>> d = decide(arm + [0.31, 0.29, 0.30], reference + [0.37, 0.35, 0.36], design, margin=0.005)
    >>> d.verdict, d.look, round(d.diff, 2), round(d.p, 4)
    ('better', 2, -0.06, 0.0048)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import stats

from study.boundaries import critical_values, nominal, propagate, repeated_p
from study.sections import Design
from study.stats import ALPHA, MIN_SEEDS, equivalence, holm, sd_scales, verdict, welch
from study.words import counted


def seeds_in_words(seeds: int | Design, per: str = "") -> str:
    """The seeds of a configuration in words (``per``: what they are counted per).

    Example:
        >>> seeds_in_words(3, per="configuration")
        '3 seeds per configuration'
        >>> seeds_in_words(Design(start=3, step=3, max=15, spending="lan-demets-pocock"))
        '3 seeds, then 3 more per round while a level is undecided, up to 15 (lan-demets-pocock spending)'
    """
    first = seeds if isinstance(seeds, int) else seeds.start
    counts = counted(first, "seed") + (f" per {per}" if per else "")
    if not isinstance(seeds, Design):
        return counts
    return (f"{counts}, then {seeds.step} more per round while a level is undecided, up to {seeds.max} "
            f"({seeds.spending} spending)")


def power(design: Design, shift: float, level: float = ALPHA) -> float:
    """The probability that the difference test crosses a boundary by the last look when the true
    difference is ``shift`` standard errors of the difference at ``max`` networks per arm (normal
    theory, the planned looks)."""
    fractions = tuple(n / design.max for n in design.looks())
    critical = critical_values(level, fractions, 2, design.spending, True)
    by_look = iter(critical)
    return propagate(fractions, 2, abs(shift), lambda k, leaving: next(by_look))[1]


def equal_power(design: Design, sd: float, sd_reference: float, margin: float,
                level: float = ALPHA) -> tuple[float, float]:
    """The design's power against a true difference of ±``margin`` if the arms' seed SDs were
    ``sd`` and ``sd_reference``, and the networks per arm a fixed design needs for the same power
    (both by normal theory, the test at ``level``).

    Example:
        >>> achieved, n = equal_power(Design(start=3, step=3, max=15), 1.0, 1.0, 1.0)
        >>> round(achieved, 2), round(n, 1)  # a fixed design needs 14.6 per arm for the same power
        (0.77, 14.6)
    """
    spread = sd**2 + sd_reference**2
    if not spread > 0:
        return math.nan, math.nan
    achieved = power(design, margin / math.sqrt(spread / design.max), level)
    n = spread * (stats.norm.isf(level / 2) + stats.norm.ppf(achieved)) ** 2 / margin**2
    return achieved, float(n)


DESIGN_POWER_KEYS = ("design_power_at_margin_low", "design_power_at_margin", "design_power_at_margin_high",
                     "fixed_seeds_same_power")


def design_power(design: Design, sd: float, sd_reference: float, n: int, n_reference: int,
                 margin: float, level: float = ALPHA) -> dict[str, float]:
    """``equal_power`` from seed SDs observed on ``n`` and ``n_reference`` networks: the design's
    power at the median of the true SDs and at both ends of their 95 % interval
    (``study.stats.sd_scales``; larger SDs, less power), and the fixed design's networks per arm
    for the median's power.

    Example:
        >>> row = design_power(Design(start=3, step=3, max=15), 1.0, 1.0, 6, 6, margin=1.0)
        >>> [round(row[k], 2) for k in DESIGN_POWER_KEYS[:3]], round(row["fixed_seeds_same_power"], 1)
        ([0.34, 0.74, 0.97], 14.6)
    """
    row = dict.fromkeys(DESIGN_POWER_KEYS, math.nan)
    if min(n, n_reference) < MIN_SEEDS or not sd + sd_reference > 0:
        return row
    small, middle, large = sd_scales(sd, sd_reference, n, n_reference)
    for suffix, k in (("_low", large), ("_high", small)):
        row[f"design_power_at_margin{suffix}"] = equal_power(design, k * sd, k * sd_reference, margin,
                                                             level)[0]
    row["design_power_at_margin"], row["fixed_seeds_same_power"] = equal_power(
        design, middle * sd, middle * sd_reference, margin, level)
    return row


@dataclass(frozen=True)
class Decision:
    """One comparison at one look. ``p`` and ``p_equivalent`` are repeated p-values (valid over
    all looks; ``study.stats.holm`` adjusts them across levels), ``ci_low``/``ci_high`` the
    repeated 95 % confidence interval of ``diff`` (arm − reference) at this look."""

    verdict: str  # better | worse | equivalent | continue | inconclusive | no test
    look: int  # 1-based
    n: int  # trained networks of the arm at this look
    n_reference: int
    diff: float
    ci_low: float
    ci_high: float
    p: float
    p_equivalent: float
    last: bool  # this was the design's last look

    def settled(self) -> bool:
        return self.verdict != "continue"

    def seed_level(self) -> dict[str, float]:
        """The numbers ``study.stats.seed_level`` gives a fixed-size comparison, as this look
        has them: the difference with its repeated 95 % interval and the repeated p-values."""
        return {"diff": self.diff, "diff_ci_low": self.ci_low, "diff_ci_high": self.ci_high,
                "p": self.p, "p_equivalent": self.p_equivalent}


def _fractions(tested: list[tuple[int, int]], design: Design) -> tuple[float, ...]:
    """The information fraction of each tested look, from its trained networks per arm."""
    top = design.max / 2
    return tuple(round(min(1.0, 1 / (1 / n + 1 / r) / top), 6) for n, r in tested)


def decide(arm: Sequence[float], reference: Sequence[float], design: Design, margin: float) -> Decision:
    """The decision on one arm against the reference at the latest look their values reach, on
    its own (a family of one; ``replay`` adjusts across levels with Holm).

    ``arm`` and ``reference`` hold one value per network (its mean test loss, say) in seed order,
    NaN for a network that failed: the first ``design.looks()[k]`` values are look k's. Lower is
    better. The verdict is ``better``/``worse`` where the difference test has crossed its boundary
    at some look, else ``equivalent`` where both one-sided tests against ±``margin`` crossed theirs
    at one look, else ``continue`` (``inconclusive`` at the last look; ``no test`` there below two
    trained networks per arm).
    """
    *_, latest = _looks(arm, reference, design, margin)
    return latest


def _looks(arm: Sequence[float], reference: Sequence[float], design: Design,
           margin: float) -> Iterator[Decision]:
    """``decide`` at each look the values reach in turn, each from that look's networks only: one
    pass over the looks, each tested once."""
    arm, reference = np.asarray(arm, dtype=float), np.asarray(reference, dtype=float)
    planned = design.looks()
    reached = [n for n in planned if n <= min(len(arm), len(reference))]
    if not reached:
        raise ValueError(f"the first look needs {planned[0]} networks per arm; got "
                         f"{len(arm)} and {len(reference)}")
    tested, p_diff, p_equivalent, ci_low, ci_high = [], math.inf, math.inf, math.nan, math.nan
    for look, n in enumerate(reached, 1):
        a, r, last = _trained(arm, n), _trained(reference, n), n == planned[-1]
        # A look without two trained networks per arm, or whose round's networks all failed (no
        # new information), is no test.
        if (min(len(a), len(r)) >= MIN_SEEDS and not (np.ptp(a) == 0 and np.ptp(r) == 0)
                and (not tested or tested[-1] != (len(a), len(r)))):
            tested.append((len(a), len(r)))
            fractions = _fractions(tested, design)
            p, ci_low, ci_high = welch(a, r, 1 - nominal(ALPHA, fractions, 2, design.spending, last))
            p_diff = min(p_diff, repeated_p(p, fractions, 2, design.spending, last))
            p_equivalent = min(p_equivalent, repeated_p(equivalence(a, r, margin), fractions, 1,
                                                        design.spending, last))
        # The decision is made now, on every look so far, from the networks trained so far.
        decision = Decision("continue", look=look, n=len(a), n_reference=len(r),
                            diff=float(a.mean() - r.mean()) if len(a) and len(r) else math.nan,
                            ci_low=ci_low, ci_high=ci_high, p=p_diff if tested else math.nan,
                            p_equivalent=p_equivalent if tested else math.nan, last=last)
        yield replace(decision, verdict=_verdict(decision.p, decision.p_equivalent, decision))


def _trained(values: np.ndarray, n: int) -> np.ndarray:
    """The values of the first ``n`` networks that trained (failed ones are NaN)."""
    return values[:n][~np.isnan(values[:n])]


def _verdict(p: float, p_equivalent: float, decision: Decision) -> str:
    """``study.stats.verdict`` on (Holm-adjusted) repeated p-values; an undecided level goes on
    until the last look."""
    said = verdict(p, p_equivalent, decision.diff)
    if said == "inconclusive" or (said == "no test" and not decision.last):
        return "inconclusive" if decision.last else "continue"
    return said


def replay(arms: Mapping[Any, Sequence[float]], reference: Sequence[float], design: Design,
           margin: float, family: int | None = None) -> dict[Any, Decision]:
    """Every level's decision against the reference, look by look as far as the values reach:
    at each look the undecided levels are decided on Holm-adjusted repeated p-values over
    ``family`` (default: the levels given), and a level keeps the verdict of the look that
    settled it. A level whose values stop before a look (not trained yet) keeps its last decision.
    ``study run`` calls this after each round to know which levels train on; ``study analyze``
    calls it to report where each stopped.

    Example:
        >>> design = Design(start=2, step=2, max=4)
        >>> out = replay({"[0]": [1.0, 1.2, 1.1, 0.9]}, [1.0, 1.1, 1.2, 1.0], design, margin=0.01)
        >>> out["[0]"].verdict, out["[0]"].look
        ('inconclusive', 2)
    """
    decisions: dict[Any, Decision] = {}
    looks = {level: _looks(values, reference, design, margin) for level, values in arms.items()}
    for n in design.looks():
        if len(reference) < n:
            break
        current = {level: next(looks[level]) for level, values in arms.items()
                   if len(values) >= n and not (level in decisions and decisions[level].settled())}
        if not current:
            break
        decisions |= current
        levels = list(decisions)
        p_holm, equivalent_holm = (holm([getattr(decisions[level], key) for level in levels], family)
                                   for key in ("p", "p_equivalent"))
        for level, p, p_equivalent in zip(levels, p_holm, equivalent_holm, strict=True):
            if level in current:
                decisions[level] = replace(decisions[level],
                                           verdict=_verdict(p, p_equivalent, decisions[level]))
    return decisions

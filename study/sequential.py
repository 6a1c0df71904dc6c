"""Seeds on demand: a group-sequential design that trains the compared networks in rounds.

``search.seeds: {start: 3, step: 3, max: 15}`` (``search.confirm_seeds`` in a study that
selects) trains ``start`` networks per arm, then looks: a level whose comparison with the
reference is decided stops; the others, and the reference while any is undecided, get ``step``
more networks (fresh seeds), up to ``max``. Each look tests what ``study.stats`` tests at a
fixed size, the difference of mean test loss (Welch) and equivalence within ``analysis.margin``
(two one-sided Welch tests), against boundaries that keep the error rates over all looks:

- **Alpha spending** (Lan–DeMets). The level α is spent over the looks by the information
  fraction t = I / I_max (I = 1 / (1/n + 1/n_reference), I_max at ``max`` per arm, so a failed
  network lowers t and its look spends less). ``spending`` names the function as the literature
  does (Lan & DeMets 1983; gsDesign's ``sfLDOF`` and ``sfLDPocock``):

  - ``lan-demets-obrien-fleming`` (the default), O'Brien–Fleming-type: each side of a test
    spends its share a of α (α/2 on each side of the two-sided difference test, α for each
    one-sided equivalence test) by a(t) = 2 − 2Φ(z_{a/2} / √t), the form of the published tables
    (three equally spaced looks at α = 0.05 two-sided: |z| ≥ 3.71, 2.51, 1.99). It spends almost
    nothing at the first looks, where 2–5 networks per arm give a Welch test with a few degrees of
    freedom, and keeps the last look's boundary near the fixed design's, so a study that goes to
    ``max`` loses almost no power to its early looks.
  - ``lan-demets-obrien-fleming-two-sided``: the same function applied to the two-sided α as a
    whole, α(t) = 2 − 2Φ(z_{α/2} / √t), halved between the sides (3.40, 2.41, 2.01): about three
    times the published form's α at a first look at t = 1/3. It is what studies written before the
    published form was the default used (``obrien-fleming`` in their files), kept so that their
    decisions replay as they were made.
  - ``lan-demets-pocock``, Pocock-type: α·ln(1 + (e − 1)t), spending evenly (``pocock`` in older
    files); it stops earlier on large effects at the price of a stricter last look.

  ``bench/sequential.py`` measures each against the fixed design of the same power.
- **Boundaries** come from the canonical joint distribution of the looks' z statistics
  (independent increments; Jennison & Turnbull 2000, ch. 19), by numerical integration on a
  grid, look by look. A look's Welch p-value is compared with the look's nominal level (the
  "nominal p" approach for t statistics), which keeps each look's marginal level exact; the
  overall level at 2–15 networks per arm is checked by simulation (``tests/test_sequential.py``).
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

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator
from scipy import optimize, special, stats
from statsmodels.stats.weightstats import ttost_ind

from study.sections import Section
from study.stats import ALPHA, MIN_SEEDS, holm, sd_scales, verdict
from study.words import counted

# Networks per configuration at most: far past what a verdict between arms needs (a seed-level
# test at 100 networks per arm detects a difference of 0.4 seed SDs), and a bound on what one
# trial stacks, plans and stores.
MAX_SEEDS = 100

GRID = 161  # points per look of the numerical integration (odd: Simpson's rule)
FLOOR = -8.0  # z below this (Φ(-8) ≈ 6e-16) is left out of the integration
LEVELS = np.geomspace(1e-7, 0.5, 141)  # overall levels at which repeated p-values are tabulated
SQRT_2PI = math.sqrt(2 * math.pi)
Spending = Literal["lan-demets-obrien-fleming", "lan-demets-obrien-fleming-two-sided", "lan-demets-pocock"]
# The names older study files used, read as the functions they meant (see the module docstring).
OLD_NAMES = {"obrien-fleming": "lan-demets-obrien-fleming-two-sided", "pocock": "lan-demets-pocock"}


class Design(Section):
    """A sequential number of seeds: ``start`` networks per arm, ``step`` more per round for the
    levels still undecided, at most ``max``; ``spending`` names the alpha-spending function."""

    start: int = Field(ge=MIN_SEEDS, le=MAX_SEEDS, description="networks per arm at the first look")
    step: int = Field(ge=1, description="networks added per arm and round")
    max: int = Field(le=MAX_SEEDS, description="networks per arm at the last look")
    spending: Spending = Field("lan-demets-obrien-fleming", description="how α is spent over the looks")

    @field_validator("spending", mode="before")
    @classmethod
    def _old_name(cls, value: Any) -> Any:
        return OLD_NAMES.get(value, value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _bounds(self) -> Design:
        if self.max <= self.start:
            raise ValueError(f"max ({self.max}) must exceed start ({self.start}); for a fixed number "
                             f"of networks write the number (seeds: {self.start})")
        return self

    def looks(self) -> list[int]:
        """Networks per arm at each look; the last look is at ``max``."""
        return [*range(self.start, self.max, self.step), self.max]


def looks(seeds: int | Design) -> list[int]:
    """Networks per arm at each look: one look for a fixed number of seeds."""
    return seeds.looks() if isinstance(seeds, Design) else [seeds]


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


def spent(level: float, t: float, sides: int, spending: Spending) -> float:
    """The part of ``level`` (over all ``sides``) spent by information fraction ``t`` (all of it at
    t = 1).

    Example:
        >>> round(spent(0.05, 1 / 3, 2, "lan-demets-obrien-fleming"), 6)  # α/2 per side, sfLDOF's form
        0.000207
        >>> round(spent(0.05, 1 / 3, 2, "lan-demets-obrien-fleming-two-sided"), 6)
        0.000687
    """
    t = min(t, 1.0)
    if spending == "lan-demets-pocock":
        return level * math.log1p((math.e - 1) * t)
    if spending == "lan-demets-obrien-fleming":
        share = level / sides  # what each side spends: a(t) = 2 − 2Φ(z_{a/2} / √t)
        return sides * 2 * float(stats.norm.sf(stats.norm.isf(share / 2) / math.sqrt(t)))
    z = stats.norm.isf(level / sides)
    return sides * float(stats.norm.sf(z / math.sqrt(t)))


def _simpson(low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    z = np.linspace(low, high, GRID)
    weights = np.ones(GRID)
    weights[1:-1:2], weights[2:-1:2] = 4, 2
    return z, weights * (high - low) / (3 * (GRID - 1))


def _exit(mass: np.ndarray, mean: np.ndarray, sd: float, c: float, sides: int) -> float:
    """The probability that the next look's z lies beyond ±c (sides 2) or above c (sides 1),
    given the masses ``mass`` of the paths still going at the points whose next means are ``mean``."""
    beyond = special.ndtr((mean - c) / sd)
    if sides == 2:
        beyond = beyond + special.ndtr((-c - mean) / sd)
    return float(mass @ beyond)


def _propagate(fractions: Sequence[float], sides: int, drift: float,
               boundary: Callable[[int, Callable[[float], float]], float]) -> tuple[list[float], float]:
    """Walk the looks: at each, ``boundary(k, exit_probability)`` returns the critical z given the
    function that says how much probability leaves beyond a candidate z; returns the critical
    values and the total probability of crossing under ``drift`` (the mean of z at t = 1)."""
    critical, crossed = [], 0.0
    z = mass = None
    previous = 0.0
    for k, t in enumerate(fractions):
        if z is None:  # the first look: z ~ N(drift·√t, 1)
            mean, sd = np.array([drift * math.sqrt(t)]), 1.0
            weights = np.ones(1)
        else:
            mean = (z * math.sqrt(previous) + drift * (t - previous)) / math.sqrt(t)
            sd, weights = math.sqrt((t - previous) / t), mass
        c = boundary(k, lambda c, m=mean, s=sd, w=weights: _exit(w, m, s, c, sides))
        crossed += _exit(weights, mean, sd, c, sides)
        critical.append(c)
        # The paths that go on: their density on a grid inside the continuation region.
        # Beyond ±8 around the drift's path lies no probability worth a grid point.
        grid, simpson = _simpson(max(-c if sides == 2 else -math.inf, FLOOR + min(0.0, drift)),
                                 min(c, -FLOOR + max(0.0, drift)))
        density = np.exp(-0.5 * ((grid[:, None] - mean[None, :]) / sd) ** 2) / (sd * SQRT_2PI) @ weights
        z, mass, previous = grid, density * simpson, t
    return critical, crossed


@functools.lru_cache(maxsize=4096)
def critical_values(level: float, fractions: tuple[float, ...], sides: int, spending: Spending,
                    final: bool) -> tuple[float, ...]:
    """The z each look must exceed so that, under no difference, the chance of crossing by look k
    is the level spent by its information fraction (all of ``level`` at the last look if ``final``).
    ``sides`` 2: |z| (a difference either way); 1: z from above (one of the equivalence tests)."""
    target = [spent(level, t, sides, spending) for t in fractions]
    if final:
        target[-1] = level

    def boundary(k: int, leaving: Callable[[float], float]) -> float:
        increment = target[k] - (target[k - 1] if k else 0.0)
        if increment <= 1e-15:
            return math.inf
        if leaving(40.0) >= increment:
            return 40.0
        return optimize.brentq(lambda c: leaving(c) - increment, 0.0, 40.0, xtol=1e-10)

    return tuple(_propagate(fractions, sides, 0.0, boundary)[0])


def nominal(level: float, fractions: tuple[float, ...], sides: int, spending: Spending,
            final: bool) -> float:
    """The nominal p a test at the last of ``fractions`` must reach (two-sided or one-sided)."""
    c = critical_values(level, fractions, sides, spending, final)[-1]
    return float(sides * stats.norm.sf(c))


@functools.lru_cache(maxsize=1024)
def _nominal_table(fractions: tuple[float, ...], sides: int, spending: Spending, final: bool) -> np.ndarray:
    return np.array([nominal(a, fractions, sides, spending, final) for a in LEVELS])


def repeated_p(p: float, fractions: tuple[float, ...], sides: int, spending: Spending, final: bool) -> float:
    """The smallest overall level whose boundary at the last look a nominal ``p`` reaches
    (interpolated on log scales between the tabulated ``LEVELS``; 1 where no level up to 0.5
    reaches it: beyond that, spending functions stop being monotone, and no test is near it)."""
    if math.isnan(p):
        return math.nan
    table = _nominal_table(fractions, sides, spending, final)
    reached = table > 0  # the smallest levels' boundaries lie beyond any z a float can hold
    table, levels = table[reached], LEVELS[reached]
    if p <= table[0]:
        return float(levels[0])
    if p > table[-1]:
        return 1.0
    return float(np.exp(np.interp(math.log(p), np.log(table), np.log(levels))))


def power(design: Design, shift: float, level: float = ALPHA) -> float:
    """The probability that the difference test crosses a boundary by the last look when the true
    difference is ``shift`` standard errors of the difference at ``max`` networks per arm (normal
    theory, the planned looks)."""
    fractions = tuple(n / design.max for n in design.looks())
    critical = critical_values(level, fractions, 2, design.spending, True)
    by_look = iter(critical)
    return _propagate(fractions, 2, abs(shift), lambda k, leaving: next(by_look))[1]


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
    arm, reference = np.asarray(arm, dtype=float), np.asarray(reference, dtype=float)
    planned = design.looks()
    reached = [n for n in planned if n <= min(len(arm), len(reference))]
    if not reached:
        raise ValueError(f"the first look needs {planned[0]} networks per arm; got "
                         f"{len(arm)} and {len(reference)}")
    tested, p_diff, p_equivalent, ci_low, ci_high = [], math.inf, math.inf, math.nan, math.nan
    for n in reached:
        a, r = _trained(arm, n), _trained(reference, n)
        if min(len(a), len(r)) < MIN_SEEDS or (np.ptp(a) == 0 and np.ptp(r) == 0):
            continue
        if tested and tested[-1] == (len(a), len(r)):
            continue  # the round's networks all failed: no new information, no new look
        tested.append((len(a), len(r)))
        fractions, last = _fractions(tested, design), n == planned[-1]
        welch = stats.ttest_ind(a, r, equal_var=False)
        tost, _, _ = ttost_ind(a, r, -margin, margin, usevar="unequal")
        p_diff = min(p_diff, repeated_p(float(welch.pvalue), fractions, 2, design.spending, last))
        p_equivalent = min(p_equivalent, repeated_p(float(tost), fractions, 1, design.spending, last))
        ci = welch.confidence_interval(1 - nominal(ALPHA, fractions, 2, design.spending, last))
        ci_low, ci_high = float(ci.low), float(ci.high)
    if not tested:
        p_diff = p_equivalent = math.nan
    a, r = _trained(arm, reached[-1]), _trained(reference, reached[-1])
    # The decision is made now, on every look so far, from the networks trained so far.
    decision = Decision("continue", look=len(reached), n=len(a), n_reference=len(r),
                        diff=float(a.mean() - r.mean()) if len(a) and len(r) else math.nan,
                        ci_low=ci_low, ci_high=ci_high, p=p_diff, p_equivalent=p_equivalent,
                        last=reached[-1] == planned[-1])
    return replace(decision, verdict=_verdict(p_diff, p_equivalent, decision))


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
    for n in design.looks():
        if len(reference) < n:
            break
        current = {level: decide(values[:n], reference[:n], design, margin)
                   for level, values in arms.items()
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

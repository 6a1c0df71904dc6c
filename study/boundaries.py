"""Group-sequential boundaries: how a level α is spent over looks at information fractions t,
the critical value each look's z must pass, and the repeated p-value a nominal p gives.

**Spending functions**, named as the literature names them (Lan & DeMets 1983; gsDesign's
``sfLDOF`` and ``sfLDPocock``):

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

**Boundaries** come from the canonical joint distribution of the looks' z statistics (independent
increments; Jennison & Turnbull 2000, ch. 19), by numerical integration on a grid, look by look;
``tests/test_sequential.py`` checks them against scipy's multivariate normal and the published
tables.

Example:
    >>> thirds = (1 / 3, 2 / 3, 1.0)
    >>> [round(c, 2) for c in critical_values(0.05, thirds, 2, "lan-demets-obrien-fleming", True)]
    [3.71, 2.51, 1.99]
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import optimize, special, stats

from study.sections import Spending

GRID = 161  # points per look of the numerical integration (odd: Simpson's rule)
FLOOR = -8.0  # z below this (Φ(-8) ≈ 6e-16) is left out of the integration
LEVELS = np.geomspace(1e-7, 0.5, 141)  # overall levels at which repeated p-values are tabulated
SQRT_2PI = math.sqrt(2 * math.pi)


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


def propagate(fractions: Sequence[float], sides: int, drift: float,
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

    return tuple(propagate(fractions, sides, 0.0, boundary)[0])


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

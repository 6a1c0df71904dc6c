"""The sequential design by simulation, against the fixed design with the same power.

Whole comparisons are simulated as ``study run`` makes them (``study.sequential.replay`` after
each round), with one value per network drawn from a normal distribution of SD 1 (the seed-to-seed
SD): under identical arms, a true difference of one SD, and a true difference of the margin.
Printed per design: how often each verdict comes, the mean networks per arm, and, where a
difference is true, the networks per arm a fixed design needs for the same power (Welch's test at
α, exact by the noncentral t: ``study.stats.welch_power``) and the ratio of the two.

Usage: python bench/sequential.py [--runs 2000] [--margin 0.5]
"""

from __future__ import annotations

import argparse
import math
import time
from typing import get_args

import numpy as np

from study.sections import Design, Spending
from study.sequential import replay
from study.stats import ALPHA, welch_power

# Three designs (about 75 %, 90 % and 95 % power against one seed SD), each with every spending function.
DESIGNS = [Design(start=start, step=step, max=top, spending=spending)
           for start, step, top in ((3, 3, 15), (4, 2, 24), (3, 3, 30))
           for spending in get_args(Spending)]


def fixed_for(power: float, difference: float) -> float:
    """Networks per arm a fixed Welch test needs for ``power`` (interpolated between whole n)."""
    n, below = 2, welch_power(difference, 1.0, 1.0, 2, 2, ALPHA)
    while True:
        above = welch_power(difference, 1.0, 1.0, n + 1, n + 1, ALPHA)
        if above >= power:
            return n + (power - below) / (above - below) if above > below else n + 1.0
        n, below = n + 1, above


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--margin", type=float, default=0.5, help="the equivalence margin, in seed SDs")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{args.runs} simulated comparisons per row; networks' values N(difference, 1); margin "
          f"{args.margin:g} SD; α = {ALPHA}; better/worse/equivalent in % of runs; error bars ±"
          f"{100 * 1.96 * math.sqrt(ALPHA * (1 - ALPHA) / args.runs):.1f} points at 5 %")
    print(f"{'design':62} {'difference':>10} {'diff. found':>11} {'equivalent':>10} {'networks/arm':>12} "
          f"{'fixed, same power':>17} {'ratio':>6}")
    for design in DESIGNS:
        for difference in (0.0, 1.0, args.margin):
            start = time.perf_counter()
            found = equivalent = networks = 0
            for _ in range(args.runs):
                d = replay({"arm": rng.normal(difference, 1.0, design.max)}, rng.normal(0.0, 1.0, design.max),
                           design, args.margin)["arm"]
                found += d.verdict in ("better", "worse") if difference == 0 else d.verdict == "worse"
                equivalent += d.verdict == "equivalent"
                networks += d.n
            power, mean = found / args.runs, networks / args.runs
            fixed = fixed_for(power, difference) if difference else math.nan
            name = f"{{start: {design.start}, step: {design.step}, max: {design.max}}} {design.spending}"
            print(f"{name:62} {difference:>8.2f}SD {100 * power:>10.1f}% "
                  f"{100 * equivalent / args.runs:>9.1f}% {mean:>12.2f} {fixed:>17.2f} {mean / fixed:>6.2f}"
                  f"   ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()

"""``study plan``'s estimate against the wall time of the run it estimates.

Runs ``study run`` (which prints the plan first, from a few timed steps of each architecture) for
each setting and prints the estimated and the measured wall time and their ratio (goal: within
±30 %). The estimate covers what the study does after the plan; the plan's own timing is left out
of the measured time (it is reported apart).

Usage: python bench/plan.py [SPACE.yaml] [--set KEY=VALUE ...]
       (default: the README's small run, thesis.yaml at 3,000 images, 2 epochs, 3 seeds, and a
       larger one at 12,000 images and 3 epochs)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {
    "README small run": ["data.n_images=3000", "train.epochs=2", "search.seeds=3"],
    "larger": ["data.n_images=12000", "train.epochs=3", "search.seeds=3"],
}


def seconds(text: str) -> float:
    """``1h02m``, ``3m05s``, ``42s`` → seconds."""
    parts = {unit: int(n) for n, unit in re.findall(r"(\d+)([hms])", text)}
    return 3600 * parts.get("h", 0) + 60 * parts.get("m", 0) + parts.get("s", 0)


def measure(space: str, sets: list[str]) -> tuple[float, float, float]:
    """(estimated s, measured s after the plan, the plan's own s)."""
    with tempfile.TemporaryDirectory() as results:
        command = [str(Path(sys.executable).parent / "study"), "run", space, "--results", results,
                   *(arg for s in sets for arg in ("--set", s))]
        start = time.perf_counter()
        run = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        estimate, planned = None, None
        for line in run.stdout:
            if line.startswith("estimated time on"):
                estimate, planned = seconds(line.rsplit("=", 1)[1]), time.perf_counter()
        if run.wait() != 0 or estimate is None:
            raise SystemExit(f"study run failed or printed no estimate: {' '.join(command)}")
        return estimate, time.perf_counter() - planned, planned - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("space", nargs="?", default="searchspaces/thesis.yaml")
    parser.add_argument("--set", dest="sets", action="append", default=None, metavar="KEY=VALUE")
    args = parser.parse_args()
    settings = {"as given": args.sets} if args.sets else SETTINGS
    print(f"{'setting':<20}{'estimate':>10}{'actual':>10}{'ratio':>8}{'plan took':>11}")
    for label, sets in settings.items():
        estimate, actual, plan = measure(args.space, sets)
        print(f"{label:<20}{estimate:>9.0f}s{actual:>9.0f}s{estimate / actual:>8.2f}{plan:>10.0f}s",
              flush=True)


if __name__ == "__main__":
    main()

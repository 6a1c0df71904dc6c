"""``study plan``'s estimate and the progress line's estimates against the wall time they estimate.

Runs ``study run`` (which prints the plan first, from a few timed steps of each architecture) for
each setting and prints the estimated and the measured wall time and their ratio (goal: within
±30 %). The estimate covers what the study does after the plan; the plan's own timing is left out
of the measured time (it is reported apart). Then the progress lines' "~X left": each against the
time the run actually took after that line, over the lines printed once every architecture of the
run (its ``layers=`` value) has finished an epoch: the median and the extremes of the ratio.

Usage: python bench/plan.py [SPACE.yaml] [--set KEY=VALUE ...] [--results DIR]
       (default: the README's small run, thesis.yaml at 3,000 images, 2 epochs, 3 seeds, and a
       larger one at 12,000 images and 3 epochs)
"""

from __future__ import annotations

import argparse
import re
import statistics
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


PROGRESS = re.compile(r"^\[(\d+)/(\d+) (\S+?)(?:, ~(\S+) left)?\] .*?(layers=(?:\[[^\]]*\]|[^ :]+))")


def measure(space: str, sets: list[str], keep: Path | None = None) -> tuple[float, float, float, list[float]]:
    """(estimated s, measured s after the plan, the plan's own s, the progress lines' ratios of
    estimated to actual time left once every architecture has run an epoch)."""
    with tempfile.TemporaryDirectory() as temporary:
        results = str(keep or temporary)
        command = [str(Path(sys.executable).parent / "study"), "run", space, "--results", results,
                   *(arg for s in sets for arg in ("--set", s))]
        start = time.perf_counter()
        run = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        estimate, planned, lines = None, None, []
        for line in run.stdout:
            if line.startswith("estimated time on"):
                estimate, planned = seconds(line.rsplit("=", 1)[1]), time.perf_counter()
            if found := PROGRESS.match(line):
                left = found[4] and seconds(found[4])
                lines.append((seconds(found[3]), left, found[5], ": epoch " in line))
        if run.wait() != 0 or estimate is None:
            raise SystemExit(f"study run failed or printed no estimate: {' '.join(command)}")
    architectures, seen, ratios = {arch for _, _, arch, _ in lines}, set(), []
    end = lines[-1][0]
    for elapsed, left, arch, epoch in lines:
        if epoch:
            seen.add(arch)
        if seen == architectures and left and end > elapsed:
            ratios.append(left / (end - elapsed))
    return estimate, time.perf_counter() - planned, planned - start, ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("space", nargs="?", default="searchspaces/thesis.yaml")
    parser.add_argument("--set", dest="sets", action="append", default=None, metavar="KEY=VALUE")
    parser.add_argument("--results", type=Path, help="keep the runs' results there (default: deleted)")
    args = parser.parse_args()
    settings = {"as given": args.sets} if args.sets else SETTINGS
    print(f"{'setting':<20}{'estimate':>10}{'actual':>10}{'ratio':>8}{'plan took':>11}"
          f"{'progress lines':>16}{'within ±30 %':>14}{'their ratio: median':>21}{'min':>6}{'max':>6}")
    for label, sets in settings.items():
        estimate, actual, plan, ratios = measure(args.space, sets, args.results)
        within = sum(0.7 <= r <= 1.3 for r in ratios)
        shown = (f"{len(ratios):>16}{within:>14}{statistics.median(ratios):>21.2f}{min(ratios):>6.2f}"
                 f"{max(ratios):>6.2f}" if ratios else f"{0:>16}")
        print(f"{label:<20}{estimate:>9.0f}s{actual:>9.0f}s{estimate / actual:>8.2f}{plan:>10.0f}s{shown}",
              flush=True)


if __name__ == "__main__":
    main()

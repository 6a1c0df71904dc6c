"""Wall time of a whole study through ``study run`` (embedded Ray, Optuna, result files), with S
seeds per configuration against one seed, measured in the same run.

Usage: python bench/study_run.py [SPACE.yaml] [--seeds 10] [--set KEY=VALUE ...]
       e.g. on a GPU: python bench/study_run.py searchspaces/thesis.yaml --seeds 10
       on a CPU: python bench/study_run.py searchspaces/thesis.yaml \\
                 --set data.n_images=3000 --set train.epochs=2
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(space: str, sets: list[str], results: Path) -> float:
    command = [str(Path(sys.executable).parent / "study"), "run", space, "--results", str(results),
               *(arg for s in sets for arg in ("--set", s))]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("space", nargs="?", default="searchspaces/thesis.yaml")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = run(args.space, [*args.sets, "search.seeds=1"], Path(tmp) / "one")
        many = run(args.space, [*args.sets, f"search.seeds={args.seeds}"], Path(tmp) / "many")
    print(f"study run {args.space} {' '.join(args.sets)}")
    print(f"  1 seed per configuration:  {one:8.1f} s")
    print(f"  {args.seeds} seeds per configuration: {many:8.1f} s  ({many / one:.2f}× the time for "
          f"{args.seeds}× the networks: {args.seeds * one / many:.2f}× the networks per second)")


if __name__ == "__main__":
    main()

"""CPU time of a process's imports with ``study.startup.freeze_imports`` against without, in the
same run: a trial's worker (``study.tune.trainable``) and a ``study run`` driver (the CLI, the
plan and Ray Tune's runner), each in a fresh interpreter, alternating, and each process's exit
(its last full collection) included.

Usage: python bench/startup.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys

IMPORTS = {"a trial's worker": "import study.tune.trainable",
           "a study run's driver": "import study.cli, study.plan, study.tune.runner"}
FROZEN = "from study.startup import freeze_imports; freeze_imports(); "


def cpu_s(code: str) -> float:
    """User and system CPU seconds of ``python -c code``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for what, code in IMPORTS.items():
        plain, frozen = [], []
        for _ in range(args.rounds):
            plain.append(cpu_s(code))
            frozen.append(cpu_s(FROZEN + code))
        p, f = statistics.median(plain), statistics.median(frozen)
        print(f"{what}: {p:.2f} s of CPU plain, {f:.2f} s with freeze_imports ({1 - f / p:.0%} less; "
              f"medians of {args.rounds}, ranges {min(plain):.2f}–{max(plain):.2f} and "
              f"{min(frozen):.2f}–{max(frozen):.2f})")


if __name__ == "__main__":
    main()

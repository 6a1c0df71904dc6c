"""How busy a study keeps the machine's cores: the trials' CPU-seconds over wall time × cores.

Runs ``study run`` on a study (or, with ``--pid``, watches a driver already running until it
exits, or for ``--seconds``) and samples ``/proc`` twice a second for every process below the
driver that runs a trial (Ray names it after the function trainable), keeping each one's last
user + system CPU time. It
prints the wall time, the trials' CPU-seconds and their share of wall × cores; with ``--compare``
it runs the same study again with ``resources.reallocate=false``, the baseline of the same run.

Usage: python bench/cores.py [SPACE.yaml] [--set KEY=VALUE ...] [--compare]
       e.g. the thesis at reduced size: python bench/cores.py searchspaces/thesis.yaml \\
            --set data.n_images=6000 --set train.epochs=4 --set search.seeds=3 --compare
       a running study for ten minutes: python bench/cores.py --pid DRIVER_PID --seconds 600
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _tree(root: int) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            children.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(
                int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cpu_s(pid: int) -> float | None:
    """A trial worker's user + system seconds so far; None for any other process."""
    try:
        if b"ImplicitFunc" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def watch(pid: int, alive) -> tuple[float, float]:
    """Wall seconds until ``alive()`` is false, and the trial workers' CPU-seconds meanwhile (a
    worker's seconds from before the watch began do not count)."""
    start, first, seen = time.perf_counter(), {}, {}
    while alive():
        for child in _tree(pid):
            used = _cpu_s(child)
            if used is not None:
                first.setdefault(child, used if time.perf_counter() - start < 1 else 0.0)
                seen[child] = used
        time.sleep(0.5)
    return time.perf_counter() - start, sum(seen[c] - first[c] for c in seen)


def run(space: str, sets: list[str]) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as results:
        command = [str(Path(sys.executable).parent / "study"), "run", space, "--results", results,
                   *(arg for s in sets for arg in ("--set", s))]
        driver = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        wall, cpu = watch(driver.pid, lambda: driver.poll() is None)
        if driver.returncode:
            raise SystemExit(f"study run failed (exit {driver.returncode})")
        return wall, cpu


def shown(label: str, wall: float, cpu: float, cores: int) -> str:
    return (f"{label}: wall {wall:,.0f} s, trials' CPU {cpu:,.0f} s, use {cpu / (wall * cores):.0%} "
            f"of {cores} cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("space", nargs="?", default="searchspaces/thesis.yaml")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--compare", action="store_true", help="also without reallocation")
    parser.add_argument("--pid", type=int, help="watch this running driver instead")
    parser.add_argument("--seconds", type=float, help="with --pid: watch this long at most")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    if args.pid:
        until = time.perf_counter() + (args.seconds or float("inf"))

        def alive() -> bool:
            return Path(f"/proc/{args.pid}").exists() and time.perf_counter() < until

        print(shown(f"driver {args.pid}", *watch(args.pid, alive), cores))
        return
    print(shown("reallocate auto", *run(args.space, args.sets), cores), flush=True)
    if args.compare:
        print(shown("reallocate false", *run(args.space, [*args.sets, "resources.reallocate=false"]), cores))


if __name__ == "__main__":
    main()

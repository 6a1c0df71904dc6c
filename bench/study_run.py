"""Wall time of a whole study through ``study run`` (embedded Ray, Optuna, result files), with S
seeds per configuration against one seed, measured in the same run; with ``--compile``, the
compiled training step against the eager one, both at S seeds.

Usage: python bench/study_run.py [SPACE.yaml] [--seeds 10] [--compile] [--set KEY=VALUE ...]
       e.g. on a GPU: python bench/study_run.py searchspaces/thesis.yaml --seeds 10
       on a CPU: python bench/study_run.py searchspaces/thesis.yaml \\
                 --set data.n_images=3000 --set train.epochs=2
       the full data, one epoch, eager against compiled:
                 python bench/study_run.py --compile --seeds 3 --set train.epochs=1
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


def epochs(results: Path) -> str:
    """Each trial's seconds per epoch (all its seeds together), by its configuration."""
    import pandas as pd

    (study_dir,) = [p for p in results.iterdir() if (p / "trials.parquet").exists()]
    trials = pd.read_parquet(study_dir / "trials.parquet").drop_duplicates("trial_id")
    seconds = pd.read_parquet(study_dir / "epochs.parquet").drop_duplicates(["trial_id", "epoch"])
    per_trial = seconds.groupby("trial_id")["seconds"].apply(lambda s: ", ".join(f"{v:.0f}" for v in s))
    keys = [c for c in trials if c.startswith(("model.", "train.", "data."))]
    return "; ".join(f"{' '.join(str(t[k]) for k in keys)}: {per_trial[t['trial_id']]} s"
                     for _, t in trials.iterrows())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("space", nargs="?", default="searchspaces/thesis.yaml")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="compiled against eager, at --seeds")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    if args.compile:
        seeds = f"search.seeds={args.seeds}"
        with tempfile.TemporaryDirectory() as tmp:
            eager = run(args.space, [*args.sets, seeds, "train.compile=false"], Path(tmp) / "eager")
            compiled = run(args.space, [*args.sets, seeds, "train.compile=true"], Path(tmp) / "compiled")
            print(f"study run {args.space} {' '.join(args.sets)} {seeds}")
            print(f"  eager:    {eager:8.1f} s; epochs {epochs(Path(tmp) / 'eager')}")
            print(f"  compiled: {compiled:8.1f} s  ({eager / compiled:.2f}× faster, warm-up included); "
                  f"epochs {epochs(Path(tmp) / 'compiled')}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        one = run(args.space, [*args.sets, "search.seeds=1"], Path(tmp) / "one")
        many = run(args.space, [*args.sets, f"search.seeds={args.seeds}"], Path(tmp) / "many")
    print(f"study run {args.space} {' '.join(args.sets)}")
    print(f"  1 seed per configuration:  {one:8.1f} s")
    print(f"  {args.seeds} seeds per configuration: {many:8.1f} s  ({many / one:.2f}× the time for "
          f"{args.seeds}× the networks: {args.seeds * one / many:.2f}× the networks per second)")


if __name__ == "__main__":
    main()

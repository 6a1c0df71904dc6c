"""Throughput of a trial that trains S seeds at once against S one-seed trials.

Runs ``study.train.fit`` once with seeds 0..S−1 and then S times with one seed each, on the same
(cached) dataset, and prints both wall times and the throughput ratio (networks per second of
the stacked trial over that of the one-seed trials). Each fit includes what a trial pays besides
its steps: building the networks, evaluating validation data every epoch and the test split at
the end.

Usage: python bench/trial.py [SPACE.yaml] [--seeds 5] [--set KEY=VALUE ...]
       (default: searchspaces/smoke.yaml at 3,000 images and 2 epochs, LeNet-5 and AttConv)
"""

from __future__ import annotations

import argparse
import time

import torch

from study import loading, resolution
from study.data import build
from study.train import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("space", nargs="?", default="searchspaces/smoke.yaml")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--set", dest="sets", action="append",
                        default=["data.n_images=3000", "train.epochs=2"])
    args = parser.parse_args()
    study = loading.load(args.space, args.sets)
    build(study.data)  # generate once; every fit below loads the same cached dataset
    seeds = list(range(args.seeds))
    print(f"{args.space} with {' '.join(args.sets)}; threads {torch.get_num_threads()}")
    print(f"{'model':<12}{'1 trial × S seeds':>19}{'S trials × 1 seed':>19}{'throughput ratio':>18}")
    for layers in ("[]", "[0]"):
        trial = resolution.resolve(study, {"model.attention.layers": layers}) \
            if "model.attention.layers" in study.space else study
        start = time.perf_counter()
        fit(trial, seeds)
        stacked = time.perf_counter() - start
        start = time.perf_counter()
        for seed in seeds:
            fit(trial, [seed])
        separate = time.perf_counter() - start
        print(f"{layers:<12}{stacked:>17.1f} s{separate:>17.1f} s{separate / stacked:>17.2f}×", flush=True)


if __name__ == "__main__":
    main()

"""How the eager training step scales with threads: LeNet-5 against AttConv at conv1.

For each model and stacked seed count S, prints the milliseconds of one
``study.train.training_step`` per seed with 1, 2, … threads (up to every core here, or the
counts given) and each count's speed-up over one thread. A trial given several CPUs
(``resources.cpu``) trains with that many threads; AttConv's CPU kernel runs its images on
torch's own threads, so it should scale as LeNet-5's convolutions do.

The images are the thesis study's (``searchspaces/thesis.yaml``'s data settings), since the
kernel leaves windows whose pixels are all 0 out; ``--images random`` gives every pixel a random
value, so that no window is left out (the figures before the kernel did so).

Usage: python bench/threads.py [--seeds 1 3] [--threads 1 2] [--steps 10] [--rounds 2]
                               [--images thesis|random]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from study.data.dataset import sample
from study.loading import load
from study.models import LeNet, Stacked
from study.plan import timed_ms
from study.sections import ModelConfig, TrainConfig
from study.train import as_images, make_optimizer, training_step

ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = 1024
MODELS = {"LeNet-5": {}, "AttConv@conv1 T=4": {"layers": [0], "iterations": 4},
          "AttConv@conv1 T=8": {"layers": [0], "iterations": 8}}


def data(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """N_IMAGES images and targets: the thesis study's, or random pixels and digits."""
    if kind == "random":
        torch.manual_seed(0)
        return (torch.randint(0, 256, (N_IMAGES, 1, 48, 48), dtype=torch.uint8),
                (torch.rand(N_IMAGES, 10) < 0.3).float())
    made = sample(load(ROOT / "searchspaces" / "thesis.yaml").data, N_IMAGES)
    return as_images(made.images[:N_IMAGES]), torch.from_numpy(made.targets[:N_IMAGES]).float()


def step_ms(attention: dict, seeds: int, threads: int, steps: int, images: torch.Tensor,
            targets: torch.Tensor, batch: int = 32) -> float:
    """One eager training step per seed, in ms, with ``threads`` threads."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = Stacked([LeNet(ModelConfig(attention=attention), 48) for _ in range(seeds)])
    step = training_step(net, make_optimizer(net.parameters(), TrainConfig()), images, targets)
    generator = torch.Generator().manual_seed(0)
    batches = (torch.randint(N_IMAGES, (seeds, batch), generator=generator) for _ in iter(int, 1))
    return timed_ms(step, batches, torch.device("cpu"), steps, warmup=3) / seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--threads", type=int, nargs="+", default=list(range(1, (os.cpu_count() or 1) + 1)))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="each measurement this many times, alternating")
    parser.add_argument("--models", nargs="+", default=list(MODELS)[:2])
    parser.add_argument("--images", choices=["thesis", "random"], default="thesis")
    args = parser.parse_args()
    images, targets = data(args.images)
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, {args.images} images; "
          "ms per step per seed (speed-up over 1 thread)")
    for label in args.models:
        for seeds in args.seeds:
            for r in range(args.rounds):
                ms = [step_ms(MODELS[label], seeds, n, args.steps, images, targets) for n in args.threads]
                shown = "  ".join(f"{n} thr {m:7.2f} ({ms[0] / m:.2f}×)"
                                  for n, m in zip(args.threads, ms, strict=True))
                print(f"{label:<20} S={seeds:<3} round {r + 1}: {shown}", flush=True)


if __name__ == "__main__":
    main()

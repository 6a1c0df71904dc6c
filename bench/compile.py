"""The training step through ``torch.compile`` (inductor) against the eager step, and its warm-up.

For LeNet-5 and AttConv at conv1 (T = 1, 4, 8) and S = 1, 3, 10 stacked seeds, prints the
milliseconds of one ``study.train.training_step`` per seed, eager and compiled (as ``fit`` does
with ``train.compile``: ``study.compiled.ShapeSpecialised``), the compiled speed-up, and each
model's step per seed as a multiple of LeNet-5's eager step per seed at the same S (the goal for
AttConv T = 4: at most 3×; its forward FLOPs are 2.4× LeNet-5's). The warm-up is the first
compiled call: cold (an empty inductor cache) and from the cache (after ``torch._dynamo.reset``,
so only the on-disk cache is left). One thread by default, as a trial with ``resources.cpu: 1``.

Usage: python bench/compile.py [--device cuda] [--threads 1] [--seeds 1 3 10] [--steps 10]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from study.models import LeNet, Stacked, forward_flops
from study.plan import timed_ms
from study.sections import ModelConfig, TrainConfig
from study.train import make_optimizer, pick_device, training_step

N_IMAGES = 4096
MODELS = [("LeNet-5", {}), *[(f"AttConv@conv1 T={t}", {"layers": [0], "iterations": t}) for t in (1, 4, 8)]]


def step_for(attention: dict, seeds: int, device: torch.device, canvas: int, batch: int):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (N_IMAGES, 1, canvas, canvas), dtype=torch.uint8, device=device)
    targets = (torch.rand(N_IMAGES, 10, device=device) < 0.3).float()
    net = Stacked([LeNet(ModelConfig(attention=attention), canvas).to(device) for _ in range(seeds)])
    optimizer = make_optimizer(net.parameters(), TrainConfig(), capturable=device.type == "cuda")
    step = training_step(net, optimizer, images, targets)
    generator = torch.Generator(device=device).manual_seed(0)

    def batches():
        while True:
            yield torch.randint(N_IMAGES, (seeds, batch), device=device, generator=generator)

    return step, batches()


def first_call_s(fn, batches, device: torch.device) -> float:
    start = time.perf_counter()
    fn(next(batches))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--canvas", type=int, default=48)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 3, 10])
    parser.add_argument("--models", nargs="+", default=[label for label, _ in MODELS])
    args = parser.parse_args()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")  # cold at first
    from study.compiled import ShapeSpecialised, start_compiling

    torch.set_num_threads(args.threads)
    start_compiling(args.threads)
    device = pick_device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), {args.threads} thread(s), batch {args.batch} per seed, "
          f"{args.steps} timed steps, torch {torch.__version__}")
    print(f"{'model':<20}{'MFLOP':>7}{'S':>4}{'eager/seed':>12}{'compiled/seed':>15}{'speed-up':>10}"
          f"{'eager×LeNet':>13}{'comp×LeNet':>12}{'cold s':>8}{'cached s':>10}")
    lenet: dict[int, float] = {}
    for label, attention in MODELS:
        if label not in args.models:
            continue
        mflop = forward_flops(LeNet(ModelConfig(attention=attention), args.canvas), args.canvas) / 1e6
        for seeds in args.seeds:
            step, batches = step_for(attention, seeds, device, args.canvas, args.batch)
            eager = timed_ms(step, batches, device, args.steps, warmup=3) / seeds
            fast = ShapeSpecialised(step)
            cold = first_call_s(fast, batches, device)
            compiled = timed_ms(fast, batches, device, args.steps, warmup=3) / seeds
            torch._dynamo.reset()  # only the on-disk cache is left
            cached = first_call_s(ShapeSpecialised(step), batches, device)
            lenet.setdefault(seeds, eager)
            base = lenet[seeds]
            print(f"{label:<20}{mflop:>7.2f}{seeds:>4}{eager:>12.2f}{compiled:>15.2f}"
                  f"{eager / compiled:>9.2f}×{eager / base:>12.2f}×{compiled / base:>11.2f}×"
                  f"{cold:>8.1f}{cached:>10.1f}", flush=True)


if __name__ == "__main__":
    main()

"""Training-step time of the LeNet family: AttConv at conv1 with T iterations vs plain LeNet-5.

Prints milliseconds per step (forward, backward, Adam) and the ratio to the plain network measured
in the same run. Usage: python bench/train_step.py [--device cuda] [--batch 32] [--steps 50]
"""

import argparse
import time

import torch
import torch.nn.functional as F

from study.config import ModelConfig
from study.models import LeNet, forward_flops
from study.train import pick_device


def step_ms(model, x, y, steps: int) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)

    def step():
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if x.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--canvas", type=int, default=48)
    args = parser.parse_args()
    device = pick_device(args.device)
    torch.manual_seed(0)
    x = torch.rand(args.batch, 1, args.canvas, args.canvas, device=device)
    y = (torch.rand(args.batch, 10, device=device) < 0.3).float()
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), "
          f"threads {torch.get_num_threads()}, batch {args.batch}, canvas {args.canvas}")
    print(f"{'model':<22}{'ms/step':>10}{'ratio':>8}{'MFLOP/img':>11}")
    base = None
    for label, attention in [("LeNet-5", {}), *[(f"AttConv@conv1 T={t}", {"layers": [0], "iterations": t})
                                                for t in (1, 2, 4, 8)]]:
        model = LeNet(ModelConfig(attention=attention), args.canvas).to(device)
        ms = step_ms(model, x, y, args.steps)
        base = base or ms
        mflop = forward_flops(model, args.canvas) / 1e6
        print(f"{label:<22}{ms:>10.2f}{ms / base:>8.2f}{mflop:>11.2f}")


if __name__ == "__main__":
    main()

"""Training-step time per seed: S seeds stacked in one step against one network at a time.

For LeNet-5 and AttConv at conv1 (T = 1, 4, 8) and S = 1, 5, 10 seeds, prints the milliseconds
of one step of ``study.train.training_step`` (S seeds, each on its own batch of ``--batch``
images gathered by index from uint8 data resident on the device; replayed as a CUDA graph on a
GPU, as ``fit`` does) and per seed, against two baselines measured in the same run for one
network: the previous single-seed eager loop (the module called directly, batches by index) and
a textbook ``DataLoader`` loop (float tensors, shuffling loader, a host-to-device copy per batch).
The ratios say how many times faster a seed trains in the stack than in each baseline.

Usage: python bench/train_step.py [--device cuda] [--batch 32] [--steps 20] [--seeds 1 5 10]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from study.cuda_graph import Replayed
from study.models import LeNet, Stacked, forward_flops
from study.plan import timed_ms
from study.sections import ModelConfig
from study.train import as_inputs, pick_device, training_step

N_IMAGES = 4096  # resident training images the batches are drawn from
MODELS = [("LeNet-5", {}), *[(f"AttConv@conv1 T={t}", {"layers": [0], "iterations": t}) for t in (1, 4, 8)]]


def index_batches(seeds: int, batch: int, device: torch.device):
    generator = torch.Generator(device=device).manual_seed(0)
    while True:
        yield torch.randint(N_IMAGES, (seeds, batch), device=device, generator=generator)


def stacked_ms(attention: dict, seeds: int, data, args, device: torch.device) -> float:
    images, targets = data
    net = Stacked([LeNet(ModelConfig(attention=attention), args.canvas).to(device) for _ in range(seeds)])
    graphed = device.type == "cuda"
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-4, capturable=graphed)
    step = training_step(net, optimizer, images, targets)
    return timed_ms(Replayed(step) if graphed else step, index_batches(seeds, args.batch, device),
                    device, args.steps, warmup=4)


def eager_ms(attention: dict, data, args, device: torch.device) -> float:
    """The previous loop: one network called directly on batches gathered by index."""
    images, targets = data
    model = LeNet(ModelConfig(attention=attention), args.canvas).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)

    def step(idx: torch.Tensor) -> None:
        loss = F.binary_cross_entropy_with_logits(model(as_inputs(images[idx[0]])), targets[idx[0]])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return timed_ms(step, index_batches(1, args.batch, device), device, args.steps, warmup=4)


def dataloader_ms(attention: dict, data, args, device: torch.device) -> float:
    """A textbook loop: float images on the host, a shuffling DataLoader, a copy per batch."""
    images, targets = data
    dataset = TensorDataset(as_inputs(images.cpu()), targets.cpu())
    model = LeNet(ModelConfig(attention=attention), args.canvas).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)

    def batches():
        while True:
            yield from DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=True)

    def step(batch) -> None:
        x, y = (t.to(device, non_blocking=True) for t in batch)
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return timed_ms(step, batches(), device, args.steps, warmup=4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--canvas", type=int, default=48)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 5, 10])
    args = parser.parse_args()
    device = pick_device(args.device)
    torch.manual_seed(0)
    shape = (N_IMAGES, 1, args.canvas, args.canvas)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
    targets = (torch.rand(N_IMAGES, 10, device=device) < 0.3).float()
    data = images, targets
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    graphs = "on" if device.type == "cuda" else "off"
    print(f"device {device} ({name}), threads {torch.get_num_threads()}, batch {args.batch} per seed, "
          f"canvas {args.canvas}, {args.steps} timed steps; CUDA graphs {graphs}")
    print(f"{'model':<20}{'MFLOP':>7}{'eager 1':>9}{'loader 1':>10}{'S':>4}{'ms/step':>10}"
          f"{'ms/seed':>9}{'vs eager':>10}{'vs loader':>10}")
    for label, attention in MODELS:
        mflop = forward_flops(LeNet(ModelConfig(attention=attention), args.canvas), args.canvas) / 1e6
        eager, loader = eager_ms(attention, data, args, device), dataloader_ms(attention, data, args, device)
        for seeds in args.seeds:
            ms = stacked_ms(attention, seeds, data, args, device)
            per_seed = ms / seeds
            print(f"{label:<20}{mflop:>7.2f}{eager:>9.2f}{loader:>10.2f}{seeds:>4}{ms:>10.2f}"
                  f"{per_seed:>9.2f}{eager / per_seed:>9.2f}×{loader / per_seed:>9.2f}×", flush=True)


if __name__ == "__main__":
    main()

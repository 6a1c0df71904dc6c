"""AttConv's forward and backward against the textbook formulation of the same equations.

The textbook layer is the design's equations written with PyTorch's own operators: ``F.unfold``
for the windows, ``F.fold`` then ``F.unfold`` for the per-pixel normalisation, products in the
equations' orientation (y as B×L×O) and an unshifted exp. ``study.models.AttConv`` computes the
same numbers (the script checks the outputs agree) with its own window operators, products that
keep the windows last and a stabilised exp (``AttConv.steps``: the tensor operations, as on a
GPU), and on a CPU in float32 with its C kernel (``study.models.attconv_cpu``). Prints
milliseconds per forward and backward at conv1 of the thesis network (1 → 6 channels, 5×5,
48×48) for T = 1, 4, 8 and each batch, and the ratios textbook ÷ AttConv and tensor operations ÷
AttConv (1× where AttConv is the tensor operations). A batch of 320 stands for 10 stacked seeds
of 32. The images are the thesis study's, as the network sees them (pixels in [0, 1], most of
conv1's windows empty, which the kernel leaves out); ``--images random`` gives every pixel a
random value in [0, 1], so that no window is left out (the figures before 2026-12-06 did so).

Usage: python bench/attconv.py [--device cuda] [--batch 32 320] [--steps 10]
                               [--images thesis|random]
"""

from __future__ import annotations

import argparse
import math
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from study.data.dataset import sample
from study.loading import load
from study.models import AttConv
from study.train import as_images, as_inputs, pick_device

ROOT = Path(__file__).resolve().parents[1]


def textbook(layer: AttConv, x: torch.Tensor) -> torch.Tensor:
    """The design's equations, operator for operator."""
    k, s, (H, W) = layer.kernel_size, layer.stride, x.shape[-2:]
    B, C = x.shape[:2]

    def normalise(shares: torch.Tensor) -> torch.Tensor:
        sums = F.fold(shares, (H, W), k, stride=s)
        return shares / F.unfold(sums, k, stride=s)

    X = F.unfold(x, k, stride=s)  # B×(C·k²)×L
    L = X.shape[-1]
    a = normalise(x.new_ones(B, k * k, L))
    for t in range(layer.iterations):
        attended = (X.view(B, C, k * k, L) * a.unsqueeze(1)).view(B, C * k * k, L)
        y = attended.transpose(1, 2) @ layer.weight_bu + layer.bias_bu  # B×L×O
        if t == layer.iterations - 1:
            return y.transpose(1, 2).reshape(B, -1, (H - k) // s + 1, (W - k) // s + 1)
        x_hat = (y @ layer.weight_td.T).transpose(1, 2)
        e = (x_hat.view(B, C, k * k, L) * X.view(B, C, k * k, L)).sum(1) / math.sqrt(C)
        a = normalise(torch.exp(e))


def tensor_operations(layer: AttConv, x: torch.Tensor) -> torch.Tensor:
    *_, (y, _, _) = layer.steps(x)
    return y


def ms_per_pass(forward, x: torch.Tensor, steps: int, device: torch.device) -> float:
    def one() -> None:
        forward(x).sum().backward()

    for _ in range(3):
        one()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        one()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 320])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--images", choices=["thesis", "random"], default="thesis")
    args = parser.parse_args()
    device = pick_device(args.device)
    made = sample(load(ROOT / "searchspaces" / "thesis.yaml").data, max(args.batch))
    thesis = as_inputs(as_images(made.images[:max(args.batch)], device))
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), threads {torch.get_num_threads()}, AttConv 1→6 channels, 5×5, "
          f"48×48, {args.images} images; ms per forward + backward, {args.steps} timed passes")
    print(f"{'T':>3}{'batch':>7}{'textbook':>10}{'tensor ops':>12}{'AttConv':>9}{'textbook÷':>11}"
          f"{'tensor ops÷':>13}{'max |diff|':>12}")
    for iterations in (1, 4, 8):
        torch.manual_seed(0)
        layer = AttConv(1, 6, 5, iterations=iterations).to(device)
        for batch in args.batch:
            x = thesis[:batch] if args.images == "thesis" else torch.rand(batch, 1, 48, 48, device=device)
            with torch.no_grad():
                diff = (textbook(layer, x) - layer(x)).abs().max().item()
            book = ms_per_pass(partial(textbook, layer), x, args.steps, device)
            ops = ms_per_pass(partial(tensor_operations, layer), x, args.steps, device)
            ours = ms_per_pass(layer, x, args.steps, device)
            print(f"{iterations:>3}{batch:>7}{book:>10.2f}{ops:>12.2f}{ours:>9.2f}{book / ours:>10.2f}×"
                  f"{ops / ours:>12.2f}×{diff:>12.2e}", flush=True)


if __name__ == "__main__":
    main()

"""The LeNet family: conv stages of (conv or AttConv) → batch norm → ReLU → 2×2 max-pool, then
fully connected layers, ending in 10 logits (trained with binary cross-entropy, one per class).

LeNet-5 is ``channels=[6, 16]``, ``hidden=[120, 84]``; any conv stage may be an AttConv.

Example:
    >>> from study.sections import ModelConfig
    >>> net = LeNet(ModelConfig(attention={"layers": [0], "iterations": 4}), canvas=48)
    >>> net(torch.rand(2, 1, 48, 48)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from study.models.attconv import AttConv
from study.sections import ModelConfig, feature_side
from study.signals import held

N_CLASSES = 10


class LeNet(nn.Module):
    """The network ``config`` describes, its first linear layer sized for ``canvas``."""

    def __init__(self, config: ModelConfig, canvas: int, in_channels: int = 1) -> None:
        super().__init__()
        if config.baseline is not None:
            raise ValueError("a matched baseline is built with study.models.build_network, which widens it")
        stages = []
        c_in = in_channels
        attention = config.attention
        for position, c_out in enumerate(config.channels):
            if position in attention.layers:
                conv = AttConv(c_in, c_out, config.kernel, iterations=attention.iterations_at(position),
                               relu_inside=attention.relu_inside)
            else:
                conv = nn.Conv2d(c_in, c_out, config.kernel)
            norm = nn.BatchNorm2d(c_out) if config.batchnorm else nn.Identity()
            stages.append(nn.Sequential(conv, norm, nn.ReLU(), nn.MaxPool2d(2)))
            c_in = c_out
        self.features = nn.Sequential(*stages)

        widths = [c_in * feature_side(canvas, config) ** 2, *config.hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(w_in, w_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], N_CLASSES))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: nn.Module, canvas: int, in_channels: int = 1) -> int:
    """Forward FLOPs for one image, counted by ``torch.utils.flop_counter``.

    Counts matrix products and convolutions (what dominates both families); element-wise work
    such as AttConv's normalisation is not counted.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    # held: a Ctrl-C raised in the counter's callbacks could be lost, or abort the process
    with held(), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, in_channels, canvas, canvas, device=device))
    model.train(was_training)
    return counter.get_total_flops()

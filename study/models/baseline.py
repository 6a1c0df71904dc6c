"""Matched baselines: a feed-forward network as large as an attentional one.

An AttConv layer adds few parameters but several convolutions' worth of compute, so "attention
helps" is only convincing against a baseline given the same budget. ``matched`` widens the
feed-forward network of a model config until its parameter count or forward FLOPs match those
of the same network with the attention of ``baseline.like``, deterministically:

1. every conv channel count and hidden width is multiplied by one factor ``w`` and rounded
   (at least 1); ``w`` is found by bisection as the factor whose size is closest to the target;
2. the first hidden width (the last conv's channels when there is no hidden layer), on which the
   size depends linearly, is then set to the integer that brings the size closest to the target.
   It is the width with the most parameters and FLOPs per unit, so it closes the gap left by
   rounding with the smallest change to the network's shape.

The result must lie within ``baseline.tolerance`` of the target, or ``matched`` raises.

Example:
    >>> from study.sections import ModelConfig
    >>> like = {"layers": [0], "iterations": 4}
    >>> m = matched(ModelConfig(baseline={"match": "flops", "like": like}), canvas=48)
    >>> abs(m.ratio - 1) <= 0.02
    True
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from study.models.lenet import LeNet, forward_flops, n_params
from study.sections import ModelConfig

_BISECTIONS = 40


@dataclass(frozen=True)
class Match:
    config: ModelConfig  # the widened feed-forward network (no attention, no baseline)
    match: str  # "params" or "flops"
    target: int  # size of the attentional network matched
    achieved: int  # size of ``config``

    @property
    def ratio(self) -> float:
        return self.achieved / self.target


def size(config: ModelConfig, match: str, canvas: int, in_channels: int = 1) -> int:
    """Parameters or forward FLOPs (one image) of the network ``config`` describes."""
    net = LeNet(config, canvas, in_channels)
    return n_params(net) if match == "params" else forward_flops(net, canvas, in_channels)


def matched(config: ModelConfig, canvas: int, in_channels: int = 1) -> Match:
    """The feed-forward network matching ``config.baseline`` (see the module docstring)."""
    return _matched(config.model_dump_json(), canvas, in_channels)


@functools.cache
def _matched(config_json: str, canvas: int, in_channels: int) -> Match:
    config = ModelConfig.model_validate_json(config_json)
    spec = config.baseline
    if spec is None:
        raise ValueError("model.baseline is not set: there is nothing to match")
    plain = config.model_copy(update={"baseline": None})
    target = size(plain.model_copy(update={"attention": spec.like}), spec.match, canvas, in_channels)

    def widened(w: float) -> ModelConfig:
        return plain.model_copy(update={"channels": [max(1, round(c * w)) for c in plain.channels],
                                        "hidden": [max(1, round(h * w)) for h in plain.hidden]})

    def measure(candidate: ModelConfig) -> int:
        return size(candidate, spec.match, canvas, in_channels)

    low, high = 1 / 64, 64.0
    for _ in range(_BISECTIONS):  # size grows with w: keep measure(low) < target <= measure(high)
        mid = (low * high) ** 0.5
        low, high = (mid, high) if measure(widened(mid)) < target else (low, mid)
    best = min((widened(low), widened(high)), key=lambda c: abs(measure(c) - target))
    best = _fill(best, target, measure)
    achieved = measure(best)
    if abs(achieved / target - 1) > spec.tolerance:
        raise ValueError(
            f"no widening of channels {plain.channels} and hidden {plain.hidden} comes within "
            f"{spec.tolerance:.3g} (relative) of the {spec.match} of attention {spec.like.model_dump()} "
            f"({target:,}; closest {achieved:,}); raise model.baseline.tolerance"
        )
    return Match(best, spec.match, target, achieved)


def _fill(config: ModelConfig, target: int, measure) -> ModelConfig:
    """Set the width that step 2 adjusts (the size is linear in it) as close to the target as it goes."""
    field, index = ("hidden", 0) if config.hidden else ("channels", len(config.channels) - 1)
    widths = list(getattr(config, field))

    def with_width(width: int) -> ModelConfig:
        widths[index] = max(1, width)
        return config.model_copy(update={field: list(widths)})

    start, now = widths[index], measure(config)
    slope = measure(with_width(start + 1)) - now
    return with_width(start + round((target - now) / slope))

"""AttConv, the LeNet family built from it, matched feed-forward baselines, and several seeds'
networks stacked into one."""

from study.models.attconv import AttConv
from study.models.baseline import Match, matched
from study.models.lenet import LeNet, forward_flops, n_params
from study.models.stacked import Stacked
from study.sections import ModelConfig


def build_network(config: ModelConfig, canvas: int, in_channels: int = 1) -> LeNet:
    """The network ``config`` describes; a matched baseline is widened first (``matched``)."""
    if config.baseline is not None:
        config = matched(config, canvas, in_channels).config
    return LeNet(config, canvas, in_channels)


__all__ = ["AttConv", "LeNet", "Match", "Stacked", "build_network", "forward_flops", "matched", "n_params"]

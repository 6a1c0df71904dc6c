"""AttConv and the LeNet family built from it."""

from study.models.attconv import AttConv
from study.models.lenet import LeNet, forward_flops, n_params

__all__ = ["AttConv", "LeNet", "forward_flops", "n_params"]

"""Several seeds' networks of one architecture, trained as one: the seed is a batch dimension.

``Stacked`` holds the parameters and buffers of S networks stacked along a leading seed axis
(``torch.func.stack_module_state``) and runs them with ``torch.func.vmap`` over
``functional_call``: convolutions become grouped convolutions and linear layers batched matrix
products, while each seed keeps its own batch-norm statistics and running buffers. Adam is
element-wise, so one Adam over the stacked tensors is S independent Adams. The networks
themselves stay ordinary single-network modules; only this class knows about seeds.

Example:
    >>> from study.sections import ModelConfig
    >>> from study.models import LeNet
    >>> stack = Stacked([LeNet(ModelConfig(), canvas=48) for _ in range(3)])
    >>> stack(torch.rand(3, 2, 1, 48, 48)).shape  # a batch of its own for every seed
    torch.Size([3, 2, 10])
    >>> stack(torch.rand(2, 1, 48, 48), shared=True).shape  # the same images for every seed
    torch.Size([3, 2, 10])
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap


class Stacked:
    """S networks of one architecture with their parameters and buffers stacked seed-first."""

    def __init__(self, networks: list[nn.Module]) -> None:
        self.params, self.buffers = stack_module_state(networks)
        # The architecture without storage: functional_call runs it on the stacked tensors.
        self.template = copy.deepcopy(networks[0]).to("meta")
        self.seeds = len(networks)

    def __call__(self, x: Tensor, shared: bool = False) -> Tensor:
        """Logits S×B×10 for inputs S×B×C×H×W, or B×C×H×W given to every seed when ``shared``."""

        def one(params: dict, buffers: dict, images: Tensor) -> Tensor:
            return functional_call(self.template, (params, buffers), (images,))

        return vmap(one, in_dims=(0, 0, None if shared else 0))(self.params, self.buffers, x)

    def parameters(self) -> list[Tensor]:
        return list(self.params.values())

    def train(self, mode: bool = True) -> Stacked:
        self.template.train(mode)
        return self

    def eval(self) -> Stacked:
        return self.train(False)

    def state(self) -> dict[str, Tensor]:
        """Every stacked parameter and buffer by its name in the network's state_dict."""
        return {**self.params, **self.buffers}

    def load_state(self, state: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for name, value in self.state().items():
                value.copy_(state[name])

    def state_dict(self, index: int) -> dict[str, Tensor]:
        """The state_dict of network ``index`` alone, on the CPU: loads into one network."""
        state = self.state()
        return {name: state[name][index].detach().to("cpu", copy=True)
                for name in self.template.state_dict()}

"""A training step captured once as a CUDA graph and replayed, so a step costs one launch.

LeNet-sized steps are launch-bound on a GPU: the kernels are tiny and the CPU cannot issue them
as fast as the GPU runs them. ``Replayed`` wraps ``step(idx)`` (a function of one index tensor,
returning a tensor) without changing what any call computes:

- the first ``WARMUP`` calls run eagerly on a side stream, as capture requires: lazily created
  state (Adam's moments, cuBLAS workspaces) exists before capture;
- the next call is captured and then replayed, so it too performs exactly its own step;
- later calls copy their indices into the graph's input and replay; a call of another shape than
  the first (an epoch's short last batch) runs eagerly.

The step must not synchronise with the CPU (no ``.item()``), and an optimizer it steps must be
built with ``capturable=True``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

WARMUP = 3


class Replayed:
    """``step`` replayed as a CUDA graph for the shape of its first call."""

    def __init__(self, step: Callable[[Tensor], Tensor]) -> None:
        self.step = step
        self.shape: torch.Size | None = None
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_idx: Tensor | None = None
        self.static_out: Tensor | None = None

    def __call__(self, idx: Tensor) -> Tensor:
        self.shape = self.shape or idx.shape
        if idx.shape != self.shape:
            return self.step(idx)
        if self.graph is None and self.calls < WARMUP:
            self.calls += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self.step(idx)
            torch.cuda.current_stream().wait_stream(side)
            return out
        if self.graph is None:
            self.static_idx = idx.clone()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.static_out = self.step(self.static_idx)
        else:
            self.static_idx.copy_(idx)
        self.graph.replay()
        return self.static_out

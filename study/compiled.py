"""The training step and evaluation through ``torch.compile`` (inductor), and when that pays.

``train.compile`` says whether ``fit`` compiles:

- ``true``: from the first step;
- ``false``: never (every step eager, as before);
- ``auto``: a network with an AttConv layer runs its first epoch eagerly, timed; the remaining
  epochs are compiled when the time the compiled steps save (``GAIN`` of the measured eager
  time) exceeds the warm-up a compile costs (``WARMUP_S``). Both constants are measurements
  (``bench/compile.py``, ``docs/performance.md``), so a short run (the README's small one) stays
  eager and a long one compiles. Where the first compiled epoch after the warm-up's (the third)
  is then no faster than the eager first epoch (on a CPU, AttConv at conv2 measured 0.90–0.99×
  compiled), the remaining epochs run eagerly again; a trial resumed past its second epoch keeps
  what its snapshot says. A LeNet-5 without AttConv stays eager: on a CPU its
  compiled step measured 0.8–1.5× its eager one, no gain worth a warm-up.

A compiled function is specialised to its input shapes: the short last batch of an epoch and the
last chunk of an evaluation run eagerly rather than compile a second time. The numbers are those
of the eager step to float rounding (inductor may fuse and reorder sums); ``tests/test_train.py``
trains the same networks both ways. Compiled code is cached under ``$STUDY_CACHE/inductor``
(inductor's FX-graph and AOTAutograd caches), so a second trial of an architecture, in this run or
a later one, skips most of the warm-up; inductor compiles with the trial's own threads.

Example:
    >>> calls = []
    >>> step = ShapeSpecialised(lambda idx: calls.append(idx.shape[1]) or idx.shape[1], compiled=False)
    >>> [step(torch.zeros(1, n, dtype=torch.long)) for n in (32, 32, 7)]
    [32, 32, 7]
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch
from torch import Tensor

from study.cache import cache_dir
from study.config import Study

# The share of an AttConv step's eager time the compiled step saves. On a CPU, where the layer
# is its own kernel and inductor compiles the rest of the network, measured 0.05–0.12.
GAIN = 0.1
WARMUP_S = 60.0  # seconds a cold compile of the step and its evaluation costs (measured: 17–48 s)
# Read before inductor is first imported, which sets it to its own default.
_USER_CACHE = os.environ.get("TORCHINDUCTOR_CACHE_DIR")


def start_compiling(threads: int) -> None:
    """Ready this process to compile a trial's step: inductor's caches under
    ``$STUDY_CACHE/inductor`` (unless TORCHINDUCTOR_CACHE_DIR was set), compiling with ``threads``
    workers and without its notes for developers; the compiled code of earlier trials dropped.

    Why drop it: dynamo guards a trial's step on that trial's own optimiser, so on a Ray worker
    that runs trial after trial (reused workers) each trial added an entry to the same function's
    cache, and from the ninth on (``recompile_limit``) the step ran eager, with only a warning to
    say so. The caches on disk stay: the next trial of an architecture still compiles warm."""
    torch._dynamo.reset()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _USER_CACHE or str(cache_dir() / "inductor")
    import torch._inductor.config as inductor

    inductor.compile_threads = max(1, threads)
    # "No CUDA runtime is found" on a CPU, and that the optimiser's profiler marks are ignored.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    logging.getLogger("torch._dynamo.variables.ctx_manager").setLevel(logging.ERROR)


def pays(study: Study, eager_epoch_s: float) -> bool:
    """Whether ``train.compile: auto`` compiles ``study``'s network after an eager first epoch of
    ``eager_epoch_s``: it has an AttConv layer, and compiling the remaining epochs saves more than
    the warm-up costs."""
    return (study.train.compile == "auto" and bool(study.model.attention.layers)
            and GAIN * eager_epoch_s * (study.train.epochs - 1) > WARMUP_S)


class ShapeSpecialised:
    """``fn`` compiled for the shape of its first call (``compiled``), eager for any other shape.

    ``fn`` takes one tensor; calls of the first call's shape go to ``torch.compile(fn)``, others
    (a short last batch) to ``fn`` itself, which computes the same thing.
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], compiled: bool = True) -> None:
        self.eager = fn
        self.fast = torch.compile(fn, dynamic=False) if compiled else fn
        self.shape: torch.Size | None = None

    def __call__(self, x: Tensor) -> Tensor:
        self.shape = self.shape or x.shape
        return (self.fast if x.shape == self.shape else self.eager)(x)

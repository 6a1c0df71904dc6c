"""Imports without repeated full garbage collections of what they made.

A ``study`` command or a trial's worker imports torch, Ray Tune, pandas or Optuna: about half a
million Python objects. CPython runs a full collection each time the objects it tracks have grown
by a quarter since the last one, and each scans every object made so far: eight or nine in a
driver (1.1 s of CPU), five to seven in each trial's worker (0.8 s), and one more as each process
exits. With ``freeze_imports()``, what survives a full collection that an import set off is frozen
(``gc.freeze``): modules, classes and functions, which live as long as the process, are not
scanned again. A collection that anything else sets off freezes nothing, so what a process makes
as it works is collected as before. ``study`` calls it as it starts, and so does each worker of
the Ray it starts (Ray's ``worker_process_setup_hook``).

Example (in a process of its own, as ``study`` does it):
    >>> import subprocess, sys
    >>> code = "import gc, study.startup as s; s.freeze_imports(); import torch; print(gc.get_freeze_count())"
    >>> int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout) > 100_000
    True
"""

from __future__ import annotations

import gc
import sys

IMPORTING = "<frozen importlib._bootstrap>"  # the code of every import statement's loading


def freeze_imports() -> None:
    """From now on, freeze what survives each full collection an import sets off."""
    if _frozen_after not in gc.callbacks:
        gc.callbacks.append(_frozen_after)


def _frozen_after(phase: str, info: dict[str, int]) -> None:
    if phase == "stop" and info["generation"] == 2 and _importing():
        gc.freeze()


def _importing() -> bool:
    """Whether the collection was set off within an import (the stack holds import machinery)."""
    frame = sys._getframe()
    while frame is not None:
        if frame.f_code.co_filename == IMPORTING:
            return True
        frame = frame.f_back
    return False

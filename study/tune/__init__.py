"""Ray Tune schedules the trials, Optuna (through Ray Tune's OptunaSearch) chooses them.

A trial is one configuration: one Optuna trial, and one Ray trial that trains the configuration's
seeds at once and reports, per epoch, the means over its seeds (or several, each training some of
them, where a study splits fixed configurations' seeds over trials so that no CPU idles:
``Study.seed_groups``). The package, a concept a module:

- ``search``: Optuna behind Ray Tune (the space, the sampler, one Optuna study per compared level
  taking turns, settling the Optuna trials an interrupted run left);
- ``schedulers``: ASHA within each level, the CPUs a finished trial frees, a GPU's share;
- ``trainable``: one Ray trial (training through ``study.train``, which knows nothing of Ray), and
  the test of a trial ASHA stopped;
- ``progress``: the running count and the time left;
- ``recorder``: the driver's callback (the lines a person reads, the result tables kept current)
  and Ray's failure reports as one line;
- ``interrupts``: where Ctrl-C goes between Ray Tune's runs and as one starts, so none is lost;
- ``runner``: ``run``, the stages and a sequential design's rounds, and resume
  (``settle_resumed``: what an interrupted run left unsettled).

Every epoch's report carries the trial so far as a Ray checkpoint (``study.checkpoints``): a
trial whose worker died is restarted ``resources.retries`` times by Ray from its last epoch, and
an interrupted study resumes from its staged rows and its Optuna storage, each trial it lacks
from the last epoch an interrupted trial of the same configuration and seeds saved.

Example:
    >>> from study.tune import run  # run(study, study_dir) trains every trial of a study
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from study.tune.runner import run, settle_resumed
    from study.tune.search import optuna_space, sampler, searcher, settle_interrupted

__all__ = ["optuna_space", "run", "sampler", "searcher", "settle_interrupted", "settle_resumed"]
_HOME = {"run": "runner", "settle_resumed": "runner", "optuna_space": "search", "sampler": "search",
         "searcher": "search", "settle_interrupted": "search"}


def __getattr__(name: str) -> object:
    # Imported on first use, not with the package: a Ray worker imports this package to reach
    # ``trainable``, and the driver's modules (Optuna, scipy, statsmodels) would add about a
    # second of imports to every trial's start.
    if name in _HOME:
        return getattr(importlib.import_module(f"study.tune.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

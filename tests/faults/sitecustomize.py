"""Faults at the moments a timed kill or Ctrl-C rarely hits, imported by every Python process whose
``PYTHONPATH`` starts with this folder; each active only where its variable is set:

- ``STUDY_TEST_LOST_AT`` (an epoch): a Ray worker lost after a trial's epoch was reported (and its
  checkpoint saved to the study's folder) but before Ray registered that checkpoint, which takes a
  second call to the worker (``Trainable.save``); only once (``STUDY_TEST_LOST_MARK`` is the file
  that says it happened).
- ``STUDY_TEST_CTRL_C_AT_RUN`` (a count): Ctrl-C (SIGINT) to the driver as its Nth Ray Tune run
  starts (``Tuner.fit``), before Tune catches the signal: a round's start.
"""

import importlib.abc
import importlib.util
import os
import signal
import sys


class _Wrap(importlib.abc.MetaPathFinder):
    """Replaces ``cls.method`` with ``wrap(original)`` as ``module`` is loaded."""

    def __init__(self, module, cls, method, wrap):
        self.module, self.cls, self.method, self.wrap = module, cls, method, wrap

    def find_spec(self, name, path, target=None):
        if name != self.module:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            cls = getattr(module, self.cls)
            setattr(cls, self.method, self.wrap(getattr(cls, self.method)))

        spec.loader.exec_module = exec_module
        return spec


def _dies_before_saving(save):
    def save_unless_lost(trainable, *args, **kwargs):
        mark = os.environ["STUDY_TEST_LOST_MARK"]
        if trainable.iteration >= int(os.environ["STUDY_TEST_LOST_AT"]) and not os.path.exists(mark):
            open(mark, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return save(trainable, *args, **kwargs)

    return save_unless_lost


def _ctrl_c_as_run_starts(fit):
    runs = []

    def fit_after_ctrl_c(tuner, *args, **kwargs):
        runs.append(tuner)
        if len(runs) == int(os.environ["STUDY_TEST_CTRL_C_AT_RUN"]):
            os.kill(os.getpid(), signal.SIGINT)
        return fit(tuner, *args, **kwargs)

    return fit_after_ctrl_c


if os.environ.get("STUDY_TEST_LOST_AT"):
    sys.meta_path.insert(0, _Wrap("ray.tune.trainable.trainable", "Trainable", "save", _dies_before_saving))
if os.environ.get("STUDY_TEST_CTRL_C_AT_RUN"):
    sys.meta_path.insert(0, _Wrap("ray.tune.tuner", "Tuner", "fit", _ctrl_c_as_run_starts))

"""A Ray worker lost at the one moment a timed kill rarely hits: after a trial's epoch was reported
(and its checkpoint saved to the study's folder) but before Ray registered that checkpoint, which
takes a second call to the worker (``Trainable.save``). Imported by every Python process whose
``PYTHONPATH`` starts with this folder; active only where ``STUDY_TEST_LOST_AT`` names the epoch,
and only once (``STUDY_TEST_LOST_MARK`` is the file that says it happened)."""

import importlib.abc
import importlib.util
import os
import signal
import sys

MODULE = "ray.tune.trainable.trainable"


class _KillBeforeSave(importlib.abc.MetaPathFinder):
    """Wraps ``Trainable.save`` as Ray's module is loaded."""

    def find_spec(self, name, path, target=None):
        if name != MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            save = module.Trainable.save

            def dies_before_saving(trainable, *args, **kwargs):
                mark = os.environ["STUDY_TEST_LOST_MARK"]
                if trainable.iteration >= int(os.environ["STUDY_TEST_LOST_AT"]) and not os.path.exists(mark):
                    open(mark, "w").close()
                    os.kill(os.getpid(), signal.SIGKILL)
                return save(trainable, *args, **kwargs)

            module.Trainable.save = dies_before_saving

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("STUDY_TEST_LOST_AT"):
    sys.meta_path.insert(0, _KillBeforeSave())

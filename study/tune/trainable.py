"""One Ray trial: a configuration's seeds fit at once, reported every epoch with a checkpoint,
and its result files written; and the test of a trial a scheduler stopped. Training itself
(``study.train``) knows nothing of Ray: it is handed a ``report`` function.

Example:
    >>> from study.loading import load
    >>> params(load("searchspaces/smoke.yaml"), {"model.attention.layers": [0], "other": 1})
    {'model.attention.layers': [0]}
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from study import checkpoints, results
from study.config import Study
from study.resolution import resolve
from study.schedule import threads
from study.train import Snapshot, conclude, fit, pick_device
from study.tune.nodes import node_address

# A trial's own seeds in its config, where a level's are split over several trials: a string,
# since Ray reads a list in a trial's config as more keys.
SEEDS = "seeds"


def own_seeds(config: dict[str, Any], seeds: list[int]) -> list[int]:
    """The seeds a Ray trial trains: its config's own (``SEEDS``), else the stage's ``seeds``.

    Example:
        >>> own_seeds({SEEDS: "3,4"}, [3, 4, 5]), own_seeds({}, [3, 4, 5])
        ([3, 4], [3, 4, 5])
    """
    return [int(seed) for seed in config[SEEDS].split(",")] if config.get(SEEDS) else seeds


def params(study: Study, config: dict[str, Any]) -> dict[str, Any]:
    """The space's keys of a Ray trial's ``config``."""
    return {k: config[k] for k in study.space}


def trainable(config: dict[str, Any], study: dict, study_dir: str, stage: str, seeds: list[int]) -> None:
    """One Ray trial: resolve the chosen parameters, fit ``seeds`` (or the config's own ``SEEDS``)
    at once with as many threads as the trial has CPUs, write the result files (marked
    ``stage``). Every epoch's report carries the trial so far as a checkpoint; the trial goes on
    from the checkpoint with the most epochs saved of the same stage, configuration and seeds
    (``study.checkpoints``)."""
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(threads(cpus))
    seeds = own_seeds(config, seeds)
    base = Study.model_validate(study)
    chosen = params(base, config)
    resolved = resolve(base, chosen)
    who = checkpoints.identity(stage, chosen, seeds)
    saved = checkpoints.saved(Path(study_dir), who)
    snapshot = checkpoints.latest(saved)
    where = results.ran_on(resolved, node_address())
    # Where this node has no C compiler, AttConv runs as tensor operations: the driver says so.
    slow = where["attconv"] == "tensor operations" and pick_device(resolved.train.device).type == "cpu"

    def report(metrics: dict, take: Callable[[], Snapshot]) -> None:
        checkpoints.report({**metrics, "threads": torch.get_num_threads(), "attconv_slow": slow}, take(), who)

    result = fit(resolved, seeds, report=report, resume=snapshot)
    results.write_trial(Path(study_dir), tune.get_context().get_trial_id(), stage, chosen, result, where)
    checkpoints.remove_saved(saved)  # the checkpoints it went on from, now redundant


@ray.remote
def finish_stopped(study: dict, study_dir: str, threads: int, stage: str, trial_id: str,
                   params: dict[str, Any], checkpoint: tune.Checkpoint, reason: str) -> None:
    """A trial a scheduler stopped: each seed's best epoch so far, tested and written (STOPPED)."""
    torch.set_num_threads(threads)
    with checkpoint.as_directory() as folder:
        snapshot = Snapshot.load(Path(folder) / checkpoints.SNAPSHOT)
    resolved = resolve(Study.model_validate(study), params)
    result = conclude(resolved, snapshot, stopped=reason)
    results.write_trial(Path(study_dir), trial_id, stage, params, result,
                        results.ran_on(resolved, node_address()))



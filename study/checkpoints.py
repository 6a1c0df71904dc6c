"""A trial's epoch checkpoints: saved through Ray Tune after every epoch, found again on resume.

Every epoch a trial reports its ``study.train.Snapshot`` (everything its loop needs to go on) as
a Ray Tune checkpoint, with a note of which trial it is: its stage, configuration and seeds (its
*identity*). Ray keeps the latest one per trial (``CheckpointConfig(num_to_keep=1)``) under the
study's ``ray/`` folder. A trial then starts from

- the checkpoint with the most epochs of a trial with the same identity under the study's Ray
  folder (``saved``, read when the trial starts). That is Ray's own checkpoint of it where Ray
  restarts the same trial (a worker or node that died, ``resources.retries``; a trial given more
  threads, ``ResourceChangingScheduler``); a newer one the trial saved that Ray never registered
  (Ray registers a checkpoint only after a second call to the trial's worker, so a worker lost
  between the two leaves one on disk that Ray's restart would not use); or the latest an
  interrupted run left (``--resume``: a new Ray run, new trial ids);
- else epoch 0.

So an interrupted trial loses at most the epoch it was in. A trial's checkpoints are removed once
its result files are written (``remove``, ``remove_saved``); those of a trial that failed stay for
``--resume``.

Example:
    >>> identity("tune", {"model.attention.layers": "[0]"}, [0, 1, 2])
    '{"params": {"model.attention.layers": "[0]"}, "seeds": [0, 1, 2], "stage": "tune"}'
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ray import tune

from study.train import Snapshot

SNAPSHOT = "snapshot.pt"
NOTE = "trial.json"  # beside the snapshot: the trial's identity and the epochs it holds
log = logging.getLogger(__name__)


def identity(stage: str, params: dict[str, Any], seeds: list[int]) -> str:
    """What makes two Ray trials the same trial: the stage, the configuration and the seeds."""
    return json.dumps({"stage": stage, "params": params, "seeds": list(seeds)}, sort_keys=True, default=str)


def report(metrics: dict, snapshot: Snapshot, who: str) -> None:
    """``tune.report`` with the trial so far as its checkpoint."""
    with tempfile.TemporaryDirectory() as folder:
        snapshot.save(Path(folder) / SNAPSHOT)
        (Path(folder) / NOTE).write_text(json.dumps({"identity": who, "epochs": snapshot.epochs}))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def _checkpoints(study_dir: Path) -> list[Path]:
    """Every checkpoint folder under the study's Ray runs: ray/<run>/<trial>/checkpoint_*."""
    return sorted((Path(study_dir) / "ray").glob("*/*/checkpoint_*"))


def saved(study_dir: Path, who: str) -> list[str]:
    """Every checkpoint of trial ``who`` under the study's Ray runs, the most epochs first (a
    checkpoint cut off mid-copy may not load: the next is tried)."""
    found: list[tuple[int, str]] = []
    for folder in _checkpoints(study_dir):
        try:
            note = json.loads((folder / NOTE).read_text())
        except (OSError, ValueError):
            continue  # not one of ours, or cut off before its note was written
        if note["identity"] == who:
            found.append((note["epochs"], str(folder)))
    return [path for _, path in sorted(found, reverse=True)]


def latest(folders: list[str]) -> Snapshot | None:
    """The snapshot a trial goes on from: the first of its saved checkpoint ``folders`` (most
    epochs first) that loads; None to start from epoch 0."""
    for folder in map(Path, folders):
        try:
            return Snapshot.load(folder / SNAPSHOT)
        except Exception as err:  # noqa: BLE001 - a damaged file is any error torch.load raises
            log.warning("checkpoint %s could not be read (%s); trying an older one", folder, err)
    return None


def remove(trial_folder: str | Path | None) -> None:
    """A trial's checkpoints (those in one Ray trial's folder), once its result files are written."""
    if trial_folder:
        for folder in Path(trial_folder).glob("checkpoint_*"):
            shutil.rmtree(folder, ignore_errors=True)


def remove_saved(folders: list[str]) -> None:
    """The checkpoint ``folders`` a trial went on from (those of interrupted runs too), once it has
    written its results."""
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)

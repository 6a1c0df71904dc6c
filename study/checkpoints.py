"""A trial's epoch checkpoints: saved through Ray Tune after every epoch, found again on resume.

Every epoch a trial reports its ``study.train.Snapshot`` (everything its loop needs to go on) as
a Ray Tune checkpoint, with a note of which trial it is: its stage, configuration and seeds (its
*identity*). Ray keeps the latest one per trial (``CheckpointConfig(num_to_keep=1)``) under the
study's ``ray/`` folder. A trial then starts from

- Ray's own checkpoint of it, where Ray restarts the same trial: a worker or node that died
  (``resources.retries``), or a trial given more threads (``ResourceChangingScheduler``);
- else the latest checkpoint an interrupted run left of a trial with the same identity, which
  ``left_behind`` finds when a study resumes (``--resume``: a new Ray run, new trial ids);
- else epoch 0.

So an interrupted trial loses at most the epoch it was in. A trial's checkpoints are removed once
its result files are written (``remove``); those of a trial that failed stay for ``--resume``.

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


def left_behind(study_dir: Path) -> dict[str, list[str]]:
    """The checkpoints that an interrupted run left, by the identity of their trial, the most
    epochs first (a checkpoint cut off mid-copy may not load: the next is tried)."""
    found: dict[str, list[tuple[int, str]]] = {}
    for folder in _checkpoints(study_dir):
        try:
            note = json.loads((folder / NOTE).read_text())
        except (OSError, ValueError):
            continue  # not one of ours, or cut off before its note was written
        found.setdefault(note["identity"], []).append((note["epochs"], str(folder)))
    return {who: [path for _, path in sorted(paths, reverse=True)] for who, paths in found.items()}


def latest(who: str, left: dict[str, list[str]]) -> Snapshot | None:
    """The snapshot trial ``who`` goes on from: Ray's own checkpoint of it, else the latest that
    an interrupted run ``left`` of it that loads; None to start from epoch 0."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            return Snapshot.load(Path(folder) / SNAPSHOT)
    for folder in map(Path, left.get(who, [])):
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


def remove_left(who: str, left: dict[str, list[str]]) -> None:
    """The checkpoints interrupted runs left of trial ``who``, once it has written its results."""
    for folder in left.get(who, []):
        shutil.rmtree(folder, ignore_errors=True)

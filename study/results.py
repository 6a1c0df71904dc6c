"""Writing and reading a study's result files (the contract in README.md, "Result files").

A trial is one configuration trained for all its seeds; each seed's network is one row of
``trials.parquet``. Each trial writes its own files: per-sample Parquet of every seed under
``samples/trial_id=<id>/``, each seed's best weights (``weights/<id>/seed-<s>.pt``), and staged
rows (``.trials/<id>.json``) that ``consolidate`` gathers into ``trials.parquet`` and
``epochs.parquet``. Every file appears whole or not at all (``study.files.atomic_write``).
``load`` reads a finished study's files back (README.md, "Result files", has more)::

    r = load("results/smoke")
    r.samples.groupby(["model.attention.layers", "sample_idx"]).loss.mean()
"""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from study import words
from study.config import Study
from study.errors import UserError
from study.files import atomic_write
from study.loading import dump
from study.models import attconv_cpu
from study.train import Network, TrialResult, pick_device

TRIAL_COLUMNS_FIRST = ("trial_id", "seed", "stage", "status", "reason")
TRIAL_COLUMNS_LAST = (
    "n_params", "flops", "best_epoch", "best_val_loss", "test_loss", "test_exact_acc",
    "test_digit_f1", "wall_s", "finished", "device", "node", "attconv", "data_fingerprint", "data_source",
)
# A network with test results and weights: trained to the end, or stopped early by ASHA (tuning only).
TRAINED = ("COMPLETED", "STOPPED")
EPOCH_COLUMNS = ("trial_id", "seed", "epoch", "train_loss", "val_loss", "seconds")
_STAGED = ".trials"


def param_columns(columns: Iterable[str]) -> list[str]:
    """The space keys among a trials table's columns: every column the contract does not fix."""
    return [c for c in columns if c not in (*TRIAL_COLUMNS_FIRST, *TRIAL_COLUMNS_LAST)]


def write_study(study_dir: Path, study: Study) -> None:
    """``study.yaml``: the fully resolved study as run."""
    atomic_write(Path(study_dir) / "study.yaml", lambda tmp: tmp.write_text(dump(study)))


def weights_path(study_dir: Path, trial_id: str, seed: int) -> Path:
    """Where the best-validation state_dict of one network (trial × seed) is kept."""
    return Path(study_dir) / "weights" / trial_id / f"seed-{seed}.pt"


def samples_table(trial_id: str, result: TrialResult) -> pa.Table:
    """The per-sample rows of every seed of one trial, typed as the contract says."""
    test = result.dataset["test"]
    n = len(test.images)
    tables = []
    for network in trained(result):
        columns: dict[str, pa.Array] = {
            # Dictionary-typed, as pyarrow types the folder key ``trial_id=<id>`` of a text id.
            "trial_id": pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), [trial_id]),
            "seed": pa.array(np.full(n, network.seed, np.int32)),
            "sample_idx": pa.array(np.arange(n, dtype=np.int32)),
            "loss": pa.array(network.test_loss.astype(np.float32)),
            "correct": pa.array(network.test_correct.astype(bool)),
            "digits": pa.array(test.digit_strings(), pa.string()),
            "withheld": pa.array(test.withheld.astype(bool)),
            "colours": pa.array(test.colour_strings(), pa.string()),
            "occlusion": pa.array(test.hidden.mean(1).astype(np.float32)),
        }
        for c in range(network.test_logits.shape[1]):
            columns[f"logit_{c}"] = pa.array(network.test_logits[:, c].astype(np.float32))
        columns["data_fingerprint"] = pa.array([result.dataset.fingerprint] * n, pa.string())
        tables.append(pa.table(columns))
    return pa.concat_tables(tables)


def digit_f1(logits: np.ndarray, present: np.ndarray) -> float:
    """Macro F1 over the ten digits (n×10 logits against n×10 true presence): per digit
    2·TP / (2·TP + FP + FN), where a digit is predicted present at a logit above 0, averaged
    over the digits; a digit neither present nor predicted anywhere scores 1. Unlike exact-set
    accuracy, which needs all three digits right, it moves while a network learns single digits.

    Example:
        >>> present = np.array([[1, 1, 0], [0, 1, 1]], bool)
        >>> digit_f1(np.array([[2.0, 1.0, -1.0], [-1.0, -3.0, 1.0]]), present)  # misses one 1
        0.888...
    """
    predicted, present = np.asarray(logits) > 0, np.asarray(present, dtype=bool)
    hits = (predicted & present).sum(0)
    wrong = (predicted != present).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_digit = np.where(hits + wrong == 0, 1.0, 2 * hits / (2 * hits + wrong))
    return float(per_digit.mean())


def trained(result: TrialResult) -> list[Network]:
    """The networks of a trial that did not fail: the ones with test results and weights."""
    return [network for network in result.networks if network.failure is None]


def _now() -> str:
    """The time a trial's rows are written (``finished``), in UTC: the record of when the results
    came to be, which a file's modification time is not once the folder is copied."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def ran_on(study: Study, node: str | None = None) -> dict[str, str | None]:
    """Where and how this process trains ``study`` (resolved): the ``node`` (a Ray node's
    address; default: this host's name) and, with an AttConv layer, which ``attconv`` it runs
    (``attconv_cpu.taken``)."""
    attention = bool(study.model.attention.layers)
    return {"node": node or socket.gethostname(),
            "attconv": attconv_cpu.taken(pick_device(study.train.device)) if attention else None}


def trial_rows(trial_id: str, stage: str, params: dict[str, Any], result: TrialResult,
               where: Mapping[str, str | None] | None = None) -> list[dict]:
    """One row per network of the trial; a failed one is ERROR with its reason and no test results;
    those of a trial a scheduler stopped are STOPPED, with the reason; ``where`` it ran
    (``ran_on``)."""
    where, finished = where or {}, _now()
    return [{
        "trial_id": trial_id,
        "seed": network.seed,
        "stage": stage,
        "status": "ERROR" if network.failure else "STOPPED" if result.stopped else "COMPLETED",
        "reason": network.failure or result.stopped,
        **params,
        "n_params": result.n_params,
        "flops": result.flops,
        "best_epoch": None if network.failure else network.best_epoch,
        "best_val_loss": None if network.failure else network.best_val_loss,
        "test_loss": None if network.failure else float(network.test_loss.mean()),
        "test_exact_acc": None if network.failure else float(network.test_correct.mean()),
        "test_digit_f1": None if network.failure else digit_f1(network.test_logits,
                                                               result.dataset["test"].targets),
        "wall_s": result.wall_s,
        "finished": finished,
        "device": result.device,
        "node": where.get("node") or socket.gethostname(),
        "attconv": where.get("attconv"),
        "data_fingerprint": result.dataset.fingerprint,
        "data_source": result.dataset.source,
    } for network in result.networks]


def write_trial(study_dir: Path, trial_id: str, stage: str, params: dict[str, Any],
                result: TrialResult, where: Mapping[str, str | None] | None = None) -> None:
    """Everything one completed trial of ``stage`` (tune or confirm) leaves behind (not yet in
    ``trials.parquet``); ``where`` it trained, as ``trial_rows`` takes it."""
    study_dir = Path(study_dir)
    if trained(result):
        table = samples_table(trial_id, result)
        atomic_write(study_dir / "samples" / f"trial_id={trial_id}" / "part-0.parquet",
                     lambda tmp: pq.write_table(table, tmp))
    for network in trained(result):
        atomic_write(weights_path(study_dir, trial_id, network.seed),
                     lambda tmp, state=network.best_state: torch.save(state, tmp))
    epochs = [{"trial_id": trial_id, "seed": network.seed, **e}
              for network in result.networks for e in network.epochs]
    _stage(study_dir, trial_id, trial_rows(trial_id, stage, params, result, where), epochs)


def write_failed(study_dir: Path, trial_id: str, stage: str, seeds: list[int],
                 params: dict[str, Any], reason: str) -> None:
    """Rows for a trial that raised, one per seed, so ``trials.parquet`` accounts for every network."""
    finished = _now()
    rows = [{"trial_id": trial_id, "seed": seed, "stage": stage, "status": "ERROR", "reason": reason,
             **params, "finished": finished} for seed in seeds]
    _stage(Path(study_dir), trial_id, rows, [])


def staged_trials(study_dir: Path) -> set[str]:
    """The trials whose rows are staged: every trial that ended (trained, failed or stopped)."""
    return {p.stem for p in (Path(study_dir) / _STAGED).glob("*.json")}


def discard_unfinished(study_dir: Path) -> list[str]:
    """Remove what trials that never finished (no staged rows: the run was killed) left in
    ``samples/`` and ``weights/``; returns their ids."""
    study_dir = Path(study_dir)
    finished = staged_trials(study_dir)
    gone = set()
    for folder in [*(study_dir / "samples").glob("trial_id=*"), *(study_dir / "weights").glob("*")]:
        trial_id = folder.name.removeprefix("trial_id=")
        if trial_id not in finished:
            shutil.rmtree(folder)
            gone.add(trial_id)
    return sorted(gone)


def failed_networks(study_dir: Path, trial_id: str) -> list[str]:
    """The reasons of a staged trial's networks that failed (none when all trained)."""
    staged = json.loads((Path(study_dir) / _STAGED / f"{trial_id}.json").read_text())
    return [row["reason"] for row in staged["rows"] if row["status"] == "ERROR"]


def _stage(study_dir: Path, trial_id: str, rows: list[dict], epochs: list[dict]) -> None:
    text = json.dumps({"rows": rows, "epochs": epochs}, allow_nan=True)
    atomic_write(study_dir / _STAGED / f"{trial_id}.json", lambda tmp: tmp.write_text(text))


def finished(study_dir: Path) -> pd.DataFrame:
    """The network rows of the trials that have finished (their rows are staged);
    ``trials.parquet`` is brought up to date on the way."""
    if not consolidate(study_dir):
        return pd.DataFrame(columns=["trial_id", "stage", "seed"])
    return pd.read_parquet(Path(study_dir) / "trials.parquet")


def consolidate(study_dir: Path) -> int:
    """Rewrite ``trials.parquet`` and ``epochs.parquet`` from the staged rows; returns the
    number of trials (configurations). Cheap enough to call after every trial."""
    study_dir = Path(study_dir)
    staged = [json.loads(p.read_text()) for p in sorted((study_dir / _STAGED).glob("*.json"))]
    if not staged:
        return 0
    rows = [row for s in staged for row in s["rows"]]
    trials = pd.DataFrame(rows)
    for col in (*TRIAL_COLUMNS_FIRST, *TRIAL_COLUMNS_LAST):
        if col not in trials:
            trials[col] = None
    trials = trials[[*TRIAL_COLUMNS_FIRST, *param_columns(trials), *TRIAL_COLUMNS_LAST]]
    trials = trials.astype({"seed": "int32", "reason": "string", "n_params": "Int64", "flops": "Int64",
                            "best_epoch": "Int64", "best_val_loss": "float64", "test_loss": "float64",
                            "test_exact_acc": "float64", "test_digit_f1": "float64"})
    trials["finished"] = pd.to_datetime(trials["finished"], utc=True)  # none for rows staged before it
    epochs = pd.DataFrame([e for s in staged for e in s["epochs"]], columns=list(EPOCH_COLUMNS))
    epochs = epochs.astype({"seed": "int32", "epoch": "int32"})
    atomic_write(study_dir / "trials.parquet", lambda tmp: trials.to_parquet(tmp, index=False))
    atomic_write(study_dir / "epochs.parquet", lambda tmp: epochs.to_parquet(tmp, index=False))
    return len(staged)


def failures(trials: pd.DataFrame) -> list[str]:
    """One line per trial of ``trials`` (``trials.parquet``'s rows) that lost networks: which, how
    many, and why."""
    params = param_columns(trials)
    lines = []
    for trial_id, rows in trials.groupby("trial_id", sort=False):
        failed = rows[rows["status"] == "ERROR"]
        if len(failed):
            configuration = words.configuration({k: rows[k].iloc[0] for k in params})
            lines.append(f"{rows['stage'].iloc[0]} trial {trial_id} {configuration}: {len(failed)} of "
                         f"{len(rows)} networks failed: {failed['reason'].iloc[0]}")
    return lines


@dataclass(frozen=True)
class Results:
    """One study's results as tidy DataFrames: ``trials`` (one row per network: trial × seed),
    ``epochs`` (per network and epoch) and ``samples`` (per network and test sample, with the
    trial's parameters)."""

    trials: pd.DataFrame
    epochs: pd.DataFrame
    samples: pd.DataFrame
    params: list[str]  # the space keys: parameter columns of trials, and of samples


def load(path: str | Path) -> Results:
    """The result files of one study as pandas DataFrames, the trial parameters joined to the
    per-sample rows so that arms can be grouped directly."""
    path = Path(path)
    trials = _read(path / "trials.parquet")
    params = param_columns(trials)
    samples_dir = path / "samples"
    # Every file holds its trial_id, so it is read from there, not from the folder name: pyarrow
    # guesses a folder key's type, and an id of digits only (trial_id=12345678) would come back as
    # a number that clashes with the files' text.
    samples = _read(samples_dir, partitioning=None) if samples_dir.exists() else pd.DataFrame()
    if "trial_id" in samples:
        samples["trial_id"] = samples["trial_id"].astype(str)  # a category as read; text is simpler
        _check_fingerprints(path, trials, samples)
        configurations = trials[["trial_id", *params]].drop_duplicates("trial_id")
        samples = samples.merge(configurations, on="trial_id", how="left")
    return Results(trials, _read(path / "epochs.parquet"), samples, params)


def _check_fingerprints(path: Path, trials: pd.DataFrame, samples: pd.DataFrame) -> None:
    """Each network's per-sample rows must come from the dataset its trials row names: images are
    paired across networks by ``sample_idx`` only within one ``data_fingerprint``."""
    if "data_fingerprint" not in samples:
        return
    seen = samples.groupby(["trial_id", "seed"], observed=True)["data_fingerprint"].agg(set)
    named = trials.dropna(subset=["data_fingerprint"]).set_index(["trial_id", "seed"])["data_fingerprint"]
    for (trial_id, seed), fingerprints in seen.items():
        expected = named.get((trial_id, seed))
        if expected is not None and fingerprints != {expected}:
            raise UserError(f"{path / 'samples'}: the per-sample rows of trial {trial_id} seed {seed} carry "
                            f"data_fingerprint {', '.join(sorted(fingerprints))}, but trials.parquet says "
                            f"that network saw {expected}: the files were mixed after the run, and its "
                            "images cannot be paired; restore the folder from a copy")


def _read(path: Path, **options: Any) -> pd.DataFrame:
    """A Parquet file or folder; a missing or damaged one is a message, not a traceback."""
    if not Path(path).exists():
        raise UserError(f"{path}: missing. Is {Path(path).parent} the results folder of a study that "
                        "ran? (study run writes it; `ls results/` shows the studies there)")
    try:
        return pd.read_parquet(path, **options)
    except (pa.ArrowException, OSError) as err:
        raise UserError(f"{path}: not readable as Parquet, damaged or cut short ({err}); the files "
                        "every trial writes are whole or absent, so it was changed afterwards: "
                        "restore it from a copy") from None

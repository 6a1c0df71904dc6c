"""What the driver shows and keeps while Ray Tune runs the trials: a line per trial per epoch
and per finished trial, the result tables consolidated after each trial, a failed trial's rows,
and Ray's reports of a failed trial as one line (its traceback in a log).
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path

from ray import tune

from study import checkpoints, results, words
from study.config import Study
from study.errors import UserError
from study.preflight import disk_full
from study.schedule import threads
from study.tune.progress import Progress
from study.tune.schedulers import PerLevelASHA
from study.tune.search import METRIC
from study.tune.trainable import own_seeds, params
from study.words import counted


class Recorder(tune.Callback):
    """Driver side: consolidate the result tables and print a line after every trial."""

    def __init__(self, study: Study, study_dir: Path, stage: str, seeds: list[int], progress: Progress,
                 scheduler: PerLevelASHA | None) -> None:
        self.study, self.study_dir, self.stage, self.progress = study, study_dir, stage, progress
        self.seeds, self.scheduler = seeds, scheduler
        self.slow_nodes: set[str] = set()  # said once each: AttConv there runs as tensor operations

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        """A line per trial per epoch: what a person watching wants to know is moving."""
        if "epoch" not in result:
            return
        node = result.get("node_ip") or trial.node_ip  # Ray fills it in every result
        if result.get("attconv_slow") and node not in self.slow_nodes:
            self.slow_nodes.add(node)
            print(f"note: node {node} has no C compiler that builds AttConv's CPU kernel; its "
                  "AttConv trials run as tensor operations, the same numbers several times slower "
                  "(install gcc or clang there, or set $CC)", flush=True)
        level = trial.config.get(self.study.compare_key())
        share = max(1, round(result.get("threads", 1) / max(1.0, self.study.resources.cpu)))
        seeds = self._seeds(trial)
        self.progress.epoch(trial.trial_id, None if level is None else str(level), len(seeds),
                            result["epoch"], result["seconds"], result.get("time_total_s", result["seconds"]),
                            share)
        # More threads than a trial's own CPUs give: its share of a stage's CPUs, or CPUs a trial freed.
        more = result.get("threads", 0) > threads(self.study.resources.cpu)
        self._line(trial, f"epoch {result['epoch'] + 1}/{self.study.train.epochs}: val_loss "
                   f"{result['val_loss']:.4f} (mean of {counted(len(seeds), 'seed')}), "
                   f"{result['seconds']:.3g} s" + (f" on {result['threads']} threads" if more else ""),
                   consolidate=False)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.progress.finished(trial.trial_id)
        last = trial.last_result
        seeds = counted(len(self._seeds(trial)), "seed")
        if self.scheduler and trial.trial_id in self.scheduler.stopped:
            self._line(trial, f"stopped: {self.scheduler.reason(trial.trial_id)}; its best epochs are "
                       "tested when the stage ends")
            return
        checkpoints.remove(trial.path)  # its results are written
        failed = results.failed_networks(self.study_dir, trial.trial_id)
        if failed:
            self._line(trial, f"FAILED: {len(failed)} of {seeds} stopped counting ({failed[0]})")
        else:
            self._line(trial, f"done: best_val_loss={last[METRIC]:.4f} (mean of {seeds})")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.progress.finished(trial.trial_id)
        full = disk_full(self.study_dir)
        if full:  # not the networks' failure: the study stops, and --resume reruns the trial
            raise UserError(f"{full}: trial {trial.trial_id} could not write its results")
        log = Path(trial.local_path or self.study_dir / "ray") / "error.txt"
        reason = f"the trial's worker failed {self.study.resources.retries + 1} time(s); log: {log}"
        results.write_failed(self.study_dir, trial.trial_id, self.stage, self._seeds(trial),
                             params(self.study, trial.config), reason)
        self._line(trial, f"FAILED: {reason}")

    def _seeds(self, trial) -> list[int]:
        """The trial's seeds: its own where a level's are split over several trials."""
        return own_seeds(trial.config, self.seeds)

    def _line(self, trial, what: str, consolidate: bool = True) -> None:
        if consolidate:
            self.progress.done = results.consolidate(self.study_dir)
        n = self.progress.done
        configuration = words.configuration(params(self.study, trial.config))
        # A study that does not select has one stage: its trials are just trials.
        label = {"tune": "tuning trial", "confirm": "confirmation trial"}[self.stage] \
            if self.study.confirms() else "trial"
        print(f"{self.progress(n)} {label} {trial.trial_id} {configuration}: {what}", flush=True)


class TrialFailures(logging.Filter):
    """Ray's report of a failed trial (a worker killed, a node lost), a traceback of Ray's
    internals, as one line; the traceback goes to ``log``. Whether Ray retries the trial
    (``resources.retries``) or records it as failed, the run's own lines say next."""

    def __init__(self, log: Path) -> None:
        super().__init__()
        self.log = log

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith("Trial task failed for trial") or not record.exc_info:
            return True
        error = record.exc_info[1]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("a") as out:
            out.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
            out.write("".join(traceback.format_exception(*record.exc_info)))
        trial = "_".join(message.rsplit("_", 2)[-2:])
        first = (str(error).strip().splitlines() or [""])[0][:160]
        print(f"trial {trial} failed: {type(error).__name__}: {first} (Ray restarts it from its last "
              f"checkpoint while resources.retries allows; traceback in {self.log})", flush=True)
        return False

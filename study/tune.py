"""Ray Tune schedules the trials, Optuna (through Ray Tune's OptunaSearch) chooses them.

A trial is one configuration: one Optuna trial (in ``search.storage``) and one Ray trial, which
trains the configuration's ``search.seeds`` networks (seeds 0..S−1) at once and reports, per
epoch, the means over its seeds; Optuna's value is the mean over seeds of each seed's best
validation loss. When the study is tuned per level of its compare factor, each level has its own
Optuna study in that file (named ``<study>:<level>``) and ``PerLevel`` lets them take turns.
Each Ray trial writes its own result files; a callback on the driver keeps ``trials.parquet``
and ``epochs.parquet`` current and prints one line per trial. When the study selects (its space
varies more than the compared factor), a confirmation stage follows: each level's selected
configuration is one more trial, trained on fresh seeds and marked ``stage: confirm``.

With a sequential design (``study.sequential``), the compared networks (the confirmation stage,
or the trials of a study that does not select) come in rounds: after each, the design's decisions
(``study.analysis.decisions``, from the result files alone) say which levels train ``step`` more
seeds, as one more trial per level.

Every epoch's report carries the trial so far as a Ray checkpoint (``study.checkpoints``). With
``search.scheduler: asha``, ``PerLevelASHA`` stops tuning trials that trail their level; each such
trial's networks are tested from its last checkpoint at their best epoch so far and written as
STOPPED when the stage ends. On CPUs (``resources.reallocate``), once every trial of a stage has
started, the threads a finished trial frees go to the ones still running (Ray Tune's
``ResourceChangingScheduler``, which restarts a trial from its checkpoint with more CPUs).

A trial whose networks failed (``study.train.failure``) completes with their ERROR rows and is
FAIL in Optuna; one whose worker died is restarted ``resources.retries`` times by Ray, from its
last epoch. An interrupted study resumes from its staged rows and its Optuna storage: the trials
it lacks run, each from the last epoch an interrupted trial of the same configuration and seeds
saved, the Optuna trials killed mid-way are marked FAIL, and Optuna is told the value of one that
finished just before the driver died.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import pickle
import shutil
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Token authentication stays on. Ray enables it for a local instance it starts, but for an explicit
# --address only when asked, and it reads the setting once, on import: so ask before importing.
# The token itself comes from ~/.ray/auth_token or RAY_AUTH_TOKEN.
os.environ.setdefault("RAY_AUTH_MODE", "token")

import optuna
import pandas as pd
import ray
import torch
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, ResourceChangingScheduler, TrialScheduler
from ray.tune.schedulers.resource_changing_scheduler import DistributeResources
from ray.tune.search import BasicVariantGenerator, Searcher
from ray.tune.search.optuna import OptunaSearch

from study import checkpoints, results
from study.analysis import best_configurations, decisions
from study.config import Study, combinations, resolve
from study.data import build
from study.errors import UserError
from study.models import attconv_cpu
from study.preflight import check_resources, disk_full
from study.sequential import describe
from study.storage import optuna_storage, study_name, study_names
from study.train import Snapshot, conclude, fit, pick_device
from study.words import counted, duration

METRIC, MODE = "best_val_loss", "min"  # a configuration's mean over seeds of their best val loss
RAY_TRIAL = "ray_trial_id"  # the Optuna trial's user attribute naming its Ray trial
TRIALS_PER_GPU = 4  # LeNet-sized trials leave a GPU idle: up to four share one by default


def optuna_space(study: Study, keys: list[str]) -> dict[str, optuna.distributions.BaseDistribution]:
    """Optuna's distributions for the given keys of the study's space."""
    space = {}
    for key in keys:
        spec = study.space[key]
        if spec.choice is not None:
            space[key] = optuna.distributions.CategoricalDistribution(spec.levels())
        elif spec.int_ is not None:
            space[key] = optuna.distributions.IntDistribution(*spec.int_)
        else:
            low, high = spec.uniform or spec.loguniform
            space[key] = optuna.distributions.FloatDistribution(low, high, log=bool(spec.loguniform))
    return space


def sampler(study: Study, keys: list[str], drawn: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler ``search.sampler`` names. ``drawn``: the trials its Optuna study already holds
    (a resumed study); the seed moves on by that many, so a resumed random or TPE search does not
    draw its first configurations again, which would retrain them on the same seeds."""
    seed = study.search.seed + drawn
    if study.search.sampler == "grid":
        return optuna.samplers.GridSampler({k: study.space[k].levels() for k in keys}, seed=seed)
    if study.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


class FailingSearch(OptunaSearch):
    """OptunaSearch, telling Optuna FAIL for a configuration that lost a network (its value is
    NaN): OptunaSearch passes NaN on, Optuna refuses it, and the trial would stay RUNNING. Each
    Optuna trial also records its Ray trial's id, so that a resumed study can tell Optuna what a
    killed driver could not (``settle_interrupted``)."""

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        self._ot_trials[trial_id].set_user_attr(RAY_TRIAL, trial_id)
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and math.isnan(result.get(METRIC, 0.0)):
            result, error = None, True
        super().on_trial_complete(trial_id, result=result, error=error)


class PerLevel(Searcher):
    """One searcher per level of ``key``, taking turns, ``trials`` configurations each.

    Ray Tune has no stratified search, and a single sampler over the compared factor would
    spend its budget on the level it currently likes: the comparison needs every level tuned
    equally. Each suggestion goes to the level with the fewest so far. Every level's sampler
    has the same seed, so the levels start from the same random configurations.
    """

    def __init__(self, key: str, searchers: dict[Any, Searcher], trials: int,
                 done: dict[Any, int] | None = None) -> None:
        first = next(iter(searchers.values()))
        super().__init__(metric=first.metric, mode=first.mode)
        self.key, self.searchers, self.trials = key, searchers, trials
        self.suggested = {level: (done or {}).get(level, 0) for level in searchers}
        self.level_of: dict[str, Any] = {}

    def suggest(self, trial_id: str) -> dict | str | None:
        open_levels = [level for level, n in self.suggested.items() if n < self.trials]
        if not open_levels:
            return Searcher.FINISHED
        level = min(open_levels, key=self.suggested.__getitem__)
        config = self.searchers[level].suggest(trial_id)
        if config is None or config == Searcher.FINISHED:
            return config
        self.suggested[level] += 1
        self.level_of[trial_id] = level
        return {**config, self.key: level}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searchers[self.level_of[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        level = self.level_of.pop(trial_id)
        self.searchers[level].on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:  # as OptunaSearch saves itself
            pickle.dump(self.__dict__, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))


class PerLevelASHA(FIFOScheduler):
    """Ray Tune's ASHA on the per-epoch mean validation loss, run within each level of ``key``
    (as ``PerLevel`` searches): a trial is stopped only for trailing the trials of its own level,
    so no level's tuning is cut short because another level learns faster. Remembers the trials
    it stopped and after how many epochs. Never stops a trial at its last epoch: that one ends by
    itself and writes its results."""

    def __init__(self, key: str, epochs: int, grace_period: int, reduction_factor: float) -> None:
        super().__init__()
        self._metric, self._mode = "val_loss", "min"  # Ray checks that trials report it
        self.key, self.epochs = key, epochs
        self.grace_period, self.reduction_factor = grace_period, reduction_factor
        self.levels: dict[str, ASHAScheduler] = {}
        self.stopped: dict[str, int] = {}  # trial id: epochs trained

    def _asha(self, trial: Trial) -> ASHAScheduler:
        level = str(trial.config[self.key])
        if level not in self.levels:
            self.levels[level] = ASHAScheduler(
                metric=self._metric, mode=self._mode, max_t=self.epochs, grace_period=self.grace_period,
                reduction_factor=self.reduction_factor, stop_last_trials=False)
        return self.levels[level]

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        self._asha(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        decision = self._asha(trial).on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP:
            self.stopped[trial.trial_id] = result["training_iteration"]
        return decision

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        self._asha(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self._asha(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return f"ASHA within each level of {self.key}; {counted(len(self.stopped), 'trial')} stopped"

    def reason(self, trial_id: str) -> str:
        return (f"ASHA stopped it after {self.stopped[trial_id]} of {self.epochs} epochs: its mean "
                "validation loss trailed its level's other trials at that point")


class FreedCPUs(DistributeResources):
    """Ray Tune's even split of the free CPUs (and GPUs) among the running trials, once every
    trial of the stage has been created: until then a CPU that a finished trial frees belongs to
    the next trial, which would otherwise wait for it. A trial's threads are its CPUs, so a trial
    given two trains with two threads from its next epoch on."""

    def __init__(self, trials: int) -> None:
        super().__init__()
        self.trials = trials

    def __call__(self, tune_controller, trial: Trial, result: dict, scheduler):
        if len(tune_controller.get_trials()) < self.trials:
            return None
        return super().__call__(tune_controller, trial, result, scheduler)


def _params(study: Study, config: dict[str, Any]) -> dict[str, Any]:
    return {k: config[k] for k in study.space}


def trainable(config: dict[str, Any], study: dict, study_dir: str, stage: str, seeds: list[int],
              left: dict[str, list[str]]) -> None:
    """One Ray trial: resolve the chosen parameters, fit ``seeds`` at once with as many threads as
    the trial has CPUs, write the result files (marked ``stage``). Every epoch's report carries the
    trial so far as a checkpoint; the trial goes on from Ray's own checkpoint of it, else from the
    latest one an interrupted run ``left`` of the same configuration and seeds."""
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    base = Study.model_validate(study)
    params = _params(base, config)
    resolved = resolve(base, params)
    who = checkpoints.identity(stage, params, seeds)
    snapshot = checkpoints.latest(who, left)
    # Where this node has no C compiler, AttConv runs as tensor operations: the driver says so.
    slow = bool(resolved.model.attention.layers) and pick_device(resolved.train.device).type == "cpu" \
        and not attconv_cpu.available()

    def report(metrics: dict, take: Callable[[], Snapshot]) -> None:
        checkpoints.report({**metrics, "threads": torch.get_num_threads(), "attconv_slow": slow}, take(), who)

    result = fit(resolved, seeds, report=report, resume=snapshot)
    results.write_trial(Path(study_dir), tune.get_context().get_trial_id(), stage, params, result)
    checkpoints.remove_left(who, left)  # the interrupted runs' checkpoints of it, now redundant


@ray.remote
def _finish(study: dict, study_dir: str, threads: int, stage: str, trial_id: str, params: dict[str, Any],
            checkpoint: tune.Checkpoint, reason: str) -> None:
    """A trial a scheduler stopped: each seed's best epoch so far, tested and written (STOPPED)."""
    torch.set_num_threads(threads)
    with checkpoint.as_directory() as folder:
        snapshot = Snapshot.load(Path(folder) / checkpoints.SNAPSHOT)
    result = conclude(resolve(Study.model_validate(study), params), snapshot, stopped=reason)
    results.write_trial(Path(study_dir), trial_id, stage, params, result)


class _Progress:
    """The running count over both stages and an estimate of the time left, from what this run
    measured: a trial lasts its fixed part (start-up, test, writing: measured on the finished
    ones) plus its epochs at its seed count times the measured seconds per epoch per seed (its
    own, once it ran one); the trials left are laid out over the ``slots`` that run at once, each
    waiting trial in the slot that frees first. ``stages``: each stage's trials in order, as the
    level of the compared factor each will train (None where the sampler has yet to choose), and
    its seeds; a waiting trial of a known level is costed at that level's measured seconds, else
    at the mean. A stage starts when the one before has ended. A resumed study's earlier trials
    took no time here and count only as done."""

    def __init__(self, stages: list[tuple[list[str | None], int]], done_before: int, epochs: int,
                 slots: int) -> None:
        # Every trial of the study in order: (its stage, its level, its seeds).
        self.plan = [(k, level, seeds) for k, (levels, seeds) in enumerate(stages) for level in levels]
        self.epochs, self.slots = epochs, max(1, slots)
        self.total, self.done = len(self.plan), done_before
        self.rounds_may_follow = False  # a sequential design may call for rounds not planned yet
        self.start = time.perf_counter()
        self.began: dict[str, float] = {}  # running trial → when it started
        self.seeds: dict[str, int] = {}  # trial → its networks
        self.epoch_s: dict[str, float] = {}  # trial → its last epoch's seconds per seed
        self.level_s: dict[str | None, float] = {}  # level → its last measured seconds per epoch and seed
        self.left: dict[str, int] = {}  # running trial → epochs it has left
        self.fixed: list[float] = []  # finished trials: their time beyond their epochs

    def extend(self, levels: list[str], seeds: int) -> None:
        """Another round of a sequential design: a trial of ``seeds`` networks per level, after
        everything planned so far."""
        stage = self.plan[-1][0] + 1 if self.plan else 0
        self.plan += [(stage, level, seeds) for level in levels]
        self.total = len(self.plan)

    def epoch(self, trial_id: str, level: str | None, seeds: int, epoch: int, seconds: float,
              since_start: float) -> None:
        """Trial ``trial_id`` (of ``level``, ``seeds`` networks) finished ``epoch`` in ``seconds``,
        ``since_start`` seconds after it started."""
        self.began.setdefault(trial_id, time.perf_counter() - since_start)
        self.seeds[trial_id], self.epoch_s[trial_id] = seeds, seconds / seeds
        self.level_s[level] = seconds / seeds
        self.left[trial_id] = self.epochs - epoch - 1

    def finished(self, trial_id: str) -> None:
        if trial_id in self.began and trial_id in self.left:
            took = time.perf_counter() - self.began.pop(trial_id)
            ran = self.epochs - self.left[trial_id]
            self.fixed.append(max(0.0, took - ran * self.epoch_s[trial_id] * self.seeds[trial_id]))
        self.left.pop(trial_id, None)

    def left_s(self, done: int) -> float | None:
        if not self.epoch_s:
            return None
        now, fixed = time.perf_counter(), sum(self.fixed) / len(self.fixed) if self.fixed else 0.0
        per_seed = sum(self.epoch_s.values()) / len(self.epoch_s)
        free_at = sorted(max(0.0, fixed + self.epochs * self.epoch_s[t] * self.seeds[t]
                             - (now - self.began[t])) for t in self.left)
        free_at = [0.0] * max(0, self.slots - len(free_at)) + free_at
        for index in range(done + len(self.left), self.total):  # the trials not started yet
            stage, level, seeds = self.plan[index]
            if index and stage != self.plan[index - 1][0]:
                free_at = [max(free_at)] * len(free_at)  # a stage starts when the one before ends
            cost = fixed + self.epochs * self.level_s.get(level, per_seed) * seeds
            heapq.heapreplace(free_at, free_at[0] + cost)
        return max(free_at)

    def __call__(self, done: int) -> str:
        left = self.left_s(done) if done < self.total else None
        shown = "" if left is None else f", ~{duration(left)} left" + (
            " in this round" if self.rounds_may_follow else "")
        return f"[{done}/{self.total} {duration(time.perf_counter() - self.start)}{shown}]"


class _Recorder(tune.Callback):
    """Driver side: consolidate the result tables and print a line after every trial."""

    def __init__(self, study: Study, study_dir: Path, stage: str, seeds: list[int], progress: _Progress,
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
        self.progress.epoch(trial.trial_id, None if level is None else str(level), len(self.seeds),
                            result["epoch"], result["seconds"], result.get("time_total_s", result["seconds"]))
        more = result.get("threads", 0) > self.study.resources.cpu  # given CPUs a trial freed
        self._line(trial, f"epoch {result['epoch'] + 1}/{self.study.train.epochs}: val_loss "
                   f"{result['val_loss']:.4f} (mean of {counted(len(self.seeds), 'seed')}), "
                   f"{result['seconds']:.3g} s" + (f" on {result['threads']} threads" if more else ""),
                   consolidate=False)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.progress.finished(trial.trial_id)
        last = trial.last_result
        seeds = counted(len(self.seeds), "seed")
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
        results.write_failed(self.study_dir, trial.trial_id, self.stage, self.seeds,
                             _params(self.study, trial.config), reason)
        self._line(trial, f"FAILED: {reason}")

    def _line(self, trial, what: str, consolidate: bool = True) -> None:
        if consolidate:
            self.progress.done = results.consolidate(self.study_dir)
        n = self.progress.done
        configuration = results.shown(_params(self.study, trial.config))
        # A study that does not select has one stage: its trials are just trials.
        label = {"tune": "tuning trial", "confirm": "confirmation trial"}[self.stage] \
            if self.study.confirms() else "trial"
        print(f"{self.progress(n)} {label} {trial.trial_id} {configuration}: {what}", flush=True)


def gpu_share(trials: int) -> float:
    """``resources.gpu: auto``: the GPU share of one trial. A study of fewer trials than
    ``TRIALS_PER_GPU`` splits the GPU between them, so a two-arm study runs both at once and
    uses the whole GPU; larger studies run ``TRIALS_PER_GPU`` trials on each GPU at a time."""
    return 1 / min(TRIALS_PER_GPU, max(1, trials))


class _TrialFailures(logging.Filter):
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


def run(study: Study, study_dir: Path, address: str | None = None, verbose: bool = False,
        resume: bool = False) -> None:
    """Run every trial of ``study`` and leave the result files in ``study_dir``; with
    ``verbose``, Ray's own status tables and worker output are shown too. With ``resume``,
    continue an interrupted run there: the trials that finished stay, the ones that were
    running are rerun from their start. What the trials lack is planned from the finished
    networks' rows, never from Optuna's view of them. The caller holds the folder's lock."""
    study_dir = Path(study_dir).resolve()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # On Ctrl-C Ray advises `Tuner.restore(...)`; this tool's own resume command is what works.
    logging.getLogger("ray.tune.tune").addFilter(lambda record: "Resume " not in record.getMessage())
    # Ray's own ResourceChangingScheduler reads a controller attribute Ray then warns about.
    controller = logging.getLogger("ray.tune.execution.tune_controller")
    controller.addFilter(lambda record: "_reuse_actors" not in record.getMessage())
    if not verbose:
        controller.addFilter(_TrialFailures(study_dir / "ray" / "errors.log"))
    started_here = not ray.is_initialized()
    if started_here:
        # Without an address, a new embedded instance ("local"): never a cluster that `ray start`
        # left on this machine, running or stale. Its token auth stays on.
        try:
            ray.init(address=address or "local", include_dashboard=False, log_to_driver=verbose,
                     logging_level="info" if verbose else "warning")
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.AuthenticationError) as err:
            if address is None:
                raise
            raise UserError(f"--address {address}: cannot join that Ray cluster: {err}. Is "
                            "`ray start --head` running there, and is its auth token here "
                            "(~/.ray/auth_token or RAY_AUTH_TOKEN)?") from None
    try:
        if address:  # a cluster's nodes are known only now: nothing is written yet
            check_resources(study, *_largest_node(), where=f"the largest node of the cluster at {address}")
        if resume:
            gone = results.discard_unfinished(study_dir)
            told, failed = settle_interrupted(study, study_dir)
            print(f"resuming {study_dir}: {counted(len(gone), 'unfinished trial')} discarded; of the "
                  f"Optuna trials left running, {told} told the value their finished rows hold, "
                  f"{failed} marked failed",
                  flush=True)
        results.write_study(study_dir, study)
        data = build(study.data)  # warm the cache once, before trials race to generate it
        print(f"dataset {data.fingerprint}: {study.data.n_images:,} images "
              f"({'cached' if data.cached else 'generated'} in {data.seconds:.1f} s)\n"
              f"source: {data.source}", flush=True)
        _fit(study, study_dir, verbose)
    finally:
        if started_here:
            ray.shutdown()


def searcher(study: Study, study_dir: Path, done: list[dict[str, Any]] = ()) -> Searcher:
    """Optuna (one study, or one per compared level) behind Ray Tune. ``done`` lists the
    configurations an interrupted run already tried: a grid is given only the points it lacks,
    and the samplers of ``tpe`` and ``random`` continue from the trials in the storage."""
    search, stored = study.search, optuna_storage(study, study_dir)

    def optuna_search(keys: list[str], name: str, points: list[dict] | None = None) -> OptunaSearch:
        return FailingSearch(space=optuna_space(study, keys), metric=METRIC, mode=MODE,
                             sampler=sampler(study, keys, _stored_trials(stored, name)), study_name=name,
                             storage=stored, points_to_evaluate=points)

    if study.tuned_per_level():
        key = study.compare
        others = [k for k in study.space if k != key]
        return PerLevel(key, {level: optuna_search(others, study_name(study, level))
                              for level in study.space[key].levels()}, search.trials,
                        Counter(configuration[key] for configuration in done))
    if search.sampler == "grid":
        # The points the finished rows lack, given explicitly: Optuna's GridSampler counts a FAIL
        # trial (one a killed run left behind) as visited and would never train its point again.
        keys = list(study.space)  # a grid's keys are all choices: the candidates are the levels
        missing = [point for point in combinations(study, keys) if point not in done]
        return optuna_search(keys, study_name(study), missing)
    return optuna_search(list(study.space), study_name(study))


def _stored_trials(storage: optuna.storages.BaseStorage, name: str) -> int:
    """How many trials the Optuna study ``name`` holds already (0 for a new one)."""
    try:
        return len(storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False))
    except KeyError:
        return 0


def _reallocates(study: Study, gpu: float) -> bool:
    """Whether the CPUs of finished trials go to the running ones: as the study says, and only
    where all CPUs are on one node, since a trial's CPUs must all be on its node (Ray Tune's
    even split counts the whole cluster's, and a trial given more than a node has never starts)."""
    nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0]
    return study.reallocates(gpu) and len(nodes) == 1


def _largest_node() -> tuple[float, float]:
    """The CPUs and GPUs of the cluster's largest alive node: one trial runs on one node."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    return max((n.get("CPU", 0) for n in nodes), default=0), max((n.get("GPU", 0) for n in nodes), default=0)


def settle_interrupted(study: Study, study_dir: Path) -> tuple[int, int]:
    """Settle the Optuna trials an interrupted run left RUNNING or WAITING. One whose Ray trial
    wrote its rows before the driver died (which then had no time to tell Optuna) gets the value
    those rows hold, the mean over seeds of each seed's best validation loss, as the driver would
    have told it; the others (a grid's points queued but never started among them) died with the
    run, are planned again from the finished rows, and are marked FAIL. Returns how many of each."""
    networks = _finished(study_dir)
    stored, told, failed = optuna_storage(study, study_dir), 0, 0
    for frozen in stored.get_all_studies():
        if frozen.study_name not in study_names(study):
            continue  # a shared storage holds other studies too
        unsettled = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
        for trial in stored.get_all_trials(frozen._study_id, states=unsettled):
            rows = networks[networks["trial_id"] == trial.user_attrs.get(RAY_TRIAL)]
            if len(rows) and rows["status"].isin(results.TRAINED).all():
                stored.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.COMPLETE,
                                              [float(rows["best_val_loss"].mean())])
                told += 1
            else:
                stored.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
                failed += 1
    return told, failed


def _finished(study_dir: Path) -> pd.DataFrame:
    """The network rows of the trials that finished before this run (their rows are staged);
    ``trials.parquet`` is brought up to date on the way."""
    if not results.consolidate(study_dir):
        return pd.DataFrame(columns=["trial_id", "stage"])
    return pd.read_parquet(Path(study_dir) / "trials.parquet")


def _fit(study: Study, study_dir: Path, verbose: bool) -> None:
    """The tuning stage and, where the study selects, the confirmation stage; of an interrupted
    study, the trials it lacks."""
    search = study.search
    finished = _finished(study_dir).drop_duplicates("trial_id")  # a row per configuration
    done = [{k: row[k] for k in study.space} for _, row in finished[finished["stage"] == "tune"].iterrows()]
    gpu, cluster = study.resources.gpu, ray.cluster_resources()
    if gpu == "auto":
        gpu = gpu_share(study.n_configurations()) if cluster.get("GPU", 0) > 0 else 0
    slots = int(cluster.get("CPU", 1) // study.resources.cpu) if study.resources.cpu else study.n_trials()
    if gpu:
        slots = min(slots, int(cluster.get("GPU", 0) // gpu))
    # The confirmation stage retrains each level in the space's order; the tuning stage's order is
    # the sampler's to choose.
    stages: list[tuple[list[str | None], int]] = [([None] * study.n_configurations(), study.looks()[0])]
    if study.confirms():
        levels = [str(v) for v in study.space[study.compare_key()].levels()]
        stages.append((levels, study.looks("confirm")[0]))
    progress = _Progress(stages, len(finished), study.train.epochs, slots)
    print(f"study {study.name}: {counted(study.n_configurations(), 'configuration')} × "
          f"{describe(search.seeds)}, "
          f"each configuration one trial training its seeds together; {study.resources.cpu:g} CPU "
          f"and {gpu:g} GPU per trial" + ("; the CPUs a finished trial frees go to the running ones"
                                          if _reallocates(study, gpu) else ""), flush=True)
    missing = study.n_configurations() - len(done)
    progress.rounds_may_follow = study.design() is not None and not study.confirms()  # its round 1
    if missing > 0:
        _stage(study, study_dir, "tune", searcher(study, study_dir, done), missing, gpu, progress, None,
               verbose, study.seeds("tune"))
    if not study.confirms() and study.design() is None:
        return
    finished = _finished(study_dir)  # with the tuning stage's trials
    if study.confirms():
        tuned = finished[finished["stage"] == "tune"]
        if tuned["trial_id"].nunique() < study.n_configurations():
            return  # interrupted: the CLI reports what is missing
        print("confirmation: each level's selected configuration retrained on fresh seeds", flush=True)
        _rounds(study, study_dir, "confirm", best_configurations(study, tuned, study.compare_key()),
                finished, gpu, progress, verbose)
    else:
        _rounds(study, study_dir, "tune", {level: {study.compare_key(): level}
                                           for level in study.space[study.compare_key()].levels()},
                finished, gpu, progress, verbose)


def _rounds(study: Study, study_dir: Path, stage: str, configurations: dict[Any, dict[str, Any]],
            finished: pd.DataFrame, gpu: float, progress: _Progress, verbose: bool) -> None:
    """The compared networks of ``stage``, round by round: each round trains, for every level still
    undecided (and the reference while any is), the round's seeds it lacks (``finished``: the
    network rows so far), as one trial per level; an interrupted round's trials run again. With a
    sequential design, the decisions after each round (``study.analysis.decisions``) say which
    levels go on."""
    key, design, looks = study.compare_key(), study.design(), study.looks(stage)
    going = list(configurations)
    for look in range(1, len(looks) + 1):
        seeds = study.seeds(stage, look)
        progress.rounds_may_follow = design is not None and look < len(looks)
        if look > 1:
            progress.extend([str(level) for level in going], len(seeds))
        rows, lacking = finished[finished["stage"] == stage], {}
        for level in going:
            have = set(rows.loc[rows[key] == level, "seed"])
            lacking.setdefault(tuple(s for s in seeds if s not in have), []).append(level)
        for needed, levels in lacking.items():
            if needed:
                print(f"round {look}: {', '.join(map(str, levels))} on seeds {needed[0]}..{needed[-1]}",
                      flush=True)
                # The points are the whole configurations; the param space only names the keys they fill.
                _stage(study, study_dir, stage, BasicVariantGenerator(
                    points_to_evaluate=[configurations[level] for level in levels]), len(levels), gpu,
                    progress, dict.fromkeys(study.space), verbose, list(needed))
        if design is None or look == len(looks):
            return
        finished = _finished(study_dir)
        decided = decisions(study, finished)
        print(f"look {look} of {len(looks)}: " + "; ".join(
            f"{level}: {d.verdict} (diff {d.diff:+.4g}, repeated p {d.p:.3g}, {d.n} vs {d.n_reference})"
            for level, d in decided.items()), flush=True)
        going = [level for level, d in decided.items() if not d.settled()]
        if not going:
            return
        going.insert(0, next(iter(configurations)))  # the reference trains while any level is undecided


def _stage(study: Study, study_dir: Path, stage: str, search_alg: Searcher, trials: int, gpu: float,
           progress: _Progress, param_space: dict | None, verbose: bool, seeds: list[int]) -> None:
    # Ray's newer console output prints an experiment table and a TensorBoard hint at every
    # verbosity; its legacy reporter at verbosity 0 prints nothing, which quiet mode wants.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if verbose else "0"
    # Tune warns when a callback takes over 0.5 s ("may be a performance bottleneck"): ours write
    # the result tables after each trial, which is the point, not a bottleneck a user can act on.
    logging.getLogger("ray.tune.utils.util").setLevel(logging.NOTSET if verbose else logging.ERROR)
    runs = study_dir / "ray"
    # A resumed study's Ray runs go beside the interrupted ones (tune, tune-2, ...).
    name = next(n for n in (stage, *(f"{stage}-{k}" for k in range(2, 1000))) if not (runs / n).exists())
    search = study.search
    asha = stage == "tune" and search.scheduler == "asha"  # never the networks that are compared
    scheduler = PerLevelASHA(study.compare_key(), study.train.epochs, search.grace_period,
                             search.reduction_factor) if asha else None
    reallocate = _reallocates(study, gpu)
    # A checkpoint every epoch makes Ray save its experiment state as often, and warn.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    settings = {"study": study.model_dump(by_alias=True), "study_dir": str(study_dir), "stage": stage}
    fn = tune.with_parameters(trainable, **settings, seeds=seeds, left=checkpoints.left_behind(study_dir))
    grid = tune.Tuner(
        tune.with_resources(fn, {"cpu": study.resources.cpu, "gpu": gpu}),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg, num_samples=trials,
            scheduler=ResourceChangingScheduler(scheduler or FIFOScheduler(), FreedCPUs(trials))
            if reallocate else scheduler,
            # Reused actors spare each trial a new worker process (importing torch: seconds);
            # a trial given more CPUs needs a new one.
            reuse_actors=not reallocate),
        run_config=tune.RunConfig(
            name=name, storage_path=str(runs), verbose=2 if verbose else 0,
            callbacks=[_Recorder(study, study_dir, stage, seeds, progress, scheduler)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=study.resources.retries)),
    ).fit()
    if scheduler is not None:
        _test_stopped(study, study_dir, grid, scheduler, {"num_cpus": study.resources.cpu, "num_gpus": gpu},
                      {**settings, "threads": max(1, int(study.resources.cpu))}, progress)


def _test_stopped(study: Study, study_dir: Path, grid: tune.ResultGrid, scheduler: PerLevelASHA,
                  resources: dict[str, float], settings: dict[str, Any], progress: _Progress) -> None:
    """Test the best epochs of the trials ASHA stopped, from their last snapshots, as Ray tasks with
    a trial's resources, all at once; then remove every snapshot of the stage (a finished trial's
    weights are in ``weights/``)."""
    stopped = {r.metrics["trial_id"]: r for r in grid if r.metrics.get("trial_id") in scheduler.stopped
               and r.checkpoint}
    tests = {trial_id: _finish.options(**resources).remote(
        **settings, trial_id=trial_id, params=_params(study, r.config), checkpoint=r.checkpoint,
        reason=scheduler.reason(trial_id)) for trial_id, r in stopped.items()}
    for trial_id, test in tests.items():
        try:
            ray.get(test)
        except ray.exceptions.RayError as err:  # only a tuning trial's test: the study goes on
            last = str(err).strip().splitlines()[-1]
            results.write_failed(study_dir, trial_id, "tune", study.seeds("tune"),
                                 _params(study, stopped[trial_id].config),
                                 f"{scheduler.reason(trial_id)}; testing its best epochs then failed: {last}")
    if stopped:
        done = results.consolidate(study_dir)
        print(f"{progress(done)} tested the best epochs of {len(stopped)} trial(s) ASHA stopped", flush=True)
    for r in grid:
        if r.checkpoint:
            shutil.rmtree(r.checkpoint.path, ignore_errors=True)

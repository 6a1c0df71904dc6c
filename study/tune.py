"""Ray Tune schedules the trials, Optuna (through Ray Tune's OptunaSearch) chooses them.

A trial is one configuration: one Optuna trial (stored in ``optuna.db``) and one Ray trial, which
trains the configuration's ``search.seeds`` networks (seeds 0..S−1) at once and reports, per
epoch, the means over its seeds; Optuna's value is the mean over seeds of each seed's best
validation loss. When the study is tuned per level of its compare factor, each level has its own
Optuna study in that file (named ``<study>:<level>``) and ``PerLevel`` lets them take turns.
Each Ray trial writes its own result files; a callback on the driver keeps ``trials.parquet``
and ``epochs.parquet`` current and prints one line per trial. When the study selects (its space
varies more than the compared factor), a confirmation stage follows: each level's selected
configuration is one more trial, trained on fresh seeds and marked ``stage: confirm``.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
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
from ray.tune.search import BasicVariantGenerator, Searcher
from ray.tune.search.optuna import OptunaSearch

from study import results
from study.analysis import best_configurations
from study.config import Study, resolve
from study.data import build
from study.errors import UserError
from study.train import fit

METRIC, MODE = "best_val_loss", "min"  # a configuration's mean over seeds of their best val loss
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


def sampler(study: Study, keys: list[str]) -> optuna.samplers.BaseSampler:
    seed = study.search.seed
    if study.search.sampler == "grid":
        return optuna.samplers.GridSampler({k: study.space[k].levels() for k in keys}, seed=seed)
    if study.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


class PerLevel(Searcher):
    """One searcher per level of ``key``, taking turns, ``trials`` configurations each.

    Ray Tune has no stratified search, and a single sampler over the compared factor would
    spend its budget on the level it currently likes: the comparison needs every level tuned
    equally. Each suggestion goes to the level with the fewest so far. Every level's sampler
    has the same seed, so the levels start from the same random configurations.
    """

    def __init__(self, key: str, searchers: dict[Any, Searcher], trials: int) -> None:
        first = next(iter(searchers.values()))
        super().__init__(metric=first.metric, mode=first.mode)
        self.key, self.searchers, self.trials = key, searchers, trials
        self.suggested = dict.fromkeys(searchers, 0)
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


def _params(study: Study, config: dict[str, Any]) -> dict[str, Any]:
    return {k: config[k] for k in study.space}


def trainable(config: dict[str, Any], study: dict, study_dir: str, threads: int, stage: str) -> None:
    """One Ray trial: resolve the chosen parameters, fit every seed of ``stage``, write the
    result files."""
    torch.set_num_threads(threads)
    base = Study.model_validate(study)
    params = _params(base, config)
    trial_id = tune.get_context().get_trial_id()
    result = fit(resolve(base, params), base.seeds(stage), report=tune.report)
    results.write_trial(Path(study_dir), trial_id, stage, params, result)


class _Recorder(tune.Callback):
    """Driver side: consolidate the result tables and print progress after every trial."""

    def __init__(self, study: Study, study_dir: Path, stage: str, start: float) -> None:
        self.study, self.study_dir, self.stage, self.start = study, study_dir, stage, start
        self.seeds = study.seeds(stage)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._record(trial, "done", trial.last_result)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        results.write_failed(self.study_dir, trial.trial_id, self.stage, self.seeds,
                             _params(self.study, trial.config))
        self._record(trial, "FAILED", {})

    def _record(self, trial, what: str, last: dict) -> None:
        n = results.consolidate(self.study_dir)
        shown = " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in _params(self.study, trial.config).items())
        seeds = f"{len(self.seeds)} seeds" if len(self.seeds) > 1 else "1 seed"
        score = f"best_val_loss={last['best_val_loss']:.4f} (mean of {seeds})" \
            if "best_val_loss" in last else "see the Ray log under ray/"
        elapsed = time.perf_counter() - self.start
        print(f"[{n}/{self.study.n_trials()} {elapsed:6.0f}s] {self.stage} trial {trial.trial_id} {what}: "
              f"{shown} {score}", flush=True)


def gpu_share(trials: int) -> float:
    """``resources.gpu: auto``: the GPU share of one trial. A study of fewer trials than
    ``TRIALS_PER_GPU`` splits the GPU between them, so a two-arm study runs both at once and
    uses the whole GPU; larger studies run ``TRIALS_PER_GPU`` trials on each GPU at a time."""
    return 1 / min(TRIALS_PER_GPU, max(1, trials))


def run(study: Study, study_dir: Path, address: str | None = None) -> None:
    """Run every trial of ``study`` and leave the result files in ``study_dir``."""
    study_dir = Path(study_dir).resolve()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # GridSampler stops its study after the last grid point; Ray logs that as a misleading warning.
    logging.getLogger("ray.tune.search.optuna.optuna_search").addFilter(
        lambda record: "Study.stop" not in record.getMessage())
    started_here = not ray.is_initialized()
    if started_here:
        # Without an address, a new embedded instance ("local"): never a cluster that `ray start`
        # left on this machine, running or stale. Its token auth stays on.
        try:
            ray.init(address=address or "local", include_dashboard=False, logging_level="warning")
        except (ConnectionError, RuntimeError, ValueError) as err:
            if address is None:
                raise
            raise UserError(f"--address {address}: cannot join that Ray cluster: {err}. Is "
                            "`ray start --head` running there, and is its auth token here "
                            "(~/.ray/auth_token or RAY_AUTH_TOKEN)?") from None
    try:
        results.write_study(study_dir, study)
        data = build(study.data)  # warm the cache once, before trials race to generate it
        print(f"dataset {data.fingerprint}: {study.data.n_images:,} images "
              f"({'cached' if data.cached else 'generated'} in {data.seconds:.1f} s)\n"
              f"source: {data.source}", flush=True)
        _fit(study, study_dir)
    finally:
        if started_here:
            ray.shutdown()


def searcher(study: Study, study_dir: Path) -> Searcher:
    """Optuna (one study, or one per compared level) behind Ray Tune."""
    search = study.search
    storage = optuna.storages.RDBStorage(f"sqlite:///{Path(study_dir) / 'optuna.db'}")

    def optuna_search(keys: list[str], name: str) -> OptunaSearch:
        return OptunaSearch(space=optuna_space(study, keys), metric=METRIC, mode=MODE,
                            sampler=sampler(study, keys), study_name=name, storage=storage)

    if study.tuned_per_level():
        key = study.compare
        others = [k for k in study.space if k != key]
        return PerLevel(key, {level: optuna_search(others, f"{study.name}:{level}")
                              for level in study.space[key].levels()}, search.trials)
    return optuna_search(list(study.space), study.name)


def _fit(study: Study, study_dir: Path) -> None:
    """The tuning stage and, where the study selects, the confirmation stage."""
    search, start = study.search, time.perf_counter()
    gpu = study.resources.gpu
    if gpu == "auto":
        gpu = gpu_share(study.n_configurations()) if ray.cluster_resources().get("GPU", 0) > 0 else 0
    print(f"study {study.name}: {study.n_configurations()} configurations × {search.seeds} seeds, "
          f"each configuration one trial training its seeds together; {study.resources.cpu:g} CPU "
          f"and {gpu:g} GPU per trial", flush=True)
    _stage(study, study_dir, "tune", searcher(study, study_dir), study.n_configurations(), gpu, start, None)
    if not study.confirms():
        return
    trials = pd.read_parquet(study_dir / "trials.parquet")
    tuned = trials[trials["stage"] == "tune"]
    if tuned["trial_id"].nunique() < study.n_configurations():
        return  # interrupted: the CLI reports what is missing
    chosen = best_configurations(study, tuned[tuned["status"] == "COMPLETED"], study.compare_key())
    seeds = study.seeds("confirm")
    print(f"confirmation: each level's selected configuration retrained on fresh seeds "
          f"{seeds[0]}..{seeds[-1]}", flush=True)
    # The points are the whole configurations; the param space only names the keys they fill.
    _stage(study, study_dir, "confirm", BasicVariantGenerator(points_to_evaluate=list(chosen.values())),
           len(chosen), gpu, start, dict.fromkeys(study.space))


def _stage(study: Study, study_dir: Path, stage: str, search_alg: Searcher, trials: int, gpu: float,
           start: float, param_space: dict | None) -> None:
    fn = tune.with_parameters(trainable, study=study.model_dump(by_alias=True), study_dir=str(study_dir),
                              threads=max(1, int(study.resources.cpu)), stage=stage)
    tune.Tuner(
        tune.with_resources(fn, {"cpu": study.resources.cpu, "gpu": gpu}),
        param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=search_alg, num_samples=trials),
        run_config=tune.RunConfig(name=stage, storage_path=str(study_dir / "ray"),
                                  callbacks=[_Recorder(study, study_dir, stage, start)], verbose=1),
    ).fit()

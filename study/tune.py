"""Ray Tune schedules the trials, Optuna (through Ray Tune's OptunaSearch) chooses them.

A trial is one configuration: one Optuna trial (stored in ``optuna.db``) and one Ray trial, which
trains the configuration's ``search.seeds`` networks (seeds 0..S−1) at once and reports, per
epoch, the means over its seeds; Optuna's value is the mean over seeds of each seed's best
validation loss. When the study is tuned per level of its compare factor, each level has its own
Optuna study in that file (named ``<study>:<level>``) and ``PerLevel`` lets them take turns.
Each Ray trial writes its own result files; a callback on the driver keeps ``trials.parquet``
and ``epochs.parquet`` current and prints one line per trial.
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
import ray
import torch
from ray import tune
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from study import results
from study.config import Study, resolve
from study.data import build
from study.errors import UserError
from study.train import fit

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


def trainable(config: dict[str, Any], study: dict, study_dir: str, threads: int) -> None:
    """One Ray trial: resolve the chosen parameters, fit every seed, write the result files."""
    torch.set_num_threads(threads)
    base = Study.model_validate(study)
    params = _params(base, config)
    trial_id = tune.get_context().get_trial_id()
    result = fit(resolve(base, params), base.seeds(), report=tune.report)
    results.write_trial(Path(study_dir), trial_id, params, result)


class _Recorder(tune.Callback):
    """Driver side: consolidate the result tables and print progress after every trial."""

    def __init__(self, study: Study, study_dir: Path, total: int) -> None:
        self.study, self.study_dir, self.total = study, study_dir, total
        self.start = time.perf_counter()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._record(trial, "done", trial.last_result)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        params = _params(self.study, trial.config)
        results.write_failed(self.study_dir, trial.trial_id, self.study.seeds(), params)
        self._record(trial, "FAILED", {})

    def _record(self, trial, what: str, last: dict) -> None:
        n = results.consolidate(self.study_dir)
        shown = " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in _params(self.study, trial.config).items())
        score = f"best_val_loss={last['best_val_loss']:.4f} (mean of {self.study.search.seeds} seeds)" \
            if "best_val_loss" in last else "see the Ray log under ray/"
        elapsed = time.perf_counter() - self.start
        print(f"[{n}/{self.total} {elapsed:6.0f}s] trial {trial.trial_id} {what}: {shown} {score}",
              flush=True)


def gpu_share(trials: int) -> float:
    """``resources.gpu: auto``: the GPU share of one trial. A study of fewer trials than
    ``TRIALS_PER_GPU`` splits the GPU between them, so a two-arm study runs both at once and
    uses the whole GPU; larger studies run ``TRIALS_PER_GPU`` trials on each GPU at a time."""
    return 1 / min(TRIALS_PER_GPU, max(1, trials))


def run(study: Study, study_dir: Path, address: str | None = None) -> tune.ResultGrid:
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
              f"({'cached' if data.cached else 'generated'} in {data.seconds:.1f} s)", flush=True)
        return _fit(study, study_dir)
    finally:
        if started_here:
            ray.shutdown()


def searcher(study: Study, study_dir: Path) -> Searcher:
    """Optuna (one study, or one per compared level) behind Ray Tune."""
    search = study.search
    storage = optuna.storages.RDBStorage(f"sqlite:///{Path(study_dir) / 'optuna.db'}")

    def optuna_search(keys: list[str], name: str) -> OptunaSearch:
        return OptunaSearch(space=optuna_space(study, keys), metric=search.metric, mode=search.mode,
                            sampler=sampler(study, keys), study_name=name, storage=storage)

    if study.tuned_per_level():
        key = study.compare
        others = [k for k in study.space if k != key]
        search_alg: Searcher = PerLevel(key, {level: optuna_search(others, f"{study.name}:{level}")
                                              for level in study.space[key].levels()}, search.trials)
    else:
        search_alg = optuna_search(list(study.space), study.name)
    return search_alg


def _fit(study: Study, study_dir: Path) -> tune.ResultGrid:
    search = study.search
    total = study.n_trials()

    gpu = study.resources.gpu
    if gpu == "auto":
        gpu = gpu_share(total) if ray.cluster_resources().get("GPU", 0) > 0 else 0
    threads = max(1, int(study.resources.cpu))
    fn = tune.with_parameters(trainable, study=study.model_dump(by_alias=True),
                              study_dir=str(study_dir), threads=threads)
    tuner = tune.Tuner(
        tune.with_resources(fn, {"cpu": study.resources.cpu, "gpu": gpu}),
        tune_config=tune.TuneConfig(search_alg=searcher(study, study_dir), num_samples=total),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(study_dir / "ray"),
            callbacks=[_Recorder(study, study_dir, total)],
            verbose=1,
        ),
    )
    print(f"study {study.name}: {total} trials (configurations) × {search.seeds} seeds trained "
          f"together = {study.n_networks()} networks; {study.resources.cpu:g} CPU and {gpu:g} GPU "
          "per trial", flush=True)
    return tuner.fit()

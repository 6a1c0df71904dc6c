"""Optuna behind Ray Tune: the space, the sampler, one Optuna study per compared level taking
turns, and the Optuna side of a resumed study.

A trial is one configuration: one Optuna trial (in ``search.storage``) and one Ray trial; Optuna's
value is the mean over seeds of each seed's best validation loss. Where the levels are the
configurations and their seeds are split over Ray trials, Optuna is told each level's trial once
its networks are trained (``tell_levels``). When the study is tuned per level
of its compare factor, each level has its own Optuna study in that file (named
``<study>:<level>``) and ``PerLevel`` lets them take turns.

Example:
    >>> from study.loading import load
    >>> study = load("searchspaces/position.yaml")
    >>> sorted(optuna_space(study, ["train.lr"]))
    ['train.lr']
"""

from __future__ import annotations

import math
import pickle
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from study import results
from study.config import Study
from study.resolution import combinations
from study.storage import optuna_storage, study_name, study_names

if TYPE_CHECKING:
    import pandas as pd

METRIC, MODE = "best_val_loss", "min"  # a configuration's mean over seeds of their best val loss
RAY_TRIAL = "ray_trial_id"  # the Optuna trial's user attribute naming its Ray trial


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


def tell_levels(study: Study, study_dir: Path) -> int:
    """Tell Optuna the first round of a study whose levels are its configurations, where it trained
    them without the search (``Study.first_round``): one trial per level whose round has finished,
    its value the mean over the round's seeds of each seed's best validation loss (FAIL where a
    network failed), as ``FailingSearch`` would have told it. A level Optuna already holds a
    finished trial of is left as it is, so a resumed run tells each once. Returns how many were told."""
    key, seeds, stored = study.compare_key(), set(study.seeds()), optuna_storage(study, study_dir)
    networks = results.finished(study_dir)
    first = networks[(networks["stage"] == "tune") & networks["seed"].isin(seeds)]
    per_level, told = study.tuned_per_level(), 0
    for level in study.space[key].levels() if len(first) else []:  # none: no key column either
        rows = first[first[key] == level]
        if set(rows["seed"]) != seeds:
            continue  # its round is not finished: told by the run that finishes it
        # As ``searcher`` names the Optuna studies and their parameters.
        name, params = (study_name(study, level), {}) if per_level else (study_name(study), {key: level})
        ot = optuna.create_study(study_name=name, storage=stored, direction="minimize", load_if_exists=True)
        if any(t.params == params and t.state.is_finished() for t in ot.get_trials(deepcopy=False)):
            continue
        trained = bool(rows["status"].isin(results.TRAINED).all())
        ot.add_trial(optuna.trial.create_trial(
            params=params, distributions=optuna_space(study, list(params)),
            value=float(rows["best_val_loss"].mean()) if trained else None,
            state=optuna.trial.TrialState.COMPLETE if trained else optuna.trial.TrialState.FAIL))
        told += 1
    return told


def _stored_trials(storage: optuna.storages.BaseStorage, name: str) -> int:
    """How many trials the Optuna study ``name`` holds already (0 for a new one)."""
    try:
        return len(storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False))
    except KeyError:
        return 0


def settle_interrupted(study: Study, study_dir: Path, networks: pd.DataFrame) -> tuple[int, int]:
    """Settle the Optuna trials an interrupted run left RUNNING or WAITING, given the ``networks``
    that finished (``results.finished``). One whose Ray trial wrote its rows before the driver
    died (which then had no time to tell Optuna) gets the value those rows hold, the mean over
    seeds of each seed's best validation loss, as the driver would have told it; the others (a
    grid's points queued but never started among them) died with the run, are planned again from
    the finished rows, and are marked FAIL. Returns how many of each."""
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



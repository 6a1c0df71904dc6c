"""The Optuna side of the wiring, without Ray: spaces and samplers as OptunaSearch receives them,
and what a resumed study tells Optuna."""

import optuna
import pytest
from ray.tune.search import Searcher

from study import config, loading, resolution, results
from study.resolution import resolve
from study.train import fit
from study.tune import optuna_space, sampler, searcher, settle_interrupted

from .conftest import ROOT, SMOKE


def mixed_study(sampler_name: str) -> config.Study:
    sets = ["search.trials=6", f"search.sampler={sampler_name}",
            "space={model.attention.layers: {choice: [[], [0]]}, train.lr: {loguniform: [1.0e-4, 3.0e-3]},"
            " train.batch_size: {int: [16, 64]}}"]
    return loading.load(SMOKE, sets)


@pytest.mark.parametrize("name", ["tpe", "random"])
def test_samplers_draw_valid_configurations_from_the_space(name):
    study = mixed_study(name)
    ot = optuna.create_study(sampler=sampler(study, list(study.space)))
    for _ in range(6):
        trial = ot.ask(fixed_distributions=optuna_space(study, list(study.space)))
        resolved = resolution.resolve(study, trial.params)
        assert resolved.model.attention.layers in ([], [0])
        assert 1.0e-4 <= resolved.train.lr <= 3.0e-3 and 16 <= resolved.train.batch_size <= 64
        ot.tell(trial, resolved.train.lr)


def test_grid_visits_every_combination_once():
    study = loading.load(SMOKE, ["space={model.attention.layers: {choice: [[], [0], [1]]},"
                                " model.attention.iterations: {choice: [1, 4]}}"])
    ot = optuna.create_study(sampler=sampler(study, list(study.space)))
    seen = set()
    for _ in range(study.n_configurations()):
        trial = ot.ask(fixed_distributions=optuna_space(study, list(study.space)))
        seen.add(tuple(trial.params.values()))  # running trials count as visited: no tell needed
    assert len(seen) == study.n_configurations() == 6


def test_each_level_is_tuned_by_its_own_study_taking_turns(tmp_path):
    study = loading.load(ROOT / "searchspaces" / "position.yaml", ["search.trials=2", "search.seeds=1"])
    search = searcher(study, tmp_path)
    suggestions = [search.suggest(f"t{i}") for i in range(8)]
    levels = [s["model.attention.layers"] for s in suggestions]
    assert levels == ["none", "conv1", "conv2", "both"] * 2  # balanced, in turn
    assert search.suggest("t8") == Searcher.FINISHED
    for i, s in enumerate(suggestions):
        search.on_trial_complete(f"t{i}", {"best_val_loss": s["train.lr"]})
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    for level in ("none", "conv1", "conv2", "both"):
        trials = optuna.load_study(study_name=f"position:{level}", storage=storage).trials
        assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
        assert set(trials[0].params) == {"train.lr"}  # the compared key is fixed per study


def test_a_resumed_search_suggests_only_what_the_interrupted_run_lacks(tmp_path):
    # Tuned per level: each level's count starts from the configurations it already has.
    study = loading.load(ROOT / "searchspaces" / "position.yaml", ["search.trials=2", "search.seeds=1"])
    done = [{"model.attention.layers": "none", "train.lr": 0.001}] * 2 + \
        [{"model.attention.layers": "conv1", "train.lr": 0.001}]
    search = searcher(study, tmp_path, done)
    levels = [search.suggest(f"t{i}")["model.attention.layers"] for i in range(5)]
    assert sorted(levels) == ["both", "both", "conv1", "conv2", "conv2"]
    assert search.suggest("t5") == Searcher.FINISHED
    # A grid: only the missing points, each once.
    grid = loading.load(SMOKE, ["space={model.attention.layers: {choice: [[], [0]]}, "
                               "train.lr: {choice: [0.001, 0.003]}}"])
    tried = [{"model.attention.layers": "[]", "train.lr": 0.003}]
    (tmp_path / "grid").mkdir()
    search = searcher(grid, tmp_path / "grid", tried)
    suggested = [search.suggest(f"g{i}") for i in range(3)]
    assert sorted((s["model.attention.layers"], s["train.lr"]) for s in suggested) == [
        ("[0]", 0.001), ("[0]", 0.003), ("[]", 0.001)]


@pytest.mark.slow
def test_a_resumed_study_settles_the_optuna_trials_a_killed_driver_left_running(tmp_path):
    study = loading.load(SMOKE, ["data.n_images=300", "train.epochs=1", "space={model.attention.layers: "
                                "{choice: [[], [0]]}, train.lr: {choice: [0.001, 0.003]}}"])
    search = searcher(study, tmp_path)
    suggested = {trial_id: search.suggest(trial_id) for trial_id in ("done", "lost", "killed")}
    # "done" wrote its rows but the driver died before telling Optuna; "lost" failed its networks;
    # "killed" died with the driver.
    result = fit(resolve(study, suggested["done"]), seeds=[0, 1])
    results.write_trial(tmp_path, "done", "tune", suggested["done"], result)
    results.write_failed(tmp_path, "lost", "tune", [0, 1], suggested["lost"], "the worker failed")
    # The grid's fourth point was queued (WAITING) and never started: it is settled too.
    assert settle_interrupted(study, tmp_path, results.finished(tmp_path)) == (1, 3)
    stored = optuna.load_study(study_name="smoke", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    assert {t.state.name for t in stored} == {"COMPLETE", "FAIL"}
    trials = {t.user_attrs["ray_trial_id"]: t for t in stored if "ray_trial_id" in t.user_attrs}
    assert trials["done"].state == optuna.trial.TrialState.COMPLETE
    assert trials["done"].value == pytest.approx((result.networks[0].best_val_loss +
                                                  result.networks[1].best_val_loss) / 2)
    assert trials["lost"].state == trials["killed"].state == optuna.trial.TrialState.FAIL

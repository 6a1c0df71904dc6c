"""The Optuna side of the wiring, without Ray: spaces and samplers as OptunaSearch receives them."""

import optuna
import pytest

from study import config
from study.tune import optuna_space, sampler

from .conftest import SMOKE


def mixed_study(sampler_name: str) -> config.Study:
    sets = ["search.trials=6", f"search.sampler={sampler_name}",
            "space={model.attention.layers: {choice: [[], [0]]}, train.lr: {loguniform: [1.0e-4, 3.0e-3]},"
            " train.batch_size: {int: [16, 64]}}"]
    return config.load(SMOKE, sets)


@pytest.mark.parametrize("name", ["tpe", "random"])
def test_samplers_draw_valid_configurations_from_the_space(name):
    study = mixed_study(name)
    ot = optuna.create_study(sampler=sampler(study))
    for _ in range(6):
        trial = ot.ask(fixed_distributions=optuna_space(study))
        resolved = config.resolve(study, trial.params)
        assert resolved.model.attention.layers in ([], [0])
        assert 1.0e-4 <= resolved.train.lr <= 3.0e-3 and 16 <= resolved.train.batch_size <= 64
        ot.tell(trial, resolved.train.lr)


def test_grid_visits_every_combination_once():
    study = config.load(SMOKE, ["space={model.attention.layers: {choice: [[], [0], [1]]},"
                                " model.attention.iterations: {choice: [1, 4]}}"])
    ot = optuna.create_study(sampler=sampler(study))
    seen = set()
    for _ in range(study.n_configurations()):
        trial = ot.ask(fixed_distributions=optuna_space(study))
        seen.add(tuple(trial.params.values()))  # running trials count as visited: no tell needed
    assert len(seen) == study.n_configurations() == 6

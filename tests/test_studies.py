"""The studies shipped in searchspaces/: each validates, and each runs at smoke scale through
`study run --set ...` (Ray Tune and Optuna for real) with `study analyze` giving a row per level."""

import json

import optuna
import pandas as pd
import pytest
import ray
from typer.testing import CliRunner

from study import loading
from study.cli import app

from .conftest import ROOT

FACTOR_STUDIES = ["position", "iterations", "layers", "complexity"]
DATA_STUDIES = ["data-size", "data-orientation", "data-withheld", "data-colour"]
# The studies' own CPU per trial: two trials at once on two cores, each next one on a worker a
# finished trial left. Half a CPU (four at once, a new worker each) cost position.yaml 58 s of CPU
# against 37 s, and took longer too.
SMOKE_SETS = ["data.n_images=100", "train.epochs=1", "search.seeds=1", "search.confirm_seeds=2"]
runner = CliRunner()


@pytest.mark.parametrize("name", FACTOR_STUDIES)
def test_factor_studies_tune_every_arm_and_confirm_it_on_ten_fresh_seeds(name):
    study = loading.load(ROOT / "searchspaces" / f"{name}.yaml")
    assert study.question and study.compare and study.search.seeds >= 3
    assert "train.lr" in study.space and study.tuned_per_level() and study.confirms()
    assert study.search.confirm_seeds == 10 and not set(study.seeds("confirm")) & set(study.seeds())


@pytest.mark.parametrize("name", ["thesis", *DATA_STUDIES])
def test_studies_that_tune_nothing_train_ten_seeds_per_arm(name):
    study = loading.load(ROOT / "searchspaces" / f"{name}.yaml")
    assert study.search.seeds == 10 and not study.confirms()


@pytest.fixture(scope="module")
def cluster():
    # Worker output would reach the driver asynchronously and mix into the CLI output read below.
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning",
             log_to_driver=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("name", FACTOR_STUDIES + DATA_STUDIES)
def test_each_study_runs_at_smoke_scale_and_analyses_every_level(cluster, tmp_path, name):
    path = ROOT / "searchspaces" / f"{name}.yaml"
    per_level = ["search.trials=1"] if name in FACTOR_STUDIES else []
    sets = [arg for s in SMOKE_SETS + per_level for arg in ("--set", s)]
    result = runner.invoke(app, ["run", str(path), *sets, "--results", str(tmp_path)])
    assert result.exit_code == 0, result.output

    study = loading.load(path)
    levels = study.space[study.compare].levels()
    trials = pd.read_parquet(tmp_path / name / "trials.parquet")
    tuned = trials[trials["stage"] == "tune"]
    assert sorted(tuned[study.compare]) == sorted(levels)  # one configuration per level
    if name in FACTOR_STUDIES:  # tuned: each level confirmed on fresh seeds
        confirmed = trials[trials["stage"] == "confirm"]
        assert sorted(confirmed[study.compare]) == sorted(levels * 2) and set(confirmed["seed"]) == {1, 2}
    names = optuna.get_all_study_names(f"sqlite:///{tmp_path / name / 'optuna.db'}")
    if name in FACTOR_STUDIES:
        assert sorted(names) == sorted(f"{name}:{level}" for level in levels)  # one Optuna study per level

    report = runner.invoke(app, ["analyze", str(tmp_path / name), "--json"])
    assert report.exit_code == 0, report.output
    rows = json.loads(report.output)["comparisons"]
    assert [r["level"] for r in rows] == levels[1:]
    assert all(r["reference"] == levels[0] for r in rows)


@pytest.mark.slow
def test_withheld_samples_are_marked_and_analysed_separately(cluster, tmp_path):
    path = ROOT / "searchspaces" / "data-withheld.yaml"
    sets = [arg for s in ["data.n_images=600", *SMOKE_SETS[1:]] for arg in ("--set", s)]
    assert runner.invoke(app, ["run", str(path), *sets, "--results", str(tmp_path)]).exit_code == 0
    samples = pd.read_parquet(tmp_path / "data-withheld" / "samples", partitioning=None)
    pairs = [{"0", "1"}, {"2", "3"}, {"4", "5"}, {"6", "7"}, {"8", "9"}]
    expected = samples["digits"].map(lambda d: any(p <= set(d) for p in pairs))
    assert (samples["withheld"] == expected).all() and samples["withheld"].any()
    report = runner.invoke(app, ["analyze", str(tmp_path / "data-withheld"), "--split", "withheld", "--json"])
    assert report.exit_code == 0, report.output
    shown = json.loads(report.output)
    assert [r["withheld"] for r in shown["subgroups"]] == [False, True]
    assert shown["subgroups"][0]["interaction_p"] is None and "interaction_diff" in shown["subgroups"][1]
    assert shown["comparisons"][0]["image_n"] == 60

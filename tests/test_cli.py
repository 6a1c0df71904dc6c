"""Mistakes a user can make: one message naming file and key, exit status 2, nothing written."""

import pytest
from typer.testing import CliRunner

from study.cli import app

from .conftest import ROOT, SMOKE

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "missing.yaml"], "missing.yaml: no such file"),
        (["run", str(SMOKE), "--set", "train.epoch=2"], "smoke.yaml: train.epoch: unknown key"),
        (["run", str(SMOKE), "--set", "data.canvas=big"], "data.canvas: Input should be a valid integer"),
        (["trial", str(SMOKE), "--set", "model.attention.layers=[7]"], "conv positions that do not exist"),
    ],
)
def test_bad_input_exits_2_with_one_message_and_writes_nothing(tmp_path, args, expected):
    result = runner.invoke(app, [*args, "--results", str(tmp_path)])
    assert result.exit_code == 2
    assert expected in result.output and "Traceback" not in result.output
    assert not any(tmp_path.iterdir())


def test_existing_results_are_never_overwritten(tmp_path):
    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke" / "trials.parquet").write_text("earlier results")
    result = runner.invoke(app, ["run", str(SMOKE), "--results", str(tmp_path)])
    assert result.exit_code == 2 and "already holds results" in result.output
    assert (tmp_path / "smoke" / "trials.parquet").read_text() == "earlier results"


def test_analyze_needs_a_results_directory(tmp_path):
    result = runner.invoke(app, ["analyze", str(tmp_path)])
    assert result.exit_code == 2 and "no trials.parquet" in result.output


def test_trial_runs_in_process_and_writes_the_contract(tmp_path):
    result = runner.invoke(app, ["trial", str(SMOKE), "--results", str(tmp_path), "--set",
                                 "data.n_images=300", "--set", "train.epochs=1", "--set",
                                 "model.attention.layers=[]", "--seed", "3", "--seed", "5"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "smoke-trial"
    import pandas as pd

    trials = pd.read_parquet(out / "trials.parquet")
    assert trials["model.attention.layers"].tolist() == ["[]", "[]"] and trials["seed"].tolist() == [3, 5]
    assert len(pd.read_parquet(out / "samples")) == 60
    assert "epoch   0" in result.output and "seed 5: best epoch 0" in result.output


def test_models_lists_every_model_with_baselines_matched():
    result = runner.invoke(app, ["models", str(ROOT / "searchspaces" / "complexity.yaml")])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines()[1:]}
    assert set(rows) == {"attconv", "lenet5", "params-matched", "flops-matched"}
    for label in ("params-matched", "flops-matched"):
        assert abs(float(rows[label][-1]) - 1) <= 0.02  # the achieved ratio, last column


def test_a_baseline_that_cannot_match_stops_the_run_before_anything_is_written(tmp_path):
    path = ROOT / "searchspaces" / "complexity.yaml"
    result = runner.invoke(app, ["run", str(path), "--results", str(tmp_path), "--set",
                                 "space.model.choice.flops-matched.baseline.tolerance=1e-7"])
    assert result.exit_code == 2 and "raise model.baseline.tolerance" in result.output
    assert not any(tmp_path.iterdir())

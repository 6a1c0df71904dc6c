import pandas as pd
import pytest

from study import config, results
from study.train import fit

from .conftest import SMOKE


def test_completed_and_failed_trials_are_both_accounted_for(tmp_path):
    study = config.load(SMOKE, ["data.n_images=300", "train.epochs=2", "model.attention.layers=[]"])
    params = {"model.attention.layers": "[]"}
    results.write_trial(tmp_path, "good", 0, params, fit(study, seed=0))
    results.write_failed(tmp_path, "bad", 1, {"model.attention.layers": "[0]"})
    assert results.consolidate(tmp_path) == 2

    r = results.load(tmp_path)
    trials = r.trials.set_index("trial_id")
    assert trials.loc["good", "status"] == "COMPLETED" and trials.loc["bad", "status"] == "ERROR"
    assert trials.loc["good", "n_params"] == 169_270 and pd.isna(trials.loc["bad", "n_params"])
    assert list(r.trials.columns[:4]) == ["trial_id", "status", "seed", "model.attention.layers"]
    assert r.epochs["trial_id"].tolist() == ["good", "good"]
    assert len(r.samples) == 30 and set(r.samples["trial_id"]) == {"good"}
    # The trial's parameters are joined to its samples, so arms group directly.
    assert r.params == ["model.attention.layers"] and set(r.samples["model.attention.layers"]) == {"[]"}
    assert results.status_counts(tmp_path) == {"COMPLETED": 1, "ERROR": 1}


def test_a_failed_write_leaves_no_file_behind(tmp_path):
    target = tmp_path / "trials.parquet"

    def broken(tmp):
        tmp.write_text("half a file")
        raise OSError("disk full")

    with pytest.raises(OSError):
        results.atomic_write(target, broken)
    assert list(tmp_path.iterdir()) == []

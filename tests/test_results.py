import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from study import loading, results
from study.cli import app
from study.errors import UserError
from study.train import fit

from .conftest import ROOT, SMOKE, readme_python


@pytest.mark.slow
def test_a_row_per_network_for_completed_and_failed_trials(tmp_path):
    study = loading.load(SMOKE, ["data.n_images=300", "train.epochs=2", "model.attention.layers=[]"])
    params = {"model.attention.layers": "[]"}
    result = fit(study, seeds=[0, 1])
    before = pd.Timestamp.now(tz="UTC").floor("s")
    results.write_trial(tmp_path, "good", "tune", params, result)
    results.write_failed(tmp_path, "bad", "confirm", [3, 4], {"model.attention.layers": "[0]"},
                         "the trial's worker failed 3 time(s)")
    after = pd.Timestamp.now(tz="UTC")
    assert results.consolidate(tmp_path) == 2  # trials

    r = results.load(tmp_path)
    trials = r.trials.set_index(["trial_id", "seed"])
    assert len(trials) == 4 and trials.index.is_unique
    assert (trials.loc["good", "status"] == "COMPLETED").all()
    assert (trials.loc["bad", "status"] == "ERROR").all()
    assert trials.loc["good", "reason"].isna().all()
    assert (trials.loc["bad", "reason"] == "the trial's worker failed 3 time(s)").all()
    assert (trials.loc["good", "n_params"] == 169_270).all() and trials.loc["bad", "n_params"].isna().all()
    # When each trial's rows were written, in UTC: what the report dates the results by.
    finished = r.trials["finished"]
    assert isinstance(finished.dtype, pd.DatetimeTZDtype) and str(finished.dt.tz) == "UTC"
    assert finished.between(before, after).all()
    for network in result.networks:
        row = trials.loc[("good", network.seed)]
        assert row["best_epoch"] == network.best_epoch and row["best_val_loss"] == network.best_val_loss
        assert row["test_loss"] == pytest.approx(network.test_loss.mean())
        saved = torch.load(results.weights_path(tmp_path, "good", network.seed))
        assert all(torch.equal(saved[k], v) for k, v in network.best_state.items())
    assert list(r.trials.columns[:6]) == ["trial_id", "seed", "stage", "status", "reason",
                                          "model.attention.layers"]
    stages = r.trials.groupby("trial_id")["stage"].unique().map(list).to_dict()
    assert stages == {"good": ["tune"], "bad": ["confirm"]}
    assert r.epochs[["trial_id", "seed", "epoch"]].values.tolist() == [
        ["good", 0, 0], ["good", 0, 1], ["good", 1, 0], ["good", 1, 1]]
    # Every seed's rows in the trial's one partition, told apart by the seed column.
    assert len(r.samples) == 60 and set(r.samples["trial_id"]) == {"good"}
    for network in result.networks:
        mine = r.samples[r.samples["seed"] == network.seed].sort_values("sample_idx")
        np.testing.assert_array_equal(mine["loss"], network.test_loss)
    # The trial's parameters are joined to its samples, so arms group directly.
    assert r.params == ["model.attention.layers"] and set(r.samples["model.attention.layers"]) == {"[]"}
    assert r.trials["status"].value_counts().to_dict() == {"COMPLETED": 2, "ERROR": 2}


@pytest.mark.slow
def test_a_network_that_failed_is_an_error_row_with_its_reason_and_leaves_no_samples(tmp_path):
    study = loading.load(SMOKE, ["data.n_images=300", "train.epochs=1", "model.attention.layers=[]"])
    result = fit(study, seeds=[0, 1])
    result.networks[1] = dataclasses.replace(result.networks[1], failure="diverged at epoch 0: ...")
    results.write_trial(tmp_path, "half", "tune", {"model.attention.layers": "[]"}, result)
    results.consolidate(tmp_path)
    r = results.load(tmp_path)
    assert r.trials["status"].tolist() == ["COMPLETED", "ERROR"]
    assert r.trials["reason"].iloc[1] == "diverged at epoch 0: ..." and pd.isna(r.trials["test_loss"].iloc[1])
    assert set(r.samples["seed"]) == {0}
    assert [p.name for p in (tmp_path / "weights" / "half").iterdir()] == ["seed-0.pt"]
    assert results.failures(r.trials) == [
        "tune trial half layers=[]: 1 of 2 networks failed: diverged at epoch 0: ..."]


@pytest.mark.slow
def test_trial_ids_of_digits_only_read_back_as_text(tmp_path):
    # A Ray trial id is 8 hex digits: all decimal for about 1 trial in 43. Where every trial's id is,
    # pyarrow's default reads the folder trial_id=01234567 as the number 1234567 and then refuses
    # to merge it with the files' text.
    study = loading.load(SMOKE, ["data.n_images=300", "train.epochs=1", "model.attention.layers=[]"])
    result = fit(study, seeds=[0])
    for trial_id in ("01234567", "12345678"):
        results.write_trial(tmp_path, trial_id, "tune", {"model.attention.layers": "[]"}, result)
    results.consolidate(tmp_path)
    samples = results.load(tmp_path).samples
    assert samples.groupby("trial_id").size().to_dict() == {"01234567": 30, "12345678": 30}
    read = pd.read_parquet(tmp_path / "samples", partitioning=None)  # as the README says
    assert sorted(read["trial_id"].astype(str).unique()) == ["01234567", "12345678"]


@pytest.mark.slow
def test_samples_from_another_dataset_than_their_network_are_a_message(tmp_path):
    study = loading.load(SMOKE, ["data.n_images=300", "train.epochs=1", "model.attention.layers=[]"])
    params = {"model.attention.layers": "[]"}
    results.write_trial(tmp_path, "t", "tune", params, fit(study, seeds=[0]))
    results.consolidate(tmp_path)
    part = tmp_path / "samples" / "trial_id=t" / "part-0.parquet"
    samples = pd.read_parquet(part)
    samples["data_fingerprint"] = "another"
    samples.to_parquet(part, index=False)
    with pytest.raises(UserError, match="trial t seed 0 carry data_fingerprint another, but "):
        results.load(tmp_path)


@pytest.mark.slow
def test_analysis_of_a_folder_whose_study_yaml_is_another_studys_is_a_message(tmp_path):
    from study.analysis import analyze

    study = loading.load(SMOKE, ["data.n_images=300", "train.epochs=1", "model.attention.layers=[]"])
    results.write_trial(tmp_path, "t", "tune", {"model.attention.layers": "[]"}, fit(study, seeds=[0]))
    results.consolidate(tmp_path)
    other = loading.load(SMOKE, ["space={train.lr: {choice: [0.001, 0.003]}}", "compare=train.lr"])
    results.write_study(tmp_path, other)
    with pytest.raises(UserError, match="varies train.lr, which trials.parquet has no column for"):
        analyze(tmp_path)


def test_the_readmes_pandas_example_reads_the_shipped_thesis_results():
    """The README's example on results/thesis, run as a reader would, from the repository."""
    block = readme_python('"results/thesis/')
    out = subprocess.run([sys.executable, "-c", block], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "networks" in lines[0] and "test_bce" in lines[0]
    assert sorted(line.split()[0] for line in lines[2:]) == ["[0]", "[]"]  # one row per arm


@pytest.mark.parametrize("name", ["thesis", "thesis-replication"])
def test_study_analyze_reproduces_each_shipped_report(tmp_path, name):
    """The shipped results analysed again by this code: the same files, the same tables, and the
    same report but for the lines that date the results and the analysis. A change to the analysis
    that would change a shipped verdict fails here; where that is meant, write the reports again."""
    shipped = ROOT / "results" / name / "report"
    result = CliRunner().invoke(app, ["analyze", str(shipped.parent), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in shipped.iterdir())
    for table in shipped.glob("*.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / table.name), pd.read_csv(table), rtol=1e-9)

    def undated(report: Path) -> list[str]:
        return [line for line in report.read_text().splitlines()
                if not line.startswith(("| results written |", "| analysed |"))]

    assert undated(tmp_path / "report.md") == undated(shipped / "report.md")


def test_the_readmes_second_run_figures_are_the_shipped_replication_results():
    """The second thesis run's verdict, each arm's networks, mean and SD, and the difference with
    its repeated CI, as the README's Findings state them and as its shipped report holds them."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    said = readme[readme.index("**A second run agrees.**"):readme.index("**The original's test")]
    shipped = ROOT / "results" / "thesis-replication"
    trials = pd.read_parquet(shipped / "trials.parquet")
    arms = trials.groupby("model.attention.layers")["test_loss"].agg(["size", "mean", "std"])
    for arm, name in (("[]", "LeNet-5"), ("[0]", "AttConv")):
        mean, sd = arms.loc[arm, "mean"], arms.loc[arm, "std"]
        assert arms.loc[arm, "size"] == 9 and f"{mean:.4f} (SD {sd:.4f}) for {name}" in said
    (row,) = pd.read_csv(shipped / "report" / "comparisons.csv").to_dict("records")
    assert row["verdict"] == "equivalent" and (row["seeds"], row["seeds_reference"]) == (9, 9)
    ci = f"= {row['diff']:+.4f}, repeated 95 % CI [{row['diff_ci_low']:+.4f}, {row['diff_ci_high']:+.4f}]"
    assert ci.replace("-", "−") in said  # the README's minus signs
    assert f"p = {row['p_equivalent_holm']:.3f}" in said


def test_the_readmes_calibration_figures_are_the_shipped_calibration_results():
    """Every finished setting's networks, and their mean, as the README's Findings state them."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    said = readme[readme.index("**Where LeNet-5 stands**"):readme.index("pandas reads the shipped results")]
    trials = pd.read_parquet(ROOT / "results" / "calibration" / "trials.parquet")
    for setting, networks in trials.groupby("data"):
        losses = networks.sort_values("seed")["test_loss"]
        stated = f"{losses.mean():.3f} ({' and '.join(f'{x:.3f}' for x in losses)})"
        assert stated in said, (setting, stated)


def test_the_readmes_occlusion_figures_are_study_analyze_split_occlusion_on_the_thesis_results(tmp_path):
    """The Findings' look by occlusion quarter, as `study analyze --split occlusion` gives it on the
    shipped results (its report written elsewhere: the shipped one stays the study's own)."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    said = readme[readme.index("**Where more is hidden**"):readme.index("**What it cost**")]
    result = CliRunner().invoke(app, ["analyze", str(ROOT / "results" / "thesis"), "--split", "occlusion",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(tmp_path / "subgroups.csv")
    assert len(rows) == 4
    first, last = rows.iloc[0], rows.iloc[-1]
    assert f"{first['mean_loss']:.3f}" == f"{first['mean_loss_reference']:.3f}"  # "for both"
    assert f"from {first['mean_loss']:.3f} for both in the least occluded quarter " \
        f"({first['occlusion']})" in said
    assert f"to {last['mean_loss_reference']:.3f} for LeNet-5 and {last['mean_loss']:.3f} for AttConv " \
        f"in the most occluded ({last['occlusion']})" in said
    low, high = rows["diff"].min(), rows["diff"].max()
    assert f"between {low:+.4f} and {high:+.4f}".replace("-", "−") in said
    interaction = rows["interaction_p"].dropna()
    assert f"p = {interaction.min():.2f} to {interaction.max():.2f}" in said

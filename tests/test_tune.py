"""Real studies through Ray Tune and OptunaSearch, checked against the result-file contract."""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from scipy import stats

from .conftest import SMOKE

pytestmark = pytest.mark.ray
BIN = Path(sys.executable).parent
SMALL = ["--set", "data.n_images=600", "--set", "train.epochs=2"]
N_TEST = 60  # 10 % of 600


def study(*args, **kwargs):
    return subprocess.run([str(BIN / "study"), *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, **kwargs)


def check_contract(study_dir: Path, n_trials: int, seeds: int = 1) -> pd.DataFrame:
    """The result files of a study of ``n_trials`` configurations × ``seeds`` networks."""
    trials = pd.read_parquet(study_dir / "trials.parquet")
    assert len(trials) == n_trials * seeds and (trials["status"] == "COMPLETED").all()
    assert (trials["stage"] == "tune").all()
    assert trials["trial_id"].nunique() == n_trials
    assert (trials.groupby("trial_id")["seed"].apply(sorted) == [list(range(seeds))] * n_trials).all()
    for column in ("trial_id", "status", "seed", "model.attention.layers", "n_params", "flops",
                   "best_epoch", "best_val_loss", "test_loss", "test_exact_acc", "wall_s", "device",
                   "data_fingerprint"):
        assert column in trials, column
    assert set(trials["model.attention.layers"]) == {"[]", "[0]"}
    n_params = trials.groupby("model.attention.layers")["n_params"].unique().map(list).to_dict()
    assert n_params == {"[]": [169_270], "[0]": [169_420]}
    assert trials["data_fingerprint"].nunique() == 1

    epochs = pd.read_parquet(study_dir / "epochs.parquet")
    assert len(epochs) == 2 * n_trials * seeds
    for _, t in trials.iterrows():
        mine = epochs[(epochs["trial_id"] == t["trial_id"]) & (epochs["seed"] == t["seed"])]
        assert mine["val_loss"].min() == pytest.approx(t["best_val_loss"])
        assert mine["val_loss"].idxmin() == mine.index[t["best_epoch"]]

    samples = pd.read_parquet(study_dir / "samples")
    assert len(samples) == N_TEST * n_trials * seeds  # exactly one row per test sample per network
    assert samples["sample_idx"].dtype == np.int32 and samples["loss"].dtype == np.float32
    assert samples["correct"].dtype == bool and samples["withheld"].dtype == bool
    assert [f"logit_{c}" for c in range(10)] == [c for c in samples if c.startswith("logit_")]
    samples["trial_id"] = samples["trial_id"].astype(str)
    by_network = trials.set_index(["trial_id", "seed"])
    for network, rows in samples.groupby(["trial_id", "seed"]):
        assert sorted(rows["sample_idx"]) == list(range(N_TEST))
        t = by_network.loc[network]
        assert rows["loss"].mean() == pytest.approx(t["test_loss"], rel=1e-5)
        assert rows["correct"].mean() == pytest.approx(t["test_exact_acc"])
    # Every network saw the same test images: the digits agree sample by sample.
    assert (samples.groupby("sample_idx")["digits"].nunique() == 1).all()
    assert (study_dir / "study.yaml").exists()
    assert len(list((study_dir / "weights").glob("*/seed-*.pt"))) == n_trials * seeds
    return trials


def check_analysis(study_dir: Path, trials: pd.DataFrame) -> dict:
    """The report's numbers, recomputed independently from the Parquet files with scipy."""
    out = study("analyze", str(study_dir), "--json")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    (row,) = shown["comparisons"]
    samples = pd.read_parquet(study_dir / "samples")
    samples["trial_id"] = samples["trial_id"].astype(str)
    level = trials.groupby("trial_id")["model.attention.layers"].first()
    samples["arm"] = samples["trial_id"].map(level)
    networks = samples.groupby(["arm", "trial_id", "seed"])["loss"].mean()
    if networks["[]"].size > 1:  # the seed level: each network's mean test loss is one observation
        welch = stats.ttest_ind(networks["[0]"], networks["[]"], equal_var=False)
        assert row["diff"] == pytest.approx(networks["[0]"].mean() - networks["[]"].mean(), rel=1e-5)
        assert row["p"] == pytest.approx(welch.pvalue, rel=1e-4)
    mean = samples.groupby(["arm", "sample_idx"])["loss"].mean().unstack("arm")
    d = mean["[0]"] - mean["[]"]
    assert row["image_n"] == N_TEST
    assert row["image_wilcoxon_w"] == pytest.approx(stats.wilcoxon(d).statistic)
    assert row["image_p"] == pytest.approx(stats.wilcoxon(d).pvalue)
    csv = pd.read_csv(study_dir / "report" / "comparisons.csv")
    assert csv.loc[0, "image_p"] == pytest.approx(row["image_p"])
    report = (study_dir / "report" / "report.md").read_text()
    for figure in ("networks", "qq", "loss_curves", "losses", "optuna_history", "optuna_importances",
                   "attention"):
        assert (study_dir / "report" / f"{figure}.png").stat().st_size > 1000
        assert f"]({figure}.png)" in report
    text = study("analyze", str(study_dir))
    assert "[0] vs []" in text.stdout and "report.md" in text.stdout
    return shown


def test_a_trial_trains_every_seed_of_its_configuration(tmp_path):
    run = study("run", str(SMOKE), *SMALL, "--set", "search.seeds=3", "--results", str(tmp_path))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    study_dir = tmp_path / "smoke"
    trials = check_contract(study_dir, n_trials=2, seeds=3)  # 2 Ray trials, 6 networks
    assert len(list((study_dir / "ray" / "tune").glob("trainable_*"))) == 2
    # Optuna holds one trial per configuration, valued at the mean over its seeds of each best.
    ot = optuna.load_study(storage=f"sqlite:///{study_dir / 'optuna.db'}", study_name="smoke")
    assert len(ot.trials) == 2
    means = trials.groupby("model.attention.layers")["best_val_loss"].mean()
    for t in ot.trials:
        assert t.value == pytest.approx(means[t.params["model.attention.layers"]])
    shown = check_analysis(study_dir, trials)
    assert [(a["level"], a["seeds"]) for a in shown["arms"]] == [("[]", 3), ("[0]", 3)]
    assert shown["comparisons"][0]["diff_ci_low"] < shown["comparisons"][0]["diff_ci_high"]
    progress = [line for line in run.stdout.splitlines() if " done: " in line]
    assert len(progress) == 2 and all("mean of 3 seeds" in line for line in progress)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path, monkeypatch):
    """A Ray head on 127.0.0.1 with token authentication, stopped through the process that
    started it (``ray start --block`` drains and stops its daemons on SIGTERM)."""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    port, log = free_port(), tmp_path / "ray-head.log"
    with log.open("w") as out:
        head = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
             f"--port={port}", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        head.terminate()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)  # its own process group: only what it started
            head.wait()


def test_a_study_that_selects_confirms_each_level_on_fresh_seeds(tmp_path):
    space = "space={model.attention.layers: {choice: [[], [0]]}, train.lr: {choice: [0.003, 0.03]}}"
    run = study("run", str(SMOKE), "--set", "data.n_images=300", "--set", "train.epochs=1", "--set", space,
                "--set", "search.seeds=1", "--set", "search.confirm_seeds=2", "--results", str(tmp_path))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    trials = pd.read_parquet(tmp_path / "smoke" / "trials.parquet")
    tuned, confirmed = trials[trials["stage"] == "tune"], trials[trials["stage"] == "confirm"]
    assert len(tuned) == 4 and set(tuned["seed"]) == {0}  # the grid, one seed each
    assert len(confirmed) == 4 and sorted(confirmed["seed"]) == [1, 1, 2, 2]  # fresh seeds
    for level, rows in confirmed.groupby("model.attention.layers"):
        mine = tuned[tuned["model.attention.layers"] == level]
        assert rows["train.lr"].unique().tolist() == [mine.loc[mine["best_val_loss"].idxmin(), "train.lr"]]
        assert rows["trial_id"].nunique() == 1  # one trial per level, training both seeds
    # Optuna's history holds the search only; the confirmation is no search.
    ot = optuna.load_study(storage=f"sqlite:///{tmp_path / 'smoke' / 'optuna.db'}", study_name="smoke")
    assert len(ot.trials) == 4
    assert "confirmation: each level's selected configuration retrained on fresh seeds 1..2" in run.stdout
    shown = json.loads(study("analyze", str(tmp_path / "smoke"), "--json").stdout)
    assert [(a["stage"], a["seeds"]) for a in shown["arms"]] == [("confirm", 2), ("confirm", 2)]
    assert shown["notes"] == []


def test_study_on_an_existing_ray_cluster(tmp_path, ray_head):
    out = study("run", str(SMOKE), *SMALL, "--set", "search.seeds=1", "--results", str(tmp_path),
                "--address", ray_head)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    study_dir = tmp_path / "smoke"
    trials = check_contract(study_dir, n_trials=2)
    ot = optuna.load_study(storage=f"sqlite:///{study_dir / 'optuna.db'}", study_name="smoke")
    assert len(ot.trials) == len(trials)  # one Optuna trial per Ray trial
    values = dict(zip(trials["model.attention.layers"], trials["best_val_loss"], strict=True))
    assert {t.params["model.attention.layers"]: t.value for t in ot.trials} == pytest.approx(values)
    check_analysis(study_dir, trials)

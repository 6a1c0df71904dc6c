"""Real studies through Ray Tune and OptunaSearch, checked against the result-file contract."""

import contextlib
import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from study import loading
from study.cli import app
from study.data import source
from study.figures import FIGURES

from .conftest import SMOKE, readme_python, unloaded
from .data.test_variants import write_idx

pytestmark = pytest.mark.slow  # every test here runs studies through Ray
BIN = Path(sys.executable).parent
FAULTS = Path(__file__).parent / "faults"  # rare moments, as tests/faults/sitecustomize.py makes them
SMALL = ["--set", "data.n_images=300", "--set", "train.epochs=2"]
N_TEST = 30  # 10 % of 300


def driver_env(**variables: str) -> dict[str, str]:
    """The environment of a ``study`` driver a test starts: unbuffered, so that its log has each
    line as it is printed, with ``variables`` set."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", **variables}


def study(*args, faults: dict[str, str] | None = None, **kwargs):
    """``study`` with ``args``; ``faults``: the variables of tests/faults/sitecustomize.py to set."""
    env = driver_env()
    if faults:
        path = os.pathsep.join([str(FAULTS), os.environ.get("PYTHONPATH", "")])
        env = driver_env(**faults, PYTHONPATH=path)
    return subprocess.run([str(BIN / "study"), *args], capture_output=True, text=True, env=env, **kwargs)


def analyze(*args: str) -> subprocess.CompletedProcess:
    """``study analyze`` run in this process, returned as ``study`` returns it: it starts no Ray,
    so it needs no interpreter of its own (one is four seconds of imports)."""
    result = CliRunner().invoke(app, ["analyze", *args])
    return subprocess.CompletedProcess(["study", "analyze", *args], result.exit_code, result.stdout,
                                       result.stderr)


def check_contract(study_dir: Path, n_trials: int, seeds: int = 1, epochs: int = 2,
                   n_test: int = N_TEST) -> pd.DataFrame:
    """The result files of a study of ``n_trials`` configurations × ``seeds`` networks trained for
    ``epochs`` epochs and tested on ``n_test`` images."""
    trials = pd.read_parquet(study_dir / "trials.parquet")
    assert len(trials) == n_trials * seeds and (trials["status"] == "COMPLETED").all()
    assert (trials["stage"] == "tune").all()
    assert trials["trial_id"].nunique() == n_trials
    assert (trials.groupby("trial_id")["seed"].apply(sorted) == [list(range(seeds))] * n_trials).all()
    for column in ("trial_id", "status", "seed", "model.attention.layers", "n_params", "flops",
                   "best_epoch", "best_val_loss", "test_loss", "test_exact_acc", "test_digit_f1", "wall_s",
                   "finished", "device", "node", "data_fingerprint"):
        assert column in trials, column
    assert trials["finished"].notna().all() and (trials.groupby("trial_id")["finished"].nunique() == 1).all()
    assert trials["node"].notna().all()  # where each network trained, and with which AttConv
    with_attconv = trials["model.attention.layers"] == "[0]"
    assert set(trials.loc[with_attconv, "attconv"]) <= {"C kernel", "tensor operations"}
    assert trials.loc[~with_attconv, "attconv"].isna().all()
    assert set(trials["model.attention.layers"]) == {"[]", "[0]"}
    n_params = trials.groupby("model.attention.layers")["n_params"].unique().map(list).to_dict()
    assert n_params == {"[]": [169_270], "[0]": [169_420]}
    assert trials["data_fingerprint"].nunique() == 1

    trained = pd.read_parquet(study_dir / "epochs.parquet")
    assert len(trained) == epochs * n_trials * seeds
    for _, t in trials.iterrows():
        mine = trained[(trained["trial_id"] == t["trial_id"]) & (trained["seed"] == t["seed"])]
        assert mine["val_loss"].min() == pytest.approx(t["best_val_loss"])
        assert mine["val_loss"].idxmin() == mine.index[t["best_epoch"]]

    samples = pd.read_parquet(study_dir / "samples", partitioning=None)
    assert len(samples) == n_test * n_trials * seeds  # exactly one row per test sample per network
    assert samples["sample_idx"].dtype == np.int32 and samples["loss"].dtype == np.float32
    assert samples["correct"].dtype == bool and samples["withheld"].dtype == bool
    assert [f"logit_{c}" for c in range(10)] == [c for c in samples if c.startswith("logit_")]
    samples["trial_id"] = samples["trial_id"].astype(str)
    by_network = trials.set_index(["trial_id", "seed"])
    for network, rows in samples.groupby(["trial_id", "seed"]):
        assert sorted(rows["sample_idx"]) == list(range(n_test))
        t = by_network.loc[network]
        assert rows["loss"].mean() == pytest.approx(t["test_loss"], rel=1e-5)
        assert rows["correct"].mean() == pytest.approx(t["test_exact_acc"])
        # Macro F1 over the digits, by hand: a digit present in the image against its logit > 0.
        f1 = []
        for d in range(10):
            true, said = rows["digits"].str.contains(str(d)), rows[f"logit_{d}"] > 0
            hits, wrong = (true & said).sum(), (true != said).sum()
            f1.append(1.0 if hits + wrong == 0 else 2 * hits / (2 * hits + wrong))
        assert np.mean(f1) == pytest.approx(t["test_digit_f1"], rel=1e-6)
    # Every network saw the same test images: the digits agree sample by sample.
    assert (samples.groupby("sample_idx")["digits"].nunique() == 1).all()
    assert (study_dir / "study.yaml").exists()
    assert len(list((study_dir / "weights").glob("*/seed-*.pt"))) == n_trials * seeds
    return trials


def check_analysis(study_dir: Path, trials: pd.DataFrame) -> dict:
    """The report's numbers, recomputed independently from the Parquet files with scipy."""
    out = analyze(str(study_dir), "--json")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    (row,) = shown["comparisons"]
    samples = pd.read_parquet(study_dir / "samples", partitioning=None)
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
    for figure in ("networks", "qq", "loss_curves", "losses", "attention"):
        assert (study_dir / "report" / f"{figure}.png").stat().st_size > 1000
        assert f"]({figure}.png)" in report
    # Optuna's figures only where they mean something, else a sentence saying why not.
    for figure, title, _ in FIGURES:
        if figure.startswith("optuna_"):
            drawn = (study_dir / "report" / figure).exists()
            assert (f"]({figure})" in report) == drawn
            assert drawn or f"### {title}\n\n*Not drawn: " in report
    text = analyze(str(study_dir))
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
    # Quiet by default: the model table, the plan, the dataset, one line per trial, the summary.
    assert "estimated time on cpu (1 thread per trial, up to 2 at once): " in run.stdout
    epochs = [line for line in run.stdout.splitlines() if ": epoch " in line]
    assert len(epochs) == 4 and "epoch 2/2: val_loss " in epochs[-1] and "(mean of 3 seeds)" in epochs[0]
    # A running count and an estimate of the time left, from the first epoch on (both trials may
    # finish at once, so that the first "done" line already counts both and has nothing left).
    assert epochs[0].startswith("[0/2 ") and "left] trial" in epochs[0]
    assert len(unloaded(run.stdout)) - len(epochs) <= 17 and "╭" not in run.stdout
    assert "TensorBoard" not in run.stdout and "WARNING" not in run.stdout
    assert "performance bottleneck" not in run.stdout + run.stderr
    # The README's Python block runs on the folder its first command creates.
    block = readme_python("results/thesis-small")
    (tmp_path / "cwd" / "results").mkdir(parents=True)
    (tmp_path / "cwd" / "results" / "thesis-small").symlink_to(study_dir)
    python = subprocess.run([sys.executable, "-c", block], cwd=tmp_path / "cwd", capture_output=True,
                            text=True)
    assert python.returncode == 0, python.stderr
    assert "val_loss" in python.stdout and "[0]" in python.stdout
    check_live_view(study_dir)


def check_live_view(study_dir: Path) -> None:
    """What the README's live view shows: TensorBoard's reading of Ray's event files (every
    trial's mean train and validation loss per epoch) and Optuna's dashboard serving optuna.db."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    epochs = pd.read_parquet(study_dir / "epochs.parquet").groupby(["trial_id", "epoch"])[
        ["train_loss", "val_loss"]].mean()
    folders = sorted((study_dir / "ray" / "tune").glob("trainable_*"))
    assert folders
    for folder in folders:
        events = EventAccumulator(str(folder))
        events.Reload()
        trial_id = folder.name.split("_")[1]
        for metric in ("train_loss", "val_loss"):
            shown = [(e.step - 1, e.value) for e in events.Scalars(f"ray/tune/{metric}")]
            expected = [(epoch, pytest.approx(value, rel=1e-5))
                        for (_, epoch), value in epochs.loc[[trial_id], metric].items()]
            assert shown == expected
    port, log = free_port(), study_dir.parent / "dashboard.log"
    with log.open("w") as out:
        dashboard = subprocess.Popen([str(BIN / "optuna-dashboard"), f"sqlite:///{study_dir / 'optuna.db'}",
                                      "--host", "127.0.0.1", "--port", str(port)], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as answer:
                    studies = json.load(answer)["study_summaries"]
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.5)
        assert [s["study_name"] for s in studies] == ["smoke"]
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_start(log: Path, *args: str, cpus: int = 1) -> subprocess.Popen:
    """``ray start --block`` bound to 127.0.0.1 with ``cpus`` CPUs (as Ray counts them, whatever
    the machine has), once it says it runs; it drains and stops its
    daemons when terminated. This environment's ``python`` comes first on its PATH, for jobs.
    Its agent (which runs jobs) listens on a free port: at Ray's default, one any other Ray node
    on this machine already holds, the head answers "No available agent to submit job"."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    with log.open("w") as out:
        node = subprocess.Popen([str(BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1",
                                 f"--num-cpus={cpus}", "--disable-usage-stats",
                                 f"--dashboard-agent-listen-port={free_port()}", *args],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    deadline = time.monotonic() + 90
    while "Ray runtime started" not in log.read_text():
        if node.poll() is not None or time.monotonic() > deadline:
            stop(node)
            pytest.fail(log.read_text()[-3000:])
        time.sleep(0.5)
    return node


def stop(node: subprocess.Popen) -> None:
    node.terminate()
    try:
        node.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(node.pid, signal.SIGKILL)  # its own process group: only what it started
        node.wait()


@pytest.fixture
def ray_cluster(tmp_path, monkeypatch):
    """A head (with the dashboard that takes jobs) and a second node on 127.0.0.1, one CPU each,
    token authentication on for both (the same RAY_AUTH_MODE and RAY_AUTH_TOKEN on every machine,
    as the README says), each stopped through the process that started it. Yields the cluster's
    address and the dashboard's."""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    port, dashboard = free_port(), free_port()
    # On one machine each node needs its own session folder (short: it holds sockets): sharing the
    # head's, the second node would delete the job's working directory there when its own trials
    # end; in Ray's default one, shared with another test's cluster, a job's driver found that
    # cluster's address.
    with tempfile.TemporaryDirectory(prefix="ray-") as head_temp, \
            tempfile.TemporaryDirectory(prefix="ray-") as temp:
        head = ray_start(tmp_path / "ray-head.log", "--head", f"--port={port}", "--dashboard-host=127.0.0.1",
                         f"--dashboard-port={dashboard}", f"--temp-dir={head_temp}")
        try:
            node = ray_start(tmp_path / "ray-node.log", f"--address=127.0.0.1:{port}", f"--temp-dir={temp}")
            try:
                yield f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}"
            finally:
                stop(node)
        finally:
            stop(head)


def test_a_study_on_a_two_node_cluster_with_address_and_as_a_ray_job(tmp_path, ray_cluster):
    address, dashboard = ray_cluster
    # A token the head does not know is one message within seconds, nothing written.
    start = time.monotonic()
    refused = subprocess.run([str(BIN / "study"), "run", str(SMOKE), *SMALL, "--results",
                              str(tmp_path / "no"), "--address", address], capture_output=True, text=True,
                             timeout=120, env={**os.environ, "RAY_AUTH_TOKEN": "0" * 64})
    assert refused.returncode == 2 and time.monotonic() - start < 15, refused.stderr[-3000:]
    assert refused.stderr.strip().splitlines() == [
        f"error: --address {address}: the cluster refused this machine's Ray auth token (not the "
        "head's): copy the head node's ~/.ray/auth_token to this machine, or set RAY_AUTH_TOKEN to it"]
    assert not (tmp_path / "no").exists()
    out = study("run", str(SMOKE), *SMALL, "--set", "search.seeds=1", "--results", str(tmp_path),
                "--address", address)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    study_dir = tmp_path / "smoke"
    trials = check_contract(study_dir, n_trials=2)
    ot = optuna.load_study(storage=f"sqlite:///{study_dir / 'optuna.db'}", study_name="smoke")
    assert len(ot.trials) == len(trials)  # one Optuna trial per Ray trial
    values = dict(zip(trials["model.attention.layers"], trials["best_val_loss"], strict=True))
    assert {t.params["model.attention.layers"]: t.value for t in ot.trials} == pytest.approx(values)

    # The README's job: `python -m study` runs from the uploaded working directory on the cluster
    # and finds it through RAY_ADDRESS, which Ray sets for a job.
    job = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", dashboard, "--working-dir", ".",
                          "--", "python", "-m", "study", "run", "searchspaces/smoke.yaml", *SMALL,
                          "--set", "search.seeds=1", "--name", "smoke-job", "--results", str(tmp_path)],
                         cwd=SMOKE.parents[1], capture_output=True, text=True, timeout=600)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert job.stdout.count(" done: best_val_loss=") == 2 and "succeeded" in job.stdout
    submitted = check_contract(tmp_path / "smoke-job", n_trials=2)
    # It reads like the run above: the same networks, trained the same way, to float rounding.
    for column in ("best_epoch", "best_val_loss", "test_loss"):
        key = ["model.attention.layers", "seed"]
        assert submitted.set_index(key)[column].to_dict() == \
            pytest.approx(trials.set_index(key)[column].to_dict()), column


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc: what a driver started (Ray's daemons, workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def interrupt(args: list[str], log: Path, moment, how: int = signal.SIGKILL) -> int:
    """Run ``study`` with ``args`` until ``moment()`` holds, then send ``how`` to the driver (with
    SIGKILL, also to everything it started, as a machine that died would); returns its exit
    status. Any other signal than SIGKILL must leave nothing the driver started running."""
    with log.open("w") as out:
        driver = subprocess.Popen([str(BIN / "study"), *args], stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True, env=driver_env())
    deadline, started = time.monotonic() + 300, []
    try:
        while not moment():
            assert driver.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        started = descendants(driver.pid)
        driver.send_signal(how)
        status = driver.wait(timeout=120)
        if how != signal.SIGKILL:
            for _ in range(100):
                left = [pid for pid in started if running(pid)]
                if not left:
                    break
                time.sleep(0.2)
            assert not left, [Path(f"/proc/{pid}/cmdline").read_text() for pid in left if running(pid)]
        return status
    finally:
        for pid in [*started, *descendants(driver.pid)]:  # by process id and by its group
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()


def running(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_signal_before_ray_starts_is_one_line_and_leaves_nothing(tmp_path):
    """Ctrl-C or SIGTERM while a study prepares (here, as its plan times the steps; its folder and
    lock are made by then): one line with the way on, the signal's exit status, nothing left and
    nothing it started running. SIGTERM used to end it without a word, its lock file left."""
    results = tmp_path / "results"
    args = ["run", str(SMOKE), "--set", "data.n_images=300", "--set", "train.epochs=1",
            "--results", str(results)]
    for how, status, said in ((signal.SIGTERM, 143, "terminated (SIGTERM)"),
                              (signal.SIGINT, 130, "interrupted (Ctrl-C)")):
        log = tmp_path / f"{how.name}.log"
        ended = interrupt(args, log, lambda log=log: "n_params" in log.read_text(), how)
        assert ended == status and log.read_text().splitlines()[-1] == \
            f"{said} before the study started: the same command runs it again", log.read_text()
        assert not results.exists()


def test_a_trial_stopped_mid_training_is_one_line_and_leaves_nothing(tmp_path):
    """``study trial`` writes its folder once trained: SIGTERM mid-training is one line, status
    143, and its folder and lock gone again (it used to end without a word, the lock left)."""
    results, log = tmp_path / "results", tmp_path / "trial.log"
    args = ["trial", str(SMOKE), "--set", "data.n_images=600", "--set", "train.epochs=30",
            "--results", str(results)]
    ended = interrupt(args, log, lambda: "epoch" in log.read_text(), signal.SIGTERM)
    assert ended == 143 and log.read_text().splitlines()[-1] == \
        "terminated (SIGTERM): the trial did not finish; the same command runs it again", log.read_text()
    assert not results.exists()


def test_resume_is_exact_from_any_moment(tmp_path):
    """One study interrupted four times (kill -9 before any trial finished, Ctrl-C of the resumed
    run mid-tuning, kill -9 as the confirmation is announced, SIGTERM mid-confirmation), each
    time at a moment the result files show, then resumed to the end: every planned network once.
    Two CPUs per trial: one trial at a time, so each moment falls between two trials' ends. Then
    the finished study resumed once more trains nothing."""
    space = "space={model.attention.layers: {choice: [[], [0]]}, train.lr: {choice: [0.001, 0.003]}}"
    args = ["run", str(SMOKE), "--set", "data.n_images=300", "--set", "train.epochs=3", "--set", space,
            "--set", "search.seeds=1", "--set", "search.confirm_seeds=2", "--set", "resources.cpu=2",
            "--results", str(tmp_path)]
    study_dir = tmp_path / "smoke"

    def staged(stage: str = "") -> set[str]:
        return {p.stem for p in (study_dir / ".trials").glob("*.json") if stage in p.read_text()}

    def optuna_running() -> bool:
        url = f"file:{study_dir / 'optuna.db'}?mode=ro"
        with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(url, uri=True)) as db:
            return db.execute("select count(*) from trials where state = 'RUNNING'").fetchone()[0] > 0
        return False

    # 1. Killed once Optuna has handed out the first trial: nothing finished (the run).
    interrupt(args, tmp_path / "1.log", optuna_running)
    assert staged() == set()
    # 2. The resumed run, interrupted with Ctrl-C once a trial has finished.
    status = interrupt([*args, "--resume"], tmp_path / "2.log", lambda: len(staged()) >= 1, signal.SIGINT)
    second = (tmp_path / "2.log").read_text()
    assert status == 130 and " --resume" in second.split("Continue with: ")[1], second[-3000:]
    assert "Tuner.restore" not in second
    before = staged()
    assert 1 <= len(before) < 4
    # 3. Killed as the confirmation stage is announced: tuning done, nothing confirmed.
    interrupt([*args, "--resume"], tmp_path / "3.log",
              lambda: "confirmation:" in (tmp_path / "3.log").read_text())
    assert len(staged()) == 4 and staged('"confirm"') == set()
    # 4. Terminated mid-confirmation (SIGTERM, as `kill` sends it): one level confirmed, the other
    # training; a line with the way on, not Ray's crash report.
    status = interrupt([*args, "--resume"], tmp_path / "4.log", lambda: len(staged('"confirm"')) == 1,
                       signal.SIGTERM)
    fourth = (tmp_path / "4.log").read_text()
    assert status == 143 and "terminated (SIGTERM)" in fourth and "with --resume" in fourth, fourth[-3000:]
    assert "SIGTERM received" not in fourth
    assert len(staged()) == 5
    assert study(*args).returncode == 2  # a folder with results is never overwritten
    resumed = study(*args, "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    # The tuning stage's 4 networks and one level's 2 confirmation networks, of the 8 planned.
    assert f"resuming {study_dir}: 6 of 8 networks finished before and kept" in resumed.stdout

    trials = pd.read_parquet(study_dir / "trials.parquet")
    tuned, confirmed = trials[trials["stage"] == "tune"], trials[trials["stage"] == "confirm"]
    # Exactly the trials a run without the crashes has: the grid once, each level confirmed once.
    configurations = tuned[["model.attention.layers", "train.lr"]]
    assert len(tuned) == 4 and not configurations.duplicated().any() and (tuned["seed"] == 0).all()
    assert len(confirmed) == 4 and sorted(confirmed["seed"]) == [1, 1, 2, 2]
    for level, rows in confirmed.groupby("model.attention.layers"):  # each level's best, retrained
        mine = tuned[tuned["model.attention.layers"] == level]
        assert rows["train.lr"].unique().tolist() == [mine.loc[mine["best_val_loss"].idxmin(), "train.lr"]]
        assert rows["trial_id"].nunique() == 1  # one trial per level, training both fresh seeds
    assert (trials["status"] == "COMPLETED").all()
    assert before <= set(trials["trial_id"])  # what finished before a crash is kept
    samples = pd.read_parquet(study_dir / "samples", partitioning=None)
    assert set(samples["trial_id"].astype(str)) == set(trials["trial_id"])
    assert len(samples) == len(trials) * N_TEST
    weights = {p.parent.name for p in (study_dir / "weights").glob("*/seed-*.pt")}
    assert weights == set(trials["trial_id"])
    ot = optuna.load_study(storage=f"sqlite:///{study_dir / 'optuna.db'}", study_name="smoke")
    assert {t.state.name for t in ot.trials} <= {"COMPLETE", "FAIL"}  # none RUNNING or WAITING
    assert sorted(t.params["train.lr"] for t in ot.trials if t.state.name == "COMPLETE") == \
        [0.001, 0.001, 0.003, 0.003]  # the confirmation is no search
    # 5. The driver killed after the last trial wrote its rows, before it told Optuna: resuming the
    # finished study settles that, and times no step, starts no Ray and trains nothing.
    with contextlib.closing(sqlite3.connect(study_dir / "optuna.db")) as db, db:
        last = db.execute("select max(trial_id) from trials where state = 'COMPLETE'").fetchone()
        db.execute("update trials set state = 'RUNNING', datetime_complete = null where trial_id = ?", last)
        db.execute("delete from trial_values where trial_id = ?", last)
    again = study(*args, "--resume")
    assert again.returncode == 0 and again.stdout.splitlines() == [
        f"{study_dir} holds all 8 networks of this study, nothing left to train; 0 unfinished trials "
        "discarded; of the Optuna trials left running, 1 told the value their finished rows hold, 0 marked "
        "failed", f"results in {study_dir}; next: study analyze {study_dir}"], again.stdout + again.stderr
    settled = optuna.load_study(storage=f"sqlite:///{study_dir / 'optuna.db'}", study_name="smoke").trials
    assert [(t.state, t.value) for t in settled] == [(t.state, t.value) for t in ot.trials]
    shown = json.loads(analyze(str(study_dir), "--json").stdout)
    assert [(a["stage"], a["seeds"]) for a in shown["arms"]] == [("confirm", 2), ("confirm", 2)]
    assert shown["notes"] == []


def test_an_interrupted_trial_goes_on_from_its_last_epoch(tmp_path):
    """A trial loses at most the epoch it was in: the driver killed with everything it started
    (kill -9) after a trial's epoch 2 of 4, then --resume; and a trial's worker killed after its
    epoch 2 was saved but before Ray registered that checkpoint, which Ray restarts by itself.
    Each epoch of each network is trained once, and the networks are those of an uninterrupted
    run of the same seeds to the bit: one trial at a time with both CPUs in every run, so the same
    threads do the same sums."""
    args = ["run", str(SMOKE), "--set", "data.n_images=600", "--set", "train.epochs=4", "--set",
            "search.seeds=2", "--set", "resources.cpu=2", "--set", "train.compile=false"]
    whole = study(*args, "--results", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-3000:]

    # 1. The driver and everything it started killed once a trial has reported epoch 2 of 4.
    log = tmp_path / "1.log"
    interrupt([*args, "--results", str(tmp_path / "driver")], log, lambda: "epoch 2/4" in log.read_text())
    (interrupted_id,) = {line.split(" trial ")[1].split()[0] for line in log.read_text().splitlines()
                         if ": epoch 2/4" in line}
    resumed = study(*args, "--results", str(tmp_path / "driver"), "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    epochs = [line.split(": epoch ")[1][:3] for line in resumed.stdout.splitlines() if ": epoch " in line]
    assert epochs[:2] == ["3/4", "4/4"]  # the interrupted trial, again, from its checkpoint
    assert interrupted_id not in resumed.stdout  # a new Ray trial id in the new run

    # 2. The worker of the first trial killed (-9) after its epoch 2 was reported and its checkpoint
    # saved, but before Ray registered that checkpoint: Ray's retry would go on from epoch 1's.
    lost = {"STUDY_TEST_LOST_AT": "2", "STUDY_TEST_LOST_MARK": str(tmp_path / "lost")}
    driver = study(*args, "--results", str(tmp_path / "worker"), faults=lost, timeout=600)
    shown = driver.stdout + driver.stderr
    assert driver.returncode == 0 and (tmp_path / "lost").exists(), shown[-3000:]
    # Ray's report of the dead worker is one line; its traceback is in the study's Ray folder.
    assert "Traceback" not in shown and shown.count(" failed: ") == 1, shown[-3000:]
    assert "Ray restarts it from its last checkpoint" in shown
    assert "Traceback" in (tmp_path / "worker" / "smoke" / "ray" / "errors.log").read_text()
    lines = [line for line in shown.splitlines() if ": epoch " in line]
    first = lines[0].split(" trial ")[1].split()[0]
    trained = [line.split(": epoch ")[1][:3] for line in lines if f" {first} " in line]
    assert trained == ["1/4", "2/4", "3/4", "4/4"]  # its retry reported epochs 3 and 4 only

    for run in ("driver", "worker"):
        assert not list((tmp_path / run / "smoke" / "ray").glob("*/*/checkpoint_*"))  # removed when written
    reference = pd.read_parquet(tmp_path / "whole" / "smoke" / "trials.parquet")
    by_network = reference.set_index(["model.attention.layers", "seed"])
    reference_epochs = pd.read_parquet(tmp_path / "whole" / "smoke" / "epochs.parquet")
    for run in ("driver", "worker"):
        trials = check_contract(tmp_path / run / "smoke", n_trials=2, seeds=2, epochs=4, n_test=60)
        trained = pd.read_parquet(tmp_path / run / "smoke" / "epochs.parquet")
        for _, row in trials.iterrows():
            want = by_network.loc[(row["model.attention.layers"], row["seed"])]
            assert (row["best_epoch"], row["test_loss"]) == (want["best_epoch"], want["test_loss"]), run
            mine = trained[(trained["trial_id"] == row["trial_id"]) & (trained["seed"] == row["seed"])]
            theirs = reference_epochs[(reference_epochs["trial_id"] == want["trial_id"])
                                      & (reference_epochs["seed"] == row["seed"])]
            assert mine["epoch"].tolist() == [0, 1, 2, 3]
            assert mine["val_loss"].tolist() == theirs["val_loss"].tolist(), run


def test_retrained_seeds_are_split_over_trials_where_slots_would_idle(tmp_path):
    """Half a CPU per trial on two CPUs: four slots for two levels, so each level's two
    confirmation seeds train in two one-seed trials, not one stacked trial. Optuna still sees only
    the tuning trials, every network is there once, and the analysis counts each level's two."""
    space = "space={model.attention.layers: {choice: [[], [0]]}, train.lr: {choice: [0.001, 0.003]}}"
    args = [str(SMOKE), *SMALL, "--set", space, "--set", "search.seeds=1", "--set", "search.confirm_seeds=2",
            "--set", "resources.cpu=0.5"]
    plan = study("plan", *args, "--results", str(tmp_path))
    assert plan.returncode == 0 and "confirm: 4 trials × 1 seed = 4 networks" in plan.stdout, plan.stdout
    run = study("run", *args, "--results", str(tmp_path))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "in the confirmation stage, a level's seeds split over 2 trials" in run.stdout
    assert "round 1: [], [0] on seeds 1..2, each level in 2 trials" in run.stdout
    study_dir = tmp_path / "smoke"
    trials = pd.read_parquet(study_dir / "trials.parquet")
    confirmed = trials[trials["stage"] == "confirm"]
    assert sorted(confirmed["seed"]) == [1, 1, 2, 2] and confirmed["trial_id"].nunique() == 4
    for _, networks in confirmed.groupby("model.attention.layers"):
        assert sorted(networks["seed"]) == [1, 2] and networks["train.lr"].nunique() == 1
    assert (trials[trials["stage"] == "tune"]["seed"] == 0).all() and len(trials) == 8
    ot = optuna.load_study(storage=f"sqlite:///{study_dir / 'optuna.db'}", study_name="smoke")
    assert len(ot.trials) == 4  # the tuning trials: the confirmation is no search
    done = [line for line in run.stdout.splitlines() if "confirmation trial" in line and " done: " in line]
    assert len(done) == 4 and all("(mean of 1 seed)" in line for line in done)
    assert not list((study_dir / "ray").glob("*/*/checkpoint_*"))
    shown = json.loads(analyze(str(study_dir), "--json").stdout)
    assert [(a["stage"], a["seeds"]) for a in shown["arms"]] == [("confirm", 2), ("confirm", 2)]


def test_a_first_round_of_fixed_levels_is_split_over_trials_and_optuna_is_told_each_level(tmp_path):
    """The levels are the configurations (the space varies only the compared factor), so the
    search has nothing to choose: at half a CPU per trial on two CPUs, each level's two seeds train
    in two one-seed trials from the first round on, not one stacked trial, and Optuna is told one
    trial per level with the value the search would have told it (the mean of its networks' best
    validation losses)."""
    key = "model.attention.layers"
    args = [str(SMOKE), *SMALL, "--set", "search.seeds=2", "--set", "resources.cpu=0.5",
            "--set", "train.compile=false", "--results", str(tmp_path)]
    plan = study("plan", *args)
    assert plan.returncode == 0 and "tune: 4 trials × 1 seed = 4 networks" in plan.stdout, plan.stdout
    run = study("run", *args)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "each level's seeds split over 2 trials" in run.stdout
    assert "round 1: [], [0] on seeds 0..1, each level in 2 trials" in run.stdout
    assert "optuna: 2 trials told, one per level" in run.stdout
    study_dir = tmp_path / "smoke"
    trials = pd.read_parquet(study_dir / "trials.parquet")
    assert len(trials) == 4 and trials["trial_id"].nunique() == 4 and (trials["stage"] == "tune").all()
    ot = optuna.load_study(storage=f"sqlite:///{study_dir / 'optuna.db'}", study_name="smoke")
    assert [t.state for t in ot.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    told = {t.params[key]: t.value for t in ot.trials}
    for level, networks in trials.groupby(key):
        assert sorted(networks["seed"]) == [0, 1], level
        assert told[level] == pytest.approx(networks["best_val_loss"].mean())
    shown = json.loads(analyze(str(study_dir), "--json").stdout)
    assert [(a["stage"], a["seeds"]) for a in shown["arms"]] == [("tune", 2), ("tune", 2)]


def test_the_cpu_a_finished_trial_frees_goes_to_the_trial_still_running(tmp_path):
    """Two trials on two CPUs, one each: LeNet-5's ends first, and AttConv's goes on from its
    checkpoint with both CPUs as two threads, its epochs each trained once. (Trials this short
    reuse their workers instead unless the study asks for reallocation: test_plan.py.) Twelve
    iterations keep AttConv's trial well behind LeNet-5's: at four, the kernel on AVX2 made it
    nearly as fast, and it had reached its last epoch when LeNet-5's ended. Thirty epochs leave it
    enough time that a second thread saves more than the restart costs (5 s in the plan's model);
    with less, it rightly keeps its one thread."""
    result = study("run", str(SMOKE), "--set", "data.n_images=900", "--set", "train.epochs=30",
                   "--set", "model.attention.iterations=12",
                   "--set", "search.seeds=1", "--set", "train.compile=false",
                   "--set", "resources.reallocate=true", "--results", str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "the CPUs a finished trial frees go to the running ones" in result.stdout
    lines = result.stdout.splitlines()
    lenet_done = next(n for n, line in enumerate(lines) if "layers=[]: done" in line)
    attconv = [line for line in lines if "layers=[0]: epoch " in line]
    assert [line.split(": epoch ")[1].split(":")[0] for line in attconv] == [f"{e}/30" for e in range(1, 31)]
    later = [line for line in lines[lenet_done:] if "layers=[0]: epoch " in line]
    on_two = [line.endswith(" on 2 threads") for line in later]  # from a restart on, to the end
    assert on_two and on_two[-1] and on_two == sorted(on_two), later
    assert not any("threads" in line for line in lines[:lenet_done])
    check_contract(tmp_path / "smoke", n_trials=2, seeds=1, epochs=30, n_test=90)


def test_a_stage_of_fewer_trials_than_cpus_starts_each_on_an_even_share(tmp_path, monkeypatch):
    """One node of four CPUs (as its Ray counts them) and a stage of two trials: each starts on two
    CPUs and trains every epoch on two threads, not on one until its first epoch's checkpoint lets
    Ray hand it more."""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ray-") as temp:  # a session folder of its own
        head = ray_start(tmp_path / "ray-head.log", "--head", f"--port={port}", "--include-dashboard=false",
                         f"--temp-dir={temp}", cpus=4)
        try:
            result = study("run", str(SMOKE), *SMALL, "--set", "search.seeds=1", "--set",
                           "train.compile=false", "--set", "resources.reallocate=true",
                           "--results", str(tmp_path), "--address", f"127.0.0.1:{port}")
        finally:
            stop(head)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "a stage's trials start on even shares of the CPUs" in result.stdout
    epochs = [line for line in result.stdout.splitlines() if ": epoch " in line]
    assert len(epochs) == 4 and all(line.endswith(" on 2 threads") for line in epochs), result.stdout
    check_contract(tmp_path / "smoke", n_trials=2)


def test_a_node_without_a_compiler_is_named_once_and_its_attconv_runs_as_tensor_operations(tmp_path):
    """Two AttConv trials where no compiler builds the kernel: the plan names the slower path, and
    the driver says once which node lacks a compiler, not once per trial."""
    env = driver_env(CC="no-such-compiler", STUDY_CACHE=str(tmp_path / "cache"))
    space = "space={train.lr: {choice: [0.001, 0.002]}}"
    sets = ["search.seeds=1", "model.attention.layers=[0]", space, "compare=train.lr"]
    result = subprocess.run([str(BIN / "study"), "run", str(SMOKE), *SMALL,
                             *(arg for s in sets for arg in ("--set", s)), "--results", str(tmp_path)],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    plan = "AttConv on the CPU: tensor operations (no C compiler built the kernel"
    assert plan in result.stdout
    notes = [line for line in result.stdout.splitlines() if line.startswith("note: node ")]
    assert len(notes) == 1 and "no C compiler that builds AttConv's CPU kernel" in notes[0], result.stdout
    assert not list((tmp_path / "cache" / "kernels").glob("*.so"))


def test_relative_paths_name_the_drivers_folders_in_every_trial(tmp_path):
    """Ray Tune runs each trial in a folder of its own: a relative data.root and STUDY_CACHE, as
    typed in the folder the study is run from, must still name that folder's MNIST and cache
    there (a relative root failed every trial; a relative cache was one per trial)."""
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    digits = source.embedded()  # all 5,000, in torchvision's layout
    for part, rows in (("train", slice(0, 4000)), ("t10k", slice(4000, None))):
        write_idx(raw / f"{part}-images-idx3-ubyte", digits.images[rows].reshape(-1, 28, 28))
        write_idx(raw / f"{part}-labels-idx1-ubyte", digits.labels[rows])
    args = [*SMALL, "--set", "search.seeds=1", "--set", "data.source=mnist", "--set", "data.root=mnist"]
    with tempfile.TemporaryDirectory(prefix="ray-") as temp:  # Ray's session, and the trials' folders
        env = driver_env(STUDY_CACHE="cache", RAY_TMPDIR=temp)
        result = subprocess.run([str(BIN / "study"), "run", str(SMOKE), *args, "--results", "results"],
                                capture_output=True, text=True, env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        trial_folders = list(Path(temp).glob("**/working_dirs/*"))
        assert len(trial_folders) == 2 and not [f for f in trial_folders if (f / "cache").exists()]
    check_contract(tmp_path / "results" / "smoke", n_trials=2)
    written = loading.load(tmp_path / "results" / "smoke" / "study.yaml")
    assert written.data.root == str(tmp_path / "mnist")
    assert len(list((tmp_path / "cache" / "data").glob("*.npz"))) == 1  # the driver's, which each trial read


def test_a_sequential_design_trains_in_rounds_through_ray_and_resumes_mid_round(tmp_path):
    """Two labels of one learning rate (identical arms, the same networks) and a margin no
    difference can show: the design goes on to its maximum, round by round. Stopped with Ctrl-C
    once round 2 has begun, it stops there (no look at a round cut short, no next round); resumed
    and stopped again with Ctrl-C as round 3's Ray Tune run starts, it stops before training any
    of it; resumed to the end, it replays each look on the networks of its own rounds, and each
    level ends with seeds 0..5 in three trials of two, nothing twice."""
    args = ["run", str(SMOKE), *SMALL, "--set", "model.attention.layers=[]",
            "--set", "space={train.lr: {choice: {a: 0.001, b: 0.001}}}", "--set", "compare=train.lr",
            "--set", "search.seeds={start: 2, step: 2, max: 6}", "--set", "analysis.margin=1e-9",
            "--set", "resources.cpu=2", "--results", str(tmp_path)]
    study_dir, log = tmp_path / "smoke", tmp_path / "1.log"

    def staged() -> int:
        return len(list((study_dir / ".trials").glob("*.json")))

    status = interrupt(args, log, lambda: "round 2:" in log.read_text() and staged() == 3, signal.SIGINT)
    text = log.read_text()
    assert status == 130 and "look 1 of 3: b: continue" in text and "look 2" not in text, text[-3000:]
    assert "interrupted: " in text and " --resume" in text.split("Continue with: ")[1]
    assert "left in this round]" in text  # a later round is not in the estimate
    # The resumed run's second Tune run is round 3's; the Ctrl-C comes before Tune catches it, where
    # Tune's handler from round 2's run, left in place, used to take it and round 3 trained on.
    again = study(*args, "--resume", faults={"STUDY_TEST_CTRL_C_AT_RUN": "2"})
    text = again.stdout + again.stderr
    assert again.returncode == 130 and "round 3: a, b on seeds 4..5" in text, text[-3000:]
    assert "look 2 of 3: b: continue (diff +0, repeated p 1, 4 vs 4)" in text and staged() == 4
    resumed = study(*args, "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    # Each look replayed on its own rounds' networks, as the run took it: look 1 not on round 2's too.
    assert "look 1 of 3: b: continue (diff +0, repeated p 1, 2 vs 2)" in resumed.stdout, resumed.stdout
    assert "look 2 of 3: b: continue (diff +0, repeated p 1, 4 vs 4)" in resumed.stdout
    assert "round 3: a, b on seeds 4..5" in resumed.stdout  # none of round 3 trained before

    trials = pd.read_parquet(study_dir / "trials.parquet")
    assert (trials["status"] == "COMPLETED").all() and (trials["stage"] == "tune").all()
    for level, rows in trials.groupby("train.lr"):
        assert sorted(rows["seed"]) == list(range(6)), level
        assert sorted(rows.groupby("trial_id")["seed"].apply(sorted).tolist()) == [[0, 1], [2, 3], [4, 5]]
    shown = json.loads(analyze(str(study_dir), "--json").stdout)
    (row,) = shown["comparisons"]
    assert (row["look"], row["verdict"], row["seeds"], row["seeds_reference"]) == (3, "inconclusive", 6, 6)
    assert row["diff"] == 0 and row["p"] == 1  # the same networks in both arms
    text = (study_dir / "report" / "report.md").read_text()
    assert "## Sequential design" in text and "`search.seeds: {start: 2, step: 2, max: 6}`" in text


def test_a_full_disk_is_a_message_and_the_study_resumes_once_there_is_room(tmp_path):
    from .test_preflight import tmpfs

    with tmpfs(tmp_path / "disk", "size=32m") as disk:
        args = ["run", str(SMOKE), *SMALL, "--set", "search.seeds=1", "--results", str(disk)]
        study_dir, log = disk / "smoke", tmp_path / "full.log"
        with log.open("w") as out:
            driver = subprocess.Popen([str(BIN / "study"), *args], stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not list((study_dir / "ray").glob("tune/searcher-state-*")):  # the trials have begun
                assert driver.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            with (disk / "filler").open("wb") as filler, contextlib.suppress(OSError):
                while True:
                    filler.write(bytes(2**16))
                    filler.flush()
            assert driver.wait(timeout=300) == 2
        finally:
            driver.kill()
            driver.wait()
        shown = log.read_text()
        assert f"error: the disk holding {study_dir} is full" in shown, shown[-3000:]
        assert "Traceback" not in shown and shown.rstrip().endswith(" ".join(args[1:]) + " --resume")
        assert not [p for p in study_dir.rglob(".*tmp*")]  # no half-written file
        (disk / "filler").unlink()
        resumed = study(*args, "--resume")
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        check_contract(study_dir, n_trials=2)
        ot = optuna.load_study(storage=f"sqlite:///{study_dir / 'optuna.db'}", study_name="smoke")
        assert {t.state.name for t in ot.trials} <= {"COMPLETE", "FAIL"}


def test_a_second_driver_on_the_same_study_is_refused_while_the_first_runs(tmp_path):
    args = ["run", str(SMOKE), *SMALL, "--set", "search.seeds=1", "--results", str(tmp_path)]
    log = tmp_path / "first.log"
    with log.open("w") as out:
        first = subprocess.Popen([str(BIN / "study"), *args], stdout=out, stderr=subprocess.STDOUT,
                                 env=driver_env())
    try:
        lock = tmp_path / "smoke" / ".lock"
        deadline = time.monotonic() + 120
        while not (lock.exists() and lock.read_text()):
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        for second in (study(*args), study(*args, "--resume")):
            assert second.returncode == 2, second.stderr
            assert "another study run is working in it" in second.stderr
            assert f"process {first.pid} " in second.stderr
        assert first.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        first.kill()
        first.wait()
    trials = pd.read_parquet(tmp_path / "smoke" / "trials.parquet")
    assert trials["trial_id"].nunique() == 2  # the first driver's two trials, nothing more


def test_a_diverging_configuration_is_recorded_as_failed_and_the_study_goes_on(tmp_path):
    """Also: the Optuna trials in a journal file, the storage for a shared file system."""
    space = "space={train.lr: {choice: [0.0003, 0.99]}}"
    journal = tmp_path / "shared" / "optuna.log"
    run = study("run", str(SMOKE), *SMALL, "--set", "model.batchnorm=false", "--set", space,
                "--set", "compare=train.lr", "--set", "search.seeds=2", "--results", str(tmp_path),
                "--storage", f"journal:{journal}")
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    trials = pd.read_parquet(tmp_path / "smoke" / "trials.parquet")
    bad, good = trials[trials["train.lr"] == 0.99], trials[trials["train.lr"] == 0.0003]
    assert (bad["status"] == "ERROR").all() and (good["status"] == "COMPLETED").all()
    assert bad["reason"].str.contains("diverged|not finite").all() and good["reason"].isna().all()
    assert bad["test_loss"].isna().all()
    assert "lr=0.99: 2 of 2 networks failed: " in run.stderr
    assert not (tmp_path / "smoke" / "optuna.db").exists()
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    ot = optuna.load_study(storage=storage, study_name="smoke")
    assert sorted(t.state.name for t in ot.trials) == ["COMPLETE", "FAIL"]
    analyzed = analyze(str(tmp_path / "smoke"))  # one level left: no comparison, a message
    assert analyzed.returncode == 2 and "a comparison needs two" in analyzed.stderr


def test_asha_stops_trailing_tuning_trials_and_each_still_writes_its_rows(tmp_path):
    """Five learning rates per level, four of them too small to learn in three epochs: unless the
    trials happen to finish at the first rung worst to best in both levels (1 in 14,400), ASHA
    stops some. A stopped trial's networks are tested at their best epoch so far."""
    space = ("space={model.batchnorm: {choice: [true, false]}, "
             "train.lr: {choice: [0.003, 0.000001, 0.000002, 0.000003, 0.000004]}}")
    run = study("run", str(SMOKE), "--set", "data.n_images=300", "--set", "train.epochs=3",
                "--set", "model.attention.layers=[]", "--set", space, "--set", "compare=model.batchnorm",
                "--set", "search.seeds=2", "--set", "search.confirm_seeds=2",
                "--set", "search.scheduler=asha", "--set", "search.reduction_factor=2",
                "--results", str(tmp_path))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    study_dir = tmp_path / "smoke"
    trials = pd.read_parquet(study_dir / "trials.parquet")
    tuned, confirmed = trials[trials["stage"] == "tune"], trials[trials["stage"] == "confirm"]
    assert tuned["trial_id"].nunique() == 10 and len(tuned) == 20  # every network has its row
    stopped = tuned[tuned["status"] == "STOPPED"]
    assert len(stopped) >= 2 and set(tuned["status"]) == {"COMPLETED", "STOPPED"}
    assert stopped["reason"].str.match(r"ASHA stopped it after [12] of 3 epochs").all()
    assert (confirmed["status"] == "COMPLETED").all() and len(confirmed) == 4  # never stopped
    epochs = pd.read_parquet(study_dir / "epochs.parquet").groupby(["trial_id", "seed"])["epoch"].count()
    for _, row in trials.iterrows():
        trained = epochs[(row["trial_id"], row["seed"])]
        assert trained < 3 if row["status"] == "STOPPED" else trained == 3
        assert row["best_epoch"] < trained and np.isfinite(row["test_loss"])
    samples = pd.read_parquet(study_dir / "samples", partitioning=None)
    assert samples.groupby(["trial_id", "seed"], observed=True).size().to_dict() == \
        dict.fromkeys(zip(trials["trial_id"], trials["seed"], strict=True), 30)
    weights = {(p.parent.name, p.stem) for p in (study_dir / "weights").glob("*/seed-*.pt")}
    assert weights == {(t, f"seed-{s}") for t, s in zip(trials["trial_id"], trials["seed"], strict=True)}
    assert not list((study_dir / "ray").rglob("checkpoint_*"))  # the snapshots have served
    assert run.stdout.count(": stopped: ASHA stopped it after") == stopped["trial_id"].nunique()
    ot = optuna.load_study(storage=f"sqlite:///{study_dir / 'optuna.db'}", study_name="smoke")
    assert [t.state.name for t in ot.trials] == ["COMPLETE"] * 10  # with the value when stopped
    notes = json.loads(analyze(str(study_dir), "--json").stdout)["notes"]
    assert f"ASHA stopped {stopped['trial_id'].nunique()} of 10 tuning trials early" in " ".join(notes)

"""Mistakes a user can make: one message naming file and key, exit status 2, nothing written."""

import os
import signal

import pytest
from typer.testing import CliRunner

from study import loading
from study.cli import app

from .conftest import ROOT, SMOKE

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "missing.yaml"], "missing.yaml: no such file"),
        (["run", str(SMOKE), "--set", "train.epoch=2"], "--set 'train.epoch=2': train.epoch: unknown key"),
        (["run", str(SMOKE), "--set", "data.canvas=big"], "data.canvas: Input should be a valid integer"),
        (["run", str(SMOKE), "--set", "data.split=[0.9, 0.1]"],
         "--set 'data.split=[0.9, 0.1]': data.split: too few items: item 3 is missing (got [0.9, 0.1])"),
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
    # A study stopped before any network finished: its study.yaml, nothing else, and nothing written.
    (tmp_path / "study.yaml").write_text(SMOKE.read_text())
    result = runner.invoke(app, ["analyze", str(tmp_path)])
    assert result.exit_code == 2 and "no network has finished yet" in result.output, result.output
    assert "--resume" in result.output and sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]


@pytest.mark.slow
def test_trial_runs_in_process_and_writes_the_contract(tmp_path):
    result = runner.invoke(app, ["trial", str(SMOKE), "--results", str(tmp_path), "--set",
                                 "data.n_images=300", "--set", "train.epochs=1", "--set",
                                 "model.attention.layers=[]", "--seed", "3", "--seed", "5"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "smoke-trial"
    import pandas as pd

    trials = pd.read_parquet(out / "trials.parquet")
    assert trials["model.attention.layers"].tolist() == ["[]", "[]"] and trials["seed"].tolist() == [3, 5]
    assert len(pd.read_parquet(out / "samples", partitioning=None)) == 60
    assert "epoch   0" in result.output and "seed 5: best epoch 0" in result.output


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the stop Python ignores
def test_a_stop_python_dropped_ends_a_trial_after_that_epoch(tmp_path, monkeypatch):
    """A SIGTERM whose ``Stopped`` Python ignored (raised in a finaliser) ends ``study trial`` at
    its next epoch's end, with its line, status 143 and its folder gone; it used to train on to the
    last epoch and write its results as if no stop had come."""
    import study.train

    fit = study.train.fit

    class StoppedInAFinaliser:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            # The handler raised as os.kill returned, in __del__: Python prints and ignores it.

    def fit_with_a_dropped_stop(study_, seeds, report):
        def reported(row, snapshot):
            if row["epoch"] == 0:
                StoppedInAFinaliser()
            report(row, snapshot)

        return fit(study_, seeds, report=reported)

    monkeypatch.setattr(study.train, "fit", fit_with_a_dropped_stop)
    sets = ["data.n_images=300", "train.epochs=2", "train.compile=false"]
    result = runner.invoke(app, ["trial", str(SMOKE), "--results", str(tmp_path),
                                 *(arg for key in sets for arg in ("--set", key))])
    assert result.exit_code == 143, result.output
    assert result.output.splitlines()[-1] == \
        "terminated (SIGTERM): the trial did not finish; the same command runs it again"
    assert "epoch   1" not in result.output and not any(tmp_path.iterdir())


@pytest.mark.slow
def test_a_trial_stopped_between_its_result_writes_leaves_none_and_runs_again(tmp_path, monkeypatch):
    """SIGTERM once ``study trial`` has written its trial's files but not yet ``trials.parquet``:
    status 143, its line, and nothing left, so that the same command runs it again as the line
    says. It used to leave ``study.yaml`` and the trial's files, and the same command then refused
    the folder as one that holds results."""
    import pandas as pd

    import study.results

    write_trial = study.results.write_trial

    def terminated_once_written(*args, **kwargs):
        write_trial(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)

    args = ["trial", str(SMOKE), "--results", str(tmp_path), "--set", "data.n_images=300",
            "--set", "train.epochs=1", "--set", "train.compile=false"]
    monkeypatch.setattr(study.results, "write_trial", terminated_once_written)
    result = runner.invoke(app, args)
    assert result.exit_code == 143, result.output
    assert result.output.splitlines()[-1] == \
        "terminated (SIGTERM): the trial did not finish; the same command runs it again"
    assert not any(tmp_path.iterdir())
    monkeypatch.setattr(study.results, "write_trial", write_trial)
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert len(pd.read_parquet(tmp_path / "smoke-trial" / "trials.parquet")) == 3  # search.seeds


@pytest.mark.slow
def test_analyzing_a_study_trials_folder_says_what_it_holds_and_writes_nothing(tmp_path):
    """``study analyze`` on what ``study trial`` wrote (one configuration): status 2 and a message
    that says so and names ``study run``, not the way to resume a study (it told the user to let
    the run go on, or resume it)."""
    sets = ["data.n_images=300", "train.epochs=1", "train.compile=false"]
    trained = runner.invoke(app, ["trial", str(SMOKE), "--results", str(tmp_path),
                                  *(arg for key in sets for arg in ("--set", key))])
    assert trained.exit_code == 0, trained.output
    folder = tmp_path / "smoke-trial"
    before = sorted(folder.rglob("*"))
    result = runner.invoke(app, ["analyze", str(folder)])
    assert result.exit_code == 2 and result.output.strip() == (
        f"error: {folder}: model.attention.layers has completed trials at 1 level(s), and a comparison "
        "needs two; this folder holds one study trial, which trains the file's sections as they stand; "
        "study run trains every level of its space"), result.output
    assert sorted(folder.rglob("*")) == before


def test_a_ctrl_c_as_the_plan_times_its_steps_is_one_line(monkeypatch):
    """Ctrl-C while ``study plan`` times the steps: one line and status 130, as ``run`` and
    ``trial`` give (it was click's "Aborted!", status 1)."""
    import study.plan

    timed_ms = study.plan.timed_ms

    def ctrl_c_first(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return timed_ms(*args, **kwargs)

    monkeypatch.setattr(study.plan, "timed_ms", ctrl_c_first)
    result = runner.invoke(app, ["plan", str(SMOKE), "--set", "data.n_images=300"])
    assert result.exit_code == 130, result.output
    assert result.output.splitlines()[-1] == "interrupted (Ctrl-C): no plan; the same command plans it again"


def test_help_lists_each_command_on_a_line_of_its_own_and_reads_as_prose():
    """``study --help`` names each command with a one-line summary (it used to break them where
    the docstring broke, or cut them off), and no help shows a docstring's markup."""
    listed = runner.invoke(app, ["--help"]).output.split("Commands:\n")[1].splitlines()
    assert [line.split()[0] for line in listed] == ["run", "trial", "plan", "models", "analyze", "data"]
    assert not any(line.endswith("...") for line in listed), listed
    for command in (["run"], ["trial"], ["plan"], ["models"], ["analyze"], ["data"], ["data", "preview"]):
        shown = runner.invoke(app, [*command, "--help"])
        assert shown.exit_code == 0 and "``" not in shown.output, shown.output


def test_models_lists_every_model_with_baselines_matched():
    result = runner.invoke(app, ["models", str(ROOT / "searchspaces" / "complexity.yaml")])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines()[1:]}
    assert set(rows) == {"attconv", "lenet5", "params-matched", "flops-matched"}
    for label in ("params-matched", "flops-matched"):
        assert abs(float(rows[label][-1]) - 1) <= 0.02  # the achieved ratio, last column


@pytest.mark.slow
def test_a_baseline_that_cannot_match_stops_the_run_before_anything_is_written(tmp_path):
    path = ROOT / "searchspaces" / "complexity.yaml"
    result = runner.invoke(app, ["run", str(path), "--results", str(tmp_path), "--set",
                                 "space.model.choice.flops-matched.baseline.tolerance=1e-7"])
    assert result.exit_code == 2 and "raise model.baseline.tolerance" in result.output
    assert not any(tmp_path.iterdir())


def test_trial_never_writes_into_an_earlier_trial_folder(tmp_path):
    (tmp_path / "smoke-trial").mkdir()
    (tmp_path / "smoke-trial" / "study.yaml").write_text("earlier")
    result = runner.invoke(app, ["trial", str(SMOKE), "--results", str(tmp_path)])
    assert result.exit_code == 2 and "already holds results" in result.output
    assert "--set name=NEW_NAME" in result.output
    assert (tmp_path / "smoke-trial" / "study.yaml").read_text() == "earlier"


@pytest.mark.parametrize("command", ["run", "trial"])
def test_results_naming_a_file_is_a_message_before_anything_runs(tmp_path, command):
    (tmp_path / "results").write_text("not a folder")
    result = runner.invoke(app, [command, str(SMOKE), "--results", str(tmp_path / "results")])
    assert result.exit_code == 2 and "is a file" in result.output and "Traceback" not in result.output
    assert (tmp_path / "results").read_text() == "not a folder"


@pytest.mark.parametrize("command", [["run"], ["plan"], ["trial"], ["models"], ["data", "preview"]])
def test_a_cache_that_cannot_be_written_is_one_message_before_anything_is_written(tmp_path, monkeypatch,
                                                                                    command):
    """STUDY_CACHE naming a path under a file (as a read-only home would fail): every command
    that builds datasets or AttConv's kernel says so first, and writes nothing."""
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("STUDY_CACHE", str(tmp_path / "file" / "cache"))
    written = {"run": "--results", "plan": "--results", "trial": "--results", "data": "--out"}
    where = [written[command[0]], str(tmp_path / "out")] if command[0] in written else []
    result = runner.invoke(app, [*command, str(SMOKE), *where])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.startswith(f"error: STUDY_CACHE={tmp_path / 'file' / 'cache'}: cannot write "
                                    "there (Not a directory); set STUDY_CACHE to a folder you can write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.slow
def test_preview_draws_every_data_setting_of_the_space(tmp_path):
    result = runner.invoke(app, ["data", "preview", str(ROOT / "searchspaces" / "calibration.yaml"),
                                 "--set", "data.n_images=300", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "reduced-source variant" in result.output
    import pandas as pd

    table = pd.read_csv(tmp_path / "statistics.csv")
    assert table["setting"].nunique() == 8 and len(table) == 24
    for setting in table["setting"].unique():
        assert {p.name for p in (tmp_path / setting).iterdir()} == {"train.png", "val.png", "test.png"}
    hidden = table[table["split"] == "train"].set_index("setting")["hidden_depth0"]
    assert hidden["3d-48px-t128"] < hidden["3d-48px-t1"]  # a higher threshold hides less


def test_a_study_file_that_is_not_utf8_or_is_a_folder_is_one_message(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(SMOKE.read_bytes().replace(b"question: ", "question: Größe ".encode("latin-1")))
    for path, expected in ((latin, "latin.yaml: not UTF-8 text"), (ROOT / "searchspaces", "a folder")):
        out = tmp_path / "results"
        result = runner.invoke(app, ["run", str(path), "--results", str(out)])
        assert result.exit_code == 2 and expected in result.output, result.output
        assert "Traceback" not in result.output and not out.exists()


def test_analyze_of_a_damaged_parquet_file_is_one_message(tmp_path):
    (tmp_path / "study.yaml").write_text(loading.dump(loading.load(SMOKE)))
    (tmp_path / "trials.parquet").write_bytes(b"PAR1 cut short")
    result = runner.invoke(app, ["analyze", str(tmp_path)])
    assert result.exit_code == 2 and "trials.parquet: not readable as Parquet" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "report").exists()


def test_analyze_of_a_folder_missing_a_result_file_says_missing(tmp_path):
    import pandas as pd


    (tmp_path / "study.yaml").write_text(loading.dump(loading.load(SMOKE)))
    pd.DataFrame({"trial_id": ["a"], "seed": [0]}).to_parquet(tmp_path / "trials.parquet")
    result = runner.invoke(app, ["analyze", str(tmp_path)])
    assert result.exit_code == 2 and "epochs.parquet: missing" in result.output, result.output
    assert "damaged" not in result.output and not (tmp_path / "report").exists()


def test_an_address_where_nothing_listens_is_a_message_within_seconds(tmp_path):
    import socket
    import time

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    result = runner.invoke(app, ["run", str(SMOKE), "--results", str(tmp_path),
                                 "--address", f"127.0.0.1:{port}"])
    assert time.monotonic() - start < 30 and result.exit_code == 2
    assert "connection refused" in result.output and "ray start --head" in result.output
    assert not any(tmp_path.iterdir())


def test_a_dashboard_address_from_ray_address_is_a_message(tmp_path, monkeypatch):
    """`ray job submit` reads RAY_ADDRESS too, where Ray's docs put the dashboard's address."""
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    result = runner.invoke(app, ["run", str(SMOKE), "--results", str(tmp_path)])
    assert result.exit_code == 2 and "the dashboard's address, which `ray job submit` takes" in result.output
    assert not any(tmp_path.iterdir())


def test_inside_a_ray_job_results_need_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"runtime_env": {"working_dir": "gcs://pkg.zip"}}')
    result = runner.invoke(app, ["run", str(SMOKE), "--results", "results"])
    assert result.exit_code == 2 and "a relative path inside a Ray job" in result.output
    assert not any(tmp_path.iterdir())

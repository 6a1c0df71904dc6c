import pandas as pd
import pytest

from study import loading, results
from study.tune import runner
from study.tune.interrupts import Interrupted, Interrupts
from study.tune.progress import Progress
from study.tune.runner import _split_before
from tests.conftest import SMOKE


def test_a_first_round_split_before_is_resumed_split_whatever_the_slots_now():
    """A run that split its first round's seeds (on more slots than the resumed run has) must go
    on trial by trial: the search's one trial per level would train the seeds it has again."""
    study = loading.load(SMOKE, ["search.seeds=3"])
    assert not _split_before(study, pd.DataFrame(columns=["trial_id", "stage", "seed"]))  # a new study

    def rows(trials: dict[str, list[int]], stage: str = "tune") -> pd.DataFrame:
        return pd.DataFrame([{"trial_id": t, "stage": stage, "seed": s} for t, seeds in trials.items()
                             for s in seeds])

    assert _split_before(study, rows({"a": [0], "b": [1, 2]}))
    assert not _split_before(study, rows({"a": [0, 1, 2], "b": [0, 1, 2]}))  # the search's trials
    assert not _split_before(study, rows({"a": [3]}, stage="confirm"))
    assert list(results.finished(SMOKE.parent / "no-such-study").columns) == ["trial_id", "stage", "seed"]


def test_a_ctrl_c_during_a_look_ends_the_study_before_the_next_round_is_announced(tmp_path, monkeypatch,
                                                                                   capsys):
    """A Ctrl-C held while a sequential design looks (after one of Ray Tune's runs, before the next)
    ends the study there: the look is printed, the next round is never announced, nothing trains.
    The rounds' Ray Tune runs are stood in for by rows written as a trial writes them."""
    study = loading.load(SMOKE, ["model.attention.layers=[]", "compare=train.lr", "analysis.margin=1e-9",
                                 "space={train.lr: {choice: {a: 0.001, b: 0.001}}}",
                                 "search.seeds={start: 2, step: 2, max: 6}"])
    levels = study.space["train.lr"].levels()

    def trials(stages, stage, search_alg, n, param_space, seeds):
        def run() -> None:
            for level in levels:
                trial_id = f"{level}-{seeds[0]}"
                rows = [{"trial_id": trial_id, "stage": stage, "seed": seed, "status": "COMPLETED",
                         "train.lr": level, "best_val_loss": 0.5, "test_loss": 0.5} for seed in seeds]
                results._stage(tmp_path, trial_id, rows, [])
            stages.interrupts.received = True  # Ctrl-C as the run ends: held through the look

        stages.interrupts.fit(run)

    monkeypatch.setattr(runner, "_trials", trials)
    progress = Progress([[(str(level), 2) for level in levels]], done_before=0, epochs=2, slots=2)
    with Interrupts() as interrupts, pytest.raises(Interrupted):
        stages = runner.Stages(study, tmp_path, 0, 2, False, progress, False, interrupts)
        runner._rounds(stages, "tune", {level: {"train.lr": level} for level in levels},
                       results.finished(tmp_path))
    shown = capsys.readouterr().out
    assert "round 1: a, b on seeds 0..1" in shown and "look 1 of 3: b: continue" in shown, shown
    assert "round 2" not in shown

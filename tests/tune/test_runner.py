import pandas as pd

from study import loading, results
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

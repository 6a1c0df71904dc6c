"""One driver per study folder, and a killed driver never blocks the next."""

import signal
import subprocess
import sys
import time

import pytest

from study import lock
from study.errors import UserError

HOLD = """
import sys, time
from pathlib import Path
from study import lock
with lock.held(Path(sys.argv[1]), fresh=True):
    (Path(sys.argv[1]) / "study.yaml").write_text("held")
    print("holding", flush=True)
    time.sleep(600)
"""


def test_a_second_driver_is_refused_until_the_first_is_killed(tmp_path):
    study_dir = tmp_path / "smoke"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(study_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"
        refused = f"another study run is working in it \\(process {holder.pid} "
        for fresh in (True, False):
            with pytest.raises(UserError, match=refused), lock.held(study_dir, fresh=fresh):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: the operating system releases its lock
        holder.wait()
    with lock.held(study_dir, fresh=False) as held:  # --resume after the kill
        assert (held / "study.yaml").read_text() == "held"
        assert f"process {holder.pid} " not in (held / lock.LOCK).read_text()


def test_a_refused_claim_leaves_nothing_behind(tmp_path):
    with pytest.raises(UserError, match="nothing to resume"), lock.held(tmp_path / "new", fresh=False):
        pass
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "trials.parquet").write_text("earlier")
    with pytest.raises(UserError, match="already holds results"), lock.held(tmp_path / "old", fresh=True):
        pass
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["trials.parquet"]
    inside_a_file = tmp_path / "old" / "trials.parquet" / "smoke"
    with pytest.raises(UserError, match="a file, but results go into"), lock.held(inside_a_file, fresh=True):
        pass


def test_the_lock_is_released_when_the_block_ends(tmp_path):
    start = time.monotonic()
    for _ in range(3):
        with lock.held(tmp_path / "smoke", fresh=not (tmp_path / "smoke" / "study.yaml").exists()) as held:
            (held / "study.yaml").write_text("x")
    assert time.monotonic() - start < 5

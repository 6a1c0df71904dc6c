import contextlib
import os
import signal
import subprocess
import sys

import pytest
from ray.tune.tune import _setup_signal_catching

from study.tune.interrupts import Interrupted, Interrupts, Stopped, stoppable


class Run:
    """A Ray Tune run as far as Ctrl-C goes: it installs Tune's own handler as it starts (Ray's
    function, as ``tune.run`` calls it) and leaves it there when it ends; ``ctrl_c_first``: Ctrl-C
    comes as it starts, before Tune catches it."""

    def __init__(self, ctrl_c_first: bool = False) -> None:
        self.ctrl_c_first, self.ran = ctrl_c_first, False

    def fit(self) -> str:
        if self.ctrl_c_first:
            os.kill(os.getpid(), signal.SIGINT)
        self.interrupted = _setup_signal_catching()
        self.ran = True
        return "results"


def test_no_ctrl_c_is_lost_between_or_as_ray_tune_runs_start():
    before = signal.getsignal(signal.SIGINT)
    with Interrupts() as interrupts:
        first = Run()
        assert interrupts.fit(first.fit) == "results" and not interrupts.received
        os.kill(os.getpid(), signal.SIGINT)  # during a look, Tune's handler of the run before still set
        assert interrupts.received and not first.interrupted.is_set()
        late = Run()
        with pytest.raises(Interrupted):
            interrupts.fit(late.fit)
        assert not late.ran  # no next round

    with Interrupts() as interrupts, pytest.raises(Interrupted):
        interrupts.fit(Run(ctrl_c_first=True).fit)
    assert signal.getsignal(signal.SIGINT) is before


def test_a_ctrl_c_during_a_run_is_ray_tunes_and_a_second_one_skips_its_last_checkpoint():
    with Interrupts() as interrupts:
        run = Run()

        def fit() -> str:  # Ctrl-C while the run goes: Tune ends it, as its event tells
            run.fit()
            os.kill(os.getpid(), signal.SIGINT)
            assert run.interrupted.is_set()
            os.kill(os.getpid(), signal.SIGINT)  # "Press CTRL+C ... to skip"
            return "never"

        with pytest.raises(Interrupted):
            interrupts.fit(fit)
        assert not interrupts.received  # the first was Tune's to end its run with


def test_sigusr1_is_a_ctrl_c_and_every_handler_is_given_back():
    """SIGUSR1, Tune's stop signal, which Tune leaves set to a run already done: between runs it
    is held as a Ctrl-C is. On leaving, SIGINT, SIGTERM and SIGUSR1 have the handlers they had."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    with Interrupts() as interrupts:
        first = Run()
        interrupts.fit(first.fit)
        os.kill(os.getpid(), signal.SIGUSR1)  # during a look
        assert interrupts.received and not first.interrupted.is_set()
        with pytest.raises(Interrupted):
            interrupts.fit(Run().fit)
    assert {s: signal.getsignal(s) for s in before} == before


def test_sigterm_ends_the_driver_at_once_with_the_way_on():
    """SIGTERM (`kill`, `timeout`, Slurm's scancel) during a run: the given line, exit status 143,
    at once rather than after Tune's stop, which would wait on Ray's processes the same signal
    ended."""
    code = ("import os, signal, time\n"
            "from study.tune.interrupts import Interrupts\n"
            "with Interrupts('terminated: resume it') as interrupts:\n"
            "    interrupts.fit(lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(30)))\n"
            "print('went on')\n")
    ended = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=25)
    assert ended.returncode == 143 and ended.stderr.strip() == "terminated: resume it", ended
    assert "went on" not in ended.stdout


def test_a_stop_before_ray_that_python_ignored_ends_the_study_as_ray_tunes_run_starts():
    """Before Ray: Ctrl-C and SIGTERM raise ``Stopped``, and one that Python ignored (raised in a
    callback at a fork, as Ray's start forks its processes) is raised again as Tune's run starts,
    not lost. On leaving, SIGINT and SIGTERM have the handlers they had."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with stoppable():
        with pytest.raises(Stopped) as stop:
            os.kill(os.getpid(), signal.SIGINT)
        assert stop.value.signum == signal.SIGINT and str(stop.value) == "interrupted (Ctrl-C)"
    assert {s: signal.getsignal(s) for s in before} == before
    with stoppable():
        with contextlib.suppress(Stopped):  # as Python ignores it in a callback
            os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(Stopped) as stop, Interrupts():
            pytest.fail("no run starts")
        assert stop.value.signum == signal.SIGTERM
    assert {s: signal.getsignal(s) for s in before} == before
    with Interrupts():  # a study after it starts as ever
        pass

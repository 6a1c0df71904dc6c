import os
import signal

import pytest
from ray.tune.tune import _setup_signal_catching

from study.tune.interrupts import Interrupted, Interrupts


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

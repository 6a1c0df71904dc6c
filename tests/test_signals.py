"""Ctrl-C and SIGTERM held over torch's callbacks into Python, then raised in plain Python."""

import json
import os
import signal
import subprocess
import sys

import pytest

from study.signals import held

from .conftest import SMOKE


class Handled(Exception):
    pass


def test_a_signal_in_the_block_waits_for_its_end_then_goes_to_the_handler_in_place():
    came = []

    def handler(signum, frame):
        came.append(signum)
        raise Handled(signum)

    before = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(Handled), held():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            sum(range(1000))  # bytecode, where a handler would run
            assert came == []
            ran_on = True
        assert ran_on and came == [signal.SIGTERM]  # once, raised as the block ended
        assert signal.getsignal(signal.SIGINT) is handler and signal.getsignal(signal.SIGTERM) is handler
        with held():
            pass
        assert came == [signal.SIGTERM]  # nothing held, nothing raised
    finally:
        for signum, previous in before.items():
            signal.signal(signum, previous)


# A Ctrl-C at sampled moments (the n-th Python call) from the making of torch's mode to its exit,
# as it runs the footprint's fake forward or the FLOP count, each run once before so that the calls
# are those of a warm process; printed: the file where each KeyboardInterrupt surfaced.
MOMENTS = """
import json, os, signal, sys
from study import footprint, loading
from study.models import build_network
from study.models.lenet import forward_flops

signal.signal(signal.SIGINT, signal.default_int_handler)  # a process pytest-xdist starts ignores it
study = loading.load(sys.argv[1])
works = {"torch/_subclasses/fake_tensor.py": lambda: footprint.activations(study),
         "torch/utils/flop_counter.py": lambda: forward_flops(build_network(study.model, 48, 1), 48)}
surfaced = {}
for mode, work in works.items():
    work()
    calls = []
    def counted(frame, event, arg):
        if event == "call":
            calls.append((frame.f_code.co_filename.endswith(mode), frame.f_code.co_name))
    sys.setprofile(counted); work(); sys.setprofile(None)
    made = next(n for n, (in_mode, _) in enumerate(calls, 1) if in_mode)  # the mode's __init__
    left = next(n for n, call in enumerate(calls, 1) if n > made and call == (True, "__exit__"))
    for moment in range(made, left, (left - made) // 12):
        seen = [0]
        def signalled(frame, event, arg, seen=seen, moment=moment):
            seen[0] += event == "call"
            if seen[0] == moment and event == "call":
                os.kill(os.getpid(), signal.SIGINT)
        sys.setprofile(signalled)
        try:
            work()
            where = None
        except KeyboardInterrupt as stop:
            tb = stop.__traceback__
            while tb.tb_next:
                tb = tb.tb_next
            where = tb.tb_frame.f_code.co_filename
        sys.setprofile(None)
        surfaced.setdefault(mode, []).append(where)
print(json.dumps(surfaced))
"""


def test_a_ctrl_c_as_torch_calls_python_back_is_raised_once_the_footprint_and_flop_count_are_done():
    """Raised where the mode's callbacks run, a Ctrl-C sometimes aborted the process from torch's
    C++ (status -6: a `study run` signalled as its plan began) or was lost. At every
    sampled moment it now surfaces from ``held``, after the fake forward or the count."""
    done = subprocess.run([sys.executable, "-c", MOMENTS, str(SMOKE)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    surfaced = json.loads(done.stdout)
    assert len(surfaced) == 2
    for mode, places in surfaced.items():
        held_here = [bool(place) and place.endswith(os.path.join("study", "signals.py")) for place in places]
        assert len(places) >= 12 and all(held_here), (mode, places)

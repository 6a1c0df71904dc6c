"""Other processes' load on this process's CPUs, measured from /proc/stat."""

import subprocess
import sys
import time

import pytest

from study.busy import Others

SPIN = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end: pass"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")


def test_a_busy_process_beside_this_one_counts_whole():
    """A process spinning beside this one keeps a CPU busy: about one CPU, whatever else runs."""
    spinner = subprocess.Popen([sys.executable, "-c", SPIN.format(s=5)])
    try:
        time.sleep(0.5)  # its start
        others = Others()
        time.sleep(1.5)
        assert others.cpus() >= 0.8
        assert others.note().startswith("note: other processes kept ")
    finally:
        spinner.kill()
        spinner.wait()


def test_this_processs_own_work_and_the_children_it_waited_for_do_not_count():
    """On one CPU that this process keeps busy, by itself and then through a child it waits for
    (as the plan compiles AttConv's kernel), others count only what took the CPU from it: on a quiet
    machine nothing, beside another busy process part of the CPU, never all of it."""
    code = ("import os, subprocess, sys, time\n"
            "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
            "from study.busy import Others\n"
            "others = Others()\n"
            f"{SPIN.format(s=0.8)}\n"
            f"subprocess.run([sys.executable, '-c', {SPIN.format(s=0.8)!r}], check=True)\n"
            "print(others.cpus())\n")
    ended = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(ended.stdout) < 0.8

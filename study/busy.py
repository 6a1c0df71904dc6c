"""How busy other processes keep the CPUs a study runs on while it prepares.

An embedded Ray offers the trials every CPU this process may run on, and ``study plan`` estimates
the study's time as if they were free. A second study started beside a first, or any other job,
takes its share of them: each study's trials then train slower than planned, and the CPUs a
finished trial frees, handed on as more threads, crowd them further. ``Others`` counts the CPU
time spent on those CPUs by everything but this process and the children it waited for (its C
compiler), from ``/proc/stat``, so that the plan can say so.

Example:
    >>> others = Others()
    >>> sum(range(10**6))  # this process's own work does not count
    499999500000
    >>> others.cpus() is None or others.cpus() >= 0  # None off Linux or under a second since
    True
"""

from __future__ import annotations

import os
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
STAT = Path("/proc/stat")
MIN_S = 1.0  # shorter, and a tick's rounding (10 ms) or one burst of another process says too much
# Worth a note: other processes' load of at least half a CPU and a tenth of the CPUs (a machine's
# own background, a shell, a sampler, stays below).
NOTE_CPUS, NOTE_SHARE = 0.5, 0.1


def _cpus_busy_s(cpus: set[int]) -> float | None:
    """Seconds the CPUs numbered ``cpus`` have spent busy since boot (all but idle and iowait;
    guest time is within user time already), or None where ``/proc/stat`` cannot be read."""
    try:
        lines = STAT.read_text().splitlines()
    except OSError:
        return None
    busy = 0
    for line in lines:
        name, *ticks = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            user, nice, system, idle, iowait, irq, softirq, steal = (int(t) for t in ticks[:8])
            busy += user + nice + system + irq + softirq + steal
    return busy / TICK


def _own_s() -> float:
    """This process's CPU seconds, with those of the children it has waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Others:
    """CPU time other processes spend, from now on, on the CPUs this process may run on."""

    def __init__(self) -> None:
        self._cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
        self._start = (time.monotonic(), _cpus_busy_s(self._cpus), _own_s())

    def cpus(self) -> float | None:
        """The mean number of those CPUs that other processes kept busy since this was made; None
        where the machine does not say (not Linux) or under ``MIN_S`` has passed."""
        wall, busy, own = time.monotonic(), _cpus_busy_s(self._cpus), _own_s()
        wall0, busy0, own0 = self._start
        if busy is None or busy0 is None or wall - wall0 < MIN_S:
            return None
        return max(0.0, (busy - busy0) - (own - own0)) / (wall - wall0)

    def note(self) -> str | None:
        """What a plan should add where other processes kept a share of the CPUs busy worth a note
        (``NOTE_CPUS``, ``NOTE_SHARE``) since this was made; else None."""
        load, cpus = self.cpus(), len(self._cpus)
        if load is None or load < max(NOTE_CPUS, NOTE_SHARE * cpus):
            return None
        return (f"note: other processes kept {load:.1f} of the {cpus} CPUs busy while the steps "
                "were timed (another study or job? `top` shows which); the trials will share "
                "the CPUs with them and take longer than estimated")

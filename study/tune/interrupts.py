"""Ctrl-C across a study's Ray Tune runs (its stages and rounds), so that none is lost.

Ray Tune catches SIGINT while a run goes: it ends the run, its trials stopped at their last
checkpoint. But it installs its handler as each run starts and leaves it in place once the run is
over, so a Ctrl-C between two runs (a look, or the next round while it starts) only set the flag of
a run already done: Tune said "Stop signal received" and the next round trained to its end.
Within ``Interrupts``, a Ctrl-C between runs is held and ends the study before the next run starts;
one that comes as a run starts, before Tune catches it, ends the study as well. So does SIGUSR1,
Tune's own stop signal, which Tune too leaves set to a run already done. SIGTERM, how ``kill``,
``timeout`` and Slurm's ``scancel`` stop a program, ends the driver at once with one line that
says how to go on, where Ray's handler printed a crash report. Outside ``Interrupts`` (``stoppable``:
while a study prepares, Ray starts or stops, and the run's outcome is counted), Ctrl-C and SIGTERM
raise ``Stopped``, so that a new study's folder goes again on the way out and the caller says so
in one line; SIGTERM used to end the driver there without a word, its lock file left. (Where torch
calls Python back from its C++, ``study.signals.held`` makes them wait: raised there, they could
abort the process.)

Example:
    >>> with Interrupts() as interrupts:
    ...     interrupts.fit(lambda: "the run's results")
    "the run's results"
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

# The stop signal ``stoppable`` raised, kept: Python ignores an exception raised in some
# callbacks (one run at a fork, as Ray's start forks its processes, or in a finaliser), and
# ``raise_if_dropped`` raises it again: as Ray Tune's run starts, after each of ``study trial``'s epochs.
_raised: int | None = None


class Interrupted(Exception):
    """A stage cut short (Ctrl-C, SIGUSR1): the study ends there, with no look at a round cut short,
    no later stage or round, and no level of a fixed design told a mean of part of its networks."""


class Interrupts:
    """Where a study's Ctrl-C (or SIGUSR1) goes while it runs: between Ray Tune's runs, held here
    (``fit`` then raises ``Interrupted``); during one, Tune's, and a second Ctrl-C is Python's
    KeyboardInterrupt, as Tune's message promises ("Press CTRL+C ... to skip"). A SIGTERM prints
    ``terminated`` and ends the process with status 143. Outside the main thread, where no signal
    handler can be set, as Tune does: nothing changes. On leaving, each signal's handler is the
    one found on entering."""

    def __init__(self, terminated: str = "terminated") -> None:
        self.received, self.terminated = False, terminated
        self._main = threading.current_thread() is threading.main_thread()

    def __enter__(self) -> Interrupts:
        raise_if_dropped()
        if self._main:
            self._before = {signum: signal.getsignal(signum) for signum in self._handlers()}
            self._install()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._main:
            for signum, handler in self._before.items():
                signal.signal(signum, handler)

    def _handlers(self) -> dict[int, Callable[[int, object], None]]:
        """This study's handler of each signal that stops it, outside Tune's runs."""
        return {signal.SIGINT: self._hold, signal.SIGTERM: self._terminate, signal.SIGUSR1: self._as_ctrl_c}

    def _install(self) -> None:
        for signum, handler in self._handlers().items():
            signal.signal(signum, handler)

    def _hold(self, signum: int, frame: object) -> None:
        self.received = True

    @staticmethod
    def _as_ctrl_c(signum: int, frame: object) -> None:
        """Whatever a Ctrl-C would do now: held between runs, Tune's stop during one, and Python's
        KeyboardInterrupt as a run starts."""
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)

    def _terminate(self, signum: int, frame: object) -> None:
        # Not Tune's stop, which waits on Ray's own processes: `timeout` and Slurm signal those
        # too, and a stop waiting on a Ray already gone hangs for a minute. An end at any moment
        # is what every result write and --resume are built for (kill -9 included).
        import ray  # here, not with the module: `study run` sets ``stoppable`` before its checks

        print(self.terminated, file=sys.stderr, flush=True)
        try:
            ray.shutdown()  # the processes an embedded Ray started: not left behind
        finally:
            os._exit(128 + signum)

    def check(self) -> None:
        """``Interrupted`` where a Ctrl-C has been held: before a stage or round is announced."""
        if self.received:
            raise Interrupted

    def fit(self, run: Callable[[], T]) -> T:
        """``run()`` (a Tuner's ``fit``) unless a Ctrl-C came before it; ``Interrupted`` for one
        that came before or as it started."""
        self.check()
        if not self._main:
            return run()
        # Tune keeps this as the handler to restore once it has caught a first Ctrl-C.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            return run()
        except KeyboardInterrupt:  # before Tune caught it, or a second one: Ray's shutdown stops the trials
            raise Interrupted from None
        finally:  # not Tune's, left behind by the run
            self._install()


class Stopped(BaseException):
    """A Ctrl-C or SIGTERM outside a study's Ray Tune runs (``stoppable``); ``signum`` says
    which. Not an ``Exception``, so that no ``except Exception`` on the way takes it for an error."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        return "interrupted (Ctrl-C)" if self.signum == signal.SIGINT else "terminated (SIGTERM)"


def raise_if_dropped() -> None:
    """``Stopped`` again for a stop that ``stoppable`` raised where Python ignored it (in a
    finaliser, a weakref callback, a callback at a fork): called where long work can end, so that
    it ends there rather than running on as if no stop had come.

    Example:
        >>> raise_if_dropped()  # no stop came: nothing happens
    """
    if _raised is not None:
        raise Stopped(_raised)


@contextlib.contextmanager
def stoppable() -> Iterator[None]:
    """Within the block, Ctrl-C and SIGTERM raise ``Stopped`` where the main thread stands,
    except while a Ray Tune run's ``Interrupts`` hold them; on leaving, each signal's handler is
    the one found on entering. ``study run``, ``study trial`` and ``study plan`` hold it from
    their start.

    Example:
        >>> with contextlib.suppress(Stopped), stoppable():
        ...     os.kill(os.getpid(), signal.SIGTERM)
        ...     print("never printed: the signal raised Stopped")
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # no handler can be set outside the main thread
        return

    def stop(signum: int, frame: object) -> None:
        global _raised
        _raised = signum
        raise Stopped(signum)

    before = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        global _raised
        _raised = None
        for signum, handler in before.items():
            signal.signal(signum, handler)


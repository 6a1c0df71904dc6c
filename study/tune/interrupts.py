"""Ctrl-C across a study's Ray Tune runs (its stages and rounds), so that none is lost.

Ray Tune catches SIGINT while a run goes: it ends the run, its trials stopped at their last
checkpoint. But it installs its handler as each run starts and leaves it in place once the run is
over, so a Ctrl-C between two runs (a look, or the next round while it starts) only set the flag of
a run already done: Tune said "Stop signal received" and the next round trained to its end.
Within ``Interrupts``, a Ctrl-C between runs is held and ends the study before the next run starts;
one that comes as a run starts, before Tune catches it, ends the study as well.

Example:
    >>> with Interrupts() as interrupts:
    ...     interrupts.fit(lambda: "the run's results")
    "the run's results"
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Interrupted(Exception):
    """A stage cut short (Ctrl-C): the study ends there, with no look at a round cut short, no
    later stage or round, and no level of a fixed design told a mean of part of its networks."""


class Interrupts:
    """Where a study's Ctrl-C goes while it runs: between Ray Tune's runs, held here (``fit``
    then raises ``Interrupted``); during one, Tune's, and a second Ctrl-C is Python's
    KeyboardInterrupt, as Tune's message promises ("Press CTRL+C ... to skip"). Outside the main
    thread, where no signal handler can be set, as Tune does: nothing changes."""

    def __init__(self) -> None:
        self.received = False
        self._main = threading.current_thread() is threading.main_thread()

    def __enter__(self) -> Interrupts:
        if self._main:
            self._before = signal.signal(signal.SIGINT, self._hold)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._main:
            signal.signal(signal.SIGINT, self._before)

    def _hold(self, signum: int, frame: object) -> None:
        self.received = True

    def fit(self, run: Callable[[], T]) -> T:
        """``run()`` (a Tuner's ``fit``) unless a Ctrl-C came before it; ``Interrupted`` for one
        that came before or as it started."""
        if self.received:
            raise Interrupted
        if not self._main:
            return run()
        # Tune keeps this as the handler to restore once it has caught a first Ctrl-C.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            return run()
        except KeyboardInterrupt:  # before Tune caught it, or a second one: Ray's shutdown stops the trials
            raise Interrupted from None
        finally:
            signal.signal(signal.SIGINT, self._hold)  # not Tune's, left behind by the run

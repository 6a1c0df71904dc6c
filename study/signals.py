"""Ctrl-C and SIGTERM held over torch work that calls Python back from its C++.

A signal whose handler raises (Python's ``KeyboardInterrupt``, ``study run``'s ``Stopped``)
raises wherever the main thread's Python code stands. A network run under one of torch's modes
(``FakeTensorMode`` for the footprint, ``FlopCounterMode`` for the FLOP count) runs Python called
back from torch's C++, and an exception raised there does not always pass back through it: at
some moments it is dropped (the signal is lost, and the work goes on), at others the process ends
from C++ ("terminate called after throwing an instance of 'python_error'", SIGABRT), without the
line that says how to go on and with the study's lock file left. Within ``held()``, a signal
waits for the block's end and then goes to the handler in place, which raises in plain Python.

Example:
    >>> import os
    >>> with contextlib.suppress(KeyboardInterrupt), held():
    ...     os.kill(os.getpid(), signal.SIGINT)
    ...     print("the block runs to its end first")
    the block runs to its end first
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

HELD = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait for the block's end, then go to the handlers in place (each once,
    in the order they came). Outside the main thread, where no handler can be set, nothing
    changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    before = {}
    for signum in HELD:
        if signal.getsignal(signum) is not None:  # None: a handler not set from Python, kept as it is
            before[signum] = signal.signal(signum, lambda signum, frame: came.append(signum))
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(came):
            signal.raise_signal(signum)

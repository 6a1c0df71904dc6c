"""One driver per study: a lock on the study folder, held while ``study run`` works in it.

The lock is ``flock`` on ``<study>/.lock``, so the operating system releases it when its holder
exits, however it exits: a driver killed with ``kill -9`` never blocks ``--resume``. The file
names its holder (process, host, start time, command) for the message a second driver gets.
On a shared file system the lock holds across machines where the file system passes ``flock``
on (NFS v4 and most NFS v3 set-ups with lockd: Linux maps it to a POSIX byte-range lock; Lustre
and BeeGFS only when mounted with ``flock``); where it does not, two drivers on different
machines are not kept apart, and ``--storage`` should name a database server instead.

Example:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     with held(Path(folder) / "smoke", fresh=True) as study_dir:
    ...         try:
    ...             with held(study_dir, fresh=False):
    ...                 pass
    ...         except UserError as err:
    ...             print("another study run is working in it" in str(err))
    True
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from study.errors import UserError
from study.files import file_in_the_way, no_empty_folders_on_failure, remove

LOCK = ".lock"


@contextlib.contextmanager
def held(study_dir: Path, fresh: bool, elsewhere: str = "pass --name NEW_NAME, or continue it with "
         "--resume", discard: bool = False) -> Iterator[Path]:
    """Hold ``study_dir``'s lock for the ``with`` block. ``fresh``: the folder must hold nothing
    yet (a new study: results are never overwritten; ``elsewhere`` says how to choose another);
    else it must hold a ``study.yaml`` (resume).
    If the block fails, the lock goes again where this call made it, and so do the folders it
    made (the study's, those above it) while they are empty: a refused run leaves nothing behind.
    With ``discard`` (and ``fresh``), so does everything the failed block wrote in the folder:
    for ``study trial``, whose results are written once trained, a stop among the writes leaves
    none of them, and the same command runs it again."""
    study_dir = Path(study_dir)
    lock_made = not (study_dir / LOCK).exists()
    with no_empty_folders_on_failure(study_dir):
        try:
            study_dir.mkdir(parents=True, exist_ok=True)
            fd = _lock(study_dir / LOCK)
        except OSError as err:
            blocking = file_in_the_way(study_dir)
            if blocking:
                raise UserError(f"{blocking} is a file, but results go into the folder {study_dir}; "
                                "pass --results naming a folder") from None
            raise UserError(f"{study_dir}: cannot write there ({err.strerror or err}); pass --results "
                            "naming a folder you can write") from None
        try:
            others = sorted(p.name for p in study_dir.iterdir() if p.name != LOCK)
            if fresh and others:
                raise UserError(f"{study_dir} already holds results; remove it, or {elsewhere}")
            if not fresh and "study.yaml" not in others:
                raise UserError(f"{study_dir}: nothing to resume (no study.yaml); run without --resume")
            try:
                yield study_dir
            except BaseException:
                if discard and fresh:  # the folder held nothing else when the block began
                    for path in study_dir.iterdir():
                        if path.name != LOCK:
                            remove(path)
                raise
        except BaseException:
            if lock_made:
                (study_dir / LOCK).unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)  # releases the lock


def _lock(path: Path) -> int:
    """An open descriptor of ``path`` holding its exclusive lock, with this driver named in it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "a process that named nothing"
            os.close(fd)
            raise UserError(f"{path.parent}: another study run is working in it ({holder}); wait for "
                            "it to end or stop it, then --resume if it was interrupted") from None
        except OSError as err:
            os.close(fd)
            raise UserError(f"{path}: the file system refuses a lock ({err.strerror}); run on a "
                            "folder whose file system supports flock (see README, Clusters)") from None
        # Removed and made anew by another driver between our open and flock: lock the new one.
        if os.path.exists(path) and os.stat(path).st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    command = " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])
    os.write(fd, f"process {os.getpid()} on {socket.gethostname()} since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {command}\n".encode())
    return fd

"""Files and folders that appear whole or not at all: made under a temporary name, then renamed.

Example:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     atomic_write(Path(folder) / "note.txt", lambda tmp: tmp.write_text("done"))
    ...     sorted(p.name for p in Path(folder).iterdir())
    ['note.txt']
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)``, which makes a file or a folder at ``tmp``, then rename it to ``path``,
    so readers never see half of it; nothing of ``tmp`` is left behind if ``write`` fails.

    ``tmp`` keeps ``path``'s suffix (``np.savez`` and the like add one otherwise) and the process
    id, so concurrent writers of the same path never share a temporary name. A folder already at
    ``path`` is replaced (moved aside first: no single rename can replace a folder).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    _remove(tmp)  # left by a killed process that had the same id
    try:
        write(tmp)
        if tmp.is_dir() and path.exists():
            path.rename(old)
        os.replace(tmp, path)
    finally:
        _remove(tmp)
        _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)

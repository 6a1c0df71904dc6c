"""Files and folders that appear whole or not at all: made under a temporary name, then renamed;
folders a failed step made go again.

Example:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     atomic_write(Path(folder) / "note.txt", lambda tmp: tmp.write_text("done"))
    ...     sorted(p.name for p in Path(folder).iterdir())
    ['note.txt']
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable, Iterator
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
    remove(tmp)  # left by a killed process that had the same id
    try:
        write(tmp)
        if tmp.is_dir() and path.exists():
            path.rename(old)
        os.replace(tmp, path)
    finally:
        remove(tmp)
        remove(old)


@contextlib.contextmanager
def no_empty_folders_on_failure(path: Path) -> Iterator[None]:
    """If the ``with`` block fails (an exception, Ctrl-C included), ``path`` and the folders above
    it that did not exist when it began go again, innermost first, as long as they are empty: a
    refused or failed step leaves no empty folders behind, and never removes anything it found.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     with contextlib.suppress(OSError), no_empty_folders_on_failure(Path(folder) / "a" / "b"):
        ...         (Path(folder) / "a" / "b").mkdir(parents=True)
        ...         raise OSError("the step failed")
        ...     list(Path(folder).iterdir())
        []
    """
    path = Path(path)
    made = [p for p in (path, *path.parents) if not p.exists()]  # innermost first
    try:
        yield
    except BaseException:
        for folder in made:
            if not folder.is_dir() or any(folder.iterdir()):
                break
            folder.rmdir()
        raise


def file_in_the_way(folder: Path) -> Path | None:
    """The file that stands where ``folder`` or a folder above it should be, if one does.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as root:
        ...     (Path(root) / "notes").write_text("a file")
        ...     file_in_the_way(Path(root) / "notes" / "report") == Path(root) / "notes"
        6
        True
    """
    folder = Path(folder)
    return next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)


def cannot_write(folder: Path, err: OSError, option: str) -> str:
    """Why ``folder`` could not be written (``err``), and the fix: ``option`` names another.

    Example:
        >>> print(cannot_write(Path("/results"), OSError(errno.ENOSPC, "No space left on device"), "--out"))
        cannot write there (No space left on device); free space there, or give --out naming a folder ...
    """
    blocking = file_in_the_way(folder)
    why = f"{blocking} is a file" if blocking else err.strerror or err
    full = not blocking and err.errno in (errno.ENOSPC, errno.EDQUOT)
    return (f"cannot write there ({why}); {'free space there, or ' * full}give {option} naming a folder "
            "you can write")


def remove(path: Path) -> None:
    """Remove the file or folder ``path``, if it is there."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)

"""Where the tool keeps what it can rebuild: generated datasets (``data/``), the AttConv CPU
kernel built for this machine (``kernels/``) and inductor's compiled code (``inductor/``).

Example:
    >>> (cache_dir() / "kernels").relative_to(cache_dir())
    PosixPath('kernels')
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from study.errors import UserError


def cache_dir() -> Path:
    """``$STUDY_CACHE``, else ``~/.cache/study``: removing it costs only the time to rebuild."""
    return Path(os.environ.get("STUDY_CACHE") or Path.home() / ".cache" / "study")


def check_writable() -> Path:
    """The cache folder, created where missing and written to once: one that cannot be (a
    read-only home directory on a cluster, a ``STUDY_CACHE`` naming a file or a full disk) is a
    ``UserError`` before anything runs, not a traceback once the dataset is saved after the
    study's folder was made. A relative ``STUDY_CACHE`` is made absolute in this process's
    environment: Ray Tune runs each trial in a folder of its own, where the Ray workers this
    process starts would each read it as another cache, generating the dataset and building the
    kernel again; so is a relative ``TORCHINDUCTOR_CACHE_DIR``, where compiled trials would each
    compile cold."""
    for name in ("STUDY_CACHE", "TORCHINDUCTOR_CACHE_DIR"):
        if os.environ.get(name):
            os.environ[name] = str(Path(os.environ[name]).expanduser().absolute())
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError as err:
        named = f"STUDY_CACHE={folder}" if os.environ.get("STUDY_CACHE") else f"{folder} (the default cache)"
        raise UserError(f"{named}: cannot write there ({err.strerror or err}); set STUDY_CACHE to a "
                        "folder you can write. It holds the generated datasets and AttConv's CPU kernel, "
                        "rebuilt wherever they are missing") from None
    return folder

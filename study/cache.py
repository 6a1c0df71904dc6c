"""Where the tool keeps what it can rebuild: generated datasets (``data/``), the AttConv CPU
kernel built for this machine (``kernels/``) and inductor's compiled code (``inductor/``).

Example:
    >>> (cache_dir() / "kernels").relative_to(cache_dir())
    PosixPath('kernels')
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$STUDY_CACHE``, else ``~/.cache/study``: removing it costs only the time to rebuild."""
    return Path(os.environ.get("STUDY_CACHE") or Path.home() / ".cache" / "study")

"""Where a study's Optuna trials are stored: ``search.storage`` (``study run --storage``).

- default: ``sqlite:///<results>/optuna.db``, a file beside the results, for one driver;
- ``journal:PATH``: Optuna's journal file, appended to under a file lock, for a file system that
  several machines share (Optuna advises against SQLite there);
- any other SQLAlchemy URL (``postgresql://…``, ``mysql+pymysql://…``): a database server, for
  many drivers or when no shared file system is at hand.

Example:
    >>> from study.loading import load
    >>> study = load("searchspaces/smoke.yaml", ["search.storage=postgresql://db.example/studies"])
    >>> study.search.storage, study_names(study)
    ('postgresql://db.example/studies', ['smoke'])
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileBackend

from study.config import Study

JOURNAL = "journal:"


def optuna_storage(study: Study, study_dir: Path) -> optuna.storages.BaseStorage:
    """The storage ``study`` names, for the study whose results go to ``study_dir``."""
    url = study.search.storage or f"sqlite:///{Path(study_dir) / 'optuna.db'}"
    if url.startswith(JOURNAL):
        path = Path(url.removeprefix(JOURNAL)).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return optuna.storages.RDBStorage(url)


def study_name(study: Study, level: object = None) -> str:
    """The Optuna study of ``study``, or of one compared level when each is tuned on its own."""
    return study.name if level is None else f"{study.name}:{level}"


def study_names(study: Study) -> list[str]:
    """Every Optuna study ``study`` keeps in its storage (which may hold other studies too)."""
    if study.tuned_per_level():
        return [study_name(study, level) for level in study.space[study.compare].levels()]
    return [study_name(study)]


def may_hold_trials(study: Study, study_dir: Path) -> bool:
    """Whether the storage may hold trials already (a file that exists, or a server)."""
    url = study.search.storage
    if url is None:
        return (Path(study_dir) / "optuna.db").exists()
    return not url.startswith(JOURNAL) or Path(url.removeprefix(JOURNAL)).expanduser().exists()

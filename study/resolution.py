"""A trial's study: the values Optuna chose, at their dotted keys, filled into the study file's.

Example:
    >>> from study.loading import load
    >>> study = load("searchspaces/smoke.yaml")
    >>> resolve(study, {"model.attention.layers": "[0]"}).model.attention.layers
    [0]
    >>> get(study, "train.epochs"), section_keys(study, "model")
    (2, ['model.attention.layers'])
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from study.config import Study, encode


def section_keys(study: Study, section: str) -> list[str]:
    """The keys of the space that change ``section`` (``data``, ``model`` or ``train``)."""
    return [key for key in study.space if key == section or key.startswith(f"{section}.")]


def combinations(study: Study, keys: list[str]) -> Iterator[dict[str, Any]]:
    """Every combination of the given space keys' candidates (their levels, or both ends of a
    range), as ``{key: stored value}`` in the keys' order."""
    for values in itertools.product(*(study.space[k].candidates() for k in keys)):
        yield dict(zip(keys, values, strict=True))


def resolve(study: Study, params: dict[str, Any]) -> Study:
    """The study with ``params`` (dotted keys, values as the result files store them) filled in."""
    raw = study.model_dump(by_alias=True)
    for key, stored in params.items():
        set_dotted(raw, key, study.space[key].value(stored), merge=True)
    return Study.model_validate(raw)


def current(study: Study, key: str) -> Any:
    """What the file's own sections hold at ``key``, stored as the result files store choices.

    For labelled choices this is the first label that leaves the study unchanged, or None.
    """
    spec = study.space[key]
    if isinstance(spec.choice, dict):
        return next((level for level in spec.levels() if resolve(study, {key: level}) == study), None)
    return encode(get(study, key))


def get(study: Study, key: str) -> Any:
    """The value at a dotted key, e.g. ``get(study, "train.lr")``."""
    node: Any = study
    for part in key.split("."):
        node = getattr(node, part)
    return node


def set_dotted(raw: dict, key: str, value: Any, merge: bool = False) -> None:
    """Set ``value`` at a dotted key; with ``merge``, a mapping is merged into the section there."""
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"{key!r}: {part!r} holds a value, not settings")
    if merge and isinstance(value, dict) and isinstance(node.get(leaf), dict):
        for name, inner in value.items():
            set_dotted(node[leaf], name, inner, merge=True)
    else:
        node[leaf] = value

"""How counts, times and configurations read in what a person sees: "1 seed", never "1 seeds";
"3m05s"; "layers=[0] lr=0.0006466".

Example:
    >>> counted(1, "seed"), counted(3, "seed"), counted(2, "thread"), counted(1, "level")
    ('1 seed', '3 seeds', '2 threads', '1 level')
    >>> duration(42.4), duration(185), duration(7620)
    ('42s', '3m05s', '2h07m')
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def counted(n: int | float, noun: str) -> str:
    """``n`` and ``noun``, the noun in the plural unless ``n`` is 1."""
    return f"{n:g} {noun}" if n == 1 else f"{n:g} {noun}s"


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``: elapsed and remaining time as a person reads it."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def configuration(params: Mapping[str, Any], short: bool = True) -> str:
    """A configuration (space key → value): ``short``, as progress lines show it, each key by its
    last part and numbers to 4 significant digits; else every key in full, for messages that must
    name the study file's keys.

    Example:
        >>> configuration({"model.attention.layers": "[0]", "train.lr": 0.0006466422717414558})
        'layers=[0] lr=0.0006466'
        >>> configuration({"model.attention.layers": [0], "train.lr": 0.001}, short=False)
        'model.attention.layers=[0], train.lr=0.001'
    """
    if not short:
        return ", ".join(f"{key}={value}" for key, value in params.items())
    return " ".join(f"{key.rsplit('.', 1)[-1]}={value:.4g}" if isinstance(value, float)
                    else f"{key.rsplit('.', 1)[-1]}={value}" for key, value in params.items())


EXCERPT = 80  # characters of the user's input a message quotes, at most


def excerpt(value: Any) -> str:
    """``repr(value)``, cut short: a message never echoes more than a line of the input."""
    text = repr(value)
    return text if len(text) <= EXCERPT else f"{text[:EXCERPT]}… ({len(text):,} characters)"

"""How counts and times read in what a person sees: "1 seed", never "1 seeds"; "3m05s".

Example:
    >>> counted(1, "seed"), counted(3, "seed"), counted(2, "thread"), counted(1, "level")
    ('1 seed', '3 seeds', '2 threads', '1 level')
    >>> duration(42.4), duration(185), duration(7620)
    ('42s', '3m05s', '2h07m')
"""

from __future__ import annotations


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

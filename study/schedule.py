"""How trials share the CPUs over time: the cost model ``study plan`` projects a study's wall time
with, and the run's progress line its time left, so that the estimate printed before the start
and the one printed during the run agree.

Example:
    >>> speed(2)  # a trial given twice its CPUs
    1.8
"""

from __future__ import annotations

from collections.abc import Sequence

TRIAL_START_S = 5.0  # a trial's worker: importing torch, loading the cached dataset (measured here)
# A trial given k times its CPUs trains (1 + SCALING·(k − 1))× as fast, as bench/threads.py measured
# for two threads (1.6–1.9×); past MAX_SHARE times its CPUs, not measured, no faster.
SCALING, MAX_SHARE = 0.8, 4


def threads(cpus: float) -> int:
    """torch's threads for a trial holding ``cpus`` CPUs: one per whole CPU, one at least.

    Example:
        >>> threads(0.5), threads(2.0)
        (1, 2)
    """
    return max(1, int(cpus))


def start_share(slots: int, trials: int) -> int:
    """The slots each trial of a stage of ``trials`` starts on where the CPUs are shared out: an
    even share where fewer trials than ``slots``, else one, and no more than ``MAX_SHARE``, past
    which a trial's threads are not known to speed it up.

    Example:
        >>> start_share(64, 20), start_share(2, 6), start_share(64, 2)
        (3, 1, 4)
    """
    return max(1, min(MAX_SHARE, slots // trials))


def speed(k: int) -> float:
    """How many times as fast a trial given ``k`` times its CPUs trains (``SCALING``, ``MAX_SHARE``)."""
    return 1 + SCALING * (min(k, MAX_SHARE) - 1)


def hand_out(work: Sequence[float], held: Sequence[int], free: int) -> list[int]:
    """The slots each running trial holds once ``free`` more are handed out: a slot at a time to the
    trial with the longest time left (``work``: its seconds left on one slot, over ``speed`` of the
    slots it holds), among those that one more slot speeds up (``MAX_SHARE``), and for a trial not
    given one yet, by more than its restart costs (``TRIAL_START_S``); the rest stay free. The
    plan's schedule and the run's ``FreedCPUs`` both hand slots out so.

    Example:
        >>> hand_out([100.0, 10.0], held=[1, 1], free=2)  # the long one first, whose time then falls
        [3, 1]
        >>> hand_out([100.0], held=[3], free=4)  # past four slots a trial is no faster
        [4]
        >>> hand_out([6.0], held=[1], free=1)  # 2.7 s saved, 5 s to restart
        [1]
    """
    before, held = list(held), list(held)

    def pays(k: int) -> bool:
        if held[k] >= MAX_SHARE:
            return False
        saved = work[k] / speed(held[k]) - work[k] / speed(held[k] + 1)
        return held[k] > before[k] or saved > TRIAL_START_S

    for _ in range(free):
        paying = [k for k in range(len(held)) if pays(k)]
        if not paying:
            break
        longest = max(paying, key=lambda k: work[k] / speed(held[k]))
        held[longest] += 1
    return held


def schedule(trials: list[float], slots: int, reallocate: bool,
             running: Sequence[tuple[float, int]] = ()) -> tuple[float, float]:
    """Wall time of trials that take ``trials`` seconds each on their own CPUs, ``slots`` at a
    time in the order given, after the ``running`` ones (seconds left at their present speed, and
    the slots each holds), and the use of the slots: the trials' own seconds over the slots' wall
    time (a slot given to a trial that gains less than a slot's worth counts short). With
    ``reallocate``, trials that all fit at once start with an even share of the slots, and once no
    trial waits, the slots no trial holds (those of each trial that ends) are handed out among the
    running ones (``hand_out``: the longest first), each given more restarting from its checkpoint
    (``TRIAL_START_S``) and running ``speed(k)`` times as fast with k slots. The plan and the
    run's progress line both lay trials out with it.

    Example:
        >>> schedule([100.0, 300.0], slots=2, reallocate=False)
        (300.0, 0.666...)
        >>> round(schedule([100.0, 300.0], slots=2, reallocate=True)[0])
        216
        >>> schedule([300.0], slots=2, reallocate=True)[0]  # one trial, both slots from its start
        166.666...
        >>> schedule([100.0], slots=2, reallocate=False, running=[(50.0, 1)])[0]  # beside one with 50 s left
        100.0
    """
    # Each trial as [work left in seconds on one slot, the slots it holds].
    waiting, now = list(trials), 0.0
    active = [[left * speed(k), k] for left, k in running]
    work = sum(trials) + sum(w for w, _ in active)
    if reallocate and not active and 0 < len(waiting) <= slots:  # as the run starts them
        active, waiting = [[seconds, start_share(slots, len(waiting))] for seconds in waiting], []
    free = max(0, slots - sum(k for _, k in active))
    while waiting or active:
        while waiting and free:
            active.append([waiting.pop(0), 1])
            free -= 1
        if reallocate and not waiting and free and active:
            for trial, more in zip(active, hand_out([w for w, _ in active], [k for _, k in active], free),
                                   strict=True):
                if more > trial[1]:  # each given more restarts once, at its new speed
                    trial[0] += TRIAL_START_S * speed(more)
                    free -= more - trial[1]
                    trial[1] = more
        step = min(left / speed(k) for left, k in active)
        now += step
        for trial in active:
            trial[0] -= step * speed(trial[1])
        ended = [r for r in active if r[0] <= 1e-9]
        free += sum(k for _, k in ended)
        active = [r for r in active if r[0] > 1e-9]
    return now, work / (now * slots) if now else 1.0

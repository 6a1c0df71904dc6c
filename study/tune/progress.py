"""The running count of a study's trials and its time left, from what the run has measured.

Example:
    >>> progress = Progress([([None, None], 3)], done_before=0, epochs=2, slots=2)
    >>> progress(0)  # nothing measured yet: no estimate
    '[0/2 0s]'
"""

from __future__ import annotations

import heapq
import time

from study.words import duration


class Progress:
    """The running count over both stages and an estimate of the time left, from what this run
    measured: a trial lasts its fixed part (start-up, test, writing: measured on the finished
    ones) plus its epochs at its seed count times the measured seconds per epoch per seed (its
    own, once it ran one); the trials left are laid out over the ``slots`` that run at once, each
    waiting trial in the slot that frees first. ``stages``: each stage's trials in order, as the
    level of the compared factor each will train (None where the sampler has yet to choose), and
    its seeds; a waiting trial of a known level is costed at that level's measured seconds, else
    at the mean. A stage starts when the one before has ended. A resumed study's earlier trials
    took no time here and count only as done."""

    def __init__(self, stages: list[tuple[list[str | None], int]], done_before: int, epochs: int,
                 slots: int) -> None:
        # Every trial of the study in order: (its stage, its level, its seeds).
        self.plan = [(k, level, seeds) for k, (levels, seeds) in enumerate(stages) for level in levels]
        self.epochs, self.slots = epochs, max(1, slots)
        self.total, self.done = len(self.plan), done_before
        self.rounds_may_follow = False  # a sequential design may call for rounds not planned yet
        self.start = time.perf_counter()
        self.began: dict[str, float] = {}  # running trial → when it started
        self.seeds: dict[str, int] = {}  # trial → its networks
        self.epoch_s: dict[str, float] = {}  # trial → its last epoch's seconds per seed
        self.level_s: dict[str | None, float] = {}  # level → its last measured seconds per epoch and seed
        self.left: dict[str, int] = {}  # running trial → epochs it has left
        self.fixed: list[float] = []  # finished trials: their time beyond their epochs

    def extend(self, levels: list[str], seeds: int) -> None:
        """Another round of a sequential design: a trial of ``seeds`` networks per level, after
        everything planned so far."""
        stage = self.plan[-1][0] + 1 if self.plan else 0
        self.plan += [(stage, level, seeds) for level in levels]
        self.total = len(self.plan)

    def epoch(self, trial_id: str, level: str | None, seeds: int, epoch: int, seconds: float,
              since_start: float) -> None:
        """Trial ``trial_id`` (of ``level``, ``seeds`` networks) finished ``epoch`` in ``seconds``,
        ``since_start`` seconds after it started."""
        self.began.setdefault(trial_id, time.perf_counter() - since_start)
        self.seeds[trial_id], self.epoch_s[trial_id] = seeds, seconds / seeds
        self.level_s[level] = seconds / seeds
        self.left[trial_id] = self.epochs - epoch - 1

    def finished(self, trial_id: str) -> None:
        if trial_id in self.began and trial_id in self.left:
            took = time.perf_counter() - self.began.pop(trial_id)
            ran = self.epochs - self.left[trial_id]
            self.fixed.append(max(0.0, took - ran * self.epoch_s[trial_id] * self.seeds[trial_id]))
        self.left.pop(trial_id, None)

    def left_s(self, done: int) -> float | None:
        if not self.epoch_s:
            return None
        now, fixed = time.perf_counter(), sum(self.fixed) / len(self.fixed) if self.fixed else 0.0
        per_seed = sum(self.epoch_s.values()) / len(self.epoch_s)
        free_at = sorted(max(0.0, fixed + self.epochs * self.epoch_s[t] * self.seeds[t]
                             - (now - self.began[t])) for t in self.left)
        free_at = [0.0] * max(0, self.slots - len(free_at)) + free_at
        for index in range(done + len(self.left), self.total):  # the trials not started yet
            stage, level, seeds = self.plan[index]
            if index and stage != self.plan[index - 1][0]:
                free_at = [max(free_at)] * len(free_at)  # a stage starts when the one before ends
            cost = fixed + self.epochs * self.level_s.get(level, per_seed) * seeds
            heapq.heapreplace(free_at, free_at[0] + cost)
        return max(free_at)

    def __call__(self, done: int) -> str:
        left = self.left_s(done) if done < self.total else None
        shown = "" if left is None else f", ~{duration(left)} left" + (
            " in this round" if self.rounds_may_follow else "")
        return f"[{done}/{self.total} {duration(time.perf_counter() - self.start)}{shown}]"

"""The running count of a study's trials and its time left, from what the run has measured.

Example:
    >>> progress = Progress([[(None, 3), (None, 3)]], done_before=0, epochs=2, slots=2)
    >>> progress(0)  # nothing measured yet: no estimate
    '[0/2 0s]'
"""

from __future__ import annotations

import itertools
import time

from study.schedule import schedule, speed
from study.words import duration


class Progress:
    """The running count over both stages and an estimate of the time left, from what this run
    measured. A running trial has the epochs it has left at its latest epoch's seconds (less the
    time its current epoch has run), then its tail (test and writing, measured on the trials that
    finished); a waiting one its start-up (measured on the trials that reported their first epoch
    here), its epochs at its level's measured seconds per epoch and seed on one CPU's share (the
    mean of the levels where its own is not known yet) and the tail. They are laid out over the
    ``slots`` that run at once by ``study.schedule.schedule``, the plan's own model (with
    ``reallocate``, the CPUs shared out among the running trials). ``stages``: each stage's trials in
    order, each as the level of the compared factor it will train (None where the sampler has yet
    to choose) and its number of seeds. A stage starts when the one before has ended. A resumed
    study's earlier trials took no time here and count only as done; a trial resumed from its
    checkpoint is measured by its epochs here, whatever its earlier run took."""

    def __init__(self, stages: list[list[tuple[str | None, int]]], done_before: int, epochs: int,
                 slots: int, reallocate: bool = False) -> None:
        # Every trial of the study in order: (its stage, its level, its seeds).
        self.plan = [(k, level, seeds) for k, trials in enumerate(stages) for level, seeds in trials]
        self.epochs, self.slots, self.reallocate = epochs, max(1, slots), reallocate
        self.total, self.done = len(self.plan), done_before
        self.rounds_may_follow = False  # a sequential design may call for rounds not planned yet
        self.start = time.perf_counter()
        self.reported: dict[str, float] = {}  # running trial → when it reported its latest epoch
        self.seeds: dict[str, int] = {}  # trial → its networks
        self.epoch_s: dict[str, float] = {}  # trial → its last epoch's seconds per seed
        self.shares: dict[str, int] = {}  # running trial → the times its CPUs it now has
        self.level_s: dict[str | None, float] = {}  # level → seconds per epoch and seed on its own CPUs
        self.left: dict[str, int] = {}  # running trial → epochs it has left
        self.startups: list[float] = []  # trials that trained their first epoch here: the time before it
        self.tails: list[float] = []  # finished trials: their time after their last epoch

    def extend(self, trials: list[tuple[str, int]]) -> None:
        """Another round of a sequential design: its ``trials`` (each a level and its number of
        seeds), after everything planned so far."""
        stage = self.plan[-1][0] + 1 if self.plan else 0
        self.plan += [(stage, level, seeds) for level, seeds in trials]
        self.total = len(self.plan)

    def epoch(self, trial_id: str, level: str | None, seeds: int, epoch: int, seconds: float,
              since_start: float, share: int = 1) -> None:
        """Trial ``trial_id`` (of ``level``, ``seeds`` networks) finished ``epoch`` in ``seconds``,
        ``since_start`` seconds after it started, on ``share`` times the CPUs it started with."""
        if epoch == 0 and trial_id not in self.reported:
            self.startups.append(max(0.0, since_start - seconds))
        self.reported[trial_id] = time.perf_counter()
        self.seeds[trial_id], self.epoch_s[trial_id] = seeds, seconds / seeds
        self.shares[trial_id] = share
        self.level_s[level] = seconds / seeds * speed(share)
        self.left[trial_id] = self.epochs - epoch - 1

    def finished(self, trial_id: str) -> None:
        if trial_id in self.reported:
            self.tails.append(time.perf_counter() - self.reported.pop(trial_id))
        self.left.pop(trial_id, None)
        self.shares.pop(trial_id, None)

    def left_s(self, done: int) -> float | None:
        if not self.epoch_s:
            return None
        now = time.perf_counter()
        tail = sum(self.tails) / len(self.tails) if self.tails else 0.0
        fixed = tail + (sum(self.startups) / len(self.startups) if self.startups else 0.0)
        per_seed = sum(self.level_s.values()) / len(self.level_s)
        running = [(tail + max(0.0, self.left[t] * self.epoch_s[t] * self.seeds[t]
                               - (now - self.reported[t])), self.shares.get(t, 1)) for t in self.left]
        first = done + len(self.left)  # the trials not started yet, stage by stage
        running_stage = self.plan[done][0] if self.left and done < self.total else None
        total = 0.0
        for stage, trials in itertools.groupby(self.plan[first:], key=lambda trial: trial[0]):
            costs = [fixed + self.epochs * self.level_s.get(level, per_seed) * seeds
                     for _, level, seeds in trials]
            if running and stage != running_stage:  # a stage starts when the one before has ended
                total += schedule([], self.slots, self.reallocate, running)[0]
                running = []
            total += schedule(costs, self.slots, self.reallocate, running)[0]
            running = []
        return total + (schedule([], self.slots, self.reallocate, running)[0] if running else 0.0)

    def __call__(self, done: int) -> str:
        left = self.left_s(done) if done < self.total else None
        shown = "" if left is None else f", ~{duration(left)} left" + (
            " in this round" if self.rounds_may_follow else "")
        return f"[{done}/{self.total} {duration(time.perf_counter() - self.start)}{shown}]"

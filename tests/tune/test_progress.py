"""The progress line's count and time left, on a fake clock."""

import pytest

from study.tune import progress as progress_module


def test_the_time_left_comes_from_measured_epochs(monkeypatch):
    """A study of 4 tuning trials (1 seed) and a confirmation trial (2 seeds) for each of its
    levels x and y, 3 epochs, two trials at a time, on a fake clock: the estimate lays the epochs
    left at their measured seconds per seed (a level's own once measured), plus the measured time a
    trial spends beyond its epochs, over the slots, a stage after the one before."""
    clock = [0.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: clock[0])
    progress = progress_module.Progress([([None] * 4, 1), (["x", "y"], 2)], done_before=0, epochs=3, slots=2)
    assert progress(0) == "[0/6 0s]"  # nothing measured yet: no estimate
    clock[0] = 15.0
    progress.epoch("a", "x", 1, 0, 10.0, since_start=15.0)  # 5 s of start-up, then 10 s an epoch
    progress.epoch("b", "y", 1, 0, 10.0, since_start=15.0)
    # a, b: 3 epochs of 10 s predicted, 15 s gone (nothing measured beyond epochs yet); then
    # c, d: 30 s; then the confirmation trials (2 seeds): 60 s.
    assert progress(0) == "[0/6 15s, ~1m45s left]"
    clock[0] = 40.0  # a and b end 5 s after their last epoch: 10 s beyond their epochs in all
    for trial in ("a", "b"):
        progress.epoch(trial, "x" if trial == "a" else "y", 1, 2, 10.0, since_start=35.0)
        progress.finished(trial)
    assert progress(2) == "[2/6 40s, ~1m50s left]"  # c, d: 10 + 30 s; then 10 + 60 s
    clock[0] = 70.0
    progress.epoch("c", "x", 1, 0, 20.0, since_start=30.0)  # level x is slower than measured before
    progress.epoch("d", "y", 1, 0, 10.0, since_start=30.0)
    # c: 10 + 60 − 30 = 40 s left, d: 10 s; the confirmation stage starts when both have ended:
    # x's trial 10 + 3 × 2 × 20 = 130 s, y's 10 + 3 × 2 × 10 = 70 s, side by side: 40 + 130 s.
    assert progress(2) == "[2/6 1m10s, ~2m50s left]"
    clock[0] = 80.0
    progress.epoch("d", "y", 1, 2, 10.0, since_start=40.0)
    progress.finished("d")  # c still runs: the freed slot waits for it, 30 s, then 130 s
    assert progress(3) == "[3/6 1m20s, ~2m40s left]"


def test_the_time_left_counts_the_cpus_a_finished_trial_hands_on(monkeypatch):
    """The plan's model (``study.plan.schedule``) with reallocation: when a ends, b restarts from its
    checkpoint (5 s) on both CPUs, 1.8 times as fast; once b reports from both CPUs, its measured
    epochs are not sped up a second time."""
    clock = [0.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: clock[0])
    shared = progress_module.Progress([(["x", "y"], 1)], done_before=0, epochs=3, slots=2, reallocate=True)
    alone = progress_module.Progress([(["x", "y"], 1)], done_before=0, epochs=3, slots=2)
    clock[0] = 15.0
    for progress in (shared, alone):
        progress.epoch("a", "x", 1, 0, 10.0, since_start=15.0)
        progress.epoch("b", "y", 1, 0, 30.0, since_start=15.0)
    # a: 15 s left, b: 75 s; then b's last 60 s of one CPU's work, plus its 5 s restart, at 1.8×.
    assert alone(0) == "[0/2 15s, ~1m15s left]"
    assert shared(0) == "[0/2 15s, ~53s left]"
    clock[0] = 40.0
    shared.epoch("a", "x", 1, 2, 10.0, since_start=40.0)
    shared.finished("a")  # 10 s beyond its 3 epochs of 10 s
    clock[0] = 50.0
    shared.epoch("b", "y", 1, 1, 16.0, since_start=50.0, share=2)  # its second epoch, on both CPUs
    # 10 s fixed + 3 epochs of 16 s − 50 s gone: b already has both CPUs, nothing to hand on.
    assert shared.left_s(1) == pytest.approx(10 + 3 * 16 - 50)

"""The progress line's count and time left, on a fake clock."""

import pytest

from study.tune import progress as progress_module


def test_the_time_left_comes_from_measured_epochs(monkeypatch):
    """A study of 4 tuning trials (1 seed) and a confirmation trial (2 seeds) for each of its
    levels x and y, 3 epochs, two trials at a time, on a fake clock: a running trial has its
    epochs left at its latest epoch's seconds, less what its current epoch has run, then the
    measured tail; a waiting one the measured start-up, its epochs at its level's seconds per seed
    (the levels' mean where its own is not known) and the tail; a stage after the one before."""
    clock = [0.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: clock[0])
    progress = progress_module.Progress([[(None, 1)] * 4, [("x", 2), ("y", 2)]], done_before=0, epochs=3,
                                        slots=2)
    assert progress(0) == "[0/6 0s]"  # nothing measured yet: no estimate
    clock[0] = 15.0
    progress.epoch("a", "x", 1, 0, 10.0, since_start=15.0)  # 5 s of start-up, then 10 s an epoch
    progress.epoch("b", "y", 1, 0, 10.0, since_start=15.0)
    # a, b: 2 epochs of 10 s left (no tail measured yet); then c, d: 5 + 30 s; then the
    # confirmation trials (2 seeds): 5 + 60 s.
    assert progress(0) == "[0/6 15s, ~2m00s left]"
    clock[0] = 35.0
    for trial in ("a", "b"):
        progress.epoch(trial, "x" if trial == "a" else "y", 1, 2, 10.0, since_start=35.0)
    clock[0] = 40.0  # a and b end 5 s after their last epoch
    for trial in ("a", "b"):
        progress.finished(trial)
    assert progress(2) == "[2/6 40s, ~1m50s left]"  # c, d: 5 + 30 + 5 s; then 5 + 60 + 5 s
    clock[0] = 70.0
    progress.epoch("c", "x", 1, 0, 20.0, since_start=30.0)  # level x is slower than measured before
    progress.epoch("d", "y", 1, 0, 10.0, since_start=30.0)  # and d took 20 s to start
    # c: 2 × 20 + 5 = 45 s left, d: 25 s; the confirmation stage starts when both have ended, its
    # trials side by side: x's 10 (the mean start-up) + 3 × 2 × 20 + 5 = 135 s, y's 75 s.
    assert progress(2) == "[2/6 1m10s, ~3m00s left]"
    clock[0] = 75.0
    progress.epoch("d", "y", 1, 2, 10.0, since_start=50.0)
    clock[0] = 80.0
    progress.finished("d")
    # c is 10 s into its second epoch: 30 + 5 s left; the freed slot waits for it; then 135 s.
    assert progress(3) == "[3/6 1m20s, ~2m50s left]"


def test_a_trial_resumed_from_its_checkpoint_is_measured_by_its_epochs_here(monkeypatch):
    """A trial resumed at epoch 20 of 30 (its Ray time counts the sitting before): its 10 epochs
    left at its latest epoch's seconds, whatever it took before; once its last epoch is reported,
    only the tail the other trial measured."""
    clock = [0.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: clock[0])
    progress = progress_module.Progress([[("x", 3), ("y", 3)]], done_before=0, epochs=30, slots=2)
    clock[0] = 100.0
    progress.epoch("a", "x", 3, 29, 90.0, since_start=20_000.0)
    clock[0] = 130.0
    progress.finished("a")  # 30 s of test and writing
    clock[0] = 400.0
    progress.epoch("b", "y", 3, 20, 300.0, since_start=40_000.0)
    assert progress.left_s(1) == pytest.approx(9 * 300 + 30)
    clock[0] = 700.0
    progress.epoch("b", "y", 3, 29, 300.0, since_start=40_300.0)
    assert progress.left_s(1) == pytest.approx(30)


def test_the_time_left_counts_the_cpus_a_finished_trial_hands_on(monkeypatch):
    """The plan's model (``study.schedule.schedule``) with reallocation: when a ends, b restarts from its
    checkpoint (5 s) on both CPUs, 1.8 times as fast; once b reports from both CPUs, its measured
    epochs are not sped up a second time."""
    clock = [0.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: clock[0])
    shared = progress_module.Progress([[("x", 1), ("y", 1)]], done_before=0, epochs=3, slots=2,
                                      reallocate=True)
    alone = progress_module.Progress([[("x", 1), ("y", 1)]], done_before=0, epochs=3, slots=2)
    clock[0] = 35.0
    for progress in (shared, alone):
        progress.epoch("a", "x", 1, 0, 10.0, since_start=15.0)
        progress.epoch("b", "y", 1, 0, 30.0, since_start=35.0)
    # a: 20 s left, b: 60 s; shared, b's last 40 s of one CPU's work, plus its 5 s restart, at 1.8×.
    assert alone.left_s(0) == pytest.approx(60)
    assert shared.left_s(0) == pytest.approx(20 + (40 + 5 * 1.8) / 1.8)
    clock[0] = 55.0
    shared.epoch("a", "x", 1, 2, 10.0, since_start=35.0)
    shared.finished("a")
    clock[0] = 65.0
    shared.epoch("b", "y", 1, 1, 16.0, since_start=65.0, share=2)  # its second epoch, on both CPUs
    # one epoch of 16 s left: b already has both CPUs, nothing to hand on.
    assert shared.left_s(1) == pytest.approx(16)

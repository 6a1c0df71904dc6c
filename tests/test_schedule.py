"""How trials share the CPUs over time, worked out by hand."""

import pytest

from study.schedule import schedule


@pytest.mark.parametrize(("trials", "slots", "reallocate", "wall", "use"), [
    ([100.0, 300.0], 2, False, 300.0, 400 / 600),  # one CPU idles for the last 200 s
    ([100.0] * 4, 2, False, 200.0, 1.0),
    ([100.0, 100.0, 300.0], 2, False, 400.0, 500 / 800),  # the long one last: it waits
    # Reallocated: after 100 s the long trial restarts (5 s) on both CPUs, where its 200 s of work
    # left take 200 / 1.8 s.
    ([100.0, 300.0], 2, True, 105.0 + 200.0 / 1.8, 400 / (2 * (105.0 + 200.0 / 1.8))),
    # Fewer trials than CPUs start on even shares: one trial on both CPUs from its start, 1.8× as fast.
    ([300.0], 2, True, 300.0 / 1.8, 300 / (2 * 300.0 / 1.8)),
    # Two on two CPUs each: after 100 / 1.8 s the short one ends, and the long one, with 200 s of
    # one CPU's work left, restarts (5 s) on all four, 3.4× as fast.
    ([100.0, 300.0], 4, True, 100.0 / 1.8 + (200.0 + 5 * 3.4) / 3.4,
     400 / (4 * (100.0 / 1.8 + (200.0 + 5 * 3.4) / 3.4))),
    ([300.0], 2, False, 300.0, 0.5),  # without reallocation, a trial keeps its one CPU
    # Two on four CPUs each: the long one is at its four when the short one ends, and more would
    # not speed it up: no restart, four CPUs idle.
    ([100.0, 300.0], 8, True, 300.0 / 3.4, 400 / (8 * 300.0 / 3.4)),
])
def test_the_schedule_lays_trials_over_the_cpus_and_hands_freed_ones_on(trials, slots, reallocate, wall, use):
    got_wall, got_use = schedule(trials, slots, reallocate)
    assert got_wall == pytest.approx(wall) and got_use == pytest.approx(use)

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
])
def test_the_schedule_lays_trials_over_the_cpus_and_hands_freed_ones_on(trials, slots, reallocate, wall, use):
    got_wall, got_use = schedule(trials, slots, reallocate)
    assert got_wall == pytest.approx(wall) and got_use == pytest.approx(use)

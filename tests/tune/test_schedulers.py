"""Where the CPUs a finished trial frees go: to the trial with the longest time left, as planned."""

from ray.tune.execution.placement_groups import PlacementGroupFactory

from study.tune.schedulers import FreedCPUs


class Trial:
    """What ``FreedCPUs`` reads of a Ray Tune trial: the CPUs it holds and its last result."""

    def __init__(self, cpus: float, last_result: dict) -> None:
        self.placement_group_factory = PlacementGroupFactory([{"CPU": cpus, "GPU": 0}])
        self.last_result = last_result


class Controller:
    def __init__(self, trials: list[Trial]) -> None:
        self.trials = trials

    def get_trials(self) -> list[Trial]:
        return self.trials

    def get_live_trials(self) -> set[Trial]:  # as Ray Tune gives them
        return set(self.trials)


class Scheduler:
    base_trial_resources = PlacementGroupFactory([{"CPU": 2, "GPU": 0}])


def epoch(n: int, seconds: float) -> dict:
    return {"epoch": n, "seconds": seconds, "training_iteration": n + 1}


def cpus(given: PlacementGroupFactory | None) -> float | None:
    return None if given is None else given.required_resources["CPU"]


def test_freed_cpus_go_to_the_trial_with_the_longest_time_left_not_to_whichever_reports_first():
    """Eight CPUs, two trials left on two each: one with 9 epochs of 10 s to go, one with an epoch of
    a second. The long one is given the four free CPUs up to four in all (more would not speed it
    up), the short one none, whichever reports first; Ray's even split gave each two more."""
    long, short = Trial(2, epoch(0, 10.0)), Trial(2, epoch(8, 1.0))
    controller, freed = Controller([long, short]), FreedCPUs(trials=2, epochs=10, slot_cpus=1.0, slots=8)
    assert cpus(freed(controller, short, epoch(8, 1.0), Scheduler())) is None
    assert cpus(freed(controller, long, epoch(1, 10.0), Scheduler())) == 4


def test_nothing_moves_until_every_trial_of_the_stage_has_started_and_reported_an_epoch():
    """Before, a freed CPU belongs to the next trial of the stage, and no time left is known."""
    reported, started = Trial(1, epoch(0, 10.0)), Trial(1, {})
    freed = FreedCPUs(trials=3, epochs=10, slot_cpus=1.0, slots=4)
    assert freed(Controller([reported, started]), reported, epoch(1, 10.0), Scheduler()) is None  # 2 of 3
    third = Trial(1, {})
    freed_all = Controller([reported, started, third])
    assert freed(freed_all, reported, epoch(1, 10.0), Scheduler()) is None  # two not reported yet
    started.last_result, third.last_result = epoch(0, 1.0), epoch(0, 1.0)
    assert cpus(freed(freed_all, reported, epoch(1, 10.0), Scheduler())) == 2  # the one free CPU


def test_half_cpu_slots_are_handed_out_in_halves():
    """resources.cpu = 0.5: a slot is half a CPU, and a trial is given whole slots."""
    long, short = Trial(0.5, epoch(0, 10.0)), Trial(0.5, epoch(8, 1.0))
    freed = FreedCPUs(trials=2, epochs=10, slot_cpus=0.5, slots=4)
    assert cpus(freed(Controller([long, short]), long, epoch(1, 10.0), Scheduler())) == 1.5

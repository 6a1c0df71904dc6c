"""How Ray Tune schedules a study's trials beyond first come, first served: ASHA within each
compared level, the CPUs a finished trial frees handed to the running ones, a GPU's share.

Example:
    >>> gpu_share(2), gpu_share(10)  # two arms share one GPU; larger studies run four on each
    (0.5, 0.25)
"""

from __future__ import annotations

import ray
from ray.tune.execution.placement_groups import PlacementGroupFactory
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from study.config import Study
from study.schedule import hand_out, speed
from study.words import counted

TRIALS_PER_GPU = 4  # LeNet-sized trials leave a GPU idle: up to four share one by default


class PerLevelASHA(FIFOScheduler):
    """Ray Tune's ASHA on the per-epoch mean validation loss, run within each level of ``key``
    (as ``PerLevel`` searches): a trial is stopped only for trailing the trials of its own level,
    so no level's tuning is cut short because another level learns faster. Remembers the trials
    it stopped and after how many epochs. Never stops a trial at its last epoch: that one ends by
    itself and writes its results."""

    def __init__(self, key: str, epochs: int, grace_period: int, reduction_factor: float) -> None:
        super().__init__()
        self._metric, self._mode = "val_loss", "min"  # Ray checks that trials report it
        self.key, self.epochs = key, epochs
        self.grace_period, self.reduction_factor = grace_period, reduction_factor
        self.levels: dict[str, ASHAScheduler] = {}
        self.stopped: dict[str, int] = {}  # trial id: epochs trained

    def _asha(self, trial: Trial) -> ASHAScheduler:
        level = str(trial.config[self.key])
        if level not in self.levels:
            self.levels[level] = ASHAScheduler(
                metric=self._metric, mode=self._mode, max_t=self.epochs, grace_period=self.grace_period,
                reduction_factor=self.reduction_factor, stop_last_trials=False)
        return self.levels[level]

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        self._asha(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        decision = self._asha(trial).on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP:
            self.stopped[trial.trial_id] = result["training_iteration"]
        return decision

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        self._asha(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self._asha(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return f"ASHA within each level of {self.key}; {counted(len(self.stopped), 'trial')} stopped"

    def reason(self, trial_id: str) -> str:
        return (f"ASHA stopped it after {self.stopped[trial_id]} of {self.epochs} epochs: its mean "
                "validation loss trailed its level's other trials at that point")


class FreedCPUs:
    """Ray Tune's ``ResourceChangingScheduler`` handing the CPUs no trial holds (those of each
    trial that ends) to the running ones as the plan lays them out (``study.schedule.hand_out``): a
    slot of ``resources.cpu`` at a time to the trial with the longest time left, its epochs left
    times its last epoch's seconds, while one more slot still speeds it up. It waits for every
    trial of the stage to have started and reported an epoch: until then a CPU that a finished
    trial frees belongs to the next trial, and the times left are not known. A trial's threads are
    its CPUs, so a trial given two trains with two threads from its next epoch on. (Ray's own
    ``DistributeResources`` splits them evenly, each trial taking its share as it reports: the
    plan's schedule and the run differed.) ``slots``: the trials the node's CPUs hold at once,
    ``slot_cpus`` each."""

    def __init__(self, trials: int, epochs: int, slot_cpus: float, slots: int) -> None:
        self.trials, self.epochs, self.slot, self.slots = trials, epochs, slot_cpus, slots

    def __call__(self, tune_controller, trial: Trial, result: dict,
                 scheduler) -> PlacementGroupFactory | None:
        live = list(tune_controller.get_live_trials())  # a set
        if len(tune_controller.get_trials()) < self.trials or trial not in live:
            return None
        last = [result if t is trial else t.last_result for t in live]
        if not all("seconds" in r for r in last):  # a trial that has not reported an epoch yet
            return None
        held = [round(t.placement_group_factory.required_resources.get("CPU", 0) / self.slot) for t in live]
        free = self.slots - sum(held)
        work = [(self.epochs - r["epoch"] - 1) * r["seconds"] * speed(k)  # seconds left on one slot
                for r, k in zip(last, held, strict=True)]
        mine = live.index(trial)
        more = hand_out(work, held, free)[mine]
        if more <= held[mine]:
            return None
        base = scheduler.base_trial_resources
        return PlacementGroupFactory([{**base.bundles[0], "CPU": more * self.slot}], strategy=base.strategy)


def gpu_share(trials: int) -> float:
    """``resources.gpu: auto``: the GPU share of one trial. A study of fewer trials than
    ``TRIALS_PER_GPU`` splits the GPU between them, so a two-arm study runs both at once and
    uses the whole GPU; larger studies run ``TRIALS_PER_GPU`` trials on each GPU at a time."""
    return 1 / min(TRIALS_PER_GPU, max(1, trials))


def reallocates(study: Study, gpu: float, planned: bool | None = None) -> bool:
    """Whether the CPUs are shared out among the running trials (a stage's trials starting on even
    shares, a finished trial's going to those still running): as ``planned`` (``study.plan``)
    or else the study says, and only where all CPUs are on one node, since a trial's CPUs must all
    be on its node (``FreedCPUs`` counts the slots of all of them, and a trial given more than a
    node has never starts)."""
    nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0]
    return (study.reallocates(gpu) if planned is None else planned) and len(nodes) == 1


def largest_node() -> tuple[float, float]:
    """The CPUs and GPUs of the cluster's largest alive node: one trial runs on one node."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    return max((n.get("CPU", 0) for n in nodes), default=0), max((n.get("GPU", 0) for n in nodes), default=0)



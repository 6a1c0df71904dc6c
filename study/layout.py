"""How a study lays out its networks: the experimental-design arithmetic that ``study run``,
``study plan``, the progress line and ``study analyze`` all count with.

A study varies the keys of its ``space``; one of them is the compared factor (``compare``, else
the first key), whose choices are the *levels* (arms). A *configuration* is one point of the space.
Where the space varies only the compared factor, each level is one configuration and its networks
are the compared ones (stage ``tune``). Where it varies more, every level's configurations are
tuned first, and the one each level selects by validation loss is retrained on fresh seeds
(stage ``confirm``): those networks are compared, never the ones that won the selection. The
compared stage's seeds may come in *rounds* (a sequential design, ``study.sequential``), each
round one *look* at the data.

``Study`` inherits these methods, so they read as questions about the study:

Example:
    >>> from study.loading import load
    >>> study = load("searchspaces/thesis.yaml", ["search.seeds={start: 3, step: 3, max: 12}"])
    >>> study.n_levels(), study.confirms(), study.looks(), study.seeds(look=2)
    (2, False, [3, 6, 9, 12], [3, 4, 5])
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from study.sections import Design

if TYPE_CHECKING:
    from study.config import Distribution, ResourcesConfig, SearchConfig


class Layout:
    """The arithmetic of a study's stages, levels, configurations, seeds and rounds."""

    if TYPE_CHECKING:  # the fields of ``study.config.Study`` this arithmetic reads
        space: dict[str, Distribution]
        search: SearchConfig
        compare: str | None
        resources: ResourcesConfig

    def grid_size(self) -> int:
        return math.prod(len(d.choice or ()) for d in self.space.values())

    def tuned_per_level(self) -> bool:
        """Whether each level of ``compare`` gets its own Optuna study (see ``SearchConfig``)."""
        return self.search.sampler != "grid" and self.compare is not None

    def reallocates(self, gpu: float) -> bool:
        """Whether freed CPUs may go to the running trials (``resources.reallocate``), given the GPU
        share each trial has: ``auto`` where the trials train on CPUs (``study.plan`` keeps it
        only where its schedule is shorter so)."""
        reallocate = self.resources.reallocate
        return gpu == 0 if reallocate == "auto" else reallocate

    def seed_groups(self, seeds: list[int], levels: int, slots: int, gpu: float) -> list[list[int]]:
        """The Ray trials one level's ``seeds`` are trained in where ``levels`` fixed configurations
        are retrained with ``slots`` trials at once: one trial stacking them all, or, where the
        study splits seeds (``resources.split_seeds``, ``auto`` on CPUs), as many runs of
        consecutive seeds, a seed apart in size, as leave no slot idle.

        Example:
            >>> from study.loading import load
            >>> load("searchspaces/smoke.yaml").seed_groups(list(range(10)), levels=4, slots=16, gpu=0)
            [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
        """
        split = self.resources.split_seeds
        groups = min(len(seeds), slots // max(1, levels))
        if groups <= 1 or split is False or (split == "auto" and gpu):
            return [seeds]
        size, more = divmod(len(seeds), groups)  # the first ``more`` groups hold one seed more
        ends = [k * size + min(k, more) for k in range(groups + 1)]
        return [seeds[a:b] for a, b in zip(ends, ends[1:], strict=False)]

    def levels_are_configurations(self) -> bool:
        """Whether each level of the compared factor is one configuration, known before anything
        trains: the space varies only that factor, once per level (its grid, or one trial of each
        level; no ASHA, which such a study refuses). The search then has nothing to choose, and
        its first round may be laid out as a later one is (``first_round``)."""
        return len(self.space) == 1 and self.n_levels() > 0 and self.n_configurations() == self.n_levels()

    def first_round(self, slots: int, gpu: float) -> list[list[int]]:
        """The Ray trials of each configuration in the tuning stage's first round: one training all
        its seeds (the search's trial), or, where the levels are the configurations
        (``levels_are_configurations``), its seeds in ``seed_groups``.

        Example:
            >>> from study.loading import load
            >>> load("searchspaces/smoke.yaml").first_round(slots=6, gpu=0)
            [[0], [1], [2]]
        """
        if not self.levels_are_configurations():
            return [self.seeds()]
        return self.seed_groups(self.seeds(), self.n_levels(), slots, gpu)

    def retrained_seeds(self) -> list[int]:
        """The seeds of the first round that retrains fixed configurations (the confirmation
        stage's first, or a sequential design's second); none where the study has no such round."""
        if self.confirms():
            return self.seeds("confirm")
        return self.seeds(look=2) if self.design() is not None else []

    def most_trials(self, slots: int, gpu: float) -> int:
        """The most trials one stage or round of the study starts: its configurations (each in
        ``first_round``'s trials), or each level's ``seed_groups`` where fixed configurations are
        retrained."""
        groups = self.seed_groups(self.retrained_seeds(), self.n_levels(), slots, gpu)
        return max(self.n_configurations() * len(self.first_round(slots, gpu)), self.n_levels() * len(groups))

    def n_configurations(self) -> int:
        if self.search.sampler == "grid":
            return self.grid_size()
        if self.tuned_per_level():
            return self.search.trials * len(self.space[self.compare].choice)
        return self.search.trials

    def confirms(self) -> bool:
        """Whether ``study run`` ends with a confirmation stage: the space varies more than the
        compared factor, so each level's configuration is selected by validation loss, and the
        networks that won the selection must not also be the ones that are tested."""
        return len(self.space) > 1 and self.n_levels() > 0

    def n_levels(self) -> int:
        """Levels of the compared factor (none when it is a ranged key)."""
        return len(self.space[self.compare_key()].levels())

    def n_trials(self) -> int:
        """Ray trials the study runs: one per configuration, training all its seeds at once, and
        one per compared level in the confirmation stage (more where seeds are split over trials:
        ``seed_groups``)."""
        return self.n_configurations() + (self.n_levels() if self.confirms() else 0)

    def trials_at_once(self, cpus: float, gpus: float = 0, gpu: float = 0) -> int:
        """Trials that fit at once on ``cpus`` CPUs and ``gpus`` GPUs, each taking
        ``resources.cpu`` CPUs and ``gpu`` of a GPU, at least one: the slots the run's progress,
        the plan and the memory check all count with (a study of fewer trials leaves some empty)."""
        fits = int(cpus // self.resources.cpu)
        if gpu:
            fits = min(fits, int(gpus // gpu))
        return max(1, fits)

    def n_networks(self) -> int:
        """Networks the study trains at most: every configuration once per seed, and each level's
        selected configuration once per confirmation seed (a sequential design's ``max``)."""
        confirming = self.n_levels() * self.looks("confirm")[-1] if self.confirms() else 0
        return self.n_configurations() * self.looks("tune")[-1] + confirming

    def compared_stage(self) -> str:
        """The stage whose networks ``study analyze`` compares: confirm where the study selects."""
        return "confirm" if self.confirms() else "tune"

    def design(self) -> Design | None:
        """The sequential design of the compared networks, where the study file gives one."""
        seeds = self.search.confirm_seeds if self.confirms() else self.search.seeds
        return seeds if isinstance(seeds, Design) else None

    def looks(self, stage: str = "tune") -> list[int]:
        """Networks per configuration of ``stage`` after each round: one round unless sequential."""
        seeds = self.search.seeds if stage == "tune" else self.search.confirm_seeds
        return seeds.looks() if isinstance(seeds, Design) else [seeds]

    def seeds(self, stage: str = "tune", look: int = 1) -> list[int]:
        """The training seeds of a stage's round ``look``: 0..S−1 for tuning, the ones after them
        for confirmation (fresh: no network of the selection is retrained); a sequential design's
        later rounds continue where the round before ended."""
        offset = 0 if stage == "tune" else self.looks("tune")[-1]
        ends = [0, *self.looks(stage)]
        return list(range(offset + ends[look - 1], offset + ends[look]))

    def compare_key(self) -> str:
        """The factor ``study analyze`` compares by default: ``compare``, else the first key."""
        return self.compare or next(iter(self.space))

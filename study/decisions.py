"""A sequential design's decisions, replayed from the result files alone: what ``study run``
decides after each round, what ``study analyze`` reports, and how many networks the run trains.

Example (on a finished study whose file has ``search.seeds: {start: 2, step: 2, max: 6}``)::

    study = loading.load("results/smoke/study.yaml")
    decided = decisions(study, pd.read_parquet("results/smoke/trials.parquet"))
    {level: (d.verdict, d.look, d.p) for level, d in decided.items()}
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from study import results
from study.config import Study
from study.sequential import Decision, replay


def seed_values(study: Study, trials: pd.DataFrame,
                measure: str = "test_loss") -> dict[Any, np.ndarray]:
    """Per level of the compared factor, ``measure`` (a column of ``trials.parquet``) of each
    network of the compared stage in seed order from the stage's first seed, NaN for a network
    that failed: what a sequential design decides on."""
    stage, key = study.compared_stage(), study.compare_key()
    offset = study.seeds(stage)[0]
    rows = trials[trials["stage"] == stage].drop_duplicates([key, "seed"])
    values = {}
    for level in study.space[key].levels():
        mine = rows[rows[key] == level]
        values[level] = np.full(int(mine["seed"].max()) - offset + 1 if len(mine) else 0, np.nan)
        trained = mine[mine["status"].isin(results.TRAINED)]
        values[level][trained["seed"].to_numpy() - offset] = trained[measure].to_numpy(dtype=float)
    return values


def decisions(study: Study, trials: pd.DataFrame) -> dict[Any, Decision]:
    """The sequential design's decision on every compared level so far (empty without a design),
    from the mean test loss of each compared network in ``trials`` (``trials.parquet``): what
    ``study run`` decides after each round, and what ``analyze`` replays to report where each
    level stopped. The reference is the first level; a network that failed counts as spent.
    """
    design = study.design()
    if design is None:
        return {}
    values = seed_values(study, trials)
    reference, *levels = study.space[study.compare_key()].levels()
    return replay({level: values[level] for level in levels}, values[reference], design,
                  study.analysis.margin, family=len(levels))


def planned_networks(study: Study, trials: pd.DataFrame) -> int:
    """The networks ``study run`` trains, given the networks so far (``trials``): all of
    ``study.n_networks()`` for a fixed number of seeds; with a sequential design, every compared
    level's up to the look that settled it, or the next look's while it is undecided (the
    reference's up to the latest of them), besides any tuning stage's."""
    if study.design() is None:
        return study.n_networks()
    looks, levels = study.looks(study.compared_stage()), study.space[study.compare_key()].levels()
    decided = decisions(study, trials) if len(trials) else {}  # nothing trained: nothing decided
    # A settled level ends at its look; an undecided one goes on to the next (a "continue" is
    # never the last look's), and one not looked at yet has its first round to come.
    ends = [looks[0] if level not in decided
            else looks[decided[level].look - (1 if decided[level].settled() else 0)]
            for level in levels[1:]]
    tuning = study.n_configurations() * study.looks("tune")[-1] if study.confirms() else 0
    return tuning + sum(ends) + max(ends)

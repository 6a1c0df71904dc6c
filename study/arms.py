"""Which networks enter each arm of a comparison, and what a reader must know about them.

The unit of replication is the trained network. Where a study tunes anything besides the compared
factor, each level's configuration was chosen by validation loss and then retrained on fresh seeds
(stage ``confirm``): only those networks enter, so the luck that won the selection is not counted
again. Otherwise every network of the level's selected configuration (stage ``tune``) enters, one
per seed, among those that trained.

Example (on a finished study)::

    study, r = loading.load("results/smoke/study.yaml"), results.load("results/smoke")
    arms = select_arms(study, r.trials, study.compare_key())
    per_network(r.samples, arms[0].networks)  # each network's test loss, accuracy and F1
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from study import results
from study.config import Study
from study.data.compose import N_CLASSES
from study.errors import UserError


@dataclass(frozen=True)
class Arm:
    level: Any
    networks: list[tuple[str, int]]  # (trial_id, seed) of every network that enters
    params: dict[str, Any]  # the arm's configuration as stored in trials.parquet
    stage: str  # confirm: retrained on fresh seeds after selection; tune: the selection's own
    failed: list[str] = field(default_factory=list)  # reasons of the networks that would have entered
    repeated: int = 0  # networks left out because another trial trained the same seed of the configuration


def of_networks(frame: pd.DataFrame, networks: list[tuple[str, int]]) -> pd.DataFrame:
    """The rows of ``frame`` (with trial_id and seed columns) that belong to ``networks``."""
    return frame[pd.MultiIndex.from_frame(frame[["trial_id", "seed"]]).isin(networks)]


def best_configurations(study: Study, trials: pd.DataFrame, factor: str) -> dict[Any, dict[str, Any]]:
    """Per level of ``factor`` (in the space's order), the configuration with the lowest mean
    best validation loss over its seeds: what the tuning stage selected. A configuration that
    lost a network (status ERROR; Optuna failed it) is chosen only where its level has no other;
    a level none of whose networks trained has none."""
    keys = list(study.space)
    failed = trials.loc[trials["status"] == "ERROR", "trial_id"]
    chosen = {}
    for level in study.space[factor].levels():
        at_level = trials[trials[factor] == level]
        if not at_level["trial_id"].isin(failed).all():
            at_level = at_level[~at_level["trial_id"].isin(failed)]
        means = at_level.groupby(keys, dropna=False)["best_val_loss"].mean().dropna()
        if not means.empty:
            best = means.idxmin()
            values = best if len(keys) > 1 else (best,)
            # Plain Python values: they travel to Ray trials and into the result files as JSON.
            chosen[level] = {k: v.item() if isinstance(v, np.generic) else v
                             for k, v in zip(keys, values, strict=True)}
    return chosen


def select_arms(study: Study, trials: pd.DataFrame, factor: str) -> list[Arm]:
    """Per level, the networks that enter: the confirmation networks where the study has them
    for this factor, else the networks of the level's selected configuration; of those, the
    ones that trained (status COMPLETED, or STOPPED early by ASHA in a tuning stage), one per seed:
    a sampler that proposes a configuration again retrains it on the same seeds, which repeats
    networks rather than replicating them."""
    tuned = trials[trials["stage"] == "tune"]
    confirmed = trials[trials["stage"] == "confirm"]
    arms = []
    for level, params in best_configurations(study, tuned, factor).items():
        if factor == study.compare_key() and (confirmed[factor] == level).any():
            mine, stage = confirmed[confirmed[factor] == level], "confirm"
        else:
            mine = tuned.loc[(tuned[list(params)] == pd.Series(params)).all(axis=1)]
            stage = "tune"
        trained = mine[mine["status"].isin(results.TRAINED)]
        unique = trained.drop_duplicates("seed")
        failed = mine[(mine["status"] == "ERROR") & ~mine["seed"].isin(unique["seed"])]
        failed = failed.drop_duplicates("seed")
        if not unique.empty:
            arms.append(Arm(level, list(zip(unique["trial_id"], unique["seed"], strict=True)), params, stage,
                            failed["reason"].fillna("no reason recorded").tolist(),
                            len(trained) - len(unique)))
    return arms


def per_network(samples: pd.DataFrame, networks: list[tuple[str, int]]) -> pd.DataFrame:
    """Per network (trial_id, seed): its mean test loss, exact-set accuracy and digit F1 (NaN
    where the samples hold no logits, as in results written before logits were kept)."""
    chosen = of_networks(samples, networks)
    measures = chosen.groupby(["trial_id", "seed"], observed=True)[["loss", "correct"]].mean()
    measures = measures.rename(columns={"loss": "test_loss", "correct": "test_exact_acc"})
    logits = [f"logit_{d}" for d in range(N_CLASSES)]
    if set(logits) <= set(chosen) and "digits" in chosen:
        present = np.stack([chosen["digits"].str.contains(str(d), regex=False)
                            for d in range(N_CLASSES)], 1)
        scores = chosen[logits].to_numpy()
        f1 = {key: results.digit_f1(scores[rows], present[rows])
              for key, rows in chosen.groupby(["trial_id", "seed"], observed=True).indices.items()}
        measures["test_digit_f1"] = pd.Series(f1)
    else:
        measures["test_digit_f1"] = np.nan
    return measures.loc[networks].reset_index()


def seed_average(samples: pd.DataFrame, networks: list[tuple[str, int]],
                 split: str | None = None) -> pd.DataFrame:
    """Per-sample loss and correctness averaged over the given networks, by sample_idx; with
    ``split``, that per-sample column is carried along."""
    chosen = of_networks(samples, networks)
    averaged = chosen.groupby("sample_idx")[["loss", "correct"]].mean()
    if split is not None:
        averaged[split] = chosen.groupby("sample_idx")[split].first()
    return averaged


def fingerprint(trials: pd.DataFrame, arm: Arm, study_dir: Path) -> str:
    """The one dataset an arm's networks saw: its per-sample losses are averaged by image."""
    seen = of_networks(trials, arm.networks)["data_fingerprint"].unique()
    if len(seen) > 1:
        raise UserError(f"{study_dir}: the networks of {arm.level} saw different datasets "
                        f"({', '.join(seen)}); per-sample losses can only be averaged within one "
                        "data_fingerprint")
    return str(seen[0])


def notes(study: Study, trials: pd.DataFrame, arms: list[Arm], factor: str,
          fingerprints: dict[Any, str]) -> list[str]:
    """What a reader must know about which networks entered before reading the numbers: arms on
    other images, levels without an arm, failed and repeated networks, trials ASHA stopped, and
    selections not confirmed on fresh seeds (``trials``: every row of ``trials.parquet``)."""
    lines = []
    trained = trials[trials["status"].isin(results.TRAINED)]
    unpaired = [str(arm.level) for arm in arms[1:] if fingerprints[arm.level] != fingerprints[arms[0].level]]
    if unpaired:
        lines.append(f"{', '.join(unpaired)} saw other images than the reference (another data "
                     "setting), so only the seed-level comparison of mean test losses is made there; "
                     "images cannot be paired")
    lost_levels = [str(level) for level in study.space[factor].levels()
                   if level not in {arm.level for arm in arms} and (trials[factor] == level).any()]
    if lost_levels:
        lines.append(f"every network of {', '.join(lost_levels)} failed (status ERROR, reason in "
                     "trials.parquet), so no arm stands for it")
    absent = [str(level) for level in study.space[factor].levels() if not (trials[factor] == level).any()]
    if absent:
        has, it = ("has", "it") if len(absent) == 1 else ("have", "them")
        lines.append(f"{', '.join(absent)} {has} no network in trials.parquet (the run has not reached "
                     f"{it}, or stopped before), so no arm stands for {it}; Holm's family still counts "
                     f"{it}, as not rejected")
    if any(arm.failed for arm in arms):
        lost = "; ".join(f"{arm.level}: {len(arm.failed)} of {len(arm.failed) + len(arm.networks)} "
                         f"({arm.failed[0]})" for arm in arms if arm.failed)
        counts = " vs ".join(str(len(arm.networks)) for arm in arms)
        lines.append(f"networks that failed are left out (status ERROR, reason in trials.parquet): {lost}. "
                     f"The arms compare {counts} networks; a failure that depends on the arm "
                     "(divergence, say) is itself a result and biases the comparison of the rest")
    if any(arm.repeated for arm in arms):
        repeats = ", ".join(f"{arm.level}: {arm.repeated}" for arm in arms if arm.repeated)
        lines.append(f"the sampler proposed a configuration more than once, and a configuration trained "
                     f"again on the same seed is the same network again, not a replicate: each seed "
                     f"counts once, and {repeats} repeated networks are left out")
    stopped = trials.loc[trials["status"] == "STOPPED", "trial_id"].unique()
    if len(stopped):
        tuned = trials.loc[trials["stage"] == "tune", "trial_id"].nunique()
        entered = [str(arm.level) for arm in arms
                   if (of_networks(trained, arm.networks)["status"] == "STOPPED").any()]
        lines.append(f"ASHA stopped {len(stopped)} of {tuned} tuning trials early (status STOPPED); they "
                     "entered the selection with their best validation loss so far" +
                     (f", and the networks of {', '.join(entered)} are theirs, trained for fewer epochs "
                      "than train.epochs" if entered else ""))
    if study.confirms() and any(arm.stage == "tune" for arm in arms):
        unconfirmed = [str(arm.level) for arm in arms if arm.stage == "tune"]
        lines.append(f"not confirmed on fresh seeds: {', '.join(unconfirmed)}. Their networks are the "
                     "ones that won the selection by validation loss, so their luck counts twice and "
                     "the seed-level difference is biased in their favour")
    return lines

"""Statistics of a study: every level of the compared factor against the reference level.

The unit of replication is the trained network. "Does the layer help?" asks whether retraining
would give the same answer, so the variance that matters is between networks trained with
different seeds, not between test images (which are shared by every network, and reuse the same
handwritten digits many times).

**Which networks.** When a study tunes anything besides the compared factor, each level's
configuration was chosen by validation loss and then retrained on fresh seeds (``stage:
confirm``); only those networks enter, so the luck that won the selection is not counted again.
Otherwise every network of the level (``stage: tune``) enters.

**Primary, seed level** (the verdict). Each network's mean test loss over the test images is one
observation. Per level against the reference: the difference of the arms' means with Welch's
test and interval, an equivalence test within ``analysis.margin``, a permutation check, power at
the margin, and a verdict in one word (better, worse, equivalent, inconclusive), all from
``study.stats``, where each is explained. Holm's adjustment runs over one family fixed by the
study file: every level it compares with the reference, a level without networks counted as not
rejected. Exact-set accuracy and digit F1 (macro F1 over the ten digits) are tested the same way
with ``analysis.accuracy_margin``, each in its own family.

**Image level** (how the original study tested, reported beside it). Per-sample losses averaged
over each arm's networks and paired by ``sample_idx``: the Wilcoxon signed-rank test (zero
differences dropped), the matched-pairs rank-biserial correlation, and the Hodges–Lehmann shift
(the pseudo-median the test is about) with its confidence interval by inverting the same test.
It is conditional on these trained networks: it treats test images as replications, which is
why it is not the verdict (in simulated studies of two identical arms it calls a difference
significant far more often than α).

**Subgroups** (``split``): descriptive seed-level differences within each subgroup, and for every
subgroup against the first one an arm × subgroup interaction at the seed level (per network: its
loss in the subgroup minus its loss in the first, compared between arms with Welch's t-test),
unadjusted and outside Holm's family.

Used on a finished study (``study analyze`` does this, then writes the report)::

    result = analyze("results/smoke")
    result.comparisons[["level", "diff", "diff_ci_low", "diff_ci_high", "p_holm", "verdict"]]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from study import config, results
from study.data.compose import N_CLASSES
from study.errors import UserError
from study.sequential import Decision, decide, design_power, replay
from study.stats import ALPHA, IMAGE_KEYS, holm, image_level, power, seed_level, verdict

IMAGE_LEVEL = "image level, conditional on these trained networks"
MEASURES = {  # per network: (column prefix, the margin's key in analysis, lower is better)
    "test_loss": ("", "margin", True),
    "test_exact_acc": ("acc_", "accuracy_margin", False),
    "test_digit_f1": ("f1_", "accuracy_margin", False),
}


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


def best_configurations(study: config.Study, trials: pd.DataFrame, factor: str) -> dict[Any, dict[str, Any]]:
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


def select_arms(study: config.Study, trials: pd.DataFrame, factor: str) -> list[Arm]:
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


def seed_values(study: config.Study, trials: pd.DataFrame,
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


def decisions(study: config.Study, trials: pd.DataFrame) -> dict[Any, Decision]:
    """The sequential design's decision on every compared level so far (empty without a design),
    from the mean test loss of each compared network in ``trials`` (``trials.parquet``): what
    ``study run`` decides after each round, and what ``analyze`` replays to report where each
    level stopped. The reference is the first level; a network that failed counts as spent.

    Example (on a finished study whose file has ``search.seeds: {start: 2, step: 2, max: 6}``)::

        decided = decisions(config.load("results/smoke/study.yaml"),
                            pd.read_parquet("results/smoke/trials.parquet"))
        {level: (d.verdict, d.look, d.p) for level, d in decided.items()}
    """
    design = study.design()
    if design is None:
        return {}
    values = seed_values(study, trials)
    reference, *levels = study.space[study.compare_key()].levels()
    return replay({level: values[level] for level in levels}, values[reference], design,
                  study.analysis.margin, family=len(levels))


def planned_networks(study: config.Study, trials: pd.DataFrame) -> int:
    """The networks ``study run`` trains, given the networks so far (``trials``): all of
    ``study.n_networks()`` for a fixed number of seeds; with a sequential design, every compared
    level's up to the look that settled it, or the next look's while it is undecided (the
    reference's up to the latest of them), besides any tuning stage's."""
    if study.design() is None:
        return study.n_networks()
    looks, levels = study.looks(study.compared_stage()), study.space[study.compare_key()].levels()
    decided = decisions(study, trials)
    # A settled level ends at its look; an undecided one goes on to the next (a "continue" is
    # never the last look's), and one not looked at yet has its first round to come.
    ends = [looks[0] if level not in decided
            else looks[decided[level].look - (1 if decided[level].settled() else 0)]
            for level in levels[1:]]
    tuning = study.n_configurations() * study.looks("tune")[-1] if study.confirms() else 0
    return tuning + sum(ends) + max(ends)


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


@dataclass(frozen=True)
class Analysis:
    """What ``study analyze`` reports: the arms, one row per compared level (primary seed-level
    statistics, then ``image_*`` columns), and with ``split`` the subgroup rows."""

    study: config.Study
    factor: str
    split: str | None
    data_fingerprint: str
    data_source: str  # the source digits and the distinct digits each split draws on, in words
    arms: pd.DataFrame
    comparisons: pd.DataFrame
    subgroups: pd.DataFrame | None
    selected: list[Arm]  # the arms, reference first
    networks: pd.DataFrame  # per network that entered: level, trial_id, seed, and its MEASURES
    averaged: dict[Any, pd.DataFrame]  # level → seed-averaged per-sample loss and correct
    notes: list[str]  # what a reader must know before the numbers (selection not confirmed, …)
    family: int  # Holm's family: the compared levels the study file names
    decisions: dict[Any, Decision] = field(default_factory=dict)  # a sequential design's, by level

    def differences(self, level: Any) -> pd.Series:
        """Per-sample loss differences (arm − reference), paired by sample_idx."""
        reference = self.averaged[self.selected[0].level]["loss"]
        return (self.averaged[level]["loss"] - reference).dropna()

    def to_dict(self) -> dict[str, Any]:
        def records(frame: pd.DataFrame | None) -> list[dict] | None:
            if frame is None:
                return None
            return [{k: (None if pd.isna(v) else v.item() if hasattr(v, "item") else v)
                     for k, v in row.items()} for row in frame.to_dict("records")]

        return {"study": self.study.name, "question": self.study.question, "factor": self.factor,
                "split": self.split, "data_fingerprint": self.data_fingerprint,
                "data_source": self.data_source, "alpha": ALPHA,
                "margin": self.study.analysis.margin, "accuracy_margin": self.study.analysis.accuracy_margin,
                "holm_family": f"the seed-level tests of the {self.family} level(s) the study file compares "
                               "with the reference, one family per measure; a level without networks "
                               "counts as not rejected",
                "image_level": IMAGE_LEVEL, "notes": self.notes, "arms": records(self.arms),
                "comparisons": records(self.comparisons), "subgroups": records(self.subgroups)}


def analyze(study_dir: str | Path, by: str | None = None, split: str | None = None) -> Analysis:
    """Compare every level of ``by`` (default: the study's compare factor) with the reference
    level (the first that has results; a note says so where that is not the study file's
    first), optionally within the values of the per-sample column ``split``."""
    study_dir = Path(study_dir)
    if not (study_dir / "trials.parquet").exists():
        raise UserError(f"{study_dir}: no trials.parquet; is this a study's results directory?")
    study = config.load(study_dir / "study.yaml")
    factor = by or study.compare_key()
    if factor not in study.space or study.space[factor].choice is None:
        choices = [k for k, d in study.space.items() if d.choice is not None]
        raise UserError(f"--by {factor}: compare by a 'choice' key of the space: {choices}")
    r = results.load(study_dir)
    strangers = [key for key in study.space if key not in r.trials]
    if strangers:
        raise UserError(f"{study_dir / 'study.yaml'} varies {', '.join(strangers)}, which trials.parquet "
                        "has no column for: the folder holds files of two studies. Analyse the folder "
                        "a study run wrote, with the study.yaml it wrote")
    trained = r.trials[r.trials["status"].isin(results.TRAINED)]
    if "reason" not in r.trials:  # results written before failures had reasons
        r.trials["reason"] = None
    if split is not None and split not in r.samples:
        per_sample = [c for c in r.samples if c not in ("trial_id", "seed", "sample_idx", "loss")
                      and not c.startswith("logit_")]
        raise UserError(f"--split {split}: not a per-sample column; choose one of {per_sample}")
    arms = select_arms(study, r.trials, factor)
    if len(arms) < 2:
        raise UserError(f"{study_dir}: {factor} has completed trials at {len(arms)} level(s); "
                        "a comparison needs two")
    fingerprint = {arm.level: _fingerprint(trained, arm, study_dir) for arm in arms}
    notes = _notes(study, r.trials, arms, factor, fingerprint)

    networks = pd.concat([per_network(r.samples, arm.networks).assign(level=arm.level) for arm in arms])
    averaged = {arm.level: seed_average(r.samples, arm.networks, split) for arm in arms}
    of_level = {arm.level: networks[networks["level"] == arm.level] for arm in arms}
    arm_rows = []
    for arm in arms:
        mine = of_level[arm.level]
        arm_rows.append({"level": arm.level, "stage": arm.stage, "seeds": len(arm.networks),
                         **{k: v for k, v in arm.params.items() if k != factor},
                         "mean_loss": float(mine["test_loss"].mean()),
                         "sd_loss": float(mine["test_loss"].std(ddof=1)) if len(mine) > 1 else np.nan,
                         "exact_acc": float(mine["test_exact_acc"].mean()),
                         "digit_f1": float(mine["test_digit_f1"].mean()),
                         "networks": ",".join(f"{t}/{s}" for t, s in arm.networks)})

    # Holm's family is fixed by the study file: every level but the reference, with or without networks.
    family = len(study.space[factor].levels()) - 1
    reference, *others = arms
    planned_reference = study.space[factor].levels()[0]
    # A sequential design's reference trains while any level is undecided: each comparison takes
    # its networks up to the look at which that comparison stopped.
    decided = decisions(study, r.trials) if factor == study.compare_key() else {}
    if reference.level != planned_reference:
        notes.append(f"no network of the reference level {planned_reference} trained, so "
                     f"{reference.level} stands in as the reference: every comparison below is against "
                     f"{reference.level}, not {planned_reference}" +
                     ("; the sequential design, whose looks compare with the planned reference, could "
                      "not decide, so the comparisons are fixed-size tests" if decided else ""))
        decided = {}
    design, stage = study.design(), study.compared_stage()
    # In a sequential design the secondary measures are tested at the look at which the primary
    # stopped, each with its own alpha spending: a fixed-size test there would ignore the looks
    # before it. Their values are the ones computed from the samples above, in seed order.
    values = {}
    if decided:
        secondary = [measure for measure in MEASURES if measure != "test_loss"]
        measured = r.trials.drop(columns=secondary, errors="ignore").merge(
            networks[["trial_id", "seed", *secondary]], on=["trial_id", "seed"], how="left")
        values = {measure: seed_values(study, measured, measure) for measure in secondary}
    rows = []
    for arm in others:
        mine, theirs = of_level[arm.level], of_level[reference.level]
        averaged_reference = averaged[reference.level]
        stop = decided.get(arm.level)
        if stop is not None:
            theirs = theirs[theirs["seed"] <= study.seeds(stage, stop.look)[-1]]
            averaged_reference = seed_average(r.samples, list(zip(theirs["trial_id"], theirs["seed"],
                                                                  strict=True)), split)
        row = {"level": arm.level, "reference": reference.level, "seeds": len(mine),
               "seeds_reference": len(theirs), "mean_loss": float(mine["test_loss"].mean()),
               "mean_loss_reference": float(theirs["test_loss"].mean())}
        for measure, (prefix, margin, _) in MEASURES.items():
            if stop is None:
                tested = seed_level(mine[measure].dropna().to_numpy(), theirs[measure].dropna().to_numpy(),
                                    getattr(study.analysis, margin))
            elif measure == "test_loss":  # the design's numbers, valid whatever the look it stopped at
                tested = stop.seed_level()
            else:
                n = design.looks()[stop.look - 1]
                tested = decide(values[measure][arm.level][:n], values[measure][reference.level][:n],
                                design, getattr(study.analysis, margin)).seed_level()
            row |= {f"{prefix}{k}": v for k, v in tested.items()}
        row |= power(mine["test_loss"].to_numpy(), theirs["test_loss"].to_numpy(),
                     study.analysis.margin, family)
        if stop is not None:
            row["look"] = stop.look
            row |= design_power(design, row["sd"], row["sd_reference"], len(mine), len(theirs),
                                study.analysis.margin, ALPHA / max(family, 1))
        if fingerprint[arm.level] == fingerprint[reference.level]:
            paired = averaged[arm.level].merge(averaged_reference, left_index=True,
                                               right_index=True, suffixes=("", "_ref"))
            row |= image_level(paired["loss"].to_numpy(), paired["loss_ref"].to_numpy())
        else:
            row |= dict.fromkeys(IMAGE_KEYS, np.nan)
        rows.append(row)
    comparisons = pd.DataFrame(rows)
    for prefix, _, lower_is_better in MEASURES.values():
        after = comparisons.columns.get_loc(f"{prefix}p_equivalent") + 1
        p_holm, equivalent_holm = (holm(comparisons[f"{prefix}{k}"], family) for k in ("p", "p_equivalent"))
        comparisons.insert(after, f"{prefix}verdict", [
            verdict(*values, lower_is_better=lower_is_better)
            for values in zip(p_holm, equivalent_holm, comparisons[f"{prefix}diff"], strict=True)])
        comparisons.insert(after, f"{prefix}p_equivalent_holm", equivalent_holm)
        comparisons.insert(after, f"{prefix}p_holm", p_holm)
    if decided:  # the verdict the design reached, Holm over the levels at each look (a level's is final)
        comparisons["verdict"] = [decided[level].verdict for level in comparisons["level"]]
        going_on = comparisons["verdict"] == "continue"  # its secondary measures get more networks too
        for prefix in ("acc_", "f1_"):
            comparisons.loc[going_on & (comparisons[f"{prefix}verdict"] == "inconclusive"),
                            f"{prefix}verdict"] = "continue"
        undecided = [str(level) for level, d in decided.items() if not d.settled()]
        if undecided:
            notes.append(f"the sequential design has not finished: {', '.join(undecided)} still undecided "
                         "after the last round that ran; `study run --resume` trains the next")
    subgroups = _subgroups(r.samples, arms, split, study.analysis.margin) if split else None
    sources = trained["data_source"].dropna().unique() if "data_source" in trained else []
    source = "; ".join(sources) if len(sources) else f"not recorded (data.source: {study.data.source})"
    fingerprints = sorted(set(fingerprint.values()))
    shown = fingerprints[0] if len(fingerprints) == 1 else ", ".join(
        f"{level}: {f}" for level, f in fingerprint.items())
    return Analysis(study, factor, split, shown, source, pd.DataFrame(arm_rows),
                    comparisons, subgroups, arms, networks, averaged, notes, family, decided)


def _notes(study: config.Study, trials: pd.DataFrame, arms: list[Arm], factor: str,
           fingerprint: dict[Any, str]) -> list[str]:
    """What a reader must know about which networks entered before reading the numbers: arms on
    other images, levels without an arm, failed and repeated networks, trials ASHA stopped, and
    selections not confirmed on fresh seeds (``trials``: every row of ``trials.parquet``)."""
    notes = []
    trained = trials[trials["status"].isin(results.TRAINED)]
    unpaired = [str(arm.level) for arm in arms[1:] if fingerprint[arm.level] != fingerprint[arms[0].level]]
    if unpaired:
        notes.append(f"{', '.join(unpaired)} saw other images than the reference (another data "
                     "setting), so only the seed-level comparison of mean test losses is made there; "
                     "images cannot be paired")
    lost_levels = [str(level) for level in study.space[factor].levels()
                   if level not in {arm.level for arm in arms} and (trials[factor] == level).any()]
    if lost_levels:
        notes.append(f"every network of {', '.join(lost_levels)} failed (status ERROR, reason in "
                     "trials.parquet), so no arm stands for it")
    absent = [str(level) for level in study.space[factor].levels() if not (trials[factor] == level).any()]
    if absent:
        notes.append(f"{', '.join(absent)} has no network in trials.parquet (the run has not reached it, "
                     "or stopped before it), so no arm stands for it; Holm's family still counts it, as "
                     "not rejected")
    if any(arm.failed for arm in arms):
        lost = "; ".join(f"{arm.level}: {len(arm.failed)} of {len(arm.failed) + len(arm.networks)} "
                         f"({arm.failed[0]})" for arm in arms if arm.failed)
        counts = " vs ".join(str(len(arm.networks)) for arm in arms)
        notes.append(f"networks that failed are left out (status ERROR, reason in trials.parquet): {lost}. "
                     f"The arms compare {counts} networks; a failure that depends on the arm "
                     "(divergence, say) is itself a result and biases the comparison of the rest")
    if any(arm.repeated for arm in arms):
        repeats = ", ".join(f"{arm.level}: {arm.repeated}" for arm in arms if arm.repeated)
        notes.append(f"the sampler proposed a configuration more than once, and a configuration trained "
                     f"again on the same seed is the same network again, not a replicate: each seed "
                     f"counts once, and {repeats} repeated networks are left out")
    stopped = trials.loc[trials["status"] == "STOPPED", "trial_id"].unique()
    if len(stopped):
        tuned = trials.loc[trials["stage"] == "tune", "trial_id"].nunique()
        entered = [str(arm.level) for arm in arms
                   if (of_networks(trained, arm.networks)["status"] == "STOPPED").any()]
        notes.append(f"ASHA stopped {len(stopped)} of {tuned} tuning trials early (status STOPPED); they "
                     "entered the selection with their best validation loss so far" +
                     (f", and the networks of {', '.join(entered)} are theirs, trained for fewer epochs "
                      "than train.epochs" if entered else ""))
    if study.confirms() and any(arm.stage == "tune" for arm in arms):
        unconfirmed = [str(arm.level) for arm in arms if arm.stage == "tune"]
        notes.append(f"not confirmed on fresh seeds: {', '.join(unconfirmed)}. Their networks are the "
                     "ones that won the selection by validation loss, so their luck counts twice and "
                     "the seed-level difference is biased in their favour")
    return notes


def _fingerprint(trials: pd.DataFrame, arm: Arm, study_dir: Path) -> str:
    """The one dataset an arm's networks saw: its per-sample losses are averaged by image."""
    seen = of_networks(trials, arm.networks)["data_fingerprint"].unique()
    if len(seen) > 1:
        raise UserError(f"{study_dir}: the networks of {arm.level} saw different datasets "
                        f"({', '.join(seen)}); per-sample losses can only be averaged within one "
                        "data_fingerprint")
    return str(seen[0])


def _subgroups(samples: pd.DataFrame, arms: list[Arm], split: str, margin: float) -> pd.DataFrame:
    """Seed-level differences within each value of ``split`` and the arm × subgroup interaction
    of every value against the first (see the module docstring)."""
    means = samples.groupby(["trial_id", "seed", split])["loss"].mean().unstack(split)
    values = list(means.columns)
    reference, *others = arms
    rows = []
    for arm in others:
        mine, theirs = means.loc[arm.networks], means.loc[reference.networks]
        for value in values:
            row = {"level": arm.level, "reference": reference.level, split: value,
                   "mean_loss": float(mine[value].mean()), "mean_loss_reference": float(theirs[value].mean())}
            tested = seed_level(mine[value].dropna().to_numpy(), theirs[value].dropna().to_numpy(),
                                margin)
            row |= {k: tested[k] for k in ("diff", "diff_ci_low", "diff_ci_high", "p")}
            if value != values[0]:  # the interaction: does the arm's advantage change in this subgroup?
                contrast = seed_level((mine[value] - mine[values[0]]).dropna().to_numpy(),
                                      (theirs[value] - theirs[values[0]]).dropna().to_numpy(), margin)
                row |= {f"interaction_{k}": contrast[k] for k in ("diff", "diff_ci_low", "diff_ci_high", "p")}
            rows.append(row)
    return pd.DataFrame(rows)

"""Statistics of a study: every level of the compared factor against the reference level.

The unit of replication is the trained network. "Does the layer help?" asks whether retraining
would give the same answer, so the variance that matters is between networks trained with
different seeds, not between test images (which are shared by every network, and reuse the same
handwritten digits many times).

**Which networks** enter each arm is ``study.arms``'s: a study that selects compares the networks
retrained on fresh seeds after the selection, so the luck that won it is not counted again.

**Primary, seed level** (the verdict). Each network's mean test loss over the test images is one
observation. Per level against the reference: the difference of the arms' means with Welch's
test and interval, an equivalence test within ``analysis.margin``, power at the margin with its
uncertainty, and a verdict in one word (better, worse, equivalent, inconclusive), all from
``study.stats``, where each is explained; in a sequential design, the design's repeated p-values
and intervals at the look where each level stopped (``study.decisions``). Holm's adjustment runs
over one family fixed by the study file: every level it compares with the reference, a level
without networks counted as not rejected. Exact-set accuracy and digit F1 (macro F1 over the ten
digits) are tested the same way with ``analysis.accuracy_margin``, each in its own family.

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
unadjusted and outside Holm's family. A subgroup is a set of test images: the split must be a
property of the image (``digits``, ``withheld``, ``colours``; ``occlusion``, continuous, in
quartiles over the images), never what a network made of it (``correct``).

Used on a finished study (``study analyze`` does this, then writes the report)::

    result = analyze("results/smoke")
    result.comparisons[["level", "diff", "diff_ci_low", "diff_ci_high", "p_holm", "verdict"]]
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from study import arms, loading, results
from study.config import Study
from study.decisions import decisions, planned_networks, seed_values
from study.errors import UserError
from study.sequential import Decision, decide, design_power
from study.stats import ALPHA, IMAGE_KEYS, holm, image_level, power, seed_level, verdict

IMAGE_LEVEL = "image level, conditional on these trained networks"
# The way on for a study whose networks are still to come, where analysing it is premature.
GO_ON = "let the run go on, or continue an interrupted one with the command that started it and --resume"
MEASURES = {  # per network: (column prefix, the margin's key in analysis, lower is better)
    "test_loss": ("", "margin", True),
    "test_exact_acc": ("acc_", "accuracy_margin", False),
    "test_digit_f1": ("f1_", "accuracy_margin", False),
}


@dataclass(frozen=True)
class Analysis:
    """What ``study analyze`` reports: the arms, one row per compared level (primary seed-level
    statistics, then ``image_*`` columns), and with ``split`` the subgroup rows."""

    study: Study
    factor: str
    split: str | None
    data_fingerprint: str
    data_source: str  # the source digits and the distinct digits each split draws on, in words
    arms: pd.DataFrame
    comparisons: pd.DataFrame
    subgroups: pd.DataFrame | None
    selected: list[arms.Arm]  # the arms, reference first
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
    study, factor, r = _read(study_dir, by, split)
    if split is not None and pd.api.types.is_float_dtype(r.samples[split]):
        r.samples[split] = _quartiles(r.samples, split)
    trained = r.trials[r.trials["status"].isin(results.TRAINED)]
    selected = arms.select_arms(study, r.trials, factor)
    if len(selected) < 2:
        planned = planned_networks(study, r.trials)
        if study_dir.name == f"{study.name}-trial":  # where study trial writes its one configuration
            why = ("this folder holds one study trial, which trains the file's sections as they stand; "
                   "study run trains every level of its space")
        elif len(r.trials) < planned:
            why = f"the study has {len(r.trials)} of its {planned} networks: {GO_ON}"
        else:
            why = ("no network of the other levels completed (the status and reason columns of "
                   "trials.parquet say why)")
        raise UserError(f"{study_dir}: {factor} has completed trials at {len(selected)} level(s), and a "
                        f"comparison needs two; {why}")
    fingerprints = {arm.level: arms.fingerprint(trained, arm, study_dir) for arm in selected}
    notes = arms.notes(study, r.trials, selected, factor, fingerprints)
    networks = pd.concat([arms.per_network(r.samples, arm.networks).assign(level=arm.level)
                          for arm in selected])
    averaged = {arm.level: arms.seed_average(r.samples, arm.networks, split) for arm in selected}
    arm_rows = pd.DataFrame([_arm_row(arm, networks[networks["level"] == arm.level], factor)
                             for arm in selected])
    # Holm's family is fixed by the study file: every level but the reference, with or without networks.
    family = len(study.space[factor].levels()) - 1
    decided = _decided(study, r.trials, factor, selected[0], notes)
    comparison = _Comparison(study, r.samples, networks, averaged, fingerprints, family, split,
                             decided, _secondary_values(study, r.trials, networks) if decided else {})
    comparisons = _verdicts(pd.DataFrame([comparison.row(arm, selected[0]) for arm in selected[1:]]),
                            family)
    if decided:
        _design_verdicts(comparisons, decided, notes)
    subgroups = _subgroups(r.samples, selected, split, study.analysis.margin) if split else None
    return Analysis(study, factor, split, _shown(fingerprints), _source(study, trained), arm_rows,
                    comparisons, subgroups, selected, networks, averaged, notes, family, decided)


def _read(study_dir: Path, by: str | None, split: str | None) -> tuple[Study, str, results.Results]:
    """The study, the factor compared and the result files, each mistake in them one message."""
    if not (study_dir / "trials.parquet").exists():
        if (study_dir / "study.yaml").exists():  # a study run started: none of its networks finished
            raise UserError(f"{study_dir}: no network has finished yet (no trials.parquet beside its "
                            f"study.yaml); {GO_ON}")
        raise UserError(f"{study_dir}: no trials.parquet; is this a study's results directory?")
    study = loading.load(study_dir / "study.yaml")
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
    if "reason" not in r.trials:  # results written before failures had reasons
        r.trials["reason"] = None
    if split is not None and not _of_the_image(r.samples, split):
        per_image = [c for c in r.samples if _of_the_image(r.samples, c)]
        why = ("not a property of the test image but of each network (what it made of the image, as "
               "correct, or its setting), so its subgroups would hold different images in each arm"
               if split in r.samples else "not a per-sample column")
        raise UserError(f"--split {split}: {why}; choose one of {per_image}")
    return study, factor, r


def _quartiles(samples: pd.DataFrame, column: str) -> pd.Series:
    """A continuous property of the test images (``occlusion``: the share of the image's digit
    pixels hidden) as its quartiles over the images, labelled by their ranges and in order: a
    subgroup per distinct value would be one per image."""
    values = samples.drop_duplicates(_image(samples))[column]
    edges = np.unique(np.quantile(values, [0, 0.25, 0.5, 0.75, 1]))
    if len(edges) < 2:  # one value for every image: one subgroup
        return pd.Series(pd.Categorical([f"{edges[0]:.3g}"] * len(samples)), index=samples.index)
    labels = [f"{low:.3g} to {high:.3g}" for low, high in itertools.pairwise(edges)]
    return pd.cut(samples[column], edges, labels=labels, include_lowest=True)


# Per-sample columns of each network's own (with ``logit_*``), whatever values they happen to hold.
_OF_THE_NETWORK = ("trial_id", "seed", "sample_idx", "loss", "correct")


def _of_the_image(samples: pd.DataFrame, column: str) -> bool:
    """Whether ``column`` of the per-sample rows is a property of the test image (each image's
    value the same for every network that saw it), as a subgroup must be; conditioning on what a
    network made of the image (``correct``) would select each arm's images by its outcome."""
    if column not in samples or column in _OF_THE_NETWORK or column.startswith("logit_"):
        return False
    return bool((samples.groupby(_image(samples), observed=True)[column].nunique(dropna=False) <= 1).all())


def _image(samples: pd.DataFrame) -> list[str]:
    """The per-sample columns that name a test image: its index within its dataset."""
    return [c for c in ("data_fingerprint", "sample_idx") if c in samples]


def _arm_row(arm: arms.Arm, mine: pd.DataFrame, factor: str) -> dict[str, Any]:
    """An arm's line of the report: its networks and their mean measures."""
    return {"level": arm.level, "stage": arm.stage, "seeds": len(arm.networks),
            **{k: v for k, v in arm.params.items() if k != factor},
            "mean_loss": float(mine["test_loss"].mean()),
            "sd_loss": float(mine["test_loss"].std(ddof=1)) if len(mine) > 1 else np.nan,
            "exact_acc": float(mine["test_exact_acc"].mean()),
            "digit_f1": float(mine["test_digit_f1"].mean()),
            "networks": ",".join(f"{t}/{s}" for t, s in arm.networks)}


def _decided(study: Study, trials: pd.DataFrame, factor: str, reference: arms.Arm,
             notes: list[str]) -> dict[Any, Decision]:
    """The sequential design's decisions where they apply: the design compares the study's
    factor with its planned reference, so with a stand-in reference (noted) the comparisons are
    fixed-size tests."""
    decided = decisions(study, trials) if factor == study.compare_key() else {}
    planned = study.space[factor].levels()[0]
    if reference.level != planned:
        notes.append(f"no network of the reference level {planned} trained, so {reference.level} stands "
                     f"in as the reference: every comparison below is against {reference.level}, not "
                     f"{planned}" + ("; the sequential design, whose looks compare with the planned "
                                     "reference, could not decide, so the comparisons are fixed-size "
                                     "tests" if decided else ""))
        return {}
    return decided


def _secondary_values(study: Study, trials: pd.DataFrame, networks: pd.DataFrame) -> dict[str, dict]:
    """Each secondary measure per level in seed order (computed from the samples): a sequential
    design tests them at the look where the primary stopped, each with its own alpha spending,
    since a fixed-size test there would ignore the looks before it."""
    secondary = [measure for measure in MEASURES if measure != "test_loss"]
    measured = trials.drop(columns=secondary, errors="ignore").merge(
        networks[["trial_id", "seed", *secondary]], on=["trial_id", "seed"], how="left")
    return {measure: seed_values(study, measured, measure) for measure in secondary}


@dataclass(frozen=True)
class _Comparison:
    """What one level's comparison with the reference draws on."""

    study: Study
    samples: pd.DataFrame
    networks: pd.DataFrame
    averaged: dict[Any, pd.DataFrame]
    fingerprints: dict[Any, str]
    family: int
    split: str | None
    decided: dict[Any, Decision]
    values: dict[str, dict]  # a sequential design's secondary measures in seed order

    def row(self, arm: arms.Arm, reference: arms.Arm) -> dict[str, Any]:
        """The level's seed-level tests of every measure, power, and the image-level test: at the
        look where a sequential design stopped it, the reference's networks up to that look."""
        study, design, margins = self.study, self.study.design(), self.study.analysis
        mine = self.networks[self.networks["level"] == arm.level]
        theirs = self.networks[self.networks["level"] == reference.level]
        averaged_reference = self.averaged[reference.level]
        stop = self.decided.get(arm.level)
        if stop is not None:
            theirs = theirs[theirs["seed"] <= study.seeds(study.compared_stage(), stop.look)[-1]]
            kept = list(zip(theirs["trial_id"], theirs["seed"], strict=True))
            averaged_reference = arms.seed_average(self.samples, kept, self.split)
        row = {"level": arm.level, "reference": reference.level, "seeds": len(mine),
               "seeds_reference": len(theirs), "mean_loss": float(mine["test_loss"].mean()),
               "mean_loss_reference": float(theirs["test_loss"].mean())}
        for measure, (prefix, margin, _) in MEASURES.items():
            if stop is None:
                tested = seed_level(mine[measure].dropna().to_numpy(), theirs[measure].dropna().to_numpy(),
                                    getattr(margins, margin))
            elif measure == "test_loss":  # the design's numbers, valid whatever the look it stopped at
                tested = stop.seed_level()
            else:
                n = design.looks()[stop.look - 1]
                values = self.values[measure]
                tested = decide(values[arm.level][:n], values[reference.level][:n], design,
                                getattr(margins, margin)).seed_level()
            row |= {f"{prefix}{k}": v for k, v in tested.items()}
        row |= power(mine["test_loss"].to_numpy(), theirs["test_loss"].to_numpy(), margins.margin,
                     self.family)
        if stop is not None:
            row["look"] = stop.look
            row |= design_power(design, row["sd"], row["sd_reference"], len(mine), len(theirs),
                                margins.margin, ALPHA / max(self.family, 1))
        if self.fingerprints[arm.level] == self.fingerprints[reference.level]:
            paired = self.averaged[arm.level].merge(averaged_reference, left_index=True,
                                                    right_index=True, suffixes=("", "_ref"))
            row |= image_level(paired["loss"].to_numpy(), paired["loss_ref"].to_numpy())
        else:
            row |= dict.fromkeys(IMAGE_KEYS, np.nan)
        return row


def _verdicts(comparisons: pd.DataFrame, family: int) -> pd.DataFrame:
    """Holm's adjustment over the fixed family and the verdict, per measure, after its tests."""
    for prefix, _, lower_is_better in MEASURES.values():
        after = comparisons.columns.get_loc(f"{prefix}p_equivalent") + 1
        p_holm, equivalent_holm = (holm(comparisons[f"{prefix}{k}"], family) for k in ("p", "p_equivalent"))
        comparisons.insert(after, f"{prefix}verdict", [
            verdict(*values, lower_is_better=lower_is_better)
            for values in zip(p_holm, equivalent_holm, comparisons[f"{prefix}diff"], strict=True)])
        comparisons.insert(after, f"{prefix}p_equivalent_holm", equivalent_holm)
        comparisons.insert(after, f"{prefix}p_holm", p_holm)
    return comparisons


def _design_verdicts(comparisons: pd.DataFrame, decided: dict[Any, Decision], notes: list[str]) -> None:
    """The verdicts a sequential design reached (Holm over the levels at each look; a level's is
    final), and its secondary measures reading *continue* while it goes on."""
    comparisons["verdict"] = [decided[level].verdict for level in comparisons["level"]]
    going_on = comparisons["verdict"] == "continue"  # its secondary measures get more networks too
    for prefix in ("acc_", "f1_"):
        comparisons.loc[going_on & (comparisons[f"{prefix}verdict"] == "inconclusive"),
                        f"{prefix}verdict"] = "continue"
    undecided = [str(level) for level, d in decided.items() if not d.settled()]
    if undecided:
        notes.append(f"the sequential design has not finished: {', '.join(undecided)} still undecided "
                     "after the last round that ran; `study run --resume` trains the next")


def _shown(fingerprints: dict[Any, str]) -> str:
    """The dataset fingerprint, or each arm's where they differ."""
    distinct = sorted(set(fingerprints.values()))
    if len(distinct) == 1:
        return distinct[0]
    return ", ".join(f"{level}: {f}" for level, f in fingerprints.items())


def _source(study: Study, trained: pd.DataFrame) -> str:
    """The source digits the networks were trained on, in words, as the trials recorded them."""
    sources = trained["data_source"].dropna().unique() if "data_source" in trained else []
    return "; ".join(sources) if len(sources) else f"not recorded (data.source: {study.data.source})"


def _subgroups(samples: pd.DataFrame, selected: list[arms.Arm], split: str, margin: float) -> pd.DataFrame:
    """Seed-level differences within each value of ``split`` and the arm × subgroup interaction
    of every value against the first (see the module docstring)."""
    means = samples.groupby(["trial_id", "seed", split], observed=True)["loss"].mean().unstack(split)
    values = list(means.columns)
    reference, *others = selected
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

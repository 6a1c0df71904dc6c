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
t-test and its 95 % confidence interval (estimate, interval and test agree), a permutation test
of the same difference (``scipy.stats.permutation_test``, exact when the arms are small) as a
distribution-free check, a percentile bootstrap interval over seeds, the same for exact-set
accuracy, each arm's seed-to-seed SD, the smallest difference the study could detect with 80 %
power at α = 0.05 and, where the difference is not significant, the seeds per arm needed to
detect the observed one (``statsmodels``' two-sample t-test power). Holm's adjustment runs over
one fixed family: these primary tests, one per compared level.

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

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats
from statsmodels.stats.power import TTestIndPower
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from study import config, results
from study.errors import UserError

ALPHA = 0.05
POWER = 0.8
MIN_SEEDS = 2  # a seed-to-seed variance needs two networks per arm
BOOTSTRAP_RESAMPLES = 2000
PERMUTATIONS = 9999  # beyond this many distinct splits of the seeds, a Monte Carlo test
IMAGE_LEVEL = "image level, conditional on these trained networks"


def holm(p_values: np.ndarray | list[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (NaN entries stay NaN and do not count).

    Example:
        >>> holm([0.01, 0.04, 0.03]).round(2).tolist()
        [0.03, 0.06, 0.06]
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))  # step-down, kept monotone
        adjusted[index] = running
    return adjusted


def rank_biserial(differences: np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation of paired differences, zeros dropped."""
    d = np.asarray(differences, dtype=float)
    d = d[d != 0]
    if len(d) == 0:
        return float("nan")
    ranks = stats.rankdata(np.abs(d))
    return float((ranks[d > 0].sum() - ranks[d < 0].sum()) / ranks.sum())


def hodges_lehmann(differences: np.ndarray, alpha: float = ALPHA) -> tuple[float, float, float]:
    """The Hodges–Lehmann shift of paired differences d (the median of the Walsh averages
    (dᵢ + dⱼ)/2, i ≤ j: the pseudo-median the signed-rank test is about) and its 1 − alpha
    confidence interval, both by inverting the signed-rank test: the shift δ at which d − δ
    balances its signed ranks, and the shifts at which ``scipy.stats.wilcoxon``'s two-sided
    p-value of d − δ falls to alpha. Bisection, so it scales to thousands of test images.

    Example:
        >>> round(hodges_lehmann(np.array([1.0, 2.0, 3.0, 10.0]))[0], 6)  # Walsh median (2.5 + 3) / 2
        2.75
    """
    d = np.asarray(differences, dtype=float)
    if len(d) == 0 or np.all(d == d[0]):
        value = float(d[0]) if len(d) else float("nan")
        return value, value, value
    low, high = float(d.min()), float(d.max())
    tol = 1e-10 * max(1e-12, high - low)

    def first(condition, a: float, b: float) -> float:
        """The δ in [a, b] where ``condition`` turns from true to false (true at a, false at b)."""
        return optimize.bisect(lambda x: 1.0 if condition(x) else -1.0, a, b, xtol=tol)

    # R+ − R− of d − δ is +1 at δ = min(d), −1 at δ = max(d) and never increases in between.
    above = first(lambda x: rank_biserial(d - x) > 0, low, high)
    below = first(lambda x: rank_biserial(d - x) >= 0, low, high)
    estimate = (above + below) / 2

    def accepted(x: float) -> bool:
        return stats.wilcoxon(d - x).pvalue >= alpha

    ci_low = first(lambda x: not accepted(x), low, estimate) if not accepted(low) else low
    ci_high = first(accepted, estimate, high) if not accepted(high) else high
    return float(estimate), float(ci_low), float(ci_high)


IMAGE_KEYS = ("image_n", "image_n_nonzero", "image_hl_shift", "image_hl_ci_low", "image_hl_ci_high",
              "image_wilcoxon_w", "image_p", "image_rank_biserial")


def image_level(arm: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """The per-sample statistics of one comparison: Wilcoxon on d = arm − reference (paired by
    image), rank-biserial r, and the Hodges–Lehmann shift with its test-inversion CI."""
    d = np.asarray(arm, dtype=float) - np.asarray(reference, dtype=float)
    row = {"image_n": len(d), "image_n_nonzero": int(np.count_nonzero(d))}
    shift, low, high = hodges_lehmann(d)
    row |= {"image_hl_shift": shift, "image_hl_ci_low": low, "image_hl_ci_high": high}
    if row["image_n_nonzero"] == 0:
        return row | {"image_wilcoxon_w": np.nan, "image_p": np.nan, "image_rank_biserial": np.nan}
    test = stats.wilcoxon(d, zero_method="wilcox")
    return row | {"image_wilcoxon_w": float(test.statistic), "image_p": float(test.pvalue),
                  "image_rank_biserial": rank_biserial(d)}


def _mean_difference(arm: np.ndarray, reference: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(arm, axis=axis) - np.mean(reference, axis=axis)


def seed_level(arm: np.ndarray, reference: np.ndarray, prefix: str = "", seed: int = 0) -> dict[str, float]:
    """The primary statistics of one comparison: one value per network in each arm (its mean
    test loss, say); see the module docstring. Keys are prefixed with ``prefix``."""
    arm, reference = np.asarray(arm, dtype=float), np.asarray(reference, dtype=float)
    diff = float(arm.mean() - reference.mean()) if len(arm) and len(reference) else np.nan
    row = {"diff": diff, "diff_ci_low": np.nan, "diff_ci_high": np.nan, "p": np.nan, "p_perm": np.nan,
           "boot_ci_low": np.nan, "boot_ci_high": np.nan}
    if min(len(arm), len(reference)) >= MIN_SEEDS and (np.ptp(arm) > 0 or np.ptp(reference) > 0):
        welch = stats.ttest_ind(arm, reference, equal_var=False)
        ci = welch.confidence_interval(1 - ALPHA)
        permutation = stats.permutation_test((arm, reference), _mean_difference, vectorized=True,
                                             n_resamples=PERMUTATIONS, rng=np.random.default_rng(seed))
        boot = stats.bootstrap((arm, reference), _mean_difference, n_resamples=BOOTSTRAP_RESAMPLES,
                               method="percentile", rng=np.random.default_rng(seed)).confidence_interval
        row |= {"diff_ci_low": float(ci.low), "diff_ci_high": float(ci.high), "p": float(welch.pvalue),
                "p_perm": float(permutation.pvalue), "boot_ci_low": float(boot.low),
                "boot_ci_high": float(boot.high)}
    return {f"{prefix}{k}": v for k, v in row.items()}


def power(arm: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Seed-to-seed SD of each arm, the smallest |difference| detectable with ``POWER`` at
    ``ALPHA`` (two-sided two-sample t-test with the pooled SD), and the seeds per arm that the
    observed difference would need."""
    arm, reference = np.asarray(arm, dtype=float), np.asarray(reference, dtype=float)
    row = {"sd": np.nan, "sd_reference": np.nan, "detectable_diff": np.nan, "seeds_needed": np.nan}
    if min(len(arm), len(reference)) < MIN_SEEDS:
        return row
    row["sd"], row["sd_reference"] = float(arm.std(ddof=1)), float(reference.std(ddof=1))
    pooled = math.sqrt(((len(arm) - 1) * row["sd"] ** 2 + (len(reference) - 1) * row["sd_reference"] ** 2)
                       / (len(arm) + len(reference) - 2))
    if pooled == 0:
        return row
    solver, effect = TTestIndPower(), abs(arm.mean() - reference.mean()) / pooled
    with warnings.catch_warnings():
        # Its root finder gives up (NaN) past its bounds; both cases are handled below.
        warnings.simplefilter("ignore", ConvergenceWarning)
        row["detectable_diff"] = pooled * float(solver.solve_power(
            nobs1=len(arm), ratio=len(reference) / len(arm), alpha=ALPHA, power=POWER))
        needed = float(solver.solve_power(effect_size=effect, ratio=1.0, alpha=ALPHA, power=POWER)) \
            if effect > 0 else math.nan
    if effect > 0:
        if math.isnan(needed):  # thousands of seeds: the normal approximation is exact enough there
            needed = 2 * ((stats.norm.ppf(1 - ALPHA / 2) + stats.norm.ppf(POWER)) / effect) ** 2
        row["seeds_needed"] = math.ceil(needed)
    return row


def reading(row: Any) -> str:
    """The verdict on one primary comparison, in words."""
    if pd.isna(row.p_holm):
        return (f"no seed-level test ({row.seeds} vs {row.seeds_reference} networks; it needs "
                f"{MIN_SEEDS} per arm and some spread): no verdict")
    if row.p_holm < ALPHA:
        return f"{'lower' if row.diff < 0 else 'higher'} loss, a difference unlikely to be chance"
    return "no difference distinguishable from chance"


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
    networks: pd.DataFrame  # per network that entered: level, trial_id, seed, test_loss, test_exact_acc
    averaged: dict[Any, pd.DataFrame]  # level → seed-averaged per-sample loss and correct
    notes: list[str]  # what a reader must know before the numbers (selection not confirmed, …)

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
                "holm_family": "the seed-level test of every compared level against the reference",
                "image_level": IMAGE_LEVEL, "notes": self.notes, "arms": records(self.arms),
                "comparisons": records(self.comparisons), "subgroups": records(self.subgroups)}


def analyze(study_dir: str | Path, by: str | None = None, split: str | None = None,
            seed: int = 0) -> Analysis:
    """Compare every level of ``by`` (default: the study's compare factor) with the reference
    level (the first that has results), optionally within the values of the per-sample column
    ``split``; ``seed`` seeds the permutation test and the bootstrap."""
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
    done = r.trials[r.trials["status"].isin(results.TRAINED)]
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
    fingerprint = {arm.level: _fingerprint(done, arm, study_dir) for arm in arms}
    notes = []
    unpaired = [str(arm.level) for arm in arms[1:] if fingerprint[arm.level] != fingerprint[arms[0].level]]
    if unpaired:
        notes.append(f"{', '.join(unpaired)} saw other images than the reference (another data "
                     "setting), so only the seed-level comparison of mean test losses is made there; "
                     "images cannot be paired")
    lost_levels = [str(level) for level in study.space[factor].levels()
                   if level not in {arm.level for arm in arms} and (r.trials[factor] == level).any()]
    if lost_levels:
        notes.append(f"every network of {', '.join(lost_levels)} failed (status ERROR, reason in "
                     "trials.parquet), so no arm stands for it")
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
    stopped = r.trials.loc[r.trials["status"] == "STOPPED", "trial_id"].unique()
    if len(stopped):
        tuned = r.trials.loc[r.trials["stage"] == "tune", "trial_id"].nunique()
        entered = [str(arm.level) for arm in arms
                   if (of_networks(done, arm.networks)["status"] == "STOPPED").any()]
        notes.append(f"ASHA stopped {len(stopped)} of {tuned} tuning trials early (status STOPPED); they "
                     "entered the selection with their best validation loss so far" +
                     (f", and the networks of {', '.join(entered)} are theirs, trained for fewer epochs "
                      "than train.epochs" if entered else ""))
    if study.confirms() and any(arm.stage == "tune" for arm in arms):
        unconfirmed = [str(arm.level) for arm in arms if arm.stage == "tune"]
        notes.append(f"not confirmed on fresh seeds: {', '.join(unconfirmed)}. Their networks are the "
                     "ones that won the selection by validation loss, so their luck counts twice and "
                     "the seed-level difference is biased in their favour")

    per_network = r.samples.groupby(["trial_id", "seed"])[["loss", "correct"]].mean()
    networks = pd.concat([per_network.loc[arm.networks].assign(level=arm.level) for arm in arms])
    networks = networks.reset_index().rename(columns={"loss": "test_loss", "correct": "test_exact_acc"})
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
                         "networks": ",".join(f"{t}/{s}" for t, s in arm.networks)})

    reference, *others = arms
    theirs = of_level[reference.level]
    rows = []
    for arm in others:
        mine = of_level[arm.level]
        row = {"level": arm.level, "reference": reference.level, "seeds": len(arm.networks),
               "seeds_reference": len(reference.networks), "mean_loss": float(mine["test_loss"].mean()),
               "mean_loss_reference": float(theirs["test_loss"].mean())}
        losses = mine["test_loss"].to_numpy(), theirs["test_loss"].to_numpy()
        row |= seed_level(*losses, seed=seed) | power(*losses)
        row |= seed_level(mine["test_exact_acc"].to_numpy(), theirs["test_exact_acc"].to_numpy(),
                          prefix="acc_", seed=seed)
        if fingerprint[arm.level] == fingerprint[reference.level]:
            paired = averaged[arm.level].merge(averaged[reference.level], left_index=True,
                                               right_index=True, suffixes=("", "_ref"))
            row |= image_level(paired["loss"].to_numpy(), paired["loss_ref"].to_numpy())
        else:
            row |= dict.fromkeys(IMAGE_KEYS, np.nan)
        rows.append(row)
    comparisons = pd.DataFrame(rows)
    comparisons.insert(comparisons.columns.get_loc("p") + 1, "p_holm", holm(comparisons["p"]))
    comparisons.insert(comparisons.columns.get_loc("p_holm") + 1, "verdict",
                       [reading(row) for row in comparisons.itertuples()])
    subgroups = _subgroups(r.samples, arms, split, seed) if split else None
    sources = done["data_source"].dropna().unique() if "data_source" in done else []
    source = "; ".join(sources) if len(sources) else f"not recorded (data.source: {study.data.source})"
    fingerprints = sorted(set(fingerprint.values()))
    shown = fingerprints[0] if len(fingerprints) == 1 else ", ".join(
        f"{level}: {f}" for level, f in fingerprint.items())
    return Analysis(study, factor, split, shown, source, pd.DataFrame(arm_rows),
                    comparisons, subgroups, arms, networks, averaged, notes)


def _fingerprint(trials: pd.DataFrame, arm: Arm, study_dir: Path) -> str:
    """The one dataset an arm's networks saw: its per-sample losses are averaged by image."""
    seen = of_networks(trials, arm.networks)["data_fingerprint"].unique()
    if len(seen) > 1:
        raise UserError(f"{study_dir}: the networks of {arm.level} saw different datasets "
                        f"({', '.join(seen)}); per-sample losses can only be averaged within one "
                        "data_fingerprint")
    return str(seen[0])


def _subgroups(samples: pd.DataFrame, arms: list[Arm], split: str, seed: int) -> pd.DataFrame:
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
            row |= seed_level(mine[value].dropna().to_numpy(), theirs[value].dropna().to_numpy(), seed=seed)
            if value != values[0]:  # the interaction: does the arm's advantage change in this subgroup?
                contrast = seed_level((mine[value] - mine[values[0]]).dropna().to_numpy(),
                                      (theirs[value] - theirs[values[0]]).dropna().to_numpy(),
                                      prefix="interaction_", seed=seed)
                row |= {k: contrast[k] for k in ("interaction_diff", "interaction_diff_ci_low",
                                                 "interaction_diff_ci_high", "interaction_p")}
            rows.append(row)
    return pd.DataFrame(rows)

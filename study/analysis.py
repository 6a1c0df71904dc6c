"""Statistics on per-sample test losses: each level of a factor against the reference level.

An *arm* is one level of the compared factor. When other parameters were tuned too, the arm is
the configuration at that level with the lowest mean best validation loss (selection never looks
at the test split). Its per-sample test losses are averaged over its seeds and paired with the
reference arm's by ``sample_idx`` (only within one ``data_fingerprint``). For each pair of arms:

- the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``) on the differences d = arm − reference,
  two-sided and both one-sided directions; zero differences are dropped before ranking (Wilcoxon's
  original method, ``zero_method="wilcox"``), and ``n_nonzero`` says how many pairs remain;
- the matched-pairs rank-biserial correlation r = (R⁺ − R⁻) / (R⁺ + R⁻) over the same ranks:
  −1 when every nonzero difference favours the arm (lower loss), +1 when all favour the reference;
- the median difference with a seeded percentile-bootstrap 95 % confidence interval;
- Holm–Bonferroni adjusted two-sided p-values across every row of the table;
- with at least 3 seeds in both arms, Welch's t-test on the per-seed test losses (each seed's
  mean over the test images, close to normal by the central limit theorem), and a plain-language
  warning where it and the per-sample test disagree at ``ALPHA``. The per-sample test treats
  test images as the unit; only the per-seed test speaks for retraining the network.

Example:
    >>> result = analyze("results/smoke")  # doctest: +SKIP
    >>> result.comparisons[["level", "p_two_sided", "rank_biserial"]]  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from study import config, results
from study.errors import UserError

ALPHA = 0.05
MIN_SEEDS = 3  # fewer seeds per arm give a test across seeds too little to stand on
BOOTSTRAP_RESAMPLES = 2000


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


def median_ci(differences: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap 95 % confidence interval of the median, reproducible for a seed."""
    d = np.asarray(differences, dtype=float)
    if len(d) < 2 or np.all(d == d[0]):
        return (float(np.median(d)) if len(d) else float("nan"),) * 2
    ci = stats.bootstrap((d,), np.median, n_resamples=BOOTSTRAP_RESAMPLES, batch=200,
                         method="percentile", rng=np.random.default_rng(seed)).confidence_interval
    return float(ci.low), float(ci.high)


def paired_test(arm: np.ndarray, reference: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Every per-sample statistic of one comparison (see the module docstring)."""
    d = np.asarray(arm, dtype=float) - np.asarray(reference, dtype=float)
    n_nonzero = int(np.count_nonzero(d))
    row = {"n": len(d), "n_nonzero": n_nonzero, "median_diff": float(np.median(d)) if len(d) else np.nan}
    row["median_diff_ci_low"], row["median_diff_ci_high"] = median_ci(d, seed)
    if n_nonzero == 0:
        return row | {"wilcoxon_w": np.nan, "p_two_sided": np.nan, "p_arm_lower": np.nan,
                      "p_arm_higher": np.nan, "rank_biserial": np.nan}
    two = stats.wilcoxon(d, zero_method="wilcox")
    return row | {
        "wilcoxon_w": float(two.statistic),
        "p_two_sided": float(two.pvalue),
        "p_arm_lower": float(stats.wilcoxon(d, zero_method="wilcox", alternative="less").pvalue),
        "p_arm_higher": float(stats.wilcoxon(d, zero_method="wilcox", alternative="greater").pvalue),
        "rank_biserial": rank_biserial(d),
    }


def seed_test(arm: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Welch's t-test on per-seed test losses; NaN unless both arms have ``MIN_SEEDS``."""
    arm, reference = np.asarray(arm, dtype=float), np.asarray(reference, dtype=float)
    row = {"seed_mean_diff": float(arm.mean() - reference.mean()), "p_seeds": np.nan}
    if min(len(arm), len(reference)) >= MIN_SEEDS:
        row["p_seeds"] = float(stats.ttest_ind(arm, reference, equal_var=False).pvalue)
    return row


def disagreement(p_samples: float, p_seeds: float, n_seeds: tuple[int, int]) -> str:
    """A plain-language warning where the two tests disagree, else ''."""
    if min(n_seeds) < MIN_SEEDS:
        return (f"only {n_seeds[0]} vs {n_seeds[1]} seeds: no test across training runs; the "
                "per-sample test treats test images, not retrained networks, as the unit")
    if np.isnan(p_samples) or np.isnan(p_seeds) or (p_samples < ALPHA) == (p_seeds < ALPHA):
        return ""
    if p_samples < ALPHA:
        return (f"significant per sample (p={p_samples:.2g}) but not across seeds (p={p_seeds:.2g}, "
                f"{n_seeds[0]} vs {n_seeds[1]}): the difference may not survive retraining; add seeds")
    return (f"significant across seeds (p={p_seeds:.2g}) but not per sample (p={p_samples:.2g}): "
            "a consistent but small shift; look at the effect size before claiming it")


@dataclass(frozen=True)
class Arm:
    level: Any
    networks: list[tuple[str, int]]  # (trial_id, seed) of every network of its configuration
    params: dict[str, Any]  # the arm's configuration as stored in trials.parquet


def of_networks(frame: pd.DataFrame, networks: list[tuple[str, int]]) -> pd.DataFrame:
    """The rows of ``frame`` (with trial_id and seed columns) that belong to ``networks``."""
    return frame[pd.MultiIndex.from_frame(frame[["trial_id", "seed"]]).isin(networks)]


def select_arms(study: config.Study, trials: pd.DataFrame, factor: str) -> list[Arm]:
    """Per level of ``factor`` (in the space's order), the networks of its best configuration."""
    keys = list(study.space)
    arms = []
    for level in study.space[factor].levels():
        at_level = trials[trials[factor] == level]
        if at_level.empty:
            continue
        by_config = at_level.groupby(keys, dropna=False)
        best = by_config["best_val_loss"].mean().idxmin()
        chosen = by_config.get_group(best if len(keys) > 1 else (best,))
        networks = list(zip(chosen["trial_id"], chosen["seed"], strict=True))
        arms.append(Arm(level, networks, dict(zip(keys, chosen[keys].iloc[0], strict=True))))
    return arms


def seed_average(samples: pd.DataFrame, networks: list[tuple[str, int]],
                 split: str | None = None) -> pd.DataFrame:
    """Per-sample loss and correctness averaged over the given networks (seeds), by sample_idx;
    with ``split``, that per-sample column is carried along."""
    chosen = of_networks(samples, networks)
    averaged = chosen.groupby("sample_idx")[["loss", "correct"]].mean()
    if split is not None:
        averaged[split] = chosen.groupby("sample_idx")[split].first()
    return averaged


@dataclass(frozen=True)
class Analysis:
    """What ``study analyze`` reports: the arms, and one row per comparison (and subgroup)."""

    study: config.Study
    factor: str
    split: str | None
    data_fingerprint: str
    arms: pd.DataFrame
    comparisons: pd.DataFrame
    selected: list[Arm]  # the arms, reference first
    averaged: dict[Any, pd.DataFrame]  # level → seed-averaged per-sample loss and correct

    def differences(self, level: Any) -> pd.Series:
        """Per-sample loss differences (arm − reference), paired by sample_idx."""
        reference = self.averaged[self.selected[0].level]["loss"]
        return (self.averaged[level]["loss"] - reference).dropna()

    def to_dict(self) -> dict[str, Any]:
        def records(frame: pd.DataFrame) -> list[dict]:
            return [{k: (None if pd.isna(v) else v.item() if hasattr(v, "item") else v)
                     for k, v in row.items()} for row in frame.to_dict("records")]

        return {"study": self.study.name, "question": self.study.question, "factor": self.factor,
                "split": self.split, "data_fingerprint": self.data_fingerprint,
                "arms": records(self.arms), "comparisons": records(self.comparisons)}


def analyze(study_dir: str | Path, by: str | None = None, split: str | None = None,
            seed: int = 0) -> Analysis:
    """Compare every level of ``by`` (default: the study's compare factor) with the reference
    level (the first that has results), optionally per value of the per-sample column ``split``;
    ``seed`` seeds the bootstrap."""
    study_dir = Path(study_dir)
    if not (study_dir / "trials.parquet").exists():
        raise UserError(f"{study_dir}: no trials.parquet; is this a study's results directory?")
    study = config.load(study_dir / "study.yaml")
    factor = by or study.compare_key()
    if factor not in study.space or study.space[factor].choice is None:
        choices = [k for k, d in study.space.items() if d.choice is not None]
        raise UserError(f"--by {factor}: compare by a 'choice' key of the space: {choices}")
    r = results.load(study_dir)
    done = r.trials[r.trials["status"] == "COMPLETED"]
    fingerprints = done["data_fingerprint"].unique()
    if len(fingerprints) > 1:
        raise UserError(f"{study_dir}: trials saw different datasets ({list(fingerprints)}); "
                        "per-sample losses can only be paired within one data_fingerprint")
    if split is not None and split not in r.samples:
        per_sample = [c for c in r.samples if c not in ("trial_id", "seed", "sample_idx", "loss")
                      and not c.startswith("logit_")]
        raise UserError(f"--split {split}: not a per-sample column; choose one of {per_sample}")
    arms = select_arms(study, done, factor)
    if len(arms) < 2:
        raise UserError(f"{study_dir}: {factor} has completed trials at {len(arms)} level(s); "
                        "a comparison needs two")

    # Each network's mean test loss (per subgroup): what a test across seeds compares.
    per_network = r.samples.groupby(["trial_id", "seed", *([split] if split else [])])["loss"].mean()
    averaged = {arm.level: seed_average(r.samples, arm.networks, split) for arm in arms}
    arm_rows = [{"level": arm.level, "seeds": len(arm.networks),
                 **{k: v for k, v in arm.params.items() if k != factor},
                 "mean_loss": float(averaged[arm.level]["loss"].mean()),
                 "exact_acc": float(averaged[arm.level]["correct"].mean()),
                 "networks": ",".join(f"{t}/{seed}" for t, seed in arm.networks)} for arm in arms]

    reference, *others = arms
    rows = []
    for arm in others:
        paired = averaged[arm.level].join(averaged[reference.level], how="inner", rsuffix="_ref")
        groups = paired.groupby(split, sort=True) if split else [(None, paired)]
        for subgroup, part in groups:
            seeds_of = per_network.xs(subgroup, level=split) if split else per_network
            row = {split: subgroup} if split else {}
            row |= {"level": arm.level, "reference": reference.level}
            row |= paired_test(part["loss"].to_numpy(), part["loss_ref"].to_numpy(), seed)
            row |= {"mean_loss": float(part["loss"].mean()),
                    "mean_loss_reference": float(part["loss_ref"].mean()),
                    "exact_acc": float(part["correct"].mean()),
                    "exact_acc_reference": float(part["correct_ref"].mean()),
                    "seeds": len(arm.networks), "seeds_reference": len(reference.networks)}
            row |= seed_test(seeds_of.reindex(arm.networks).dropna(),
                             seeds_of.reindex(reference.networks).dropna())
            rows.append(row)
    comparisons = pd.DataFrame(rows)
    comparisons.insert(comparisons.columns.get_loc("p_two_sided") + 1, "p_holm",
                       holm(comparisons["p_two_sided"]))
    comparisons["warning"] = [
        disagreement(row.p_two_sided, row.p_seeds, (row.seeds, row.seeds_reference))
        for row in comparisons.itertuples()]
    return Analysis(study, factor, split, str(fingerprints[0]), pd.DataFrame(arm_rows),
                    comparisons, arms, averaged)

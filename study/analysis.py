"""Statistics on per-sample test losses: each level of a factor against the reference level.

An *arm* is one level of the compared factor. When other parameters were tuned too, the arm is
the configuration at that level with the lowest mean best validation loss (selection never looks
at the test split). Its per-sample test losses are averaged over its seeds, paired with the
reference arm's by ``sample_idx``, and compared with the Wilcoxon signed-rank test
(``scipy.stats.wilcoxon``, two-sided, zero differences dropped as in Wilcoxon's original method).

Example:
    >>> table = compare("results/smoke")  # doctest: +SKIP
    >>> table[0]["p_value"]  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from scipy import stats

from study import config, results
from study.errors import UserError


def arm_losses(samples: pd.DataFrame, trial_ids: list[str]) -> pd.DataFrame:
    """Per-sample loss and correctness averaged over the given trials (seeds), by sample_idx."""
    chosen = samples[samples["trial_id"].isin(trial_ids)]
    return chosen.groupby("sample_idx")[["loss", "correct"]].mean()


def _arms(study: config.Study, trials: pd.DataFrame, factor: str) -> dict[Any, list[str]]:
    """Level of ``factor`` → the trial ids of its best configuration, in the space's order."""
    keys = list(study.space)
    arms = {}
    for level in study.space[factor].levels():
        at_level = trials[trials[factor] == level]
        if at_level.empty:
            continue
        by_config = at_level.groupby(keys, dropna=False)
        best = by_config["best_val_loss"].mean().idxmin()
        arms[level] = list(by_config.get_group(best if len(keys) > 1 else (best,))["trial_id"])
    return arms


def compare(study_dir: str | Path, by: str | None = None) -> dict[str, Any]:
    """Wilcoxon signed-rank test of every level of ``by`` (default: the study's compare factor)
    against the reference level (the first choice that has results)."""
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
    arms = _arms(study, done, factor)
    if len(arms) < 2:
        raise UserError(f"{study_dir}: {factor} has completed trials at {len(arms)} level(s); "
                        "a comparison needs two")
    (reference, ref_ids), *others = arms.items()
    ref = arm_losses(r.samples, ref_ids)
    rows = []
    for level, ids in others:
        arm = arm_losses(r.samples, ids)
        paired = arm.join(ref, how="inner", lsuffix="_arm", rsuffix="_ref")
        test = stats.wilcoxon(paired["loss_arm"], paired["loss_ref"])
        rows.append({
            "level": level,
            "reference": reference,
            "n": len(paired),
            "statistic": float(test.statistic),
            "p_value": float(test.pvalue),
            "mean_loss": float(paired["loss_arm"].mean()),
            "mean_loss_reference": float(paired["loss_ref"].mean()),
            "exact_acc": float(paired["correct_arm"].mean()),
            "exact_acc_reference": float(paired["correct_ref"].mean()),
            "seeds": len(ids),
            "seeds_reference": len(ref_ids),
        })
    return {"study": study.name, "question": study.question, "factor": factor,
            "data_fingerprint": fingerprints[0], "comparisons": rows}

"""Figures and the written report of an analysis: ``RESULTS_DIR/report/``.

``write`` produces ``report.md`` (the question, the tables, the figures and a plain reading),
the tables as CSV, and these PNGs:

- ``qq.png``: normal Q-Q plot of each comparison's paired differences, with D'Agostino's K²
  normality test (why the comparison is a signed-rank test, not a paired t-test);
- ``loss_curves.png``: train and validation loss per epoch of each arm, mean and range over seeds;
- ``losses.png``: the distribution of seed-averaged per-sample test losses per arm;
- ``optuna_history.png`` and ``optuna_importances.png``: from ``optuna.db`` (importances over
  every stored trial, the compared level included as a parameter);
- ``attention.png``: for the best attentional network, a few test images, the share each window
  claims after every iteration and the top-down prediction, drawn from its saved weights.

The directory is built under a temporary name and swapped in whole.

Example:
    >>> write(analysis.analyze("results/smoke"), "results/smoke")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed on a cluster node
import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
import torch
from scipy import stats

from study import config
from study.analysis import ALPHA, Analysis, of_networks
from study.data import build
from study.models import AttConv, build_network
from study.results import weights_path
from study.train import as_images, as_inputs

N_ATTENTION_IMAGES = 4
COMPLETE = optuna.trial.TrialState.COMPLETE


def write(analysis: Analysis, study_dir: str | Path) -> Path:
    """Write the report of ``analysis`` into ``study_dir/report`` and return that directory."""
    study_dir = Path(study_dir)
    final = study_dir / "report"
    tmp = study_dir / f".report.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        notes = _figures(analysis, study_dir, tmp)
        analysis.arms.to_csv(tmp / "arms.csv", index=False)
        analysis.comparisons.to_csv(tmp / "comparisons.csv", index=False)
        (tmp / "report.md").write_text(markdown(analysis, notes))
        old = study_dir / f".report.{os.getpid()}.old"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _figures(analysis: Analysis, study_dir: Path, out: Path) -> dict[str, str]:
    """Draw every figure; returns a note for each figure that could not be drawn, and why."""
    notes = {}
    qq(analysis, out / "qq.png")
    loss_curves(analysis, pd.read_parquet(study_dir / "epochs.parquet"), out / "loss_curves.png")
    loss_distributions(analysis, out / "losses.png")
    for name, draw in (("optuna_history.png", optuna_history),
                       ("optuna_importances.png", optuna_importances),
                       ("attention.png", attention_maps)):
        reason = draw(analysis, study_dir, out / name)
        if reason:
            notes[name] = reason
    return notes


def _save(fig: plt.Figure, path: Path) -> None:
    if not fig.get_layout_engine():
        fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _label(analysis: Analysis, level) -> str:
    return f"{analysis.factor}={level}"


def qq(analysis: Analysis, path: Path) -> None:
    """Normal Q-Q plot of every comparison's paired differences."""
    levels = [arm.level for arm in analysis.selected[1:]]
    fig, axes = plt.subplots(1, len(levels), figsize=(4.2 * len(levels), 4), squeeze=False)
    for ax, level in zip(axes[0], levels, strict=True):
        d = analysis.differences(level).to_numpy()
        stats.probplot(d, dist="norm", plot=ax)
        test = f"K² p={stats.normaltest(d).pvalue:.2g}" if len(d) >= 20 else "too few for K²"
        ax.set_title(f"{level} − {analysis.selected[0].level}\n{test}", fontsize=10)
        ax.set_ylabel("paired loss difference")
    _save(fig, path)


def loss_curves(analysis: Analysis, epochs: pd.DataFrame, path: Path) -> None:
    """Train and validation loss per epoch for each arm: the mean over seeds and their range."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for arm in analysis.selected:
        mine = of_networks(epochs, arm.networks).groupby("epoch")
        for ax, column in zip(axes, ("train_loss", "val_loss"), strict=True):
            spread = mine[column].agg(["mean", "min", "max"])
            (line,) = ax.plot(spread.index, spread["mean"], marker="o", ms=3,
                              label=f"{arm.level} ({len(arm.networks)} seeds)")
            ax.fill_between(spread.index, spread["min"], spread["max"], color=line.get_color(), alpha=0.2)
    for ax, title in zip(axes, ("training loss", "validation loss"), strict=True):
        ax.set(title=title, xlabel="epoch", ylabel="BCE")
    axes[1].legend(title=analysis.factor, fontsize=8)
    _save(fig, path)


def loss_distributions(analysis: Analysis, path: Path) -> None:
    """Histograms (log-spaced bins) of the seed-averaged per-sample test loss of each arm."""
    losses = {arm.level: analysis.averaged[arm.level]["loss"].to_numpy() for arm in analysis.selected}
    low = max(min(v.min() for v in losses.values()), 1e-6)
    bins = np.geomspace(low, max(v.max() for v in losses.values()) * 1.01, 50)
    fig, ax = plt.subplots(figsize=(7, 4))
    for level, values in losses.items():
        ax.hist(np.clip(values, low, None), bins=bins, histtype="step", linewidth=1.5,
                label=f"{level} (mean {values.mean():.4f})")
    ax.set(xscale="log", xlabel="per-sample test loss (mean BCE over 10 classes)", ylabel="test images")
    ax.legend(title=analysis.factor, fontsize=8)
    _save(fig, path)


def _optuna_studies(study_dir: Path) -> list[optuna.Study]:
    storage = f"sqlite:///{study_dir / 'optuna.db'}"
    names = optuna.get_all_study_names(storage) if (study_dir / "optuna.db").exists() else []
    return [optuna.load_study(study_name=name, storage=storage) for name in sorted(names)]


def optuna_history(analysis: Analysis, study_dir: Path, path: Path) -> str:
    studies = [s for s in _optuna_studies(study_dir) if s.get_trials(states=[COMPLETE])]
    if not studies:
        return "optuna.db holds no completed Optuna trial"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = optuna.visualization.matplotlib.plot_optimization_history(
            studies if len(studies) > 1 else studies[0], target_name="mean best validation loss")
    ax.figure.set_size_inches(8, 4.5)
    _save(ax.figure, path)
    return ""


def optuna_importances(analysis: Analysis, study_dir: Path, path: Path) -> str:
    """Importances over every completed Optuna trial; where each compared level had its own Optuna
    study, the level (from the study's name) joins the parameters."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    merged = optuna.create_study()
    key = analysis.study.compare_key()
    levels = analysis.study.space[key].levels()
    level_of = {f"{analysis.study.name}:{level}": level for level in levels}
    for stored in _optuna_studies(study_dir):
        for trial in stored.get_trials(states=[COMPLETE]):
            params, dists = dict(trial.params), dict(trial.distributions)
            if stored.study_name in level_of:
                params[key] = level_of[stored.study_name]
                dists[key] = optuna.distributions.CategoricalDistribution(levels)
            merged.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=trial.value))
    if len(merged.trials) < 2:
        return f"{len(merged.trials)} completed Optuna trial(s); importances need at least 2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = optuna.visualization.matplotlib.plot_param_importances(merged)
    ax.figure.set_size_inches(8, 3 + 0.3 * len(merged.trials[0].params))
    _save(ax.figure, path)
    return ""


def attention_maps(analysis: Analysis, study_dir: Path, path: Path) -> str:
    """The best attentional network's first AttConv on a few test images."""
    study, trials = analysis.study, pd.read_parquet(study_dir / "trials.parquet")
    trials = trials[trials["status"] == "COMPLETED"].sort_values("best_val_loss")
    for _, row in trials.iterrows():
        trial_study = config.resolve(study, {key: row[key] for key in study.space})
        weights = weights_path(study_dir, row["trial_id"], row["seed"])
        if trial_study.model.attention.layers and weights.exists():
            break
    else:
        return "no completed network with an AttConv layer and saved weights"
    network = f"{row['trial_id']} seed {row['seed']}"
    net = build_network(trial_study.model, trial_study.data.canvas, trial_study.data.channels())
    net.load_state_dict(torch.load(weights, map_location="cpu"))
    net.eval()
    layer = next(m for m in net.modules() if isinstance(m, AttConv))
    if layer.iterations < 2:
        return f"{network}'s AttConv runs 1 iteration: its attention never changes"
    images = build(trial_study.data)["test"].images[:N_ATTENTION_IMAGES]
    seen = {}
    hook = layer.register_forward_hook(lambda module, args, out: seen.update(x=args[0]))
    with torch.no_grad():
        net(as_inputs(as_images(images)))
        hook.remove()
        steps = list(layer.steps(seen["x"]))
    out_h, out_w = steps[0][0].shape[-2:]
    # What each window claims after iterations 1..T−1, against the even start: border windows
    # cover pixels that fewer windows share, so raw claims would only show the border.
    start = steps[0][1].sum(1)
    gains = [torch.log2(a.sum(1) / start).view(-1, out_h, out_w) for _, a, _ in steps[1:]]
    limit = max(float(g.abs().max()) for g in gains) or 1.0
    prediction = layer.prediction(steps[-1][1], steps[-2][2], *seen["x"].shape[-2:]).mean(1)

    columns = 2 + len(gains)
    fig, axes = plt.subplots(len(images), columns, figsize=(2.3 * columns, 2.2 * len(images)),
                             squeeze=False, layout="constrained")
    for b in range(len(images)):
        axes[b, 0].imshow(images[b] if images.ndim == 3 else images[b].transpose(1, 2, 0), cmap="gray")
        for t, gain in enumerate(gains):
            shown = axes[b, 1 + t].imshow(gain[b], cmap="coolwarm", vmin=-limit, vmax=limit)
            if b == 0:
                axes[b, 1 + t].set_title(f"log2 claim gain, iter {t + 1}", fontsize=9)
        axes[b, -1].imshow(prediction[b], cmap="gray")
    axes[0, 0].set_title("input", fontsize=9)
    axes[0, -1].set_title("top-down prediction", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    fig.colorbar(shown, ax=axes[:, 1:-1], shrink=0.6, label="log2(share claimed / even share)")
    position = min(trial_study.model.attention.layers) + 1  # conv1 is position 0
    fig.suptitle(f"{network}: AttConv at conv{position} ({layer.iterations} iterations)",
                 fontsize=10)
    _save(fig, path)
    return ""


def _table(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, floatfmt=".4g")


def reading(analysis: Analysis) -> str:
    """A short plain-language reading of the comparison table (no subgroups)."""
    reference = analysis.selected[0].level
    lines = []
    for row in analysis.comparisons.itertuples():
        if pd.isna(row.p_holm):
            lines.append(f"- {row.level} vs {reference}: every paired difference is zero; no test.")
            continue
        better = "lower" if row.mean_loss < row.mean_loss_reference else "higher"
        verdict = "a difference unlikely to be chance" if row.p_holm < ALPHA else \
            "no difference distinguishable from chance"
        lines.append(
            f"- **{row.level}** vs {reference}: mean test loss {row.mean_loss:.4f} vs "
            f"{row.mean_loss_reference:.4f} ({better}); median paired difference {row.median_diff:.3g} "
            f"[95 % CI {row.median_diff_ci_low:.3g}, {row.median_diff_ci_high:.3g}], rank-biserial "
            f"r = {row.rank_biserial:.2f}; Holm-adjusted p = {row.p_holm:.2g}: {verdict} at "
            f"α = {ALPHA}." + (f" *Caution: {row.warning}.*" if row.warning else ""))
    return "\n".join(lines)


def markdown(analysis: Analysis, notes: dict[str, str]) -> str:
    study = analysis.study
    figures = [("qq.png", "Q-Q plots of the paired per-sample differences"),
               ("loss_curves.png", "Loss curves per arm (mean and range over seeds)"),
               ("losses.png", "Per-sample test loss per arm"),
               ("optuna_history.png", "Optuna optimisation history"),
               ("optuna_importances.png", "Optuna parameter importances"),
               ("attention.png", "Attention of the best attentional network")]
    parts = [
        f"# {study.name}", "", f"**Question.** {study.question or '(none given)'}", "",
        f"Compared factor `{analysis.factor}`; reference level `{analysis.selected[0].level}`. "
        f"Data fingerprint `{analysis.data_fingerprint}`. Each arm is the best configuration of its "
        "level by mean best validation loss; per-sample test losses are averaged over its seeds and "
        "paired by `sample_idx`.", "",
        "## Reading", "", reading(analysis) if analysis.split is None else
        f"Tables split by `{analysis.split}`; see the rows below.", "",
        "## Arms", "", _table(analysis.arms.drop(columns="networks")), "",
        "## Comparisons", "",
        "Wilcoxon signed-rank on d = arm − reference (zero differences dropped); `p_arm_lower` is "
        "the one-sided test that the arm's losses are lower; `p_holm` adjusts `p_two_sided` over "
        "every row; `rank_biserial` < 0 favours the arm; `p_seeds` is Welch's t-test on per-seed "
        "test losses.", "",
        _table(analysis.comparisons.drop(columns="warning")), "",
    ]
    warnings_ = analysis.comparisons[analysis.comparisons["warning"] != ""]
    if len(warnings_):
        where = (lambda r: f" ({analysis.split}={r[analysis.split]})") if analysis.split else (lambda r: "")
        parts += ["### Warnings", ""]
        parts += [f"- {r['level']}{where(r)}: {r['warning']}" for _, r in warnings_.iterrows()] + [""]
    parts += ["## Figures", ""]
    for name, title in figures:
        shown = f"*Not drawn: {notes[name]}.*" if name in notes else f"![{title}]({name})"
        parts += [f"### {title}", "", shown, ""]
    parts += ["Tables as CSV: `arms.csv`, `comparisons.csv`."]
    return "\n".join(parts) + "\n"

"""The figures of an analysis, each a PNG a person can read on its own: ``FIGURES`` lists them
with their titles and the function that draws each (which returns why it could not draw, or "").

- ``networks.png``: every network's mean test loss by arm, with the arm's mean and its 95 %
  interval: the observations the primary (seed-level) test compares;
- ``qq.png``: normal Q-Q plot of each comparison's paired per-sample differences, with
  D'Agostino's K² normality test (why the image-level comparison is a signed-rank test);
- ``loss_curves.png``: train and validation loss per epoch of each arm, mean and range over seeds;
- ``losses.png``: the distribution of seed-averaged per-sample test losses per arm;
- ``optuna_history.png`` and ``optuna_importances.png``: from ``optuna.db`` (importances over
  every stored trial, the compared level included as a parameter);
- ``attention.png``: for the best attentional network, a few test images, the share each window
  claims after every iteration and the top-down prediction, drawn from its saved weights.

Used on a finished study (``study.report.write`` draws them all)::

    from study.analysis import analyze
    network_losses(analyze("results/smoke"), Path("results/smoke"), Path("networks.png"))
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed on a cluster node
import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
import torch
from matplotlib.ticker import MaxNLocator
from scipy import stats

from study import config, resolution
from study.analysis import Analysis
from study.arms import of_networks
from study.data import build
from study.models import AttConv, build_network
from study.results import TRAINED, weights_path
from study.stats import ALPHA
from study.storage import may_hold_trials, optuna_storage, study_name, study_names
from study.train import as_images, as_inputs
from study.words import counted

N_ATTENTION_IMAGES = 4
LOG_SPAN = 100  # a loss histogram goes to a log axis when its largest loss is this many times its smallest
MIN_TRIALS = 5  # the fewest completed Optuna trials whose history or importances mean anything
COMPLETE = optuna.trial.TrialState.COMPLETE


def _save(fig: plt.Figure, path: Path) -> None:
    if not fig.get_layout_engine():
        fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def network_losses(analysis: Analysis, study_dir: Path, path: Path) -> str:
    """Every network's mean test loss by arm, with the arm's mean and its 95 % t-interval."""
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(analysis.selected), 4))
    for x, arm in enumerate(analysis.selected):
        losses = analysis.networks.loc[analysis.networks["level"] == arm.level, "test_loss"].to_numpy()
        jitter = np.linspace(-0.12, 0.12, len(losses)) if len(losses) > 1 else np.zeros(1)
        ax.plot(x + jitter, losses, "o", ms=5, alpha=0.7)
        if len(losses) > 1:
            half = stats.t.ppf(1 - ALPHA / 2, len(losses) - 1) * losses.std(ddof=1) / np.sqrt(len(losses))
            ax.errorbar(x + 0.3, losses.mean(), yerr=half, fmt="s", color="black", capsize=4)
    ax.set_xticks(range(len(analysis.selected)),
                  [f"{arm.level}\n{len(arm.networks)} {arm.stage}" for arm in analysis.selected])
    ax.set(xlabel=f"{analysis.factor} (networks, stage)", ylabel="network's mean test loss (BCE)",
           title="one point per trained network\nblack: the arm's mean and 95 % CI")
    _save(fig, path)
    return ""


def qq(analysis: Analysis, study_dir: Path, path: Path) -> str:
    """Normal Q-Q plot of every comparison's paired per-sample differences."""
    paired = analysis.comparisons["image_n"].notna()
    levels = analysis.comparisons.loc[paired, "level"].tolist()
    if not levels:
        return "no level saw the reference's images, so there are no paired differences"
    fig, axes = plt.subplots(1, len(levels), figsize=(4.2 * len(levels), 4), squeeze=False)
    for ax, level in zip(axes[0], levels, strict=True):
        d = analysis.differences(level).to_numpy()
        stats.probplot(d, dist="norm", plot=ax)
        test = f"K² p={stats.normaltest(d).pvalue:.2g}" if len(d) >= 20 else "too few for K²"
        ax.set_title(f"{level} − {analysis.selected[0].level}\n{test}", fontsize=10)
        ax.set_ylabel("paired loss difference")
    _save(fig, path)
    return ""


def loss_curves(analysis: Analysis, study_dir: Path, path: Path) -> str:
    """Train and validation loss per epoch for each arm: the mean over seeds and their range."""
    epochs = pd.read_parquet(study_dir / "epochs.parquet")
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
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 0.5 on short runs
    axes[1].legend(title=analysis.factor, fontsize=8)
    _save(fig, path)
    return ""


def loss_distributions(analysis: Analysis, study_dir: Path, path: Path) -> str:
    """Histograms of the seed-averaged per-sample test loss of each arm: linear bins, unless the
    losses span more than ``LOG_SPAN`` (a trained network's many near-zero losses), then
    log-spaced bins on a log axis."""
    losses = {arm.level: analysis.averaged[arm.level]["loss"].to_numpy() for arm in analysis.selected}
    low = max(min(v.min() for v in losses.values()), 1e-6)
    high = max(v.max() for v in losses.values()) * 1.01
    log = high / low > LOG_SPAN
    bins = np.geomspace(low, high, 50) if log else np.linspace(low, high, 50)
    fig, ax = plt.subplots(figsize=(7, 4))
    for level, values in losses.items():
        ax.hist(np.clip(values, low, None), bins=bins, histtype="step", linewidth=1.5,
                label=f"{level} (mean {values.mean():.4f})")
    ax.set(xscale="log" if log else "linear", xlabel="per-sample test loss (mean BCE over 10 classes)",
           ylabel="test images")
    ax.legend(title=analysis.factor, fontsize=8)
    _save(fig, path)
    return ""


def _optuna_studies(study: config.Study, study_dir: Path) -> list[optuna.Study]:
    """This study's Optuna studies (one, or one per compared level) in its storage."""
    if not may_hold_trials(study, study_dir):
        return []
    storage = optuna_storage(study, study_dir)
    names = set(optuna.get_all_study_names(storage)) & set(study_names(study))
    return [optuna.load_study(study_name=name, storage=storage) for name in sorted(names)]


def optuna_history(analysis: Analysis, study_dir: Path, path: Path) -> str:
    """The value of every Optuna trial in order, where a search had something to learn: a
    grid's order is fixed, and a history of a few points shows nothing."""
    if analysis.study.search.sampler == "grid":
        return "a grid study tries every configuration in a fixed order: there is no search history"
    studies = [s for s in _optuna_studies(analysis.study, study_dir) if s.get_trials(states=[COMPLETE])]
    completed = sum(len(s.get_trials(states=[COMPLETE])) for s in studies)
    if completed < MIN_TRIALS:
        return f"{counted(completed, 'completed Optuna trial')}; a history needs at least {MIN_TRIALS}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = optuna.visualization.matplotlib.plot_optimization_history(
            studies if len(studies) > 1 else studies[0], target_name="mean best validation loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trials are counted, not measured
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
    level_of = {study_name(analysis.study, level): level for level in levels}
    for stored in _optuna_studies(analysis.study, study_dir):
        for trial in stored.get_trials(states=[COMPLETE]):
            params, dists = dict(trial.params), dict(trial.distributions)
            if stored.study_name in level_of:
                params[key] = level_of[stored.study_name]
                dists[key] = optuna.distributions.CategoricalDistribution(levels)
            merged.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=trial.value))
    if len(merged.trials) < MIN_TRIALS:
        return (f"{counted(len(merged.trials), 'completed Optuna trial')}; importances need at least "
                f"{MIN_TRIALS}")
    varied = sorted({name for name in merged.trials[0].params
                     if len({repr(t.params[name]) for t in merged.trials}) > 1})
    if len(varied) < 2:
        # fANOVA splits the variance among the parameters that varied: with one, it is all that
        # one's by construction, and a parameter that never varied would get a share it cannot have.
        return (f"only {', '.join(varied) or 'no parameter'} varied across the completed trials; "
                "importances compare at least two varied parameters")
    merged = _only(merged, varied)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = optuna.visualization.matplotlib.plot_param_importances(merged)
    ax.figure.set_size_inches(8, 3 + 0.3 * len(merged.trials[0].params))
    _save(ax.figure, path)
    return ""


def _only(study: optuna.Study, names: list[str]) -> optuna.Study:
    """A copy of ``study`` whose trials keep only the parameters ``names``."""
    kept = optuna.create_study()
    for trial in study.trials:
        kept.add_trial(optuna.trial.create_trial(
            params={n: trial.params[n] for n in names},
            distributions={n: trial.distributions[n] for n in names}, value=trial.value))
    return kept


def attention_maps(analysis: Analysis, study_dir: Path, path: Path) -> str:
    """The best attentional network's first AttConv on a few test images."""
    study, trials = analysis.study, pd.read_parquet(study_dir / "trials.parquet")
    trials = trials[trials["status"].isin(TRAINED)].sort_values("best_val_loss")
    for _, row in trials.iterrows():
        trial_study = resolution.resolve(study, {key: row[key] for key in study.space})
        weights = weights_path(study_dir, row["trial_id"], row["seed"])
        if trial_study.model.attention.layers and weights.exists():
            break
    else:
        return "no completed network with an AttConv layer and saved weights"
    network = f"{row['trial_id']} seed {row['seed']}"
    net = build_network(trial_study.model, trial_study.data.canvas, trial_study.data.channels())
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)  # runs no pickled code
    except pickle.UnpicklingError:
        return (f"{weights} holds more than tensors, which study never writes: not loaded, since "
                "loading it could run code; the file was replaced after the run")
    # Weights saved before AttConv dropped its inert top-down bias still carry it: nothing reads it.
    net.load_state_dict({name: value for name, value in state.items() if not name.endswith(".bias_td")})
    net.eval()
    layer = next(m for m in net.modules() if isinstance(m, AttConv))
    if layer.iterations < 2:
        return f"{network}'s AttConv runs 1 iteration: its attention never changes"
    test = build(trial_study.data)["test"]
    images = test.images[:N_ATTENTION_IMAGES]
    seen = {}
    hook = layer.register_forward_hook(lambda module, args, out: seen.update(x=args[0]))
    with torch.no_grad():
        logits = net(as_inputs(as_images(images)))
        hook.remove()
        steps = list(layer.steps(seen["x"]))
    # What each window claims in iterations 2..T, against the even shares of iteration 1: border
    # windows cover pixels that fewer windows share, so raw claims would only show the border.
    start = steps[0][1].sum((1, 2))
    gains = [torch.log2(a.sum((1, 2)) / start) for _, a, _ in steps[1:]]
    # The prediction where all k² windows overlap: at the edges a pixel has fewer windows to
    # average, and their extremes would set the colour scale.
    edge = layer.kernel_size - 1
    prediction = layer.prediction(steps[-1][1], steps[-2][2], *seen["x"].shape[-2:]).mean(1)
    prediction = prediction[:, edge:-edge, edge:-edge]
    digits = test.digit_strings()[:N_ATTENTION_IMAGES]
    said = ["".join(str(d) for d in np.flatnonzero(row > 0)) or "none" for row in logits.numpy()]

    columns = 2 + len(gains)
    fig, axes = plt.subplots(len(images), columns, figsize=(2.4 * columns + 1.2, 2.3 * len(images)),
                             squeeze=False, layout="constrained")
    for b in range(len(images)):
        axes[b, 0].imshow(images[b] if images.ndim == 3 else images[b].transpose(1, 2, 0), cmap="gray")
        axes[b, 0].set_title(f"true {digits[b]}, predicted {said[b]}", fontsize=8)
        # One scale per image, symmetric about no change: rows differ by orders of magnitude.
        limit = max(float(g[b].abs().max()) for g in gains) or 1.0
        for t, gain in enumerate(gains):
            shown = axes[b, 1 + t].imshow(gain[b], cmap="coolwarm", vmin=-limit, vmax=limit)
            if b == 0:
                axes[b, 1 + t].set_title(f"shares in iteration {t + 2}", fontsize=9)
        fig.colorbar(shown, ax=axes[b, 1:-1], shrink=0.9, label="log2 of share / even share")
        top_down = axes[b, -1].imshow(prediction[b], cmap="gray")
        fig.colorbar(top_down, ax=axes[b, -1], shrink=0.9)
    axes[0, -1].set_title(f"top-down prediction\n(inner {prediction.shape[-1]}² pixels)", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    position = min(trial_study.model.attention.layers) + 1  # conv1 is position 0
    fig.suptitle(f"{network}: AttConv at conv{position}, {layer.iterations} iterations (iteration 1 "
                 "shares every pixel evenly among the windows covering it)", fontsize=10)
    _save(fig, path)
    return ""


FIGURES = [  # file, title, drawing function (returns why it could not draw, or "")
    ("networks.png", "Test loss of every network by arm (the seed-level observations)", network_losses),
    ("loss_curves.png", "Loss curves per arm (mean and range over seeds)", loss_curves),
    ("qq.png", "Q-Q plots of the paired per-sample differences (image level)", qq),
    ("losses.png", "Per-sample test loss per arm", loss_distributions),
    ("optuna_history.png", "Optuna optimisation history", optuna_history),
    ("optuna_importances.png", "Optuna parameter importances", optuna_importances),
    ("attention.png", "Attention of the best attentional network", attention_maps),
]

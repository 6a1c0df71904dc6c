"""Figures and the written report of an analysis: ``RESULTS_DIR/report/``.

``write`` produces ``report.md`` (the question, a plain reading that leads with the seed-level
verdict, the tables, the figures), the tables as CSV, and the PNGs of ``FIGURES``:

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

The directory is built under a temporary name and swapped in whole. Used on a finished study::

    write(analysis.analyze("results/smoke"), "results/smoke")
"""

from __future__ import annotations

import pickle
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display needed on a cluster node
import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
import torch
from matplotlib.ticker import MaxNLocator
from scipy import stats

from study import __version__, config
from study.analysis import IMAGE_LEVEL, Analysis, of_networks
from study.data import build
from study.files import atomic_write
from study.models import AttConv, build_network
from study.results import TRAINED, weights_path
from study.sequential import DESIGN_POWER_KEYS, seeds_in_words
from study.stats import ALPHA, IMAGE_KEYS, MAX_SEEDS, POWER_KEYS
from study.storage import may_hold_trials, optuna_storage, study_name, study_names
from study.train import as_images, as_inputs
from study.words import counted, duration

N_ATTENTION_IMAGES = 4
LOG_SPAN = 100  # a loss histogram goes to a log axis when its largest loss is this many times its smallest
MIN_TRIALS = 5  # the fewest completed Optuna trials whose history or importances mean anything
COMPLETE = optuna.trial.TrialState.COMPLETE


def write(analysis: Analysis, study_dir: str | Path) -> Path:
    """Write the report of ``analysis`` into ``study_dir/report`` and return that directory."""
    study_dir = Path(study_dir)

    def fill(folder: Path) -> None:
        folder.mkdir()
        notes = {}
        for name, _, draw in FIGURES:
            reason = draw(analysis, study_dir, folder / name)
            if reason:
                notes[name] = reason
        analysis.arms.to_csv(folder / "arms.csv", index=False)
        analysis.comparisons.to_csv(folder / "comparisons.csv", index=False)
        if analysis.subgroups is not None:
            analysis.subgroups.to_csv(folder / "subgroups.csv", index=False)
        (folder / "report.md").write_text(markdown(analysis, notes, run_record(analysis, study_dir)))

    atomic_write(study_dir / "report", fill)
    return study_dir / "report"


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
        trial_study = config.resolve(study, {key: row[key] for key in study.space})
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


def _table(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, floatfmt=".4g")


VERDICT_COLUMNS = ["level", "reference", "seeds", "seeds_reference", "mean_loss", "mean_loss_reference",
                   "diff", "diff_ci_low", "diff_ci_high", "p", "p_holm", "p_equivalent_holm", "verdict"]
POWER_COLUMNS = ["level", *POWER_KEYS]
SECONDARY_COLUMNS = ["level", *[f"{prefix}{k}" for prefix in ("acc_", "f1_")
                                for k in ("diff", "diff_ci_low", "diff_ci_high", "p_holm", "verdict")]]
IMAGE_COLUMNS = ["level", "reference", *IMAGE_KEYS]
MEANING = {
    "better": "lower loss than the reference: the test across networks rejects equal means at "
              "α = 0.05 after Holm",
    "worse": "higher loss than the reference: the test across networks rejects equal means at "
             "α = 0.05 after Holm",
    "equivalent": "the tests support a difference within ±{margin:g}, the study's margin (both "
                  "one-sided tests reject at α = 0.05 after Holm)",
    "inconclusive": "neither a difference nor equivalence within ±{margin:g} is shown",
    "continue": "undecided so far: the sequential design's next round has not run",
}


def reading(analysis: Analysis) -> list[str]:
    """Per compared level, the verdict in words: the seed-level result first (what the verdict
    rests on), its power at the margin, the secondary measures, then the image-level test
    labelled for what it is."""
    margin, family = analysis.study.analysis.margin, analysis.family
    label, test = ("repeated 95 % CI", "repeated p") if analysis.decisions else ("95 % CI", "Welch p")
    lines = []
    for row in analysis.comparisons.itertuples():
        head = (f"{row.level} vs {row.reference}: mean test loss {row.mean_loss:.4f} vs "
                f"{row.mean_loss_reference:.4f} over {row.seeds} vs {row.seeds_reference} networks")
        if row.verdict == "no test":
            lines.append(f"{head}: no test (the seed-level tests need 2 networks per arm and some "
                         "spread).")
        else:
            meaning = MEANING[row.verdict].format(margin=margin)
            if row.verdict in ("better", "worse") and row.p_equivalent_holm < ALPHA:
                meaning += f"; the equivalence tests also support a difference within ±{margin:g}"
            lines.append(
                f"{head}; difference {row.diff:+.4f} [{label} {row.diff_ci_low:+.4f}, "
                f"{row.diff_ci_high:+.4f}], {test} = {row.p:.2g} (Holm over {family}: {row.p_holm:.2g}); "
                f"equivalence within ±{margin:g}: p = {row.p_equivalent_holm:.2g} (Holm): "
                f"{row.verdict.upper()}: {meaning}.")
            lines.append(f"  Power: {_power(analysis, row)}.")
        secondary = []
        for name, prefix in (("exact-set accuracy", "acc_"), ("digit F1", "f1_")):
            diff, low, high, verdict = (getattr(row, prefix + k) for k in
                                        ("diff", "diff_ci_low", "diff_ci_high", "verdict"))
            if not pd.isna(diff):
                interval = "" if pd.isna(low) else f" [{label} {low:+.4f}, {high:+.4f}]"
                secondary.append(f"{name} {diff:+.4f}{interval} ({verdict})")
        if secondary:
            caveat = (" Each is tested at the look where the loss stopped (or the latest, while it "
                      "goes on), with its own alpha spending over the looks: repeated CIs and p-values, "
                      "valid whatever the look." if analysis.decisions else "")
            lines.append(f"  Secondary measures, higher is better: {'; '.join(secondary)}, margin "
                         f"±{analysis.study.analysis.accuracy_margin:g}.{caveat}")
        if not pd.isna(row.image_p):
            lines.append(
                f"  {IMAGE_LEVEL.capitalize()} (the original study's test): Hodges–Lehmann shift "
                f"{row.image_hl_shift:+.4g} (its interval over test images {row.image_hl_ci_low:+.4g} to "
                f"{row.image_hl_ci_high:+.4g} takes the images as the sample and the networks as fixed: "
                "no confidence interval for retrained networks), "
                f"Wilcoxon W = {row.image_wilcoxon_w:.0f}, p = {row.image_p:.2g}, "
                f"r = {row.image_rank_biserial:.2f}.")
    return lines


def _power(analysis: Analysis, row: Any) -> str:
    """The power line of one comparison: each number with the 95 % interval that the
    uncertainty of seed SDs measured on a few networks gives it."""
    margin, family = analysis.study.analysis.margin, analysis.family

    def networks(value: float) -> str:
        return f"{value:.0f}" if not pd.isna(value) else f"more than {MAX_SEEDS:,}"

    spread = (f"seed SDs {row.sd:.4f} vs {row.sd_reference:.4f} (over {row.seeds} vs {row.seeds_reference} "
              "networks; intervals: 95 %, from how uncertain SDs measured on so few networks are)")
    eighty = (f"{networks(row.seeds_for_margin)} networks per arm (interval "
              f"{networks(row.seeds_for_margin_low)}–{networks(row.seeds_for_margin_high)}) would give 80 %")
    if analysis.decisions:
        return (f"{spread}; this design (up to {analysis.study.design().max} networks per arm) would find a "
                f"true difference of ±{margin:g} at Holm's first step (α/{family}) with probability "
                f"{row.design_power_at_margin:.2f} (interval {row.design_power_at_margin_low:.2f}–"
                f"{row.design_power_at_margin_high:.2f}; normal theory, a little above what Welch's test "
                f"reaches at a few networks per arm), as would a fixed design of "
                f"{row.fixed_seeds_same_power:.1f} networks per arm; in a fixed design, {eighty}")
    return (f"{spread}; the Welch test at Holm's first step (α/{family}) would find a true difference of "
            f"±{margin:g} with probability {row.power_at_margin:.2f} (interval {row.power_at_margin_low:.2f}–"
            f"{row.power_at_margin_high:.2f}), and {eighty}")


def sequential_section(analysis: Analysis) -> list[str]:
    """The sequential design, where the study has one: how it decides, where each level stopped,
    what the reported numbers are, and the networks it spent against a fixed design."""
    design = analysis.study.design()
    if not analysis.decisions or design is None:
        return []
    study, rows = analysis.study, analysis.comparisons
    key = "search.confirm_seeds" if study.compared_stage() == "confirm" else "search.seeds"
    spent = sum(len(arm.networks) for arm in analysis.selected)
    fixed = np.ceil(rows["fixed_seeds_same_power"].to_numpy(dtype=float))
    fixed_all = fixed.sum() + fixed.max() if len(fixed) and not np.isnan(fixed).any() else np.nan
    looks = design.looks()
    undecided = (rows["verdict"] == "continue").any()
    table = rows.reindex(columns=["level", "verdict", "look", "seeds", "seeds_reference", "diff",
                                  "diff_ci_low", "diff_ci_high", "p", "p_holm", "p_equivalent_holm",
                                  *DESIGN_POWER_KEYS])
    return [
        "## Sequential design", "",
        f"`{key}: {{start: {design.start}, step: {design.step}, max: {design.max}}}`: {design.start} "
        f"networks per arm, then {design.step} more per round for every level still undecided (and "
        f"the reference while any is), looks at {', '.join(map(str, looks))} networks per arm. "
        f"Boundaries by alpha spending (`{design.spending}`, see `study.sequential`) over the information "
        "fraction, for the Welch test of a difference and for each one-sided test of equivalence "
        f"within ±{study.analysis.margin:g}, so that over all looks each error rate stays ≤ α = {ALPHA}; "
        "Holm over the levels at every look, on repeated p-values; a level's verdict is final once "
        "made (`study.sequential` explains each step).", "",
        "What is reported: `look` is the look at which the level stopped (or the last that ran), "
        "`seeds`/`seeds_reference` the networks compared there; `diff` the difference of their means "
        "(after an early stop this overstates the difference on average: it is the estimate at a "
        "look chosen because the difference looked large); `diff_ci_*` the repeated 95 % confidence "
        "interval, which covers the true difference with probability ≥ 95 % whatever the look the "
        "design stopped at; `p` and `p_equivalent` the repeated p-values (the smallest level whose "
        "boundary the test crossed at some look), `*_holm` adjusted over the family. "
        "`design_power_at_margin`: this design's power against a true difference of the margin at "
        "Holm's first step, at the median of the true seed SDs given the observed ones, with its 95 % "
        "interval (`_low`, `_high`); `fixed_seeds_same_power`: the networks per arm a fixed design "
        "needs for the median's power (normal theory). Secondary measures are tested at the look "
        "where the loss stopped, each with its own alpha spending.", "",
        _table(table), "",
        f"Networks spent{' so far' if undecided else ''}: {spent} compared networks in all ("
        + ", ".join(f"{arm.level}: {len(arm.networks)}" for arm in analysis.selected) + "), "
        + ("of at most " f"{len(analysis.selected) * design.max}; the comparison with a fixed design waits "
           "until the design has finished." if undecided else
           f"against {fixed_all:.0f} for a fixed design with the same power at the margin "
           f"({', '.join(f'{n:.0f}' for n in fixed)} per compared level, the reference at the most "
           f"of these; an estimate, from the median of the seed SDs) and "
           f"{len(analysis.selected) * design.max} at the design's maximum."
           if not np.isnan(fixed_all) else f"against {len(analysis.selected) * design.max} at the "
           "design's maximum (no fixed design to compare: the seed SDs are unknown)."), "",
    ]


def _selection(analysis: Analysis) -> str:
    stages = {arm.stage for arm in analysis.selected}
    if stages == {"confirm"}:
        return ("Each arm's configuration was selected by validation loss in the tuning stage and "
                "retrained on fresh seeds; only those confirmation networks are compared.")
    if analysis.study.confirms():
        return ("Each arm is its level's best configuration by validation loss, **not confirmed** on "
                "fresh seeds.")
    return "Each arm is every network trained at its level."


def run_record(analysis: Analysis, study_dir: Path) -> list[tuple[str, str]]:
    """What was run, as a reader of the report needs it to judge and repeat the result: the
    settings that matter, the devices, the compute, when, and with which versions."""
    study, search = analysis.study, analysis.study.search
    data, train = study.data, study.train
    networks = pd.read_parquet(study_dir / "trials.parquet")
    trials = networks.drop_duplicates("trial_id")
    tuned = [key for key in study.space if key != analysis.factor]
    devices = sorted(trials["device"].dropna().unique()) if "device" in trials else []
    trained = networks[networks["status"].isin(TRAINED)]
    nodes = trained["node"].dropna().value_counts().sort_index() if "node" in trained else pd.Series()
    compute = trials["wall_s"].dropna().sum() if "wall_s" in trials else 0.0
    written = datetime.fromtimestamp((study_dir / "trials.parquet").stat().st_mtime)
    seeds = seeds_in_words(search.seeds, per="configuration") + (
        "; each arm's selected configuration retrained on fresh seeds: "
        f"{seeds_in_words(search.confirm_seeds)}"
        if study.confirms() else "")
    return [
        ("data", f"{data.source} digits, {data.n_images:,} images split {data.split} (train, val, test), "
                 f"{data.canvas}-pixel canvas, {data.digits} digits per image, seed {data.seed}"),
        ("training", f"{counted(train.epochs, 'epoch')} (best validation epoch kept), batch "
                     f"{train.batch_size}, {train.optimizer} at lr {train.lr:.4g}, compile {train.compile}"),
        ("networks", seeds),
        ("search", f"{search.sampler}, {counted(study.n_configurations(), 'configuration')}; tuned: "
                   + (", ".join(tuned) if tuned else "nothing besides the compared factor")),
        ("margins", f"test loss ±{study.analysis.margin:g}; accuracy and digit F1 ±"
                    f"{study.analysis.accuracy_margin:g}"),
        ("devices", ", ".join(devices) or "not recorded"),
        ("nodes", "; ".join(f"{node}: {counted(n, 'network')}" for node, n in nodes.items())
                  or "not recorded"),
        ("compute", f"{duration(compute)} of trial time in all (trials that ran at once overlap)"),
        ("results written", written.isoformat(sep=" ", timespec="minutes")),
        ("analysed", f"{datetime.now().isoformat(sep=' ', timespec='minutes')} with study {__version__}, "
                     f"torch {torch.__version__}, optuna {optuna.__version__}"),
    ]


def markdown(analysis: Analysis, notes: dict[str, str], run: list[tuple[str, str]]) -> str:
    study = analysis.study
    parts = [
        f"# {study.name}", "", f"**Question.** {study.question or '(none given)'}", "",
        f"Compared factor `{analysis.factor}`; reference level `{analysis.selected[0].level}`. "
        f"{_selection(analysis)}", "",
        f"**Data.** {analysis.data_source}; fingerprint `{analysis.data_fingerprint}`.", "",
        *[f"> **Note.** {note}." for note in analysis.notes], "",
        "## Run", "", "| | |", "|---|---|", *[f"| {what} | {value} |" for what, value in run], "",
        "## Reading", "",
        "The unit is the trained network: each network's mean test loss is one observation, and the "
        "verdict is Welch's t-test on those, Holm-adjusted over the compared levels (one family), "
        "with an equivalence test for the study's margin beside it. "
        "The image-level Wilcoxon test is conditional on these trained networks: it treats test "
        "images as replications, so it is reported for comparison with the original study, not as "
        "the verdict.", "",
        *[f"- {line.strip()}" if not line.startswith("  ") else f"  {line.strip()}"
          for line in reading(analysis)], "",
        "## Arms", "", _table(analysis.arms.drop(columns="networks")), "",
        "## Seed level (primary)", "",
        "`diff` = arm − reference in mean test loss over networks, with Welch's 95 % CI and p; "
        f"`p_holm`, Holm's adjustment over the family of {analysis.family} compared level(s) the study "
        "file names (a level without networks counts as not rejected); `p_equivalent_holm`, two "
        f"one-sided Welch tests that |diff| < {study.analysis.margin:g} (`analysis.margin`), Holm-"
        "adjusted the same way; `verdict`: better or worse where `p_holm` < α, else equivalent where "
        "`p_equivalent_holm` < α, else inconclusive." + (
            " In this sequential design the CI and the p-values are the repeated ones at the look "
            "where each level stopped (see Sequential design)." if analysis.decisions else ""), "",
        _table(analysis.comparisons[VERDICT_COLUMNS]), "",
        "`sd*`: seed-to-seed SDs; `power_at_margin`: the Welch test's power at Holm's first step "
        "against a true difference of the margin, and `seeds_for_margin`: the networks per arm that "
        "would give 80 % there, each at the median of the true SDs given the observed ones and at "
        "both ends of their 95 % interval (`_low`, `_high`): SDs from few networks are uncertain.", "",
        _table(analysis.comparisons[POWER_COLUMNS]), "",
        "Exact-set accuracy (`acc_*`: all three digits right) and digit F1 (`f1_*`: macro F1 over the "
        "ten digits, which moves before exact sets do), tested the same way with margin "
        f"±{study.analysis.accuracy_margin:g}; higher is better. All columns: `comparisons.csv`.", "",
        _table(analysis.comparisons[SECONDARY_COLUMNS]), "",
        *sequential_section(analysis),
        f"## {IMAGE_LEVEL.capitalize()}", "",
        "Per-sample losses averaged over each arm's networks, paired by `sample_idx`; d = arm − "
        "reference. Wilcoxon signed-rank (zero differences dropped), the Hodges–Lehmann shift "
        "(the pseudo-median the test is about) with its CI by inverting the test, and the "
        "rank-biserial r (< 0 favours the arm).", "",
        _table(analysis.comparisons[IMAGE_COLUMNS]), "",
    ]
    if analysis.subgroups is not None:
        parts += [f"## Subgroups by `{analysis.split}`", "",
                  "Seed-level differences within each subgroup (descriptive), and the arm × subgroup "
                  "interaction against the first subgroup (`interaction_*`: per network, loss in the "
                  "subgroup minus loss in the first, compared between arms; unadjusted, outside "
                  "Holm's family).", "", _table(analysis.subgroups), ""]
    parts += ["## Figures", ""]
    for name, title, _ in FIGURES:
        shown = f"*Not drawn: {notes[name]}.*" if name in notes else f"![{title}]({name})"
        parts += [f"### {title}", "", shown, ""]
    tables = ["arms.csv", "comparisons.csv", *(["subgroups.csv"] if analysis.subgroups is not None else [])]
    parts += [f"Tables as CSV: {', '.join(f'`{t}`' for t in tables)}."]
    return "\n".join(parts) + "\n"


FIGURES = [  # file, title, drawing function (returns why it could not draw, or "")
    ("networks.png", "Test loss of every network by arm (the seed-level observations)", network_losses),
    ("loss_curves.png", "Loss curves per arm (mean and range over seeds)", loss_curves),
    ("qq.png", "Q-Q plots of the paired per-sample differences (image level)", qq),
    ("losses.png", "Per-sample test loss per arm", loss_distributions),
    ("optuna_history.png", "Optuna optimisation history", optuna_history),
    ("optuna_importances.png", "Optuna parameter importances", optuna_importances),
    ("attention.png", "Attention of the best attentional network", attention_maps),
]

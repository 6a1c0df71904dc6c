"""The written report of an analysis: ``RESULTS_DIR/report/``.

``write`` produces ``report.md`` (the question, a plain reading that leads with the seed-level
verdict, the tables, the figures of ``study.figures``), the tables as CSV, and the PNGs. The
directory is built under a temporary name and swapped in whole. Used on a finished study::

    write(analysis.analyze("results/smoke"), "results/smoke")
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import torch

from study import __version__
from study.analysis import IMAGE_LEVEL, Analysis
from study.errors import UserError
from study.figures import FIGURES
from study.files import atomic_write, cannot_write
from study.results import TRAINED
from study.sequential import DESIGN_POWER_KEYS, seeds_in_words
from study.stats import ALPHA, IMAGE_KEYS, POWER_KEYS, SEARCH_LIMIT
from study.words import counted, duration


def write(analysis: Analysis, study_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of ``analysis`` of the study in ``study_dir`` into ``out`` (default
    ``study_dir/report``) and return that directory. A folder that cannot be written (a full
    disk, shipped results on a read-only mount) is a ``UserError``, with nothing of the report
    left there."""
    study_dir = Path(study_dir)
    out = Path(out) if out else study_dir / "report"

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

    try:
        atomic_write(out, fill)
    except OSError as err:
        raise UserError(f"{out}: {cannot_write(out, err, '--out')}") from None
    return out


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
        return f"{value:.0f}" if not pd.isna(value) else f"more than {SEARCH_LIMIT:,}"

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
        f"Boundaries by alpha spending (`{design.spending}`, see `study.boundaries`) over the information "
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
    finished = networks["finished"].dropna() if "finished" in networks else pd.Series()
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
        ("results written", f"{finished.max():%Y-%m-%d %H:%M} UTC (the last trial's end)" if len(finished)
                            else "not recorded (before trials.parquet kept `finished`)"),
        ("analysed", f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC with study {__version__}, "
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

import json
import os
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats
from typer.testing import CliRunner

from study import analysis, decisions, figures, loading, report, resolution, sequential
from study.cli import app
from study.errors import UserError
from study.stats import IMAGE_KEYS, welch_power

from .conftest import SMOKE

FOUR_LEVELS = "space={model.attention.layers: {choice: [[], [0], [1], [0, 1]]}}"

N = 200
LAYERS = "model.attention.layers"


def fake_study(tmp_path, networks, fingerprints=None, study=None):
    """A results directory with per-sample losses drawn for each network: (level, shift, seed)
    or (level, shift, seed, stage, lr). Each network is its own trial."""
    study = study or loading.load(SMOKE)
    (tmp_path / "study.yaml").write_text(loading.dump(study))
    rng = np.random.default_rng(0)
    rows, losses, epochs = [], {}, []
    for i, (level, shift, seed, *rest) in enumerate(networks):
        stage, lr = rest if rest else ("tune", None)
        trial_id = f"t{i}"
        loss = (rng.gamma(2.0, 0.05, N) + shift).astype(np.float32)
        losses[trial_id] = loss
        rows.append({"trial_id": trial_id, "seed": seed, "stage": stage, "status": "COMPLETED", LAYERS: level,
                     **({"train.lr": lr} if lr is not None else {}), "best_val_loss": float(loss.mean()),
                     "test_loss": float(loss.mean()),
                     "data_fingerprint": (fingerprints or {}).get(trial_id, "fp")})
        epochs += [{"trial_id": trial_id, "seed": seed, "epoch": e, "train_loss": 1.0 / (e + 1) + shift,
                    "val_loss": 1.1 / (e + 1) + shift, "seconds": 1.0} for e in range(3)]
        table = pa.table({
            "trial_id": pa.DictionaryArray.from_arrays(pa.array(np.zeros(N, np.int32)), [trial_id]),
            "seed": pa.array(np.full(N, seed, np.int32)),
            "sample_idx": pa.array(np.arange(N, dtype=np.int32)),
            "loss": pa.array(loss),
            "correct": pa.array(loss < 0.1),
            "withheld": pa.array(np.arange(N) % 4 == 0),
        })
        (tmp_path / "samples" / f"trial_id={trial_id}").mkdir(parents=True)
        pq.write_table(table, tmp_path / "samples" / f"trial_id={trial_id}" / "part-0.parquet")
    pd.DataFrame(rows).to_parquet(tmp_path / "trials.parquet")
    pd.DataFrame(epochs).to_parquet(tmp_path / "epochs.parquet")
    return {k: v.astype(np.float64) for k, v in losses.items()}


THREE_SEEDS = [("[]", 0.0, s) for s in range(3)] + [("[0]", -0.01, s) for s in range(3)]


def test_the_primary_result_is_a_test_across_networks_recomputed_with_scipy(tmp_path):
    losses = fake_study(tmp_path, THREE_SEEDS)
    (row,) = analysis.analyze(tmp_path).comparisons.to_dict("records")
    ref = np.array([losses[f"t{i}"].mean() for i in (0, 1, 2)])
    arm = np.array([losses[f"t{i}"].mean() for i in (3, 4, 5)])
    assert row["level"] == "[0]" and row["reference"] == "[]"
    assert (row["seeds"], row["seeds_reference"]) == (3, 3)
    assert row["diff"] == pytest.approx(arm.mean() - ref.mean(), rel=1e-6)
    welch = stats.ttest_ind(arm, ref, equal_var=False)
    assert row["p"] == pytest.approx(welch.pvalue, rel=1e-4)
    ci = welch.confidence_interval(0.95)
    assert (row["diff_ci_low"], row["diff_ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-4)
    assert row["p_holm"] == pytest.approx(row["p"])  # one comparison: nothing to adjust
    # Equivalence within the margin: the larger of two one-sided Welch tests (scipy's, shifted).
    margin = loading.load(SMOKE).analysis.margin
    above = stats.ttest_ind(arm + margin, ref, equal_var=False, alternative="greater").pvalue
    below = stats.ttest_ind(arm - margin, ref, equal_var=False, alternative="less").pvalue
    assert row["p_equivalent"] == pytest.approx(max(above, below), rel=1e-6)
    assert row["sd"] == pytest.approx(arm.std(ddof=1), rel=1e-5)
    # Power at the median of the true SDs and at both ends of their 95 % interval: with equal
    # arms the estimated variance of the difference is V·χ²_ν/ν (ν Welch–Satterthwaite's).
    a, b = arm.var(ddof=1) / 3, ref.var(ddof=1) / 3
    nu = (a + b) ** 2 / ((a**2 + b**2) / 2)
    for key, q in (("power_at_margin_low", 0.025), ("power_at_margin", 0.5), ("power_at_margin_high", 0.975)):
        k = np.sqrt(nu / stats.chi2.ppf(q, nu))
        assert row[key] == pytest.approx(
            welch_power(margin, k * arm.std(ddof=1), k * ref.std(ddof=1), 3, 3, alpha=0.05), rel=1e-5)
    assert row["power_at_margin_low"] < row["power_at_margin"] < row["power_at_margin_high"]
    assert row["seeds_for_margin_low"] <= row["seeds_for_margin"] <= row["seeds_for_margin_high"]
    assert row["verdict"] in ("better", "worse", "equivalent", "inconclusive")
    correct = {t: (v < 0.1).mean() for t, v in losses.items()}
    acc = stats.ttest_ind([correct[f"t{i}"] for i in (3, 4, 5)], [correct[f"t{i}"] for i in (0, 1, 2)],
                          equal_var=False)
    assert row["acc_p"] == pytest.approx(acc.pvalue, rel=1e-4)


def test_the_image_level_result_is_labelled_and_recomputed_by_hand(tmp_path):
    losses = fake_study(tmp_path, THREE_SEEDS)
    result = analysis.analyze(tmp_path)
    (row,) = result.comparisons.to_dict("records")
    d = (losses["t3"] + losses["t4"] + losses["t5"] - losses["t0"] - losses["t1"] - losses["t2"]) / 3
    assert row["image_n"] == N
    assert row["image_wilcoxon_w"] == pytest.approx(stats.wilcoxon(d).statistic)
    assert row["image_p"] == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-4)
    i, j = np.triu_indices(N)
    assert row["image_hl_shift"] == pytest.approx(np.median((d[i] + d[j]) / 2), abs=1e-6)
    # The CI inverts the same test: at its ends the two-sided p-value is α.
    for end in (row["image_hl_ci_low"], row["image_hl_ci_high"]):
        assert stats.wilcoxon(d - end).pvalue == pytest.approx(0.05, abs=0.002)
    assert result.to_dict()["image_level"] == "image level, conditional on these trained networks"


def test_holms_family_is_the_seed_level_test_of_every_compared_level(tmp_path):
    levels = {"[]": 0.0, "[0]": -0.01, "[1]": 0.0, "[0, 1]": 0.01}
    fake_study(tmp_path, [(level, shift, s) for level, shift in levels.items() for s in range(3)],
               study=loading.load(SMOKE, [FOUR_LEVELS]))
    table = analysis.analyze(tmp_path).comparisons
    assert list(table["level"]) == ["[0]", "[1]", "[0, 1]"]
    p = table["p"].to_numpy()
    order = np.argsort(p)  # by hand: step-down multipliers 3, 2, 1, then monotone
    expected = np.maximum.accumulate(np.minimum(1, p[order] * np.array([3, 2, 1])))
    np.testing.assert_allclose(table["p_holm"].to_numpy()[order], expected)
    with_split = analysis.analyze(tmp_path, split="withheld")
    np.testing.assert_allclose(with_split.comparisons["p_holm"], table["p_holm"])  # subgroups are not in it


def test_holms_family_is_fixed_by_the_study_file_even_when_a_level_lost_every_network(tmp_path):
    levels = {"[]": 0.0, "[0]": -0.01, "[1]": 0.0}
    fake_study(tmp_path, [(level, shift, s) for level, shift in levels.items() for s in range(3)],
               study=loading.load(SMOKE, [FOUR_LEVELS]))
    result = analysis.analyze(tmp_path)
    table = result.comparisons  # [0, 1] planned, never trained: still in the family
    (note,) = result.notes  # and the reader is told
    assert note.startswith("[0, 1] has no network in trials.parquet") and "not rejected" in note
    p = table["p"].to_numpy()
    order = np.argsort(p)
    expected = np.maximum.accumulate(np.minimum(1, p[order] * np.array([3, 2])))
    np.testing.assert_allclose(table["p_holm"].to_numpy()[order], expected)


def test_identical_arms_with_ten_seeds_are_called_equivalent_within_the_margin(tmp_path):
    """The issue's check: 10 networks per arm, no true difference, seed SD far below the margin."""
    study = loading.load(SMOKE, ["analysis.margin=0.01"])
    fake_study(tmp_path, [(level, 0.0, s) for level in ("[]", "[0]") for s in range(10)], study=study)
    (row,) = analysis.analyze(tmp_path).comparisons.to_dict("records")
    assert row["power_at_margin"] > 0.8  # the margin lies above what the study detects
    assert row["verdict"] == "equivalent" and row["p_equivalent_holm"] < 0.05
    text = "\n".join(report.reading(analysis.analyze(tmp_path)))
    assert "EQUIVALENT: the tests support a difference within ±0.01" in text
    # Every interval says what it is: the secondary measures' CIs, the image-level interval as
    # one over images that is no confidence interval for retrained networks.
    assert re.search(r"exact-set accuracy [+-][\d.]+ \[95 % CI [+-][\d.]+, [+-][\d.]+\]", text)
    assert "no confidence interval for retrained networks" in text


def test_only_confirmation_networks_enter_when_the_study_selected(tmp_path):
    tuned = loading.load(SMOKE, ["space={model.attention.layers: {choice: [[], [0]]}, "
                                "train.lr: {choice: [0.001, 0.01]}}"])
    # Tuning: lr 0.01 wins for both levels (lower validation loss); confirmation: fresh seeds 3, 4.
    networks = [(level, shift, s, "tune", lr) for level in ("[]", "[0]")
                for lr, shift in ((0.001, 0.05), (0.01, 0.0)) for s in range(3)]
    networks += [(level, 0.0, s, "confirm", 0.01) for level in ("[]", "[0]") for s in (3, 4)]
    fake_study(tmp_path, networks, study=tuned)
    result = analysis.analyze(tmp_path)
    assert [(arm.stage, sorted(seed for _, seed in arm.networks)) for arm in result.selected] == \
        [("confirm", [3, 4]), ("confirm", [3, 4])]
    assert result.comparisons.loc[0, "seeds"] == 2 and result.notes == []
    # Without confirmation rows the selected networks enter, and the report says what that costs.
    trials = pd.read_parquet(tmp_path / "trials.parquet")
    trials[trials["stage"] == "tune"].to_parquet(tmp_path / "trials.parquet")
    result = analysis.analyze(tmp_path)
    assert [arm.stage for arm in result.selected] == ["tune", "tune"]
    assert result.comparisons.loc[0, "seeds"] == 3
    assert "not confirmed on fresh seeds" in result.notes[0]
    assert "**not confirmed**" in report.markdown(result, {}, report.run_record(result, tmp_path))


def test_subgroups_are_an_interaction_at_the_seed_level(tmp_path):
    fake_study(tmp_path, THREE_SEEDS)
    result = analysis.analyze(tmp_path, split="withheld")
    table = result.subgroups
    assert list(table["withheld"]) == [False, True]
    samples = pd.read_parquet(tmp_path / "samples", partitioning=None)
    samples["trial_id"] = samples["trial_id"].astype(str)
    per_network = samples.groupby(["trial_id", "withheld"])["loss"].mean().unstack()
    contrast = per_network[True] - per_network[False]
    expected = stats.ttest_ind(contrast[["t3", "t4", "t5"]], contrast[["t0", "t1", "t2"]], equal_var=False)
    assert table.loc[1, "interaction_p"] == pytest.approx(expected.pvalue, rel=1e-4)
    assert pd.isna(table.loc[0, "interaction_p"])  # the first subgroup is the contrast's baseline
    with pytest.raises(UserError, match="--split colour: not a per-sample column"):
        analysis.analyze(tmp_path, split="colour")
    # Each network's own outcome on an image is no subgroup of images: it would select them by it.
    with pytest.raises(UserError, match=r"--split correct: not a property of the test image but of each "
                                        r"network .*; choose one of \['withheld'\]$"):
        analysis.analyze(tmp_path, split="correct")


def test_a_continuous_split_is_its_quartiles_over_the_test_images(tmp_path):
    """``--split occlusion`` (a share per image): four subgroups of a quarter of the images each,
    in order, not one per distinct value; the interaction recomputed with scipy."""
    fake_study(tmp_path, THREE_SEEDS)
    for part in (tmp_path / "samples").glob("*/*.parquet"):
        table = pd.read_parquet(part)
        table["occlusion"] = (table["sample_idx"] / N).astype(np.float32)  # image i hides i/N
        table.to_parquet(part)
    subgroups = analysis.analyze(tmp_path, split="occlusion").subgroups
    labels = list(subgroups["occlusion"])
    lows = [float(label.split(" to ")[0]) for label in labels]
    assert len(labels) == 4 and lows == sorted(lows) and lows[0] == 0, labels
    samples = pd.read_parquet(tmp_path / "samples", partitioning=None)
    samples["trial_id"] = samples["trial_id"].astype(str)
    quarters = samples.assign(q=samples["sample_idx"] // (N // 4)).groupby(["trial_id", "q"])["loss"]
    quarter = quarters.mean().unstack()
    reference, attconv = quarter.loc[["t0", "t1", "t2"]], quarter.loc[["t3", "t4", "t5"]]
    assert subgroups["mean_loss_reference"].tolist() == pytest.approx(reference.mean().tolist(), rel=1e-6)
    expected = stats.ttest_ind(attconv[3] - attconv[0], reference[3] - reference[0], equal_var=False)
    assert subgroups.loc[3, "interaction_p"] == pytest.approx(expected.pvalue, rel=1e-4)


def test_one_network_per_arm_gives_no_verdict(tmp_path):
    fake_study(tmp_path, [("[]", 0.0, 0), ("[0]", -0.01, 0)])
    (row,) = analysis.analyze(tmp_path).comparisons.to_dict("records")
    assert np.isnan(row["p"]) and np.isnan(row["p_holm"]) and row["verdict"] == "no test"
    assert not np.isnan(row["image_p"])  # the image-level test still runs, labelled as such


def test_refuses_to_average_an_arm_over_networks_that_saw_different_data(tmp_path):
    fake_study(tmp_path, THREE_SEEDS, fingerprints={"t1": "other"})
    with pytest.raises(UserError, match=r"networks of \[\] saw different datasets"):
        analysis.analyze(tmp_path)


def test_arms_on_different_data_are_compared_by_seed_only(tmp_path):
    # The [0] arm saw other images (another data setting) than the [] arm.
    losses = fake_study(tmp_path, THREE_SEEDS + [("[0]", -0.01, s) for s in range(3, 6)],
                        fingerprints={f"t{i}": "other" for i in range(3, 9)})
    result = analysis.analyze(tmp_path)
    (row,) = result.comparisons.to_dict("records")
    means = [losses[f"t{i}"].mean() for i in range(9)]
    expected = stats.ttest_ind(means[3:], means[:3], equal_var=False)
    assert row["p"] == pytest.approx(expected.pvalue, rel=1e-9)
    assert all(np.isnan(row[k]) for k in IMAGE_KEYS)
    assert any("images cannot be paired" in note for note in result.notes)
    assert "[0]: other" in result.data_fingerprint


def test_needs_two_levels_and_a_choice_factor(tmp_path):
    """One level with networks: a study still running (or interrupted) is told the way on; a
    finished one whose other level failed is told where the reasons are."""
    fake_study(tmp_path, [("[]", 0.0, 0)])
    with pytest.raises(UserError, match="a comparison needs two; the study has 1 of its 6 networks: "
                                        "let the run go on, or continue .* and --resume"):
        analysis.analyze(tmp_path)
    (tmp_path / "failed").mkdir()
    fake_study(tmp_path / "failed", [("[]", 0.0, s) for s in range(3)] + [("[0]", 0.0, s) for s in range(3)])
    trials = pd.read_parquet(tmp_path / "failed" / "trials.parquet")
    trials.loc[trials[LAYERS] == "[0]", "status"] = "ERROR"
    trials.to_parquet(tmp_path / "failed" / "trials.parquet")
    with pytest.raises(UserError, match="a comparison needs two; no network of the other levels completed"):
        analysis.analyze(tmp_path / "failed")
    with pytest.raises(UserError, match="compare by a 'choice' key"):
        analysis.analyze(tmp_path, by="train.lr")


def test_the_report_dates_the_results_by_their_trials_not_by_the_files(tmp_path):
    """A results folder copied elsewhere (a clone of shipped results) keeps the time its trials
    finished: the report reads the latest of ``finished``, never a file's modification time;
    results written before that column say the time is not recorded."""
    fake_study(tmp_path, THREE_SEEDS)
    assert CliRunner().invoke(app, ["analyze", str(tmp_path)]).exit_code == 0
    assert "| results written | not recorded " in (tmp_path / "report" / "report.md").read_text()
    path = tmp_path / "trials.parquet"
    trials = pd.read_parquet(path)
    trials["finished"] = pd.to_datetime(["2026-12-05 09:43:20+00:00"] * 5 + ["2026-12-05 07:10:00+00:00"])
    trials.to_parquet(path)
    os.utime(path, (0, 0))  # the file's own time says 1970
    assert CliRunner().invoke(app, ["analyze", str(tmp_path)]).exit_code == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| results written | 2026-12-05 09:43 UTC (the last trial's end) |" in text
    assert re.search(r"\| analysed \| \d{4}-\d\d-\d\d \d\d:\d\d UTC with study ", text)


def test_report_json_and_csv_carry_the_same_numbers(tmp_path):
    fake_study(tmp_path, THREE_SEEDS)
    result = CliRunner().invoke(app, ["analyze", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    csv = pd.read_csv(tmp_path / "report" / "comparisons.csv")
    for column in ("diff", "diff_ci_low", "p", "p_holm", "p_equivalent_holm", "power_at_margin", "image_p",
                   "image_hl_shift"):
        assert shown["comparisons"][0][column] == pytest.approx(csv.loc[0, column]), column
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Does an AttConv layer" in text and "## Seed level (primary)" in text
    # The run is recorded: settings, compute, dates and versions.
    assert "| data | embedded digits, 3,000 images" in text and "| training | 2 epochs" in text
    assert "| analysed |" in text and "with study 0.1.0, torch" in text
    assert text.index("## Seed level (primary)") < text.index("## Image level")
    for figure in ("networks", "qq", "loss_curves", "losses"):
        assert (tmp_path / "report" / f"{figure}.png").exists()
    # No optuna.db and no weights here: those figures say why they are missing.
    assert "*Not drawn: a grid study tries every configuration in a fixed order: there is no search " \
        "history.*" in text
    assert "no completed network with an AttConv layer and saved weights" in text
    plain = CliRunner().invoke(app, ["analyze", str(tmp_path)])
    lines = plain.output.splitlines()
    verdict = next(i for i, line in enumerate(lines) if "[0] vs []" in line and "95 % CI" in line)
    image = next(i for i, line in enumerate(lines) if "Image level" in line)
    assert verdict < image and "Holm's first step" in plain.output
    report.write(analysis.analyze(tmp_path), tmp_path)  # rewriting replaces the report whole
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".report")) == []


def test_the_report_goes_where_out_says_and_a_folder_it_cannot_write_is_a_message(tmp_path):
    """Results one cannot write (shipped on a read-only mount, a full disk): ``--out`` puts the
    report elsewhere; a report folder that cannot be written is one line, exit 2, nothing left.
    (Checked by hand: a read-only mount and a full tmpfs each give that line with their reason.)"""
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    fake_study(study_dir, THREE_SEEDS)
    before = sorted(p.name for p in study_dir.iterdir())
    result = CliRunner().invoke(app, ["analyze", str(study_dir), "--out", str(tmp_path / "elsewhere")])
    assert result.exit_code == 0 and f"report: {tmp_path / 'elsewhere' / 'report.md'}" in result.output
    assert "Seed level (primary)" in (tmp_path / "elsewhere" / "report.md").read_text()
    assert sorted(p.name for p in study_dir.iterdir()) == before  # nothing written in the study
    (tmp_path / "file").write_text("not a folder")
    result = CliRunner().invoke(app, ["analyze", str(study_dir), "--out", str(tmp_path / "file" / "report")])
    assert result.exit_code == 2 and result.output == (
        f"error: {tmp_path / 'file' / 'report'}: cannot write there ({tmp_path / 'file'} is a file); "
        "give --out naming a folder you can write\n"), result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "file", "study"]


def test_failed_networks_are_left_out_and_named(tmp_path):
    fake_study(tmp_path, THREE_SEEDS + [("[0]", -0.01, 3)])
    trials = pd.read_parquet(tmp_path / "trials.parquet")
    trials["reason"] = None
    trials.loc[6, ["status", "reason"]] = ["ERROR", "diverged at epoch 2: training loss 40 is over ..."]
    trials.to_parquet(tmp_path / "trials.parquet")
    result = analysis.analyze(tmp_path)
    assert [arm.networks for arm in result.selected][1] == [("t3", 0), ("t4", 1), ("t5", 2)]
    (note,) = result.notes
    assert "[0]: 1 of 4 (diverged at epoch 2" in note and "compare 3 vs 3 networks" in note
    assert "diverged at epoch 2" in report.markdown(result, {}, [])


def test_a_reference_whose_every_network_failed_is_named_where_another_stands_in(tmp_path):
    levels = {"[]": 0.0, "[0]": -0.01, "[1]": 0.0}
    fake_study(tmp_path, [(level, shift, s) for level, shift in levels.items() for s in range(3)],
               study=loading.load(SMOKE, ["space={model.attention.layers: {choice: [[], [0], [1]]}}"]))
    trials = pd.read_parquet(tmp_path / "trials.parquet")
    trials["reason"] = None
    trials.loc[trials[LAYERS] == "[]", ["status", "reason"]] = ["ERROR", "diverged at epoch 1"]
    trials.to_parquet(tmp_path / "trials.parquet")
    result = analysis.analyze(tmp_path)
    assert result.comparisons[["level", "reference"]].values.tolist() == [["[1]", "[0]"]]
    assert any(note.startswith("no network of the reference level [] trained, so [0] stands in as the "
                               "reference") for note in result.notes)
    assert "stands in as the reference" in report.markdown(result, {}, [])


def test_a_configuration_trained_again_on_the_same_seeds_counts_each_seed_once(tmp_path):
    """A sampler that proposes a configuration twice retrains it on seeds 0..S-1 again: the same
    networks, which must not enter the test as if they were replicates."""
    losses = fake_study(tmp_path, THREE_SEEDS + [("[0]", -0.01, s) for s in range(3)])
    result = analysis.analyze(tmp_path)
    assert [arm.networks for arm in result.selected] == [[("t0", 0), ("t1", 1), ("t2", 2)],
                                                         [("t3", 0), ("t4", 1), ("t5", 2)]]
    row = result.comparisons.iloc[0]
    means = [[losses[f"t{i}"].mean() for i in trials] for trials in ((3, 4, 5), (0, 1, 2))]
    assert row["seeds"] == 3 and row["p"] == pytest.approx(stats.ttest_ind(*means, equal_var=False).pvalue)
    (note,) = result.notes
    assert "each seed counts once, and [0]: 3 repeated networks are left out" in note


@pytest.mark.slow
def test_the_attention_figure_draws_from_weights_saved_with_the_retired_top_down_bias(tmp_path):
    """Weights saved before AttConv dropped its inert b_td carry that key; the report still loads them."""
    import torch

    from study import results
    from study.train import fit

    study = loading.load(SMOKE, ["data.n_images=300", "train.epochs=1"])
    results.write_study(tmp_path, study)
    for trial_id, layers in (("plain", "[]"), ("attentional", "[0]")):
        trained = fit(resolution.resolve(study, {"model.attention.layers": layers}), seeds=[0, 1])
        results.write_trial(tmp_path, trial_id, "tune", {"model.attention.layers": layers}, trained)
    results.consolidate(tmp_path)
    for seed in (0, 1):
        path = results.weights_path(tmp_path, "attentional", seed)
        torch.save({**torch.load(path), "features.0.0.bias_td": torch.zeros(1)}, path)
    path = tmp_path / "attention.png"
    assert figures.attention_maps(analysis.analyze(tmp_path), tmp_path, path) == ""
    assert path.stat().st_size > 1000


def test_a_sequential_design_reports_where_each_level_stopped_against_the_reference_then(tmp_path):
    """[0] is clearly better and stops at look 2; [1] is like the reference and goes on to look 3,
    so the reference has 6 networks, of which [0]'s comparison takes the 4 of its look."""
    space = "space={model.attention.layers: {choice: [[], [0], [1]]}}"
    study = loading.load(SMOKE, [space, "search.seeds={start: 2, step: 2, max: 6}"])
    fake_study(tmp_path, [("[]", 0.0, s) for s in range(6)] + [("[0]", -0.05, s) for s in range(4)]
               + [("[1]", 0.0, s) for s in range(6)], study=study)
    result = analysis.analyze(tmp_path)
    rows = result.comparisons.set_index("level")
    assert rows.loc["[0]", ["verdict", "look", "seeds", "seeds_reference"]].tolist() == ["better", 2, 4, 4]
    assert rows.loc["[1]", ["look", "seeds", "seeds_reference"]].tolist() == [3, 6, 6]
    assert rows.loc["[1]", "verdict"] in ("inconclusive", "equivalent")
    trials = pd.read_parquet(tmp_path / "trials.parquet")
    assert decisions.planned_networks(study, trials) == 16  # what the run trains: nothing is missing
    assert decisions.planned_networks(study, trials[trials["seed"] < 4]) == 16  # round 3 is still to come
    assert decisions.planned_networks(study, pd.DataFrame()) == 6  # none yet: each level's first round
    # The repeated interval is wider than the plain Welch interval of the same networks.
    ours = rows.loc["[0]"]
    welch = stats.ttest_ind(*(trials.loc[(trials[LAYERS] == level) & (trials["seed"] < 4), "test_loss"]
                              for level in ("[0]", "[]")), equal_var=False).confidence_interval()
    assert ours["diff_ci_low"] < welch.low and ours["diff_ci_high"] > welch.high
    text = report.markdown(result, {}, [])
    assert "## Sequential design" in text and "Networks spent: 16" in text
    # The secondary measures are tested at the look where the loss stopped, with their own
    # spending: the same numbers decide() gives on their values there, per network from the samples.
    per_network = result.networks.set_index(["level", "seed"])["test_exact_acc"]
    accuracy = {level: per_network[level].sort_index().to_numpy() for level in ("[]", "[0]")}
    expected = sequential.decide(accuracy["[0]"][:4], accuracy["[]"][:4], study.design(),
                                 study.analysis.accuracy_margin)
    assert rows.loc["[0]", ["acc_diff", "acc_diff_ci_low", "acc_diff_ci_high", "acc_p"]].tolist() == \
        pytest.approx([expected.diff, expected.ci_low, expected.ci_high, expected.p], nan_ok=True)
    assert "with its own alpha spending" in text and "repeated 95 % CI" in text
    # A failed network is spent: its arm is one smaller at the look, and the look spends less.
    failed = trials.assign(status=np.where((trials[LAYERS] == "[1]") & (trials["seed"] == 5), "ERROR",
                                           trials["status"]))
    decided = decisions.decisions(study, failed)["[1]"]
    assert (decided.look, decided.n, decided.n_reference) == (3, 5, 6)

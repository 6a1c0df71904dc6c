import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats
from typer.testing import CliRunner

from study import analysis, config, report
from study.cli import app
from study.errors import UserError

from .conftest import SMOKE

N = 200


def fake_study(tmp_path, arms, fingerprints=None):
    """A results directory with per-sample losses drawn for each (level, shift, seed) trial."""
    study = config.load(SMOKE)
    (tmp_path / "study.yaml").write_text(config.dump(study))
    rng = np.random.default_rng(0)
    rows, losses, epochs = [], {}, []
    for i, (level, shift, seed) in enumerate(arms):
        trial_id = f"t{i}"
        loss = (rng.gamma(2.0, 0.05, N) + shift).astype(np.float32)
        losses[trial_id] = loss
        fp = (fingerprints or {}).get(trial_id, "fp")
        rows.append({"trial_id": trial_id, "status": "COMPLETED", "seed": seed,
                     "model.attention.layers": level, "best_val_loss": float(loss.mean()),
                     "test_loss": float(loss.mean()), "data_fingerprint": fp})
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


def test_every_statistic_on_seed_averaged_paired_losses_matches_scipy(tmp_path):
    losses = fake_study(tmp_path, THREE_SEEDS)
    (row,) = analysis.analyze(tmp_path).comparisons.to_dict("records")
    ref = (losses["t0"] + losses["t1"] + losses["t2"]) / 3
    arm = (losses["t3"] + losses["t4"] + losses["t5"]) / 3
    d = arm - ref
    assert row["level"] == "[0]" and row["reference"] == "[]"
    assert row["n"] == N and row["seeds"] == 3 and row["seeds_reference"] == 3
    assert row["wilcoxon_w"] == pytest.approx(stats.wilcoxon(d).statistic)
    assert row["p_two_sided"] == pytest.approx(stats.wilcoxon(d).pvalue)
    assert row["p_arm_lower"] == pytest.approx(stats.wilcoxon(d, alternative="less").pvalue)
    assert row["p_arm_higher"] == pytest.approx(stats.wilcoxon(d, alternative="greater").pvalue)
    assert row["p_holm"] == pytest.approx(row["p_two_sided"])  # one comparison: nothing to adjust
    assert row["median_diff"] == pytest.approx(np.median(d), rel=1e-5)
    assert row["median_diff_ci_low"] <= row["median_diff"] <= row["median_diff_ci_high"]
    assert row["mean_loss"] == pytest.approx(arm.mean(), rel=1e-6)
    assert row["mean_loss_reference"] == pytest.approx(ref.mean(), rel=1e-6)
    per_seed = stats.ttest_ind([losses[f"t{i}"].mean() for i in (3, 4, 5)],
                               [losses[f"t{i}"].mean() for i in (0, 1, 2)], equal_var=False)
    assert row["p_seeds"] == pytest.approx(per_seed.pvalue, rel=1e-4)


def test_rank_biserial_by_hand():
    # |d| ranks: 0.1→1, 0.2→2, 0.3→3, 0.4→4 (the zero is dropped); R+ = 1 + 4, R− = 2 + 3.
    assert analysis.rank_biserial(np.array([0.1, -0.2, -0.3, 0.4, 0.0])) == pytest.approx(0.0)
    assert analysis.rank_biserial(np.array([-0.1, -0.2, 0.3])) == pytest.approx((3 - 3) / 6)
    assert analysis.rank_biserial(np.array([-0.1, -0.2, -0.3])) == -1.0
    # Ties share the average rank: |d| = 0.1, 0.1, 0.5 → ranks 1.5, 1.5, 3; R+ = 1.5, R− = 4.5.
    assert analysis.rank_biserial(np.array([0.1, -0.1, -0.5])) == pytest.approx((1.5 - 4.5) / 6)


def test_holm_on_a_textbook_example():
    # Holm (1979)-style step-down: sorted p 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03,
    # 0.06, 0.04 → made monotone: 0.02, 0.03, 0.06, 0.06.
    adjusted = analysis.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(analysis.holm([0.5, np.nan, 0.9]), [1.0, np.nan, 1.0])  # NaN not counted


def test_bootstrap_is_reproducible_for_a_seed():
    d = np.random.default_rng(1).normal(0.1, 1.0, 500)
    assert analysis.median_ci(d, seed=3) == analysis.median_ci(d, seed=3)
    assert analysis.median_ci(d, seed=3) != analysis.median_ci(d, seed=4)
    low, high = analysis.median_ci(d, seed=3)
    assert low < np.median(d) < high and high - low < 0.5


def test_holm_adjusts_across_every_comparison(tmp_path):
    arms = [("[]", 0.0, 0), ("[0]", -0.01, 0), ("[1]", 0.0, 0), ("[0, 1]", 0.01, 0)]
    fake_study(tmp_path, arms)
    (tmp_path / "study.yaml").write_text(config.dump(config.load(
        SMOKE, ["space={model.attention.layers: {choice: [[], [0], [1], [0, 1]]}}"])))
    table = analysis.analyze(tmp_path).comparisons
    assert list(table["level"]) == ["[0]", "[1]", "[0, 1]"]
    np.testing.assert_allclose(table["p_holm"], analysis.holm(table["p_two_sided"]))


def test_a_disagreement_between_per_sample_and_per_seed_tests_is_spelled_out():
    assert "may not survive retraining" in analysis.disagreement(1e-6, 0.4, (3, 3))
    assert "look at the effect size" in analysis.disagreement(0.3, 0.01, (5, 5))
    assert analysis.disagreement(1e-6, 0.01, (3, 3)) == ""
    assert "no test across training runs" in analysis.disagreement(1e-6, np.nan, (2, 3))


def test_split_gives_the_same_statistics_within_each_subgroup(tmp_path):
    losses = fake_study(tmp_path, THREE_SEEDS)
    table = analysis.analyze(tmp_path, split="withheld").comparisons
    assert list(table["withheld"]) == [False, True]
    d = (losses["t3"] + losses["t4"] + losses["t5"] - losses["t0"] - losses["t1"] - losses["t2"]) / 3
    withheld = np.arange(N) % 4 == 0
    for row in table.itertuples():
        part = d[withheld == row.withheld]
        assert row.n == len(part)
        assert row.p_two_sided == pytest.approx(stats.wilcoxon(part).pvalue)
    with pytest.raises(UserError, match="--split colour: not a per-sample column"):
        analysis.analyze(tmp_path, split="colour")


def test_refuses_to_pair_trials_that_saw_different_data(tmp_path):
    fake_study(tmp_path, [("[]", 0.0, 0), ("[0]", 0.0, 0)], fingerprints={"t1": "other"})
    with pytest.raises(UserError, match="different datasets"):
        analysis.analyze(tmp_path)


def test_needs_two_levels_and_a_choice_factor(tmp_path):
    fake_study(tmp_path, [("[]", 0.0, 0)])
    with pytest.raises(UserError, match="a comparison needs two"):
        analysis.analyze(tmp_path)
    with pytest.raises(UserError, match="compare by a 'choice' key"):
        analysis.analyze(tmp_path, by="train.lr")


def test_report_json_and_csv_carry_the_same_numbers(tmp_path):
    fake_study(tmp_path, THREE_SEEDS)
    result = CliRunner().invoke(app, ["analyze", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    csv = pd.read_csv(tmp_path / "report" / "comparisons.csv")
    assert shown["comparisons"][0]["p_two_sided"] == pytest.approx(csv.loc[0, "p_two_sided"])
    assert shown["comparisons"][0]["rank_biserial"] == pytest.approx(csv.loc[0, "rank_biserial"])
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Does an AttConv layer" in text and "## Comparisons" in text
    for figure in ("qq", "loss_curves", "losses"):
        assert (tmp_path / "report" / f"{figure}.png").exists()
    # No optuna.db and no weights here: those figures say why they are missing.
    assert "*Not drawn: optuna.db holds no completed Optuna trial.*" in text
    assert "no completed network with an AttConv layer and saved weights" in text
    report.write(analysis.analyze(tmp_path), tmp_path)  # rewriting replaces the report whole
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".report")) == []

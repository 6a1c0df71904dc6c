import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from study import analysis, config
from study.errors import UserError

from .conftest import SMOKE

N = 200


def fake_study(tmp_path, arms, fingerprints=None):
    """A results directory with per-sample losses drawn for each (level, seed) trial."""
    study = config.load(SMOKE)
    (tmp_path / "study.yaml").write_text(config.dump(study))
    rng = np.random.default_rng(0)
    rows, losses = [], {}
    for i, (level, shift, seed) in enumerate(arms):
        trial_id = f"t{i}"
        loss = (rng.gamma(2.0, 0.05, N) + shift).astype(np.float32)
        losses[trial_id] = loss
        fp = (fingerprints or {}).get(trial_id, "fp")
        rows.append({"trial_id": trial_id, "status": "COMPLETED", "seed": seed,
                     "model.attention.layers": level, "best_val_loss": float(loss.mean()),
                     "data_fingerprint": fp})
        table = pa.table({
            "trial_id": pa.DictionaryArray.from_arrays(pa.array(np.zeros(N, np.int32)), [trial_id]),
            "seed": pa.array(np.full(N, seed, np.int32)),
            "sample_idx": pa.array(np.arange(N, dtype=np.int32)),
            "loss": pa.array(loss),
            "correct": pa.array(loss < 0.1),
        })
        (tmp_path / "samples" / f"trial_id={trial_id}").mkdir(parents=True)
        pq.write_table(table, tmp_path / "samples" / f"trial_id={trial_id}" / "part-0.parquet")
    pd.DataFrame(rows).to_parquet(tmp_path / "trials.parquet")
    pd.DataFrame(columns=["trial_id", "epoch"]).to_parquet(tmp_path / "epochs.parquet")
    return losses


def test_wilcoxon_on_seed_averaged_paired_losses_matches_scipy(tmp_path):
    losses = fake_study(tmp_path, [("[]", 0.0, 0), ("[]", 0.0, 1), ("[0]", -0.01, 0), ("[0]", -0.01, 1)])
    report = analysis.compare(tmp_path)
    (row,) = report["comparisons"]
    ref = (losses["t0"].astype(np.float64) + losses["t1"]) / 2
    arm = (losses["t2"].astype(np.float64) + losses["t3"]) / 2
    expected = stats.wilcoxon(arm, ref)
    assert row["level"] == "[0]" and row["reference"] == "[]"
    assert row["n"] == N and row["seeds"] == 2 and row["seeds_reference"] == 2
    assert row["statistic"] == pytest.approx(expected.statistic)
    assert row["p_value"] == pytest.approx(expected.pvalue)
    assert row["mean_loss"] == pytest.approx(arm.mean(), rel=1e-6)
    assert row["mean_loss_reference"] == pytest.approx(ref.mean(), rel=1e-6)


def test_refuses_to_pair_trials_that_saw_different_data(tmp_path):
    fake_study(tmp_path, [("[]", 0.0, 0), ("[0]", 0.0, 0)], fingerprints={"t1": "other"})
    with pytest.raises(UserError, match="different datasets"):
        analysis.compare(tmp_path)


def test_needs_two_levels_and_a_choice_factor(tmp_path):
    fake_study(tmp_path, [("[]", 0.0, 0)])
    with pytest.raises(UserError, match="a comparison needs two"):
        analysis.compare(tmp_path)
    with pytest.raises(UserError, match="compare by a 'choice' key"):
        analysis.compare(tmp_path, by="train.lr")

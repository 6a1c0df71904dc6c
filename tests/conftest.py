import os
from pathlib import Path

import pytest

# As study.tune does before importing Ray, for tests that import Ray before it: token auth stays on.
os.environ.setdefault("RAY_AUTH_MODE", "token")

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "searchspaces" / "smoke.yaml"


def readme_python(containing: str) -> str:
    """The README's one ```python block whose own text contains `containing`."""
    blocks = [b.split("```", 1)[0] for b in (ROOT / "README.md").read_text().split("```python\n")[1:]]
    (block,) = [b for b in blocks if containing in b]
    return block


def unloaded(output: str) -> list[str]:
    """``output``'s lines without the plan's note of other processes keeping the CPUs busy, which
    the tests running beside (two pytest workers) can set off."""
    return [line for line in output.splitlines() if not line.startswith("note: other processes kept ")]


def pytest_configure(config):
    """Under `pytest -n N` each worker's torch gets its share of the cores: torch's default, a
    thread per core in every worker, oversubscribes them, and OpenMP's threads spin waiting for
    each other (tests/test_train.py and tests/models took 1.7 times as long on 2 cores)."""
    workers = getattr(config, "workerinput", {}).get("workercount", 1)  # xdist's workers only
    if workers > 1:
        import torch

        from study.preflight import local_cpus

        torch.set_num_threads(max(1, local_cpus() // workers))


@pytest.fixture(autouse=True, scope="session")
def _data_cache(tmp_path_factory):
    """Keep generated datasets out of the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("STUDY_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


# The longest tests (a study killed and resumed, studies across two hosts or through Slurm: a
# minute or more each in one process), started first, then the other slow ones, then the quick:
# under `pytest -n 2` each worker takes the next test as it finishes one, so the quick tests fill
# in at the end and both workers end together.
LONGEST = ("test_resume_is_exact_from_any_moment", "test_an_interrupted_trial_goes_on_from_its_last_epoch",
           "test_a_study_runs_on_both_hosts_and_records_where_each_network_trained",
           "test_two_nodes_train_through_sbatch_and_a_cancelled_job_resumes_to_the_planned_networks",
           "test_a_study_runs_through_sbatch_a_cancelled_job_leaves_nothing_and_the_same_submission_resumes_it",
           "test_a_sequential_design_trains_in_rounds_through_ray_and_resumes_mid_round")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: (item.name not in LONGEST, item.get_closest_marker("slow") is None))

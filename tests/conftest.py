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


@pytest.fixture(autouse=True, scope="session")
def _data_cache(tmp_path_factory):
    """Keep generated datasets out of the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("STUDY_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


def pytest_collection_modifyitems(items):
    """The slow tests first: under ``pytest -n 2`` the long ones start early and the quick ones
    fill in at the end, so that both workers finish together."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)

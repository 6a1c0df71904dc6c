"""The architecture's rules (design.md), read from the package's imports: no import cycle,
training knows nothing of the scheduler, a model file holds no training loop, statistics import
neither Ray nor training code, data knows no network (nor networks the data), and the schema is
the ground floor; and, run, a trial's worker imports only what training needs."""

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "study"


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports at run time, at the top or inside a function (a lazy import
    is still a dependency); those only a type checker reads are left out."""
    tree = ast.parse(path.read_text())
    checking = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in checking:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # `from study.data import compose` depends on the submodule, not on the package's
            # __init__ (which Python runs for any submodule anyway); names from a module are it.
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & MODULES
            found |= submodules or {node.module}
    return found


PATHS = {p: ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
         for p in PACKAGE.rglob("*.py")}
MODULES = set(PATHS.values())
GRAPH = {module: _imports(path) for path, module in PATHS.items()}


def _internal(module: str) -> set[str]:
    return {name for name in GRAPH[module] if name in MODULES and name != module}


def _matching(prefix: str) -> list[str]:
    return sorted(m for m in MODULES if m == prefix or m.startswith(f"{prefix}."))


def test_the_package_has_no_import_cycle():
    graphlib.TopologicalSorter({m: _internal(m) for m in MODULES}).prepare()  # raises CycleError


@pytest.mark.parametrize(("modules", "forbidden"), [
    (["study.train", "study.compiled", "study.cuda_graph", *_matching("study.models")],
     ["ray", "optuna", "study.tune"]),
    (["study.stats", "study.sequential", "study.boundaries"],
     ["ray", "optuna", "torch", "study.train", "study.tune", "study.models"]),
    (_matching("study.data"), ["study.models", "study.train", "study.tune"]),
    (_matching("study.models"), ["study.data", "study.train", "study.tune"]),
    (["study.config", "study.sections", "study.layout"],
     [m for m in MODULES if m not in ("study", "study.config", "study.sections", "study.layout",
                                      "study.errors", "study.words")]),
], ids=["training", "statistics", "data", "models", "schema"])
def test_each_layer_imports_only_what_it_may(modules, forbidden):
    for module in modules:
        bad = sorted(name for name in GRAPH[module]
                     if any(name == f or name.startswith(f"{f}.") for f in forbidden))
        assert not bad, f"{module} imports {bad}"


def test_a_model_file_holds_no_training_loop():
    for module in _matching("study.models"):
        assert not any(name.startswith("torch.optim") for name in GRAPH[module]), module
        source = (PACKAGE.parent / Path(*module.split("."))).with_suffix(".py")
        if source.exists():
            assert ".backward()" not in source.read_text() and ".step()" not in source.read_text(), module


def test_a_trials_worker_imports_only_what_training_needs():
    """A Ray worker imports ``study.tune.trainable`` to start each trial: the driver's modules
    (Optuna, the statistics, the figures) and torch's compiler (dynamo, for a step that may never
    compile) would add seconds to every trial's start."""
    driver_only = ["optuna", "scipy", "statsmodels", "matplotlib", "torch._dynamo", "study.tune.runner",
                   "study.analysis", "study.stats"]
    shown = subprocess.run([sys.executable, "-c", "import sys, study.tune.trainable; "
                            f"print([m for m in {driver_only!r} if m in sys.modules])"],
                           capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "[]", shown.stdout

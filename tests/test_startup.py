"""What full collections an import sets off leave frozen, and what they do not."""

import json
import subprocess
import sys

# A module whose import makes enough tracked objects for CPython to run full collections during
# it; then a reference cycle made and dropped outside any import. Printed: the full collections
# during the import, the objects frozen after it, and whether the cycle was collected.
SCRIPT = """
import gc, json, sys, weakref
sys.path.insert(0, sys.argv[1])
if sys.argv[2] == "frozen":
    from study.startup import freeze_imports
    freeze_imports()
full = []
gc.callbacks.append(lambda phase, info: phase == "stop" and info["generation"] == 2 and full.append(1))
import heavy
during, frozen = len(full), gc.get_freeze_count()

class Node:
    pass

node = Node()
node.me = node
collected = []
watch = weakref.ref(node, lambda _: collected.append(True))
del node
gc.collect()
print(json.dumps({"during": during, "frozen": frozen, "after": gc.get_freeze_count(),
                  "collected": bool(collected)}))
"""


def _run(tmp_path, mode: str) -> dict:
    (tmp_path / "heavy.py").write_text("TABLE = [[i] for i in range(400_000)]\n")
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), mode], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout)


def test_what_survives_an_imports_full_collections_is_frozen_and_later_garbage_still_goes(tmp_path):
    plain, frozen = _run(tmp_path, "plain"), _run(tmp_path, "frozen")
    assert plain["during"] > 0 and frozen["during"] > 0  # the import set full collections off
    assert plain["frozen"] == 0 and frozen["frozen"] > 100_000  # the module's table among them
    assert frozen["after"] == frozen["frozen"]  # gc.collect() outside an import freezes nothing
    assert plain["collected"] and frozen["collected"]  # a cycle dropped later is still collected

"""The nodes of a Ray cluster as a study sees them: where a trial ran, and whether every node
sees the results folder and can write its cache.

Since Ray 2.7 a trial writes its files where it runs, so a results folder that is not on a file
system every node shares loses them; and each node builds its datasets and AttConv's kernel in a
cache of its own (``$STUDY_CACHE``, where ``study.cache`` says). ``check_nodes`` proves both
before any trial starts: the driver writes a token into the folder, and a task on every alive
node reads it back and writes once in that node's cache.

Example (in a Ray driver)::

    check_nodes(Path("/shared/results/thesis"))  # a UserError names each node that cannot
    node_address()                               # "10.0.0.7": where this process runs
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from study import cache
from study.errors import UserError

PROBE_TIMEOUT_S = 120  # a node that has not answered by then is named as not answering


def node_address() -> str:
    """The address of this process's Ray node, as the cluster knows it."""
    return ray.util.get_node_ip_address()


@ray.remote(num_cpus=0)
def _probe(path: str) -> tuple[str | None, str | None]:
    """What this node reads at ``path`` (None where nothing), and ``cache_problem()`` there."""
    try:
        read = Path(path).read_text()
    except OSError:
        read = None
    return read, cache_problem()


def cache_problem() -> str | None:
    """Why the trials of this process's node could not share one cache, or None: a
    ``STUDY_CACHE`` that is relative (each trial runs in a folder of its own, as Ray Tune runs
    them, so each would read it as another folder) or one that cannot be written."""
    given = os.environ.get("STUDY_CACHE", "")
    if given and not Path(given).expanduser().is_absolute():
        return (f"STUDY_CACHE={given} is a relative path: Ray Tune runs each trial in a folder of its "
                "own, so each would build a cache of its own there; give an absolute path")
    try:
        cache.check_writable()
    except UserError as err:
        return str(err)
    return None


def check_nodes(study_dir: Path) -> None:
    """Every alive node reads back a token the driver wrote into ``study_dir`` and writes once in
    its own cache; each node that reads something else, or nothing, or cannot write its cache, is
    named in one ``UserError`` with the folder and the fix."""
    token = secrets.token_hex(16)
    probe = study_dir / f".node-probe-{token[:8]}"
    probe.write_text(token)
    try:
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        pinned = [NodeAffinitySchedulingStrategy(node["NodeID"], soft=False) for node in nodes]
        probes = [_probe.options(scheduling_strategy=each).remote(str(probe)) for each in pinned]
        ready, _ = ray.wait(probes, num_returns=len(probes), timeout=PROBE_TIMEOUT_S)
        # A list, not a dict by address: two Ray nodes may share a machine and its address.
        answers = [(node["NodeManagerAddress"], *(ray.get(p) if p in ready else (None, None)))
                   for node, p in zip(nodes, probes, strict=True)]
    finally:
        probe.unlink(missing_ok=True)
    blind = [address for address, read, _ in answers if read != token]
    problems = []
    if blind:
        problems.append(f"--results {study_dir.parent}: Ray node(s) {', '.join(blind)} do not see this "
                        f"folder (a file written to {study_dir} is not there, or they did not answer "
                        f"within {PROBE_TIMEOUT_S} s). Trials write their files "
                        "on the node they run on: put the folder on a file system every node mounts "
                        "(NFS, say), and pass it with --results")
    problems += [f"Ray node {address} (as its `ray start` set the environment): {why}"
                 for address, _, why in answers if why]
    if problems:
        raise UserError("\n".join(problems))

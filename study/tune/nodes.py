"""The nodes of a Ray cluster as a study sees them: where a trial ran, and whether every node
sees the results folder.

Since Ray 2.7 a trial writes its files where it runs, so a results folder that is not on a file
system every node shares loses them. ``check_results_folder`` proves it before any trial starts:
the driver writes a token into the folder and a task on every alive node reads it back.

Example (in a Ray driver)::

    check_results_folder(Path("/shared/results/thesis"))  # a UserError names a node that cannot see it
    node_address()                                         # "10.0.0.7": where this process runs
"""

from __future__ import annotations

import secrets
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from study.errors import UserError

PROBE_TIMEOUT_S = 120  # a node that has not answered by then is named as not answering


def node_address() -> str:
    """The address of this process's Ray node, as the cluster knows it."""
    return ray.util.get_node_ip_address()


@ray.remote(num_cpus=0)
def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def check_results_folder(study_dir: Path) -> None:
    """Every alive node reads back a token the driver wrote into ``study_dir``; a node that reads
    something else, or nothing, is one ``UserError`` naming it, the folder and the fix."""
    token = secrets.token_hex(16)
    probe = study_dir / f".node-probe-{token[:8]}"
    probe.write_text(token)
    try:
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        reads = [_read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
                 .remote(str(probe)) for node in nodes]
        ready, _ = ray.wait(reads, num_returns=len(reads), timeout=PROBE_TIMEOUT_S)
        blind = [node["NodeManagerAddress"] for node, read in zip(nodes, reads, strict=True)
                 if read not in ready or ray.get(read) != token]
    finally:
        probe.unlink(missing_ok=True)
    if blind:
        raise UserError(f"--results {study_dir.parent}: Ray node(s) {', '.join(blind)} do not see this "
                        f"folder (a file written to {study_dir} is not there, or they did not answer "
                        f"within {PROBE_TIMEOUT_S} s). Trials write their files "
                        "on the node they run on: put the folder on a file system every node mounts "
                        "(NFS, say), and pass it with --results")

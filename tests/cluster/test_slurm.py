"""deploy/slurm/study.sbatch on a Slurm of two nodes: `slurmctld` and a `slurmd` on host 1, a
`slurmd` on host 2 (their addresses in slurm.conf), `sbatch --nodes=2` with trials on both,
`scancel` leaving no process on either host, and the same submission resuming to exactly the
planned networks."""

import os
import subprocess
import tempfile
import time

import pytest

from ..conftest import ROOT, SMOKE
from ..test_slurm import COMMON, SCRIPT, installed, job_processes
from ..test_tune import check_contract
from .conftest import BIN

pytestmark = pytest.mark.slow  # a real Slurm and Ray on two hosts
# Trials long enough (the resumed one too) that the second starts on its own node's new worker
# before the first ends: Ray Tune hands an ended trial's worker to a trial still waiting for its own.
LONGER = ["--set", "data.n_images=3000", "--set", "train.epochs=8", "--set", "search.seeds=1"]

# Job numbers from 1001: the one-node Slurm of tests/test_slurm.py, perhaps running beside it
# (pytest -n), numbers from 1, and a job's number names its Ray folder in the shared /tmp.
CONFIG = COMMON + """\
ClusterName=studyhosts
FirstJobId=1001
SlurmctldHost={host}({head})
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation={folder}/state
SlurmdSpoolDir={spool}/%n
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd-%n.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd-%n.log
NodeName=node1 NodeAddr={head} CPUs=1 RealMemory=4000 State=UNKNOWN
NodeName=node2 NodeAddr={worker} CPUs=1 RealMemory=4000 State=UNKNOWN
PartitionName=test Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture
def slurm_hosts(hosts, tmp_path):
    """The two hosts as a Slurm cluster (auth/none: its addresses exist only inside them);
    yields (host 1, host 2, the environment Slurm's commands need)."""
    missing = installed()
    if missing:
        pytest.skip(missing)
    head, worker = hosts
    folder = tmp_path / "slurm"
    (folder / "state").mkdir(parents=True)
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    conf = folder / "slurm.conf"
    # The spools hold a job's sockets, whose paths may have 108 characters at most: a short folder
    # of their own, not one under pytest's (longer under `pytest -n`).
    with tempfile.TemporaryDirectory(prefix="slurm-") as spool:
        conf.write_text(CONFIG.format(host=host, head=head.address, worker=worker.address, folder=folder,
                                      spool=spool))
        env = {**os.environ, "SLURM_CONF": str(conf), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        head.start(["slurmctld", "-D", "-f", str(conf)], folder / "slurmctld.out", env)
        for host_, name in ((head, "node1"), (worker, "node2")):
            os.mkdir(f"{spool}/{name}")
            host_.start(["slurmd", "-D", "-f", str(conf), "-N", name], folder / f"{name}.out", env)
        deadline = time.monotonic() + 90
        while head.run(["sinfo", "-h", "-o", "%T %D"], env=env).stdout.split() != ["idle", "2"]:
            assert time.monotonic() < deadline, (folder / "slurmctld.log").read_text()[-3000:]
            time.sleep(0.5)
        yield head, worker, env
        for host_ in (head, worker):
            host_.stop()  # the daemons, before their spools go


def test_two_nodes_train_through_sbatch_and_a_cancelled_job_resumes_to_the_planned_networks(
        slurm_hosts, tmp_path):
    head, worker, env = slurm_hosts
    args = ["sbatch", "--nodes=2", "--cpus-per-task=1", str(SCRIPT), str(SMOKE), *LONGER,
            "--results", str(tmp_path)]
    first = tmp_path / "first.out"
    number = head.run([*args[:1], f"--output={first}", *args[1:]], env=env, cwd=ROOT).stdout.split()[-1]
    deadline = time.monotonic() + 600
    while "epoch 1/8" not in (first.read_text() if first.exists() else ""):
        assert time.monotonic() < deadline, first.read_text() if first.exists() else "no output"
        time.sleep(1)
    assert "2 node(s)" in first.read_text()
    head.run(["scancel", number], env=env)
    while head.run(["squeue", "-h", "-j", number], env=env).stdout.strip():
        assert time.monotonic() < deadline, "the cancelled job did not end"
        time.sleep(1)
    time.sleep(2)
    assert job_processes(number) == []  # on either host: they share this machine's /proc

    second = tmp_path / "second.out"
    done = head.run([*args[:1], "--wait", f"--output={second}", *args[1:]], env=env, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr + second.read_text()[-3000:]
    trials = check_contract(tmp_path / "smoke", n_trials=2, epochs=8, n_test=300)
    assert set(trials["node"]) == {head.address, worker.address}, second.read_text()[-3000:]
    assert job_processes(done.stdout.split()[-1]) == []

"""deploy/slurm/study.sbatch against a real Slurm: a one-node cluster on 127.0.0.1 (its daemons
in the foreground, stopped by their process ids), the smoke study submitted with sbatch, cancelled
in the middle and resumed by the same submission."""

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import ROOT, SMOKE
from .test_tune import BIN, check_contract, free_port

pytestmark = pytest.mark.slow  # a real Slurm and Ray
SCRIPT = ROOT / "deploy" / "slurm" / "study.sbatch"
DAEMONS = ("slurmctld", "slurmd", "sbatch", "scancel", "squeue")
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]


def installed() -> str | None:
    """Why Slurm cannot be had here, or None. The tests install nothing: ``.ci/run`` installs
    Debian's packages before the tests, and a developer installs them once."""
    if all(shutil.which(d) for d in DAEMONS):
        return None
    return f"Slurm is not installed (as root: apt-get install {' '.join(PACKAGES)})"


# What every test Slurm shares: root, no munge (auth/none: on this machine only), no cgroups, one
# CPU as the unit of a job; ended jobs forgotten after 6 s, so that `sbatch --wait` asks every 2 s
# (it asks less often the longer Slurm keeps them: up to every 32 s at the default 300).
COMMON = """\
MinJobAge=6
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
KillWait=30
"""

CONFIG = COMMON + """\
ClusterName=studytest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={controller}
SlurmdPort={node}
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4000 State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node Slurm on 127.0.0.1 (no munge: auth/none, on this machine only); yields the
    environment its commands need."""
    missing = installed()
    if missing:
        pytest.skip(missing)
    folder = tmp_path_factory.mktemp("slurm")
    (folder / "state").mkdir()
    (folder / "spool").mkdir()
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    conf = folder / "slurm.conf"
    conf.write_text(CONFIG.format(host=host, controller=free_port(), node=free_port(), folder=folder,
                                  cpus=min(2, os.cpu_count() or 1)))
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    daemons = [subprocess.Popen([name, "-D", "-f", str(conf), *extra], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
               for name, extra in (("slurmctld", []), ("slurmd", ["-N", host]))]
    try:
        deadline = time.monotonic() + 60
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True,
                                           text=True).stdout:
            assert time.monotonic() < deadline, (folder / "slurmctld.log").read_text()[-3000:]
            time.sleep(0.5)
        yield env
    finally:
        for daemon in daemons:
            daemon.terminate()
        for daemon in daemons:
            daemon.wait(timeout=60)


def submit(env: dict, out: Path, *args: str, wait: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["sbatch", *(["--wait"] if wait else []), "--cpus-per-task=2", f"--output={out}",
                           str(SCRIPT), str(SMOKE), *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=900)


def job_processes(job: str) -> list[str]:
    """Command lines of every process still using the job's Ray session folder."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"/tmp/ray-{job} " in text or f"/tmp/ray-{job}/" in text:
            found.append(text[:200])
    return found


def test_a_study_runs_through_sbatch_a_cancelled_job_leaves_nothing_and_the_same_submission_resumes_it(
        slurm, tmp_path):
    # AttConv at 16 iterations for 16 epochs: its trial has seconds left when LeNet-5's is done and
    # the job is cancelled. At two epochs both could end before the cancel came (a restart on
    # LeNet-5's freed CPU, no longer made for so little, had delayed the second).
    sets = ["data.n_images=300", "train.epochs=16", "model.attention.iterations=16", "search.seeds=2"]
    args = [*(a for key in sets for a in ("--set", key)), "--results", str(tmp_path)]
    out = tmp_path / "first.out"
    number = submit(slurm, out, *args, wait=False).stdout.split()[-1]
    deadline = time.monotonic() + 600
    while " done: " not in (out.read_text() if out.exists() else ""):  # one trial finished
        assert time.monotonic() < deadline, out.read_text() if out.exists() else "no output"
        time.sleep(1)
    log = out.read_text()
    assert f"job {number}: Ray head on" in log and "at 127.0.0.1:" in log and "1 node(s)" in log
    assert "ray: 1 node(s), 2 CPUs, 0 GPUs" in log
    # Ray registers the one node on the loopback, not on the machine's own address.
    assert "Local node IP: 127.0.0.1" in re.sub(r"\x1b\[[0-9;]*m", "", log)
    subprocess.run(["scancel", number], env=slurm, check=True)
    def queued() -> str:
        return subprocess.run(["squeue", "-h", "-j", number], env=slurm, capture_output=True,
                              text=True).stdout.strip()

    while queued():
        assert time.monotonic() < deadline, "the cancelled job did not end"
        time.sleep(1)
    assert job_processes(number) == []
    again = submit(slurm, tmp_path / "second.out", *args)  # runs to its end
    log = (tmp_path / "second.out").read_text()
    assert again.returncode == 0, again.stderr + log[-3000:]
    assert f"resuming {tmp_path / 'smoke'}" in log
    check_contract(tmp_path / "smoke", n_trials=2, seeds=2, epochs=16)  # exactly the planned networks
    assert job_processes(again.stdout.split()[-1]) == []

"""Two hosts on this machine: network namespaces joined by a veth pair, each with its own address
and loopback, sharing the file system as cluster nodes share an NFS home. Nothing else is reachable
from them, and their addresses (``NET``) exist only inside them.

Everything made is removed by ``two_hosts`` on the way out, even when the test fails: the
processes started in each host (by process id: the ones ``Host.start`` returned, then any left in
the namespace), the namespaces, and with them the link. Where namespaces cannot be made (not
root, or no ``ip``), the tests that need them skip with the reason.

Example (as root)::

    with two_hosts() as (head, worker):
        head.run(["ip", "-brief", "address"])      # its link's address is NET.1
        worker.run(["ping", "-c", "1", head.address])
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# A private test range, given only to the two namespaces' ends of the link: one per pytest-xdist
# worker (gw0, gw1, ...), so that two workers' hosts never meet at one address, where Ray and
# Slurm would take the other's daemons for their own.
NET = f"10.231.{7 + int(os.environ.get('PYTEST_XDIST_WORKER', 'gw0')[2:])}"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Host:
    """One namespace: ``run`` and ``start`` execute there; ``start``ed processes are stopped on exit."""

    name: str
    address: str
    started: list[subprocess.Popen] = field(default_factory=list)

    def command(self, args: list[str]) -> list[str]:
        # The network namespace alone: `ip netns exec` also mounts a /sys of its own, without the
        # cgroup file systems slurmd needs.
        return ["nsenter", f"--net=/run/netns/{self.name}", *args]

    def run(self, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(args), capture_output=True, text=True, **kwargs)

    def start(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        """A process in this host, in a session of its own, its output in ``log``."""
        with log.open("w") as out:
            process = subprocess.Popen(self.command(args), stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True, env=env)
        self.started.append(process)
        return process

    def pids(self) -> list[int]:
        """Every process in this namespace."""
        listed = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True)
        return [int(pid) for pid in listed.stdout.split()]

    def kill_all(self) -> None:
        """A host lost: every process in it killed at once (SIGKILL, by process id)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        """What ``start`` began, asked to stop (a Ray node drains), then whatever is left killed."""
        for process in self.started:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + 30
        for process in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for _ in range(20):  # processes can still be starting children while the first are killed
            if not self.pids():
                break
            self.kill_all()
            time.sleep(0.2)
        for process in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)


def unavailable() -> str | None:
    """Why two hosts cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) to make network namespaces"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    probe = f"study-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` is not permitted here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@contextlib.contextmanager
def two_hosts() -> Iterator[tuple[Host, Host]]:
    """Host 1 at NET.1 and host 2 at NET.2, linked; removed with everything started in them."""
    tag = f"{os.getpid() % 100000}"
    hosts = [Host(f"study-h{i}-{tag}", f"{NET}.{i}") for i in (1, 2)]
    made: list[Host] = []
    try:
        for host in hosts:
            _ip("netns", "add", host.name)
            made.append(host)
        ends = [f"st{i}-{tag}" for i in (1, 2)]  # interface names: 15 characters at most
        _ip("link", "add", ends[0], "type", "veth", "peer", "name", ends[1])
        for host, end in zip(hosts, ends, strict=True):
            _ip("link", "set", end, "netns", host.name)
            _ip("-n", host.name, "address", "add", f"{host.address}/24", "dev", end)
            _ip("-n", host.name, "link", "set", end, "up")
            _ip("-n", host.name, "link", "set", "lo", "up")
        yield hosts[0], hosts[1]
    finally:
        for host in made:
            host.stop()
        for host in made:
            subprocess.run(["ip", "netns", "del", host.name], capture_output=True)  # the link goes with it

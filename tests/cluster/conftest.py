"""The two-host test bed as fixtures: ``hosts`` (two namespaced hosts) and ``ray_hosts`` (a Ray
head on host 1 and a worker on host 2, one CPU each, token authentication on)."""

import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

import pytest

from .hosts import Host, two_hosts, unavailable

BIN = Path(sys.executable).parent
RAY_PORT = 6379  # each host has its own ports: nothing else listens in a new namespace
DASHBOARD_PORT = 8265


@pytest.fixture
def hosts():
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    with two_hosts() as pair:
        yield pair


def ray_env(token: str) -> dict[str, str]:
    """What every machine of a token-authenticated cluster has: the same mode and token; this
    environment's ``python`` first on PATH, for jobs."""
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def start_ray(host: Host, log: Path, env: dict[str, str], *args: str,
              prefix: list[str] | None = None) -> None:
    """``ray start --block`` on ``host`` at its address, once it says it runs (``prefix`` wraps
    the command, e.g. in a mount namespace)."""
    process = host.start([*(prefix or []), str(BIN / "ray"), "start", "--block",
                          f"--node-ip-address={host.address}", "--num-cpus=1", "--disable-usage-stats",
                          *args], log, env)
    deadline = time.monotonic() + 120
    while "Ray runtime started" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{host.name}: {log.read_text()[-3000:]}")
        time.sleep(0.5)


@pytest.fixture
def ray_hosts(hosts, tmp_path, monkeypatch):
    """A Ray cluster across the two hosts; yields (head host, worker host, env). Each node has
    its own session folder (short: it holds sockets), as on two machines: in Ray's default one,
    shared with another test's cluster on this machine, a job's driver found that cluster's
    address."""
    env = ray_env(secrets.token_hex(32))
    monkeypatch.setenv("RAY_AUTH_TOKEN", env["RAY_AUTH_TOKEN"])
    head, worker = hosts
    with tempfile.TemporaryDirectory(prefix="ray-") as head_temp, \
            tempfile.TemporaryDirectory(prefix="ray-") as temp:
        start_ray(head, tmp_path / "ray-head.log", env, "--head", f"--port={RAY_PORT}",
                  f"--temp-dir={head_temp}", f"--dashboard-host={head.address}",
                  f"--dashboard-port={DASHBOARD_PORT}")
        start_ray(worker, tmp_path / "ray-worker.log", env, f"--address={head.address}:{RAY_PORT}",
                  f"--temp-dir={temp}")
        yield head, worker, env
        worker.stop()  # before their session folders go
        head.stop()

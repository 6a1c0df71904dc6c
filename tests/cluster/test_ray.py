"""A study across two hosts through Ray: trials on both, the result contract, `ray job submit`,
a results folder one node cannot see or a cache it cannot write, and the loss of a node mid-trial."""

import datetime
import ipaddress
import re
import signal
import subprocess
import tempfile
import time

import pandas as pd
import pytest

from ..conftest import SMOKE
from ..test_tune import SMALL, check_contract
from .conftest import BIN, DASHBOARD_PORT, RAY_PORT, ray_env, start_ray

pytestmark = pytest.mark.slow  # every test here starts Ray on two hosts
# Trials long enough (LeNet-5's about 20 s) that the second starts on its own host's new worker
# (a new process importing torch, a job's working directory set up there) before the first ends:
# Ray Tune hands an ended trial's worker to a trial still waiting for its own.
LONGER = ["--set", "data.n_images=3000", "--set", "train.epochs=8"]


def study_on(host, env, *args, timeout=900):
    return host.run([str(BIN / "study"), *args], env={**env, "PYTHONUNBUFFERED": "1"}, timeout=timeout)


def test_a_study_runs_on_both_hosts_and_records_where_each_network_trained(tmp_path, ray_hosts):
    head, worker, env = ray_hosts
    address = f"{head.address}:{RAY_PORT}"
    out = study_on(head, env, "run", str(SMOKE), *LONGER, "--set", "search.seeds=1", "--results",
                   str(tmp_path), "--address", address)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    trials = check_contract(tmp_path / "smoke", n_trials=2, epochs=8, n_test=300)
    # One CPU per host and two one-CPU trials at once: one trained on each host.
    assert sorted(trials["node"]) == [head.address, worker.address]
    # AttConv's kernel is built per node, for its CPU: the one on host 2 ran it too.
    assert trials.loc[trials["model.attention.layers"] == "[0]", "attconv"].tolist() == ["C kernel"]
    analysed = study_on(head, env, "analyze", str(tmp_path / "smoke"))
    assert analysed.returncode == 0, analysed.stderr[-3000:]
    report = (tmp_path / "smoke" / "report" / "report.md").read_text()
    assert f"{head.address}: 1 network; {worker.address}: 1 network" in report

    # The same study as a Ray job, submitted to the head's dashboard from host 1.
    dashboard = f"http://{head.address}:{DASHBOARD_PORT}"
    job = head.run([str(BIN / "ray"), "job", "submit", "--address", dashboard, "--working-dir", ".", "--",
                    "python", "-m", "study", "run", "searchspaces/smoke.yaml", *LONGER, "--set",
                    "search.seeds=1", "--name", "smoke-job", "--results", str(tmp_path)],
                   cwd=SMOKE.parents[1], env=env, timeout=900)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    submitted = check_contract(tmp_path / "smoke-job", n_trials=2, epochs=8, n_test=300)
    assert set(submitted["node"]) == {head.address, worker.address}


def test_a_node_that_cannot_see_the_results_or_write_its_cache_is_one_message_and_nothing_is_written(
        tmp_path, hosts):
    """Host 2's Ray runs in a mount namespace of its own, where the results folder is an empty
    file system of its own, not the driver's, as on a cluster whose nodes do not share it; and its
    STUDY_CACHE names a path under a file, as a read-only home would fail: both named at once."""
    head, worker = hosts
    env = ray_env("a" * 64)
    shared = tmp_path / "results"
    shared.mkdir()
    (tmp_path / "file").write_text("not a folder")
    unwritable = tmp_path / "file" / "cache"
    start_ray(head, tmp_path / "ray-head.log", env, "--head", f"--port={RAY_PORT}",
              "--include-dashboard=false")
    masked = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
              f'mount -t tmpfs none "{shared}" && exec "$0" "$@"']
    with tempfile.TemporaryDirectory(prefix="ray-") as temp:  # short: it holds sockets
        start_ray(worker, tmp_path / "ray-worker.log", {**env, "STUDY_CACHE": str(unwritable)},
                  f"--address={head.address}:{RAY_PORT}", f"--temp-dir={temp}", prefix=masked)
        start = time.monotonic()
        out = study_on(head, env, "run", str(SMOKE), *SMALL, "--results", str(shared), "--address",
                       f"{head.address}:{RAY_PORT}", timeout=300)
        worker.stop()
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]
    blind, cache = out.stderr.strip().splitlines()
    assert blind.startswith(f"error: --results {shared}: Ray node(s) {worker.address} do not see this folder")
    assert "file system every node mounts" in blind and time.monotonic() - start < 120
    assert cache.startswith(f"Ray node {worker.address} (as its `ray start` set the environment): "
                            f"STUDY_CACHE={unwritable}: cannot write there (Not a directory)")
    assert list(shared.iterdir()) == []  # nothing written, not even the study's folder


def self_signed(addresses: list[str]) -> tuple[bytes, bytes]:
    """A certificate (PEM) for the hosts' addresses and its key, as Ray's TLS setup takes them."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ray-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    names = [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    names += [x509.DNSName(a) for a in addresses]  # as Ray's own test certificates name addresses
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number()).not_valid_before(now)
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName(names), critical=False)
                   .sign(key, hashes.SHA256()))
    return (certificate.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def test_a_head_with_rays_tls_on_is_joined_across_hosts(tmp_path, hosts):
    """Ray's TLS on every node and the driver (RAY_USE_TLS and a self-signed certificate, as
    Ray's documentation sets it up): the address check lets the valid head through, and a token
    the head does not know is still one message."""
    pytest.importorskip("cryptography", reason="a certificate needs cryptography (ray[default] has it)")
    head, worker = hosts
    certificate, private_key = self_signed([head.address, worker.address])
    (tmp_path / "server.crt").write_bytes(certificate)
    (tmp_path / "server.key").write_bytes(private_key)
    crt, key = str(tmp_path / "server.crt"), str(tmp_path / "server.key")
    env = {**ray_env("c" * 64), "RAY_USE_TLS": "1", "RAY_TLS_SERVER_CERT": crt, "RAY_TLS_SERVER_KEY": key,
           "RAY_TLS_CA_CERT": crt}
    start_ray(head, tmp_path / "ray-head.log", env, "--head", f"--port={RAY_PORT}",
              "--include-dashboard=false")
    address = f"{head.address}:{RAY_PORT}"
    refused = study_on(head, {**env, "RAY_AUTH_TOKEN": "0" * 64}, "run", str(SMOKE), *SMALL,
                       "--results", str(tmp_path / "no"), "--address", address, timeout=120)
    assert refused.returncode == 2 and "refused this machine's Ray auth token" in refused.stderr, \
        refused.stderr[-3000:]
    with tempfile.TemporaryDirectory(prefix="ray-") as temp:
        start_ray(worker, tmp_path / "ray-worker.log", env, f"--address={address}", f"--temp-dir={temp}")
        out = study_on(head, env, "run", str(SMOKE), *SMALL, "--set", "search.seeds=1", "--results",
                       str(tmp_path), "--address", address)
        worker.stop()
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    check_contract(tmp_path / "smoke", n_trials=2)


def test_a_lost_node_costs_at_most_its_trials_last_epoch(tmp_path, ray_hosts):
    """Host 2 is lost (every process on it killed) while its trial trains; the study still ends
    with exactly the planned networks, each once, and the lost trial went on from its last
    checkpoint on host 1: no trial reports its first epoch twice."""
    head, worker, env = ray_hosts
    args = [str(BIN / "study"), "run", str(SMOKE), "--set", "data.n_images=1500", "--set", "train.epochs=10",
            "--set", "search.seeds=1", "--results", str(tmp_path), "--address", f"{head.address}:{RAY_PORT}"]
    driver = head.start(args, tmp_path / "driver.log", {**env, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 600
    # Host 2 is lost once both trials (one per host) have reported their first epoch, so whichever
    # runs there has a checkpoint to go on from; neither has ended (LeNet-5's epochs about 1 s each).
    while len(re.findall(r" trial (\S+) .*: epoch 1/10", (tmp_path / "driver.log").read_text())) < 2:
        assert driver.poll() is None and time.monotonic() < deadline, \
            (tmp_path / "driver.log").read_text()[-3000:]
        time.sleep(0.2)
    worker.kill_all()
    try:
        driver.wait(timeout=900)
    except subprocess.TimeoutExpired:
        driver.send_signal(signal.SIGTERM)
        pytest.fail((tmp_path / "driver.log").read_text()[-3000:])
    log = (tmp_path / "driver.log").read_text()
    if driver.returncode != 0:  # the run may give up on the lost node's trial: --resume finishes it
        resumed = study_on(head, env, *args[1:], "--resume")
        assert resumed.returncode == 0, log[-2000:] + resumed.stdout[-3000:] + resumed.stderr[-3000:]
        log += resumed.stdout
    assert " failed: " in log and log.count("epoch 1/10") == 2, log[-3000:]  # none began again
    trials = check_contract(tmp_path / "smoke", n_trials=2, epochs=10, n_test=150)
    assert set(trials["node"]) == {head.address}  # host 2 is gone: every network finished on host 1
    epochs = pd.read_parquet(tmp_path / "smoke" / "epochs.parquet")
    assert not epochs.duplicated(["trial_id", "seed", "epoch"]).any()

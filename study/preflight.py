"""What a user set, checked against the machine before Ray starts and before anything is written.

Each check raises a ``UserError`` naming the setting, what is wrong and how to fix it, so a study
that could never run (a trial no node can schedule, a storage that cannot be reached, a dataset
larger than memory) is a message within seconds, not a hang or a traceback minutes in.

Example:
    >>> from study.loading import load
    >>> study = load("searchspaces/smoke.yaml", ["resources.cpu=64"])
    >>> try:
    ...     check_resources(study, cpus=2, gpus=0, where="this machine")
    ... except UserError as err:
    ...     print(str(err)[:55])
    resources.cpu is 64 per trial, but this machine has 2 C
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
from pathlib import Path

from study import footprint
from study.config import Study
from study.errors import UserError
from study.words import counted

CONNECT_TIMEOUT = 3.0  # seconds for a storage server to accept a connection
LOW_DISK = 16 * 2**20  # free bytes under which a failed write is taken for a full disk
TRIAL_FILES = 256 * 2**10  # what a trial leaves besides weights and samples: Ray's files, its rows
DRIVERS = {"psycopg": '"psycopg[binary]"', "psycopg2": "psycopg2-binary",
           "MySQLdb": "mysqlclient (or pymysql, and write mysql+pymysql://)", "pymysql": "pymysql"}


def check_run(study: Study, study_dir: Path, address: str | None, n_params: int,
              cpus: int | None = None) -> None:
    """Everything ``study run`` can check before Ray starts and anything is written (``study plan``
    makes the same checks); ``n_params``: the largest network's parameters. With ``address`` the
    cluster's resources are checked once Ray has joined it (``study.tune.run``), and memory only
    for this driver's dataset; with ``cpus`` (``study plan --cpus``), resources against a node of
    that many CPUs, whose memory is not this machine's: the plan prints what it needs."""
    check_storage(study, study_dir)
    if address:
        check_address(address)
        check_memory(study, workers=0)
    elif cpus:
        check_resources(study, cpus, local_gpus(), where=f"a node of {cpus} CPUs")
    else:
        cpus = local_cpus()
        check_resources(study, cpus, local_gpus(), where="this machine")
        slots = study.trials_at_once(cpus)
        check_memory(study, workers=min(study.most_trials(slots, 0), slots))
    check_disk(study, study_dir, n_params)


def check_resources(study: Study, cpus: float, gpus: float, where: str) -> None:
    """A trial asks for ``resources.cpu`` CPUs and ``resources.gpu`` GPUs on one node: no node
    offering that means a study that waits forever. ``cpus``/``gpus``: the largest node's."""
    res = study.resources
    if res.cpu > cpus:
        raise UserError(f"resources.cpu is {res.cpu:g} per trial, but {where} has {cpus:g} CPUs: no "
                        f"trial could ever start; set resources.cpu to at most {cpus:g}")
    if res.gpu != "auto" and res.gpu > gpus:
        has = f"has {gpus:g} GPUs" if gpus else "has no GPU Ray can use"
        raise UserError(f"resources.gpu is {res.gpu:g} per trial, but {where} {has}: no trial could "
                        f"ever start; set resources.gpu to auto (a GPU share where there is one) "
                        f"or at most {gpus:g}")
    if study.train.device == "cuda" and gpus == 0:
        raise UserError(f"train.device is cuda, but {where} has no GPU Ray can use; set train.device "
                        "to auto or cpu")


def local_gpus() -> int:
    """GPUs an embedded Ray would offer: CUDA devices visible to this process."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def local_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use, which the embedded Ray is started with: those it may run on (its
    affinity: a Slurm allocation's on a shared node, taskset's) and, in a container, no more than
    its CPU quota (``docker --cpus``), in whole CPUs, one at least. Ray by itself counts every CPU
    of the machine where no quota is set, the allocation's neighbours' included.

    Example:
        >>> local_cpus() >= 1
        True
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cpu_quota(cgroup)
    return max(1, min(cpus, int(quota))) if quota else cpus


def cpu_quota(cgroup: Path = Path("/sys/fs/cgroup")) -> float | None:
    """A container's CPU quota in CPUs (its time per period), from the files Ray reads for it:
    cgroup v2's ``cpu.max``, else v1's CFS quota; None where none is set.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = (Path(folder) / "cpu.max").write_text("150000 100000")  # docker --cpus=1.5
        ...     cpu_quota(Path(folder))
        1.5
    """
    try:  # cgroup v2, then v1
        if (cgroup / "cpu.max").exists():
            quota, period = (cgroup / "cpu.max").read_text().split()
        else:
            v1 = cgroup / "cpu"
            quota, period = (v1 / "cpu.cfs_quota_us").read_text(), (v1 / "cpu.cfs_period_us").read_text()
        return int(quota) / int(period) if int(quota) > 0 else None
    except (OSError, ValueError):  # no such files, or no quota ("max" in v2, -1 in v1)
        return None


def check_memory(study: Study, workers: int, available: int | None = None) -> None:
    """The dataset this driver builds and ``workers`` trials at once (``study.footprint``), against
    the memory available now (``available`` bytes; default: this machine's ``MemAvailable``)."""
    available = available if available is not None else _available_memory()
    if available is None:
        return  # not Linux: nothing to compare against
    images = footprint.dataset_bytes(study)
    trial = footprint.trial_bytes(study) if workers else 0
    need = images + workers * trial
    if need <= available:
        return
    nets = trial - footprint.PROCESS_BYTES - 2 * images
    if not workers or 3 * images >= nets:
        side = study.data.canvas
        what = (f"data.n_images {study.data.n_images:,} needs about {need / 2**30:.1f} GiB here (the "
                f"{side}×{side}-pixel images once in this process and twice in each of {workers} trial(s) "
                "at once)")
        fix = "lower data.n_images or data.canvas"
    else:
        seeds = footprint.most_seeds(study)
        what = (f"{counted(seeds, 'network')} per trial, training {study.train.batch_size} images each "
                f"per step on a {study.data.canvas}-pixel canvas, need about {nets / 2**30:.1f} GiB per "
                f"trial besides the images, {need / 2**30:.1f} GiB here for {workers} trial(s) at once")
        fix = "lower search.seeds (or confirm_seeds), train.batch_size or data.canvas"
    raise UserError(f"{what}, but {available / 2**30:.1f} GiB is available; {fix}, or raise "
                    "resources.cpu so fewer trials run at once")


def check_disk(study: Study, study_dir: Path, n_params: int) -> None:
    """The result files the study will write (each network's weights and per-sample rows, a few
    hundred kB per trial besides) against the free space where they go."""
    from study.data.dataset import split_sizes

    n_test = split_sizes(study.data.n_images, study.data.split)[2]
    per_network = n_params * 4 + n_test * (4 * 14 + 32)  # float32 weights; a sample row, strings too
    need = study.n_networks() * per_network + study.n_trials() * TRIAL_FILES + 2 * 2**20
    folder = _existing(Path(study_dir))
    free = shutil.disk_usage(folder).free
    if need > free:
        raise UserError(f"{study_dir}: the study writes about {need / 2**20:,.0f} MiB of results, but "
                        f"{folder} has {free / 2**20:,.1f} MiB free; free space, or pass --results on "
                        "another disk")


def disk_full(study_dir: Path) -> str | None:
    """Why a write in ``study_dir`` failed, when the disk is the likely cause: a message naming the
    free space left; None when there is room."""
    folder = _existing(Path(study_dir))
    free = shutil.disk_usage(folder).free
    if free >= LOW_DISK:
        return None
    return f"the disk holding {folder} is full ({free / 2**20:.1f} MiB free)"


def _available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fail within seconds where ``ray.init`` would retry an address for minutes: nothing
    listening (refused), no answer (a firewall, the wrong host) or an unknown host."""
    if address.startswith(("http://", "https://")):
        raise UserError(f"--address {address}: the dashboard's address, which `ray job submit` takes; "
                        "study run joins the cluster at the port of `ray start --head` (HEAD:6379), or "
                        "auto on a machine of the cluster. (--address defaults to $RAY_ADDRESS.)")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", a ray:// client address: Ray resolves those itself
    hint = f"--address {address}: "
    # A head with Ray's TLS on answers in TLS, not in the plain HTTP/2 this probe speaks: there
    # only reachability is checked here, and the token through Ray's own (TLS) channel.
    tls = os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as conn:
            speaks_grpc = tls or _answers_http2(conn)
    except ConnectionRefusedError:
        raise UserError(hint + f"connection refused: nothing listens on port {port} of {host}. Start "
                        f"the head there with `ray start --head --port={port}`, or correct the "
                        "address") from None
    except TimeoutError:
        raise UserError(hint + f"no answer from {host} within {timeout:g} s: the host is down, "
                        "a firewall drops the port, or the address is wrong") from None
    except OSError as err:
        raise UserError(hint + f"cannot reach {host}: {err}") from None
    if not speaks_grpc:
        raise UserError(hint + f"something answers on port {port}, but not a Ray head (its port speaks "
                        "gRPC); give the port `ray start --head` printed (6379 by default)")
    from ray._raylet import AuthenticationTokenLoader

    if os.environ["RAY_AUTH_MODE"] == "token" and \
            not AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        raise UserError(hint + "no Ray auth token here, and the cluster checks one: copy the head "
                        "node's ~/.ray/auth_token to this machine, or set RAY_AUTH_TOKEN")
    _check_token(address, hint, timeout)


def _check_token(address: str, hint: str, timeout: float) -> None:
    """Ask the head's GCS for the cluster's id, as ``ray.init`` first does, with this machine's
    token: a refused token is one message now, not a minute of Ray's retries and warnings."""
    import grpc
    from ray._private.grpc_utils import init_grpc_channel
    from ray._raylet import AuthenticationTokenLoader
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    # Ray's own channel: its TLS where RAY_USE_TLS is on, this machine's token in every call.
    with init_grpc_channel(address) as channel:
        try:
            gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
                gcs_service_pb2.GetClusterIdRequest(), timeout=timeout)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                has = AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True)
                raise UserError(hint + "the cluster refused this machine's Ray auth token (" +
                                ("not the head's" if has else "none here") + "): copy the head "
                                "node's ~/.ray/auth_token to this machine, or set RAY_AUTH_TOKEN to "
                                "it") from None
            # Anything else (a head still starting, say) is left to ray.init and its message.


# An HTTP/2 client's first bytes, and an empty SETTINGS frame (length 0, type 4, no flags, stream 0).
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _answers_http2(conn: socket.socket) -> bool:
    """Whether the server on ``conn`` speaks HTTP/2, as Ray's GCS (a gRPC server) does: it answers
    the preface with a SETTINGS frame. Anything else (an HTTP/1 page, a database's greeting,
    silence until the timeout) is not a Ray head."""
    try:
        conn.sendall(_HTTP2_PREFACE)
        header = b""
        while len(header) < 9:
            chunk = conn.recv(9 - len(header))
            if not chunk:
                return False
            header += chunk
    except OSError:
        return False
    return header[3] == 4


def check_storage(study: Study, study_dir: Path) -> None:
    """``search.storage``: a scheme SQLAlchemy knows, its driver installed, a server that accepts
    a connection within ``CONNECT_TIMEOUT`` s, a folder that exists for a file; an existing SQLite
    file must be a database (a damaged ``optuna.db`` on ``--resume``)."""
    url = study.search.storage
    if url is None:
        _check_sqlite(Path(study_dir) / "optuna.db", "optuna.db")
        return
    if url.startswith("journal:"):
        folder = _existing(Path(url.removeprefix("journal:")).expanduser().parent)
        if not os.access(folder, os.W_OK):
            raise UserError(f"search.storage {url}: cannot write in {folder}; name a journal file in a "
                            "folder you can write")
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise UserError(f"search.storage {url}: not a storage SQLAlchemy knows; write journal:PATH, "
                        "sqlite:///PATH, postgresql://HOST/DB or mysql+pymysql://HOST/DB") from None
    try:
        dialect.import_dbapi()
    except ImportError as err:
        package = DRIVERS.get(err.name, err.name or "the driver SQLAlchemy names for it")
        raise UserError(f"search.storage {url}: the database driver is not installed ({err}); "
                        f"pip install {package}") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            path = Path(parsed.database).expanduser()
            if not path.parent.is_dir():
                raise UserError(f"search.storage {url}: the folder {path.parent} does not exist; "
                                "create it or name another")
            _check_sqlite(path, f"search.storage {url}")
        return
    host, port = parsed.host or "localhost", parsed.port or dialect.default_port()
    if port is None:
        return  # a socket path or a driver's own default: the driver reports it
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
    except OSError as err:
        raise UserError(f"search.storage {url}: no database answers at {host}:{port} within "
                        f"{CONNECT_TIMEOUT:g} s ({err.strerror or err}); start it, or correct the "
                        "address") from None


SQLITE_DAMAGED = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB (primary result codes)


def _check_sqlite(path: Path, label: str) -> None:
    """A damaged SQLite file is a message. Read-only, so nothing is written; a driver killed
    mid-write leaves a journal that only a writer can roll back, which SQLite then does on
    Optuna's first open: that refusal is no damage."""
    if not path.exists():
        return
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            db.execute("select count(*) from sqlite_master").fetchone()
    except sqlite3.DatabaseError as err:
        if getattr(err, "sqlite_errorcode", 26) & 0xFF not in SQLITE_DAMAGED:
            return
        raise UserError(f"{label}: {path} is not a readable SQLite database ({err}); it was damaged "
                        "after it was written. Restore it from a copy, or run the study again under "
                        "a new --name") from None


def _existing(path: Path) -> Path:
    """``path``, or its nearest ancestor that exists."""
    return next(p for p in (path, *path.parents) if p.exists())

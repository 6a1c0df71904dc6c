"""Settings that could never run are one message before Ray starts, with nothing written."""

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from study import loading, preflight
from study.cli import app
from study.errors import UserError

from .conftest import SMOKE

runner = CliRunner()
BIN = Path(sys.executable).parent
BOMB = """name: smoke
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
question: [*g,*g,*g,*g,*g,*g,*g,*g,*g]
space: {train.lr: {choice: [0.1]}}
"""


def run(tmp_path, *args, timeout: float = 30):
    """``study run`` of the smoke study into ``tmp_path/results``; it must answer within ``timeout``."""
    start = time.monotonic()
    args = [arg.replace("TMP", str(tmp_path)) for arg in args]
    results = [] if "--results" in args else ["--results", str(tmp_path / "results")]
    result = runner.invoke(app, ["run", str(SMOKE), *results, *args])
    assert time.monotonic() - start < timeout
    return result


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "resources.cpu=10000"], "resources.cpu is 10000 per trial, but this machine has"),
        (["--set", "resources.cpu=.inf"], "--set 'resources.cpu=.inf': resources.cpu: Input should be a"),
        (["--set", "train.weight_decay=.inf"], "--set 'train.weight_decay=.inf': train.weight_decay: Input"),
        (["--set", "train.lr=.nan"], "--set 'train.lr=.nan': train.lr: Input should be a finite"),
        (["--set", "train={lr: .nan}"], "--set 'train={lr: .nan}': train.lr: Input should be a finite"),
        (["--set", "data.n_images=100000000"], "data.n_images 100,000,000 needs about"),
        (["--set", "search.seeds=101"], "--set 'search.seeds=101': search.seeds: Input should be less"),
        (["--set", "search.seeds={start: 2, step: 1, max: 101}"], "search.seeds.max: Input should be less"),
        (["--results", "TMP/x/y", "--resume"], "nothing to resume"),
        (["--storage", "sqlite:///no/such/folder/x.db"], "the folder no/such/folder does not exist"),
        (["--storage", "nosuch://x"], "search.storage nosuch://x: not a storage SQLAlchemy knows"),
        (["--storage", "mysql://127.0.0.1:1/x"], "the database driver is not installed"),
        (["--name", "a/b"], "--name: 'a/b' holds a /"),
        (["--name", ".."], "--name: '..' is . or .."),
    ],
)
def test_a_setting_that_cannot_run_is_a_message_before_ray_starts(tmp_path, args, expected):
    result = run(tmp_path, *args)
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output
    assert not list(tmp_path.iterdir())  # no folder, no lock: nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_a_gpu_on_a_machine_without_one_is_a_message(tmp_path):
    result = run(tmp_path, "--set", "resources.gpu=1")
    assert result.exit_code == 2 and "has no GPU Ray can use" in result.output
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(("files", "quota"), [
    ({"cpu.max": "150000 100000\n"}, 1.5),  # cgroup v2: docker --cpus=1.5
    ({"cpu.max": "max 100000\n"}, None),  # no limit
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),  # not in a container
])
def test_a_containers_cpu_quota_caps_the_cpus_counted_here(tmp_path, files, quota):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    assert preflight.cpu_quota(tmp_path) == quota
    mine = len(os.sched_getaffinity(0))
    assert preflight.local_cpus(tmp_path) == (min(mine, max(1, int(quota))) if quota else mine)


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to leave one out")
def test_the_embedded_ray_offers_the_cpus_this_process_may_run_on(tmp_path):
    """A driver allowed one CPU of several (taskset, or a Slurm allocation on a shared node) starts
    its Ray with one: Ray by itself counted every CPU of the machine, so the trials at once
    outnumbered the CPUs and differed from the plan's."""
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
            "import ray\n"
            "from study.tune.runner import _start_ray\n"
            "_start_ray(None, False)\n"
            "try:\n"
            "    print(ray.cluster_resources()['CPU'])\n"
            "finally:\n"
            "    ray.shutdown()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.split()[-1]) == 1.0, result.stdout


def test_a_storage_server_that_does_not_answer_is_a_message_within_seconds(tmp_path, monkeypatch):
    monkeypatch.setitem(preflight.DRIVERS, "psycopg", "psycopg")  # the message, if no driver is here
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run(tmp_path, "--storage", f"postgresql://127.0.0.1:{port}/x")
    assert result.exit_code == 2 and f"search.storage postgresql://127.0.0.1:{port}/x: " in result.output
    assert ("no database answers" in result.output) or ("driver is not installed" in result.output)
    assert not (tmp_path / "results").exists()


def test_an_alias_bomb_is_refused_at_once_and_no_message_echoes_much_input(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    start = time.monotonic()
    result = runner.invoke(app, ["models", str(bomb)])
    assert time.monotonic() - start < 5 and result.exit_code == 2
    assert "aliases expand to more than 100,000 values" in result.output
    long = "x" * 1_000_000
    result = runner.invoke(app, ["models", str(SMOKE), "--set", f"data.canvas={long}"])
    assert result.exit_code == 2 and "data.canvas" in result.output and len(result.output) < 500
    result = runner.invoke(app, ["models", str(SMOKE), "--set", long])
    assert result.exit_code == 2 and len(result.output) < 500


def test_a_name_is_taken_as_given():
    for name in ("2024", "smoke #2", "Größe: 3 seeds"):
        study = loading.load(SMOKE, verbatim={"name": ("--name", name)})
        assert study.name == name
    assert loading.load(SMOKE, ["name=2024"]).name == "2024"  # a number in YAML is a name too


def test_memory_and_disk_are_compared_with_what_the_study_needs(tmp_path):
    study = loading.load(SMOKE, ["data.n_images=86000"])  # 198 MB of images
    preflight.check_memory(study, workers=4, available=8 * 2**30)
    with pytest.raises(UserError, match=r"needs about 4\.\d GiB here .* 4 trial\(s\) at once"):
        preflight.check_memory(study, workers=4, available=2 * 2**30)
    preflight.check_disk(study, tmp_path, n_params=169_420)  # about 30 MiB: this disk has room


def test_a_trial_whose_networks_exceed_memory_is_a_message_naming_what_to_lower():
    """A 512-pixel canvas: LeNet-5's first feature maps are 6 × 508² per image, so one evaluation
    chunk of 1,024 images and a step's activations take gigabytes, whatever the image count."""
    study = loading.load(SMOKE, ["data.n_images=300", "data.canvas=512"])
    with pytest.raises(UserError, match=r"3 networks per trial, training 32 images each per step on a "
                                        r"512-pixel canvas, need about \d+\.\d GiB per trial .* lower "
                                        r"search.seeds \(or confirm_seeds\), train.batch_size or "
                                        r"data.canvas"):
        preflight.check_memory(study, workers=2, available=16 * 2**30)
    preflight.check_memory(loading.load(SMOKE, ["data.n_images=300"]), workers=2, available=16 * 2**30)


@contextlib.contextmanager
def tmpfs(folder: Path, *options: str):
    """A file system of its own at ``folder`` (tmpfs), where this machine lets us mount one."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(folder)],
                             capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("mounting a tmpfs needs root and a mount namespace that allows it")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)  # Ray may still be letting go


def test_results_on_a_disk_too_small_are_a_message(tmp_path):
    with tmpfs(tmp_path / "small", "size=1m") as small:
        result = runner.invoke(app, ["run", str(SMOKE), "--results", str(small)])
        assert result.exit_code == 2 and "the study writes about" in result.output
        assert "MiB free" in result.output and not any(small.iterdir())


def test_results_on_a_read_only_disk_are_a_message(tmp_path):
    with tmpfs(tmp_path / "readonly", "size=64m", "ro") as readonly:
        result = runner.invoke(app, ["run", str(SMOKE), "--set", "data.n_images=300",
                                     "--results", str(readonly / "results")])
        assert result.exit_code == 2 and "cannot write there" in result.output, result.output
        assert not any(readonly.iterdir())


def test_a_damaged_optuna_db_on_resume_is_a_message(tmp_path):
    study_dir = tmp_path / "results" / "smoke"
    study_dir.mkdir(parents=True)
    (study_dir / "study.yaml").write_text(loading.dump(loading.load(SMOKE)))
    (study_dir / "optuna.db").write_bytes(b"garbage header" * 100)
    result = run(tmp_path, "--resume")
    assert result.exit_code == 2 and "optuna.db" in result.output
    assert "is not a readable SQLite database" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in study_dir.iterdir()) == ["optuna.db", "study.yaml"]


class _Server:
    """A TCP server on 127.0.0.1 that answers every connection with ``reply`` and closes it."""

    def __init__(self, reply: bytes) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                with conn:
                    conn.recv(1024)
                    conn.sendall(self.reply)


def test_an_address_that_answers_but_is_not_ray_is_a_message_within_seconds(tmp_path):
    web = _Server(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
    result = run(tmp_path, "--address", f"127.0.0.1:{web.port}")
    web.sock.close()
    assert result.exit_code == 2 and "not a Ray head" in result.output, result.output
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_an_address_without_a_token_here_is_a_message(tmp_path):
    """A server that speaks HTTP/2 (as Ray's head does), and no token in HOME or the environment."""
    settings = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # an empty HTTP/2 SETTINGS frame
    grpc = _Server(settings)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    result = subprocess.run([str(BIN / "study"), "run", str(SMOKE), "--results", str(tmp_path / "results"),
                             "--address", f"127.0.0.1:{grpc.port}"], capture_output=True, text=True,
                            env={**env, "HOME": str(tmp_path)}, timeout=60)
    grpc.sock.close()
    assert result.returncode == 2, result.stderr
    assert "no Ray auth token here" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "results").exists()


def test_an_optuna_db_a_killed_driver_left_mid_write_is_no_damage(tmp_path):
    """A process killed inside a write transaction leaves a hot journal, which a read-only open
    cannot roll back ("attempt to write a readonly database"): that is SQLite's to recover."""
    db = tmp_path / "optuna.db"
    killed = ("import os, sqlite3, sys\n"
              "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
              "db.execute('create table t (x)')\n"
              "db.execute('pragma cache_size = 1')\n"
              "db.execute('begin')\n"
              "db.executemany('insert into t values (?)', [(b'x' * 4096,) for _ in range(200)])\n"
              "os._exit(0)  # no commit, no rollback: the journal stays hot\n")
    subprocess.run([sys.executable, "-c", killed, str(db)], check=True)
    assert (tmp_path / "optuna.db-journal").exists()
    preflight._check_sqlite(db, "optuna.db")  # no message
    (tmp_path / "optuna.db-journal").unlink()
    db.write_bytes(b"garbage header" * 100)
    with pytest.raises(UserError, match="is not a readable SQLite database"):
        preflight._check_sqlite(db, "optuna.db")

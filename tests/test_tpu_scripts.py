"""tpu_scripts/: shellcheck-clean, and DRY_RUN=1 prints exactly the gcloud commands.

The remote command strings are also executed here by bash against a fake worker home
(a `.venv/bin/python` that records its argv), which checks their quoting end to end.
"""

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "tpu_scripts")
CONFIG = """PROJECT=proj
ZONE=us-central2-b
ACCELERATOR_TYPE=v4-32
RUNTIME_VERSION=tpu-ubuntu2204-base
TPU_NAME=tox
BUCKET=gs://bkt/tox
CORPUS_FILES=gs://bkt/scored/*.jsonl
"""
LOCATION = ["--project=proj", "--zone=us-central2-b"]
SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "tox", *LOCATION]


@pytest.fixture
def env(tmp_path):
    """Dry-run environment whose `gcloud` would fail loudly (and leave a trace) if run."""
    (tmp_path / "tpu.env").write_text(CONFIG)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "gcloud"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/gcloud-ran\nexit 1\n')
    fake.chmod(0o755)
    yield dict(
        os.environ,
        TOXJAX_TPU_ENV=str(tmp_path / "tpu.env"),
        DRY_RUN="1",
        PATH=f"{bin_dir}:{os.environ['PATH']}",
    )
    assert not (tmp_path / "gcloud-ran").exists(), "a dry run ran gcloud"


def _run(env, script, *args, check=True, **extra_env):
    p = subprocess.run(
        [os.path.join(SCRIPTS, script), *args],
        env={**env, **extra_env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert p.returncode == 0, p.stderr
    return p


def _commands(stdout: str) -> list[list[str]]:
    """The printed commands (a remote --command may span lines inside its quotes)."""
    chunks = re.split(r"\n(?=(?:gcloud|git) )", stdout.strip())
    return [shlex.split(c) for c in chunks]


def _remote(cmd: list[str]) -> str:
    (arg,) = [a for a in cmd if a.startswith("--command=")]
    return arg[len("--command=") :]


def test_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    scripts = sorted(glob.glob(os.path.join(SCRIPTS, "*.sh")))
    assert len(scripts) == 8
    p = subprocess.run(["shellcheck", "-x", *scripts], cwd=SCRIPTS, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout


def test_create_status_delete(env):
    create = [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "create",
        "tox",
        *LOCATION,
        "--accelerator-type=v4-32",
        "--version=tpu-ubuntu2204-base",
    ]
    assert _commands(_run(env, "create.sh").stdout) == [create]
    assert _commands(_run(env, "create.sh", SPOT="1").stdout) == [create + ["--spot"]]
    assert _commands(_run(env, "create.sh", QUEUED="1").stdout) == [
        [
            "gcloud",
            "compute",
            "tpus",
            "queued-resources",
            "create",
            "tox",
            "--node-id=tox",
            *LOCATION,
            "--accelerator-type=v4-32",
            "--runtime-version=tpu-ubuntu2204-base",
        ]
    ]
    assert _commands(_run(env, "status.sh").stdout) == [
        ["gcloud", "compute", "tpus", "tpu-vm", "describe", "tox", *LOCATION]
    ]
    assert _commands(_run(env, "delete.sh").stdout) == [
        ["gcloud", "compute", "tpus", "tpu-vm", "delete", "tox", *LOCATION, "--quiet"]
    ]
    assert _commands(_run(env, "delete.sh", QUEUED="1").stdout) == [
        [
            "gcloud",
            "compute",
            "tpus",
            "queued-resources",
            "delete",
            "tox",
            *LOCATION,
            "--force",
            "--quiet",
        ]
    ]


def test_setup_copies_head_and_installs_on_all_workers(env, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    archive, scp, ssh = _commands(_run(env, "setup.sh", TMPDIR=str(tmp)).stdout)
    # The archive goes to a fresh private directory, never to a predictable name...
    local = archive[6]
    assert re.fullmatch(
        re.escape(str(tmp)) + r"/toxjax-src\.[A-Za-z0-9]{8}/toxjax-src\.tar\.gz", local
    )
    assert archive == ["git", "-C", REPO, "archive", "--format=tar.gz", "-o", local, "HEAD"]
    assert list(tmp.iterdir()) == []  # ...removed on exit
    assert scp == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "scp",
        local,
        "tox:toxjax-src.tar.gz",
        *LOCATION,
        "--worker=all",
    ]
    assert ssh[:-1] == [*SSH, "--worker=all"]
    remote = _remote(ssh)
    assert "make install PY=python3.11" in remote
    assert ".venv/bin/pip install -q -e '.[tpu]'" in remote
    assert "--index-url" not in remote
    (_, _, ssh) = _commands(_run(env, "setup.sh", TORCH_INDEX_URL="http://idx/cpu").stdout)
    assert ".venv/bin/pip install -q torch==2.13.0 --index-url http://idx/cpu" in _remote(ssh)


def _fake_worker(tmp_path):
    """A worker home: toxjax/.venv/bin/python appends its argv to argv.jsonl."""
    home = tmp_path / "home"
    venv_bin = home / "toxjax" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    python = venv_bin / "python"
    python.write_text(
        "#!/usr/bin/env python3\nimport json, sys\n"
        f"open({str(home / 'argv.jsonl')!r}, 'a').write("
        "json.dumps(sys.argv[1:]) + '\\n')\nprint('trained')\n"
    )
    python.chmod(0o755)
    return home


def _execute_remote(home, remote: str, expect_runs: int) -> list[list[str]]:
    subprocess.run(["bash", "-c", remote], cwd=home, check=True, timeout=30)
    argv_file = home / "argv.jsonl"
    deadline = time.time() + 20  # detached runs finish in the background
    while time.time() < deadline:
        if argv_file.exists() and len(argv_file.read_text().splitlines()) == expect_runs:
            break
        time.sleep(0.05)
    return [json.loads(line) for line in argv_file.read_text().splitlines()]


def test_train_runs_one_experiment_on_all_workers(env, tmp_path):
    (ssh,) = _commands(_run(env, "train.sh", "inst_1_3b").stdout)
    assert ssh[:-1] == [*SSH, "--worker=all"]
    home = _fake_worker(tmp_path)
    runs = _execute_remote(home, _remote(ssh), 1)
    assert runs == [
        [
            "-m",
            "toxjax.train",
            "--multihost",
            "--gin_file=experiments/inst_1_3b.gin",
            "--gin.MODEL_DIR=gs://bkt/tox/runs/inst_1_3b",
            "--gin.CORPUS_FILES=gs://bkt/scored/*.jsonl",
        ]
    ]
    assert (home / "toxjax" / "logs" / "inst_1_3b.log").read_text() == "trained\n"
    # A run name and extra train flags; the gin path may name gin_configs/.
    (ssh,) = _commands(
        _run(
            env,
            "train.sh",
            "gin_configs/experiments/inst_125m_25pct.gin",
            "lr_test",
            "--",
            "--gin.LEARNING_RATE=1e-4",
        ).stdout
    )
    assert (
        "nohup .venv/bin/python -m toxjax.train --multihost "
        "--gin_file=experiments/inst_125m_25pct.gin --gin.MODEL_DIR=gs://bkt/tox/runs/"
        "lr_test '--gin.CORPUS_FILES=gs://bkt/scored/*.jsonl' --gin.LEARNING_RATE=1e-4 "
        "> logs/lr_test.log 2>&1 < /dev/null &" in _remote(ssh)
    )
    (ssh,) = _commands(_run(env, "train.sh", "inst_125m", FOREGROUND="1").stdout)
    assert _remote(ssh).endswith("2>&1 | tee logs/inst_125m.log")
    assert "nohup" not in _remote(ssh)


def test_sweep_runs_experiments_in_sequence(env, tmp_path):
    files = sorted(glob.glob(os.path.join(REPO, "gin_configs/experiments/inst_1_3b*.gin")))
    (ssh,) = _commands(
        _run(env, "sweep.sh", *files, "--", "--gin.train.log_every=10", SWEEP_NAME="s1").stdout
    )
    home = _fake_worker(tmp_path)
    runs = _execute_remote(home, _remote(ssh), 3)
    names = ["inst_1_3b", "inst_1_3b_25pct", "inst_1_3b_50pct"]
    assert runs == [
        [
            "-m",
            "toxjax.train",
            "--multihost",
            f"--gin_file=experiments/{n}.gin",
            f"--gin.MODEL_DIR=gs://bkt/tox/runs/{n}",
            "--gin.CORPUS_FILES=gs://bkt/scored/*.jsonl",
            "--gin.train.log_every=10",
        ]
        for n in names
    ]
    logs = home / "toxjax" / "logs"
    assert sorted(p.name for p in logs.iterdir()) == sorted(
        [f"{n}.log" for n in names] + ["sweep-s1.sh", "sweep-s1.log"]
    )


def test_logs_follows_worker_0(env):
    (ssh,) = _commands(_run(env, "logs.sh", "inst_1_3b").stdout)
    assert ssh == [*SSH, "--worker=0", "--command=tail -n 200 -F toxjax/logs/inst_1_3b.log"]
    (ssh,) = _commands(_run(env, "logs.sh", "inst_1_3b", "3").stdout)
    assert "--worker=3" in ssh


@pytest.mark.parametrize(
    "script,args,config,message",
    [
        ("create.sh", [], CONFIG.replace("ZONE=us-central2-b\n", ""), "ZONE is not set in"),
        ("train.sh", ["no_such_run"], CONFIG, "no experiment gin_configs/experiments/no_such_run"),
        ("train.sh", ["inst_125m", "bad name"], CONFIG, "run name 'bad name'"),
        ("train.sh", [], CONFIG, "usage:"),
        ("sweep.sh", [], CONFIG, "usage:"),
    ],
)
def test_user_errors_are_named(env, tmp_path, script, args, config, message):
    (tmp_path / "tpu.env").write_text(config)
    p = _run(env, script, *args, check=False)
    assert p.returncode == 2 and message in p.stderr, p.stderr
    assert p.stdout == ""


def test_missing_config_file_says_what_to_do(env, tmp_path):
    p = _run(env, "create.sh", check=False, TOXJAX_TPU_ENV=str(tmp_path / "nope.env"))
    assert p.returncode == 2 and "config.env.example" in p.stderr


def test_a_second_launch_of_a_running_run_is_refused_before_it_touches_the_log(env, tmp_path):
    (ssh,) = _commands(_run(env, "train.sh", "inst_1_3b").stdout)
    remote = _remote(ssh)
    home = tmp_path / "home"
    venv_bin = home / "toxjax" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    python = venv_bin / "python"  # a trainer that runs until it is stopped
    python.write_text(
        "#!/usr/bin/env python3\nimport os, time\n"
        f"open({str(home / 'pid')!r}, 'w').write(str(os.getpid()))\n"
        "print('training', flush=True)\ntime.sleep(120)\n"
    )
    python.chmod(0o755)
    subprocess.run(["bash", "-c", remote], cwd=home, check=True, timeout=30)
    deadline = time.time() + 20
    while not (home / "pid").exists() and time.time() < deadline:
        time.sleep(0.05)
    pid = int((home / "pid").read_text())
    log = home / "toxjax" / "logs" / "inst_1_3b.log"
    try:
        while "training" not in log.read_text() and time.time() < deadline:
            time.sleep(0.05)
        second = subprocess.run(
            ["bash", "-c", remote], cwd=home, capture_output=True, text=True, timeout=30
        )
        assert second.returncode == 2, second.stderr
        assert second.stderr == (
            "train.sh: a trainer of gs://bkt/tox/runs/inst_1_3b is already running on "
            f"{os.uname().nodename} (pid {pid}): wait for it or stop it, or choose another "
            "run name\n"
        )
        assert log.read_text() == "training\n"  # the running run's log is untouched
        # Another run on the same worker is not held back by this one.
        (other,) = _commands(_run(env, "train.sh", "inst_1_3b", "other").stdout)
        assert "pgrep" in _remote(other) and "runs/other( |$)" in _remote(other)
    finally:
        os.kill(pid, 9)


def test_sweep_refuses_run_names_that_would_inject_into_the_remote_command(env, tmp_path):
    """Issue 24 item 13: a gin file named `a;touch pwned.gin` named the run `a;touch
    pwned`, which went unquoted into the remote script (`> logs/a;touch pwned.log`).
    sweep.sh validates run names as train.sh does (one check, in common.sh)."""
    evil = tmp_path / "gin" / "a;touch pwned.gin"
    evil.parent.mkdir()
    evil.write_text("include 'experiments/inst_125m.gin'\n")
    # experiment_path accepts any path below a gin_configs/ folder, `..` included.
    spelled = "gin_configs/" + "../" * 40 + str(evil).lstrip("/")
    good = os.path.join(REPO, "gin_configs/experiments/inst_125m.gin")
    for args, extra in (([good, spelled], {}), ([good], {"SWEEP_NAME": "s;touch pwned"})):
        p = _run(env, "sweep.sh", *args, check=False, **extra)
        assert p.returncode == 2 and p.stdout == "", p.stderr
        name = "a;touch pwned" if not extra else "s;touch pwned"
        what = "run name" if not extra else "SWEEP_NAME"
        assert p.stderr == (
            f"sweep.sh: {what} '{name}': use letters, digits, '.', '_' and '-' (it names "
            f"{'MODEL_DIR and the log' if not extra else 'the sweep script and its log'})\n"
        )
    # train.sh gives the same message (the shared check).
    p = _run(env, "train.sh", "inst_125m", "a;b", check=False)
    assert p.returncode == 2 and p.stderr == (
        "train.sh: run name 'a;b': use letters, digits, '.', '_' and '-' (it names MODEL_DIR "
        "and the log)\n"
    )

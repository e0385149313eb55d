"""`WriterLock`: a second writer is refused naming the holder; a dead holder's lock is taken."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from toxjax import locking

_HOLD = textwrap.dedent("""
    import sys, time
    from toxjax.locking import WriterLock
    lock = WriterLock(sys.argv[1], "the test output").acquire()
    print("held", flush=True)
    time.sleep(600)
""")


def _hold_in_child(path):
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    path = tmp_path / "out.jsonl.lock"
    child = _hold_in_child(path)
    try:
        with pytest.raises(locking.LockHeldError) as e:
            locking.WriterLock(str(path), "the test output").acquire()
        msg = str(e.value)
        assert f"pid {child.pid} on host {os.uname().nodename}" in msg
        assert msg.startswith("the test output is being written by another process")
    finally:
        child.kill()
        child.wait()


def test_lock_of_a_killed_process_is_taken_over_with_a_note(tmp_path):
    path = tmp_path / "LOCK"
    child = _hold_in_child(path)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert path.exists()  # kill -9 leaves the file behind
    lock = locking.WriterLock(str(path), "the run").acquire()
    assert lock.note is not None and f"pid {child.pid}" in lock.note
    assert "no longer running" in lock.note
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not path.exists()
    with locking.WriterLock(str(path), "the run") as again:
        assert again.note is None  # a clean release leaves nothing stale


def test_remote_lease_refuses_a_live_holder_and_takes_over_an_expired_one(monkeypatch):
    monkeypatch.setattr(locking.WriterLock, "settle_seconds", 0.0)
    url = f"ram://locks-{os.getpid()}/run/LOCK"
    first = locking.WriterLock(url, "the run", lease_seconds=60).acquire()
    try:
        with pytest.raises(locking.LockHeldError, match=f"pid {os.getpid()}"):
            locking.WriterLock(url, "the run", lease_seconds=60).acquire()
    finally:
        first.release()
    # A holder on another host that stopped renewing its lease (a preempted pod).
    import tensorflow as tf

    assert not tf.io.gfile.exists(url)  # released
    with tf.io.gfile.GFile(url, "w") as f:
        f.write(
            json.dumps(
                {
                    "host": "tpu-worker-0",
                    "pid": 1,
                    "heartbeat": time.time() - 120,
                    "token": "old",
                    "started": "earlier",
                    "command": "train",
                }
            )
        )
    second = locking.WriterLock(url, "the run", lease_seconds=0.2).acquire()
    assert "tpu-worker-0" in second.note and "silent for" in second.note
    second.check()
    # Someone else rewrote the lock: the heartbeat notices and check() says so.
    tf.io.gfile.remove(url)
    with tf.io.gfile.GFile(url, "w") as f:
        f.write(
            json.dumps({"host": "elsewhere", "pid": 7, "heartbeat": time.time(), "token": "thief"})
        )
    deadline = time.time() + 10
    while second._lost is None and time.time() < deadline:
        time.sleep(0.05)
    with pytest.raises(
        locking.LockHeldError, match="lost the lock on the run: .* pid 7 on host elsewhere"
    ):
        second.check()
    second.release()
    assert tf.io.gfile.exists(url)  # the thief's lock is not removed


# ----------------------------------------------------------------------------- issue 24 item 6
def _victim(tmp_path, text="precious data\n"):
    victim = tmp_path / "victim.txt"
    victim.write_text(text)
    return victim


@pytest.mark.parametrize("plant", ["symlink", "hardlink", "directory", "fifo", "foreign file"])
def test_a_planted_lock_file_is_refused_and_nothing_is_written_through_it(tmp_path, plant):
    """A lock file toxjax did not create is never truncated or written: a symlink (to any
    file), a hard link, a directory, a FIFO (no hang) or another program's file there is
    refused with one line naming it; what it points to is unchanged."""
    victim = _victim(tmp_path)
    path = tmp_path / "out.jsonl.lock"
    if plant == "symlink":
        os.symlink(victim, path)
    elif plant == "hardlink":
        os.link(victim, path)
    elif plant == "directory":
        path.mkdir()
    elif plant == "fifo":
        os.mkfifo(path)
    else:
        path.write_text("precious data\n")
    with pytest.raises(locking.UnsafeLockError) as e:
        locking.WriterLock(str(path), "the test output").acquire()
    msg = str(e.value)
    assert msg.startswith(f"{path} ") and "\n" not in msg
    want = {
        "symlink": f"is a symbolic link (to {victim})",
        "hardlink": "is not a toxjax lock file",
        "directory": "is a directory, not a lock file",
        "fifo": "is a pipe, not a lock file",
        "foreign file": "is not a toxjax lock file",
    }[plant]
    assert want in msg, msg
    assert victim.read_text() == "precious data\n"
    assert os.path.lexists(path)  # refused, not removed: it is not ours


def test_a_stale_lock_is_replaced_by_a_new_file_never_rewritten_in_place(tmp_path):
    """Taking over a dead writer's lock makes a new file (a new inode): a hard link to the
    old lock keeps the old content, so nothing outside the lock file is ever truncated."""
    path = tmp_path / "LOCK"
    child = _hold_in_child(path)
    child.send_signal(signal.SIGKILL)
    child.wait()
    os.link(path, tmp_path / "old-lock")
    stale = (tmp_path / "old-lock").read_text()
    with locking.WriterLock(str(path), "the run") as lock:
        assert f"pid {child.pid}" in lock.note
        assert json.loads(path.read_text())["pid"] == os.getpid()
        assert (tmp_path / "old-lock").read_text() == stale
    assert not path.exists()


def test_planted_lock_symlinks_are_refused_by_score_and_train(tmp_path, capsys):
    """Through the CLI: `<output>.lock` and `MODEL_DIR/LOCK` symlinks to a file."""
    from toxjax import cli

    victim = _victim(tmp_path)
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "hello"}\n')
    out = tmp_path / "out.jsonl"
    os.symlink(victim, str(out) + ".lock")
    with pytest.raises(SystemExit) as e:
        cli.main(["score", "--input", str(src), "--output", str(out)])
    assert e.value.code == 2
    assert capsys.readouterr().err == (
        f"toxjax score: {out}.lock is a symbolic link (to {victim}); toxjax writes its lock "
        "files itself and never through a link: remove it (no toxjax process uses it) and "
        "rerun\n"
    )
    assert victim.read_text() == "precious data\n" and not out.exists()

    import gin

    run = tmp_path / "run"
    run.mkdir()
    os.symlink(victim, run / "LOCK")
    gin.clear_config()
    rc = cli.main(
        [
            "train",
            "--gin_file=runs/pretrain.gin",
            "--gin_file=models/test.gin",
            f"--gin.MODEL_DIR={run}",
            "--gin.TASK='test_fortunes_bytes_v1'",
            "--gin.SEQUENCE_LENGTH=64",
            "--gin.BATCH_SIZE=8",
            "--gin.NUM_STEPS=2",
            "--gin.train.module_imports=['task_fixtures']",
        ]
    )
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err
    assert f"toxjax train: {run}/LOCK is a symbolic link (to {victim})" in err
    assert victim.read_text() == "precious data\n"
    assert sorted(os.listdir(run)) == ["LOCK"]  # refused before anything was written

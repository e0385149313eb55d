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

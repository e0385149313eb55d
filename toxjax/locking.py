"""One writer per output: an exclusive lock file that names its holder.

Two `toxjax score` runs appending to one output, or two trainers writing one MODEL_DIR,
each believe they own the files and silently interleave their records. `WriterLock`
refuses the second writer with a message naming the first (host, pid, start time,
command), and takes over the lock of a writer that is gone, saying so.

- Local paths use `fcntl.flock` on the lock file: the kernel releases the lock when its
  process dies (even by `kill -9`), so a lock file left behind by a dead process is
  recognised as stale exactly, and taken over with a note.
- A lock file is only ever written by the process that created it (`O_CREAT | O_EXCL`),
  and opened with `O_NOFOLLOW`: a stale lock is unlinked (while locked) and made anew,
  never truncated in place, so a planted symlink or hard link cannot make toxjax
  overwrite another file. A symlink, a directory, a FIFO or a file that is not a toxjax
  lock at the lock's path is refused (`UnsafeLockError`), never removed.
- Remote paths (`gs://...`, anything with `://`) cannot be flock'ed; there the lock file
  is a lease: the holder rewrites its heartbeat every `lease_seconds / 4` from a
  background thread, and a lock whose heartbeat is older than `lease_seconds` (a
  preempted pod, a killed VM) is taken over. A writer that finds the lock rewritten by
  someone else learns it from `check()` and must stop.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid

from toxjax import fileio

DEFAULT_LEASE_SECONDS = 300.0


class LockHeldError(RuntimeError):
    """Another live process holds the lock."""


class UnsafeLockError(LockHeldError):
    """Something that is not a toxjax lock file is at the lock's path (a symlink, a
    directory, another program's file): the lock cannot be taken without writing over it.

    A `LockHeldError`, so every caller that refuses a held lock refuses this too.
    """


_HOLDER_KEYS = {"host", "pid", "token"}  # what every toxjax lock file holds


def _describe(holder: dict) -> str:
    cmd = holder.get("command") or "?"
    if len(cmd) > 160:
        cmd = cmd[:157] + "..."
    return (
        f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
        f"(started {holder.get('started', '?')}: {cmd})"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WriterLock:
    """An exclusive lock on `path` (a lock file), held by this process until `release()`.

    Args:
      path: the lock file, e.g. `<output>.lock` or `<model_dir>/LOCK`.
      what: what the lock protects, for messages ("the scored output x.jsonl").
      lease_seconds: remote paths only: a holder silent for this long is presumed dead.

    Use as a context manager, or `acquire()` / `release()`. `note` holds the message
    about a stale lock that was taken over (None when the lock was free).
    """

    settle_seconds = 1.0  # remote: wait between writing the lock and reading it back

    def __init__(self, path: str, what: str, lease_seconds: float = DEFAULT_LEASE_SECONDS):
        self.path, self.what, self.lease_seconds = path, what, lease_seconds
        self.remote = "://" in path
        self.note: str | None = None
        self._fd: int | None = None
        self._token = uuid.uuid4().hex
        self._held = False
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ public
    def acquire(self) -> WriterLock:
        """Takes the lock or raises `LockHeldError` naming the holder."""
        if self._held:
            return self
        (self._acquire_remote if self.remote else self._acquire_local)()
        self._held = True
        return self

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        if self.remote:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            holder = self._read_remote()
            if holder is not None and holder.get("token") == self._token:
                import tensorflow as tf

                tf.io.gfile.remove(self.path)
            return
        try:  # while still locked, and only our own file: the next writer makes a new one
            if os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(self._fd).st_ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def check(self) -> None:
        """Raises `LockHeldError` if another process took the lock over (remote leases)."""
        if self._lost:
            raise LockHeldError(self._lost)

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # ------------------------------------------------------------------ helpers
    def _holder(self) -> dict:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]]),
            "token": self._token,
            "heartbeat": time.time(),
        }

    def _refuse(self, holder: dict) -> LockHeldError:
        return LockHeldError(
            f"{self.what} is being written by another process: {_describe(holder)}. Two "
            f"writers would corrupt it: wait for that process to finish or stop it (its "
            f"lock is {self.path})."
        )

    def _stale_note(self, holder: dict, why: str) -> str:
        return f"note: took over the lock of {_describe(holder)}, {why} ({self.path})"

    # ------------------------------------------------------------------ local: flock
    def _unsafe(self, why: str) -> UnsafeLockError:
        return UnsafeLockError(
            f"{self.path} {why}; toxjax writes its lock files itself and never through a "
            "link: remove it (no toxjax process uses it) and rerun"
            if why.startswith("is a symbolic link")
            else f"{self.path} {why}; move it away (no toxjax process uses it) and rerun"
        )

    def _open_local(self) -> tuple[int, bool]:
        """Opens the lock file without following a link: `(fd, created by us)`."""
        nofollow = os.O_NOFOLLOW | os.O_CLOEXEC
        while True:
            try:
                return os.open(
                    self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | nofollow, 0o644
                ), True
            except FileExistsError:
                pass
            try:
                # O_NONBLOCK: opening a planted FIFO must not wait for a writer.
                return os.open(self.path, os.O_RDWR | os.O_NONBLOCK | nofollow), False
            except FileNotFoundError:
                continue  # its holder removed it in between: create it
            except OSError as e:
                if e.errno == errno.ELOOP:
                    target = os.readlink(self.path)
                    raise self._unsafe(f"is a symbolic link (to {target})") from None
                if e.errno == errno.EISDIR:
                    raise self._unsafe("is a directory, not a lock file") from None
                raise

    def _acquire_local(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        while True:
            fd, created = self._open_local()
            kind = fileio.mode_kind(os.fstat(fd).st_mode)
            if kind is not None:
                os.close(fd)
                raise self._unsafe(f"is {kind}, not a lock file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _parse(_read_fd(fd))
                os.close(fd)
                raise self._refuse(holder) from None
            # The previous holder may have unlinked the file between our open and flock:
            # then we locked an orphaned inode and must retry on the current file.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            if created:
                break
            # A lock left by a writer that is gone. Not written in place: unlinked (while
            # we hold it, so nobody else takes it meanwhile) and created anew by us.
            previous = _read_fd(fd)
            holder = _parse(previous)
            if previous.strip() and not _HOLDER_KEYS <= set(holder):
                os.close(fd)
                raise self._unsafe("exists and is not a toxjax lock file")
            if previous.strip():
                self.note = self._stale_note(holder, "which is no longer running")
            os.unlink(self.path)
            os.close(fd)
        os.write(fd, json.dumps(self._holder()).encode())
        os.fsync(fd)
        self._fd = fd

    # ------------------------------------------------------------------ remote: lease
    def _read_remote(self) -> dict | None:
        import tensorflow as tf

        try:
            with tf.io.gfile.GFile(self.path, "r") as f:
                return _parse(f.read())
        except tf.errors.NotFoundError:
            return None

    def _write_remote(self, holder: dict) -> None:
        fileio.write_text(self.path, json.dumps(holder))  # whole-object replace

    def _acquire_remote(self) -> None:
        holder = self._read_remote()
        if holder is not None:
            age = time.time() - float(holder.get("heartbeat", 0))
            same_host = holder.get("host") == socket.gethostname()
            if same_host and not _pid_alive(int(holder.get("pid", -1))):
                self.note = self._stale_note(holder, "which is no longer running")
            elif age > self.lease_seconds:
                self.note = self._stale_note(holder, f"silent for {age:.0f} s")
            else:
                raise self._refuse(holder)
        self._write_remote(self._holder())
        # Two writers that both found the lock free both write it; the later write wins.
        # Waiting before reading back lets the loser see the winner's token.
        time.sleep(self.settle_seconds)
        now = self._read_remote()
        if now is None or now.get("token") != self._token:
            raise self._refuse(now or {})
        self._thread = threading.Thread(target=self._heartbeat, daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease_seconds / 4):
            holder = self._read_remote()
            if holder is None or holder.get("token") != self._token:
                self._lost = (
                    f"lost the lock on {self.what}: it was taken over by "
                    f"{_describe(holder or {})}; stop this process"
                )
                return
            holder["heartbeat"] = time.time()
            self._write_remote(holder)


def _read_fd(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def _parse(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}

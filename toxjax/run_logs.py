"""What a training run writes besides checkpoints: metrics.jsonl, TensorBoard, text files.

MODEL_DIR may be local or a bucket URL (`gs://...`); file access goes through
`tf.io.gfile`. Object stores cannot append, so for a remote MODEL_DIR the metrics log is
kept in a local mirror and uploaded whole whenever a checkpoint is saved (and at the end).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

import numpy as np
import tensorflow as tf

METRICS_FILE = "metrics.jsonl"


def is_remote(path: str) -> bool:
    return "://" in path


def resolve(path: str) -> str:
    """Absolute local path, or the URL unchanged."""
    return path if is_remote(path) else os.path.abspath(path)


def write_text(path: str, text: str) -> None:
    """Writes a whole file atomically (temporary file, then rename)."""
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def replace_local_file(path: str, lines: list[str]) -> None:
    """Replaces a local file with `lines` atomically and durably.

    The new contents go to a temporary file in the same directory, are fsync'ed, and
    renamed over `path`; the directory is fsync'ed so that the rename survives a power
    cut. A process killed at any moment leaves either the old file or the new one.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # the umask applies
    try:
        with open(fd, "w") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def move_dir(source: str, target: str) -> None:
    """Renames a directory; on an object store (no directory rename) object by object."""
    if not is_remote(source):
        os.rename(source, target)
        return
    for root, _, files in tf.io.gfile.walk(source):
        for name in files:
            path = os.path.join(root, name)
            moved = os.path.join(target, os.path.relpath(path, source))
            tf.io.gfile.makedirs(os.path.dirname(moved))
            tf.io.gfile.rename(path, moved)
    tf.io.gfile.rmtree(source)


def read_text(path: str) -> str:
    with tf.io.gfile.GFile(path, "r") as f:
        return f.read()


class MetricsLog:
    """Per-step metrics as JSON lines in MODEL_DIR/metrics.jsonl, consistent on resume."""

    def __init__(self, model_dir: str):
        self.remote_path = os.path.join(model_dir, METRICS_FILE)
        if is_remote(model_dir):
            self.path = os.path.join(tempfile.mkdtemp(prefix="toxjax-"), METRICS_FILE)
            if tf.io.gfile.exists(self.remote_path):
                with open(self.path, "w") as f:
                    f.write(read_text(self.remote_path))
        else:
            self.path = self.remote_path

    def truncate_after(self, step: int) -> None:
        """On resume, drops lines written after the checkpoint the run resumes from."""
        if not os.path.exists(self.path):
            return
        kept = []
        with open(self.path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a kill; its step is re-run and re-logged
                if rec["step"] <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
        # Rewriting in place would leave an empty log if the process died mid-write:
        # write a sibling file, make it durable, then rename it over the old one.
        replace_local_file(self.path, kept)

    def append(self, records: list[dict]) -> None:
        with open(self.path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)

    def sync(self) -> None:
        """Uploads the local mirror (no-op for a local MODEL_DIR)."""
        if self.path != self.remote_path:
            with open(self.path) as f:
                write_text(self.remote_path, f.read())


def read_metrics(model_dir: str) -> list[dict]:
    """The per-step records of a run directory."""
    text = read_text(os.path.join(model_dir, METRICS_FILE))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class SummaryWriter:
    """TensorBoard scalars under MODEL_DIR/train."""

    def __init__(self, model_dir: str):
        self._writer = tf.summary.create_file_writer(os.path.join(model_dir, "train"))

    def write(self, step: int, scalars: dict) -> None:
        with self._writer.as_default():
            for k, v in scalars.items():
                if k != "step" and np.isfinite(v):
                    tf.summary.scalar(k, v, step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

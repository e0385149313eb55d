"""What a training run writes besides checkpoints: metrics.jsonl, TensorBoard, text files.

MODEL_DIR may be local or a bucket URL (`gs://...`); file access goes through
`tf.io.gfile`. Object stores cannot append, so for a remote MODEL_DIR the metrics log is
kept in a local mirror and uploaded whole whenever a checkpoint is saved (and at the end).
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import tensorflow as tf

from toxjax import fileio

METRICS_FILE = "metrics.jsonl"


def move_dir(source: str, target: str) -> None:
    """Renames a directory; on an object store (no directory rename) object by object."""
    if not fileio.is_remote(source):
        os.rename(source, target)
        return
    for root, _, files in tf.io.gfile.walk(source):
        for name in files:
            path = os.path.join(root, name)
            moved = os.path.join(target, os.path.relpath(path, source))
            tf.io.gfile.makedirs(os.path.dirname(moved))
            tf.io.gfile.rename(path, moved)
    tf.io.gfile.rmtree(source)


class MetricsLog:
    """Per-step metrics as JSON lines in MODEL_DIR/metrics.jsonl, consistent on resume."""

    def __init__(self, model_dir: str):
        self.remote_path = os.path.join(model_dir, METRICS_FILE)
        if fileio.is_remote(model_dir):
            self.path = os.path.join(tempfile.mkdtemp(prefix="toxjax-"), METRICS_FILE)
            if tf.io.gfile.exists(self.remote_path):
                with open(self.path, "w") as f:
                    f.write(fileio.read_text(self.remote_path))
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
        fileio.write_lines(self.path, kept)

    def append(self, records: list[dict]) -> None:
        with open(self.path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)

    def sync(self) -> None:
        """Uploads the local mirror (no-op for a local MODEL_DIR)."""
        if self.path != self.remote_path:
            with open(self.path) as f:
                fileio.write_text(self.remote_path, f.read())


def read_metrics(model_dir: str) -> list[dict]:
    """The per-step records of a run directory."""
    text = fileio.read_text(os.path.join(model_dir, METRICS_FILE))
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

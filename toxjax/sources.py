"""Corpus sources for the SeqIO tasks: scored records from JSON lines, TFRecords or TFDS.

Every source yields the same record schema (`RECORD_SIGNATURE`): "doc_id" (stable: the
file name and line, or a fingerprint of the text), "text", "toxicity" and the optional
per-window scores ("has_windows", "window_start"/"window_end" character offsets,
"window_toxicity"). A malformed JSON line is an error naming its file and line.

- JSON lines written by `toxjax score` (schema in docs/architecture.md);
- TFRecords of `tf.train.Example` with the same fields ("text", "toxicity", and
  optionally "window_start"/"window_end"/"window_toxicity" lists);
- a TFDS name ("tfds:name/config:1.0.0", whose examples carry the text and "toxicity");
- any `seqio.DataSource` yielding those fields.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator, Mapping

import numpy as np
import seqio
import tensorflow as tf

RECORD_SIGNATURE = {
    "doc_id": tf.TensorSpec([], tf.string),
    "text": tf.TensorSpec([], tf.string),
    "toxicity": tf.TensorSpec([], tf.float32),
    "has_windows": tf.TensorSpec([], tf.bool),
    "window_start": tf.TensorSpec([None], tf.int64),
    "window_end": tf.TensorSpec([None], tf.int64),
    "window_toxicity": tf.TensorSpec([None], tf.float32),
}


def _jsonl_records(path: bytes, text_field: bytes) -> Iterator[dict]:
    path, text_field = path.decode(), text_field.decode()
    name = os.path.basename(path)
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e}); fix or remove the line") from e
            if not isinstance(r.get(text_field), str) or not isinstance(
                r.get("toxicity"), int | float
            ):
                raise ValueError(
                    f"{where}: needs a string {text_field!r} and a number 'toxicity'; score "
                    "the corpus with `toxjax score` first (or set text_field=)"
                )
            windows = r.get("windows")
            try:
                spans = [
                    (int(w["start"]), int(w["end"]), float(w["toxicity"])) for w in windows or []
                ]
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(
                    f"{where}: 'windows' must be a list of {{start, end, toxicity}} ({e})"
                ) from e
            yield {
                "doc_id": f"{name}:{n}",
                "text": r[text_field],
                "toxicity": np.float32(r["toxicity"]),
                "has_windows": windows is not None,
                "window_start": np.array([s for s, _, _ in spans], np.int64),
                "window_end": np.array([e for _, e, _ in spans], np.int64),
                "window_toxicity": np.array([t for _, _, t in spans], np.float32),
            }


def _read_jsonl(path: tf.Tensor, text_field: str) -> tf.data.Dataset:
    return tf.data.Dataset.from_generator(
        _jsonl_records, args=(path, text_field), output_signature=RECORD_SIGNATURE
    )


def _read_tfrecord(path: tf.Tensor, text_field: str) -> tf.data.Dataset:
    spec = {
        text_field: tf.io.FixedLenFeature([], tf.string),
        "toxicity": tf.io.FixedLenFeature([], tf.float32),
        "window_start": tf.io.VarLenFeature(tf.int64),
        "window_end": tf.io.VarLenFeature(tf.int64),
        "window_toxicity": tf.io.VarLenFeature(tf.float32),
    }
    name = tf.strings.split(path, "/")[-1]

    def parse(i, serialized):
        r = tf.io.parse_single_example(serialized, spec)
        start = tf.sparse.to_dense(r["window_start"])
        return {
            "doc_id": tf.strings.join([name, tf.strings.as_string(i + 1)], separator=":"),
            "text": r[text_field],
            "toxicity": r["toxicity"],
            "has_windows": tf.size(start) > 0,
            "window_start": start,
            "window_end": tf.sparse.to_dense(r["window_end"]),
            "window_toxicity": tf.sparse.to_dense(r["window_toxicity"]),
        }

    return tf.data.TFRecordDataset(path).enumerate().map(parse)


def examples_to_records(ds: tf.data.Dataset, text_field: str) -> tf.data.Dataset:
    """Generic examples (TFDS, any DataSource) -> the record schema; id = text fingerprint."""

    def fn(x):
        missing = [k for k in (text_field, "toxicity") if k not in x]
        if missing:
            raise ValueError(
                f"corpus examples lack {missing} (have {sorted(x)}); score them with "
                "`toxjax score` or pass text_field="
            )
        has = "window_start" in x
        empty_i, empty_f = tf.zeros([0], tf.int64), tf.zeros([0], tf.float32)
        doc_id = (
            x["doc_id"]
            if "doc_id" in x
            else tf.strings.as_string(tf.fingerprint(tf.reshape(x[text_field], [1]))[0])
        )
        return {
            "doc_id": tf.strings.as_string(doc_id) if doc_id.dtype != tf.string else doc_id,
            "text": x[text_field],
            "toxicity": tf.cast(x["toxicity"], tf.float32),
            "has_windows": tf.constant(has),
            "window_start": tf.cast(x["window_start"], tf.int64) if has else empty_i,
            "window_end": tf.cast(x["window_end"], tf.int64) if has else empty_i,
            "window_toxicity": tf.cast(x["window_toxicity"], tf.float32) if has else empty_f,
        }

    return ds.map(fn)


def make_source(
    source: str | Mapping[str, str] | seqio.DataSource, text_field: str = "text"
) -> tuple[seqio.DataSource, bool]:
    """Builds the seqio DataSource; returns (source, whether records need normalising).

    Args:
      source: a file pattern (`.jsonl`/`.json` or `.tfrecord*`), a {split: pattern}
        mapping ("train" when a single pattern is given), "tfds:<name>", or a DataSource.
      text_field: the field holding the document text.
    """
    if isinstance(source, seqio.DataSource):
        return source, True
    if isinstance(source, str) and source.startswith("tfds:"):
        return seqio.TfdsDataSource(tfds_name=source[len("tfds:") :]), True
    splits = {"train": source} if isinstance(source, str) else dict(source)
    kinds = set()
    for split, pattern in splits.items():
        files = tf.io.gfile.glob(pattern)
        if not files:
            raise FileNotFoundError(
                f"corpus split {split!r}: no file matches {pattern!r}; check the path "
                "(write it with `toxjax score --input ... --output ...`)"
            )
        kinds |= {"tfrecord" if ".tfrecord" in os.path.basename(f) else "jsonl" for f in files}
    if len(kinds) != 1:
        raise ValueError(f"corpus {source!r} mixes JSON lines and TFRecord files; use one kind")
    reader = _read_tfrecord if kinds == {"tfrecord"} else _read_jsonl
    return seqio.FileDataSource(functools.partial(reader, text_field=text_field), splits), False


def _doc_in_fraction(doc_id: tf.Tensor, fraction: float) -> tf.Tensor:
    """Nested subsets: a document kept at 25% is also kept at 50% and 100%."""
    bucket = tf.strings.to_hash_bucket_fast(doc_id, 1_000_000)
    return bucket < int(round(fraction * 1_000_000))


def keep_fraction(ds: tf.data.Dataset, fraction: float) -> tf.data.Dataset:
    """Keeps about `fraction` of the documents, chosen by a hash of their id."""
    if fraction >= 1.0:
        return ds
    return ds.filter(lambda r: _doc_in_fraction(r["doc_id"], fraction))

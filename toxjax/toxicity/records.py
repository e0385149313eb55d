"""Corpus records for annotation: numbered input readers and scored-record assembly.

Shared by the local streaming annotator (`annotate.py`) and the Beam pipeline
(`beam.py`) so both write the same records. Every input record becomes one `Item`, either
with a text to score or with the reason it cannot be scored; nothing is skipped silently.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

from toxjax import fileio
from toxjax.argtypes import non_negative_int, positive_int
from toxjax.toxicity.base import ScoreResult

FORMATS = ("jsonl", "text", "fortune", "tfrecord", "tfds")
TFDS_PREFIX = "tfds:"


def add_record_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags that say how input records become texts and output records (local and Beam)."""
    p = parser
    p.add_argument("--format", choices=FORMATS, help="input format (default: from the name)")
    p.add_argument("--text_field", default="text", help="text field; dotted for nested")
    p.add_argument("--batch_size", type=positive_int, default=256, help="records per scored batch")
    p.add_argument(
        "--window_tokens", type=non_negative_int, default=0, help="also score N-token samples"
    )
    p.add_argument("--window_vocab", default="gpt2", help="'gpt2' or a SentencePiece .model")
    p.add_argument(
        "--max_chars", type=non_negative_int, default=0, help="fail longer texts (0: no limit)"
    )
    return parser


@dataclasses.dataclass
class Item:
    """One input record.

    Attributes:
      line: where it is in the input: the 1-based line for jsonl and text, the first line
        of the entry for `%`-separated text, the 1-based record number for TFRecord/TFDS.
      record: the fields to carry into the output (None when unreadable).
      text: the text to score (None when the record failed).
      error: why the record cannot be scored (None when it can).
      end_offset: byte offset just past the record in a seekable input (for resume).
      next_line: the line number the following record starts on.
    """

    line: int
    record: dict | None
    text: str | None
    error: str | None = None
    end_offset: int | None = None
    next_line: int = 0


def detect_format(path: str) -> str:
    if path.startswith(TFDS_PREFIX):
        return "tfds"
    name = path.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if ".tfrecord" in name:
        return "tfrecord"
    return "text"


def get_field(record: dict, field: str) -> Any:
    """`record[field]`, where a dotted field (`prompt.text`) walks nested objects."""
    value: Any = record
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(field)
        value = value[part]
    return value


def _text_error(text: Any, field: str) -> str | None:
    if not isinstance(text, str):
        return f"field {field!r} is {type(text).__name__}, not a string"
    if not text.strip():
        return f"empty text in field {field!r}"
    return None


def _decode(raw: bytes) -> tuple[str | None, str | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return None, (
            f"not valid UTF-8 ({e.reason} at byte {e.start} of the line); "
            "re-encode the file as UTF-8"
        )


def parse_json_line(raw: bytes, text_field: str) -> tuple[dict | None, str | None, str | None]:
    """One jsonl line -> `(record, text, error)`."""
    line, err = _decode(raw.rstrip(b"\r\n"))
    if err:
        return None, None, err
    if not line.strip():
        return None, None, "blank line, expected a JSON object"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        return None, None, f"malformed JSON: {e.msg} (column {e.colno})"
    if not isinstance(record, dict):
        return None, None, f"expected a JSON object, got {type(record).__name__}"
    try:
        text = get_field(record, text_field)
    except KeyError:
        return (
            record,
            None,
            (f"no field {text_field!r} (fields: {sorted(record)}); pass --text_field"),
        )
    err = _text_error(text, text_field)
    return record, (None if err else text), err


def read_lines(
    path: str, fmt: str, text_field: str = "text", offset: int = 0, line: int = 1
) -> Iterator[Item]:
    """Reads jsonl, one-document-per-line text, or `%`-separated text (`fmt="fortune"`).

    Args:
      path: the file.
      fmt: `"jsonl"`, `"text"` or `"fortune"`.
      text_field: the text's field (jsonl: may be dotted; text: the output field name).
      offset: byte offset to start at (a record boundary, from a previous run).
      line: the line number at `offset`.
    """
    with open(path, "rb") as f:
        f.seek(offset)
        entry: list[bytes] = []
        entry_line = line
        for raw in f:
            offset += len(raw)
            this_line, line = line, line + 1
            if fmt == "fortune":
                if raw.rstrip(b"\r\n") != b"%":
                    if not entry:
                        entry_line = this_line
                    entry.append(raw)
                    continue
                # An empty entry (two '%' lines in a row) is reported at its closing '%'.
                where = entry_line if entry else this_line
                yield _text_item(b"".join(entry), where, text_field, offset, line)
                entry = []
                continue
            if fmt == "jsonl":
                record, text, err = parse_json_line(raw, text_field)
                yield Item(this_line, record, text, err, offset, line)
            else:
                yield _text_item(raw, this_line, text_field, offset, line)
        if entry:
            yield _text_item(b"".join(entry), entry_line, text_field, offset, line)


def _text_item(raw: bytes, line: int, field: str, offset: int, next_line: int) -> Item:
    text, err = _decode(raw)
    if err:
        return Item(line, None, None, err, offset, next_line)
    text = text.removesuffix("\n").removesuffix("\r")
    record = {field: text}
    err = _text_error(text, field)
    return Item(line, record, None if err else text, err, offset, next_line)


def _feature_value(value: Any) -> Any:
    """numpy / bytes feature values -> JSON values (length-1 lists become scalars)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, list):
        value = [_feature_value(v) for v in value]
        return value[0] if len(value) == 1 else value
    if isinstance(value, dict):
        return {k: _feature_value(v) for k, v in value.items()}
    return value


def _example_item(number: int, record: dict, raw_text: Any, text_field: str) -> Item:
    if isinstance(raw_text, bytes):
        text, err = _decode(raw_text)
        if err:
            return Item(number, record, None, err, None, number + 1)
    else:
        text = raw_text
    err = _text_error(text, text_field)
    return Item(number, record, None if err else text, err, None, number + 1)


def read_tfrecord(path: str, text_field: str = "text", skip: int = 0) -> Iterator[Item]:
    """Reads `tf.train.Example` records; the text is a bytes feature `text_field`."""
    import tensorflow as tf

    ds = tf.data.TFRecordDataset(path).skip(skip)
    for number, raw in enumerate(ds.as_numpy_iterator(), start=skip + 1):
        try:
            ex = tf.train.Example.FromString(raw)
        except Exception as e:  # a corrupt proto is that record's failure, not the run's
            yield Item(number, None, None, f"not a tf.train.Example ({e})", None, number + 1)
            continue
        feats = {}
        for k, f in ex.features.feature.items():
            kind = f.WhichOneof("kind")
            feats[k] = list(getattr(f, kind).value) if kind else []
        if text_field not in feats or len(feats[text_field]) != 1:
            yield Item(
                number,
                _feature_value(feats),
                None,
                f"no single-valued feature {text_field!r} (features: {sorted(feats)}); "
                "pass --text_field",
                None,
                number + 1,
            )
            continue
        raw_text = feats[text_field][0]
        yield _example_item(number, _feature_value(feats), raw_text, text_field)


def read_tfds(
    spec: str, split: str, text_field: str = "text", data_dir: str | None = None, skip: int = 0
) -> Iterator[Item]:
    """Reads a TFDS data set (`tfds:<name>[/<config>][:<version>]`), prepared locally."""
    import tensorflow_datasets as tfds

    name = spec.removeprefix(TFDS_PREFIX)
    ds = tfds.load(name, split=split, data_dir=data_dir, shuffle_files=False).skip(skip)
    for number, ex in enumerate(tfds.as_numpy(ds), start=skip + 1):
        record = _feature_value(dict(ex))
        if text_field not in ex:
            yield Item(
                number,
                record,
                None,
                f"no feature {text_field!r} (features: {sorted(ex)}); pass --text_field",
                None,
                number + 1,
            )
            continue
        yield _example_item(number, record, ex[text_field], text_field)


def scored_record(
    record: dict,
    scorer: str,
    doc: ScoreResult,
    spans: Sequence[tuple[int, int]] | None = None,
    window_results: Sequence[ScoreResult] | None = None,
) -> dict:
    """The output record: the input fields plus `toxicity`, `scores`, `scorer`, `windows`."""
    out = dict(record)
    out["toxicity"] = doc.toxicity
    out["scores"] = dict(doc.scores)
    out["scorer"] = scorer
    if spans is not None:
        out["windows"] = [
            {"start": s, "end": e, "toxicity": r.toxicity}
            for (s, e), r in zip(spans, window_results, strict=True)
        ]
    return out


def failed_record(path: str, line: int, error: str) -> dict:
    return {"file": path, "line": line, "error": error}


def score_items(scorer, items: Sequence[Item], windower=None) -> list[tuple[bool, dict]]:
    """Scores a batch of items; returns `(ok, output_record_or_failure_fields)` per item.

    Texts repeated in the batch (a document that is a single sample window, duplicates)
    are scored once.
    """
    spans_of: list[list[tuple[int, int]] | None] = []
    unique: dict[str, int] = {}

    def slot(text: str) -> int:
        return unique.setdefault(text, len(unique))

    for it in items:
        if it.error is not None:
            spans_of.append(None)
            continue
        slot(it.text)
        spans = windower.spans(it.text) if windower is not None else None
        for s, e in spans or ():
            slot(it.text[s:e])
        spans_of.append(spans)
    results = scorer.score(list(unique)) if unique else []
    out: list[tuple[bool, dict]] = []
    for it, spans in zip(items, spans_of, strict=True):
        if it.error is not None:
            out.append((False, {"line": it.line, "error": it.error}))
            continue
        doc = results[unique[it.text]]
        wins = [results[unique[it.text[s:e]]] for s, e in spans] if spans is not None else None
        bad = [(None, doc)] if not doc.ok else []
        bad += [(se, r) for se, r in zip(spans or (), wins or (), strict=True) if not r.ok]
        if bad:
            where, r = bad[0]
            what = "document" if where is None else f"window [{where[0]}, {where[1]})"
            out.append(
                (False, {"line": it.line, "error": f"{scorer.name} failed on {what}: {r.error}"})
            )
        else:
            out.append((True, scored_record(it.record, scorer.name, doc, spans, wins)))
    return out


def dumps(record: dict) -> str:
    # ensure_ascii=False keeps text readable and byte-identical across runs.
    return json.dumps(record, ensure_ascii=False)


def check_input(path: str) -> str | None:
    """Why `path` cannot be read as an input file (None when it can); TFDS names pass."""
    if path.startswith(TFDS_PREFIX):
        return None
    if not os.path.exists(path):
        return f"--input {path!r} does not exist"
    if os.path.isdir(path):
        return (
            f"--input {path!r} is a directory, not a file; give one file, or score many "
            f"files with --beam --input '{os.path.join(path, '*.jsonl')}'"
        )
    # Before any open: opening a FIFO waits for a writer. A pipe (a FIFO, `<(...)`,
    # /dev/stdin) cannot be read twice (hashed, then scored) nor seeked on resume.
    if kind := fileio.file_kind(path):
        return (
            f"--input {path!r} is {kind}, not a regular file: toxjax score reads its input twice (to identify it, then to score "
            "it) and seeks in it to resume; write it to a file first (e.g. `... > corpus.jsonl`)"
        )
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        return f"--input {path!r} cannot be read: {e.strerror}"
    return None

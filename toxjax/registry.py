"""Register a scored corpus as one seqio Task per strategy (and per vocabulary).

    from toxjax import registry, vocab
    registry.register_corpus("mycorpus", "/data/scored-*.jsonl", vocab.Gpt2Vocabulary())
    # -> mycorpus_baseline_v1, mycorpus_meda_v1, mycorpus_inst_v1, mycorpus_filter_v1,
    #    mycorpus_ctrl_v1, mycorpus_mask_v1; switch strategy in gin with
    #    MIXTURE_OR_TASK_NAME = "mycorpus_inst_v1"

Sources: JSON lines written by `toxjax score` (schema in docs/architecture.md), TFRecords
of `tf.train.Example` with the same fields ("text", "toxicity", and optionally
"window_start"/"window_end"/"window_toxicity" lists), a TFDS name ("tfds:name/config:1.0.0",
whose examples carry the text field and "toxicity"), or any `seqio.DataSource` yielding
those fields.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from toxjax.preprocessors import STRATEGIES, AugmentConfig, get_strategy, task_preprocessors
from toxjax.preprocessors.pipeline import token_output_features
from toxjax.vocab import ControlTokenVocabulary

DEFAULT_FRACTIONS = (0.25, 0.5, 1.0)
_RECORD_SIGNATURE = {
    "doc_id": tf.TensorSpec([], tf.string),
    "text": tf.TensorSpec([], tf.string),
    "toxicity": tf.TensorSpec([], tf.float32),
    "has_windows": tf.TensorSpec([], tf.bool),
    "window_start": tf.TensorSpec([None], tf.int64),
    "window_end": tf.TensorSpec([None], tf.int64),
    "window_toxicity": tf.TensorSpec([None], tf.float32),
}


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """What a task registered here is: run.json records it, eval reads it back.

    Attributes:
      task: the seqio task name.
      corpus: the corpus name (first part of the task name).
      strategy: its entry in `toxjax.preprocessors.STRATEGIES`.
      config: the `AugmentConfig` its preprocessors were built with.
      source: the corpus files (pattern, or {split: pattern}), or a description.
      fraction: share of the documents kept.
      version: the `_v{version}` suffix.
    """

    task: str
    corpus: str
    strategy: str
    config: AugmentConfig
    source: str | dict
    fraction: float
    version: int

    def scorer(self) -> str | None:
        """The scorer named in the corpus's first record ("scorer" field of `toxjax
        score` output), or None when unknown (TFRecords, TFDS, other sources)."""
        patterns = self.source.values() if isinstance(self.source, dict) else [self.source]
        for pattern in patterns:
            if not isinstance(pattern, str) or ".tfrecord" in pattern:
                continue
            for path in sorted(tf.io.gfile.glob(pattern))[:1]:
                with tf.io.gfile.GFile(path, "r") as f:
                    for line in f:
                        if line.strip():
                            try:
                                value = json.loads(line).get("scorer")
                            except (json.JSONDecodeError, AttributeError):
                                return None
                            return value if isinstance(value, str) else None
        return None


# task name -> TaskInfo, for every task `register_corpus` registered.
_TASK_INFO: dict[str, TaskInfo] = {}


def task_info(name: str) -> TaskInfo | None:
    """The `TaskInfo` of a task (or of a mixture whose tasks share strategy and config);
    None for tasks registered elsewhere (their strategy is unknown)."""
    if name in _TASK_INFO:
        return _TASK_INFO[name]
    if name in seqio.MixtureRegistry.names():
        infos = [task_info(t.name) for t in seqio.get_mixture_or_task(name).tasks]
        if not infos or any(i is None for i in infos):
            return None
        kinds = {(i.strategy, i.config) for i in infos}
        if len(kinds) > 1:
            raise ValueError(
                f"mixture {name!r} mixes strategies or augmentation configs "
                f"({sorted(i.task for i in infos)}): a model trained on it has no single "
                "conditioning prefix"
            )
        return dataclasses.replace(infos[0], task=name)
    return None


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
        _jsonl_records, args=(path, text_field), output_signature=_RECORD_SIGNATURE
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


def _examples_to_records(ds: tf.data.Dataset, text_field: str) -> tf.data.Dataset:
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


def task_name(
    corpus: str,
    strategy: str,
    vocab_name: str | None = None,
    fraction: float = 1.0,
    version: int = 1,
) -> str:
    """`{corpus}[_{vocab}]_{strategy}[_{pct}pct]_v{version}`."""
    parts = [corpus] + ([vocab_name] if vocab_name else []) + [strategy]
    if fraction < 1.0:
        parts.append(f"{round(fraction * 100):g}pct")
    return "_".join(parts) + f"_v{version}"


def register_corpus(
    name: str,
    source: str | Mapping[str, str] | seqio.DataSource,
    vocabulary: seqio.Vocabulary | Mapping[str, seqio.Vocabulary],
    strategies: Sequence[str] = tuple(STRATEGIES),
    config: AugmentConfig = AugmentConfig(),
    text_field: str = "text",
    fractions: Sequence[float] = (1.0,),
    version: int = 1,
    overwrite: bool = False,
    shuffle_buffer_size: int = seqio.SHUFFLE_BUFFER_SIZE,
) -> list[str]:
    """Registers one seqio Task per (vocabulary, strategy, fraction) over a scored corpus.

    Args:
      name: corpus name, the first part of every task name.
      source: see `make_source`.
      vocabulary: one vocabulary, or {name: vocabulary} to register each (the name goes
        into the task names). `ctrl` tasks wrap it in a `ControlTokenVocabulary`.
      strategies: subset of `STRATEGIES` (the strategy table).
      config: the augmentation config of every registered task (recorded in each
        trained run's run.json). Gin users bind it at the entry point, e.g.
        `scored_corpus_task.augment = @AugmentConfig()` and `AugmentConfig.* = ...`.
      text_field: field holding the text.
      fractions: corpus fractions to register (the sample-scaling ablation); < 1.0 adds
        `_{pct}pct` to the name and keeps a hash-chosen, nested subset of documents.
      version: the `_v{version}` suffix; bump it when the data a name means changes.
      overwrite: replace tasks already registered under these names.
      shuffle_buffer_size: examples in seqio's shuffle buffer. The buffer only mixes
        neighbours: a corpus stored in order (one source after another, up-sampled
        copies next to each other) must be shuffled on disk, or training reads it
        nearly in order and its end depends on where the step budget stops.

    Returns:
      The registered task names.
    """
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; use a subset of {', '.join(STRATEGIES)}")
    if not isinstance(config, AugmentConfig):
        raise TypeError(f"config must be an AugmentConfig, got {type(config).__name__}")
    bad = [f for f in fractions if not 0.0 < f <= 1.0]
    if bad:
        raise ValueError(f"fractions {bad} must be in (0, 1]")
    data_source, generic = make_source(source, text_field)
    vocabs = dict(vocabulary) if isinstance(vocabulary, Mapping) else {None: vocabulary}
    names = []
    for vocab_name, vocab in vocabs.items():
        for strategy in strategies:
            task_vocab = vocab
            extra_tokens = get_strategy(strategy).control_tokens(config)
            if extra_tokens:
                task_vocab = ControlTokenVocabulary(vocab, extra_tokens)
            features = {
                "targets": seqio.Feature(task_vocab, add_eos=True, dtype=tf.int32),
                **token_output_features(strategy, config),  # loss weights, prefix mask
            }
            for fraction in fractions:
                head = (
                    [functools.partial(_examples_to_records, text_field=text_field)]
                    if generic
                    else []
                )
                if fraction < 1.0:
                    head.append(functools.partial(keep_fraction, fraction=fraction))
                task = task_name(name, strategy, vocab_name, fraction, version)
                if overwrite:
                    seqio.TaskRegistry.remove(task)
                seqio.TaskRegistry.add(
                    task,
                    source=data_source,
                    preprocessors=head + task_preprocessors(strategy, config),
                    output_features=features,
                    shuffle_buffer_size=shuffle_buffer_size,
                )
                _TASK_INFO[task] = TaskInfo(
                    task=task,
                    corpus=name,
                    strategy=strategy,
                    config=config,
                    source=dict(source)
                    if isinstance(source, Mapping)
                    else source
                    if isinstance(source, str)
                    else repr(source),
                    fraction=fraction,
                    version=version,
                )
                names.append(task)
    return names


def register_data_fraction_mixtures(
    name: str,
    strategy: str,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    vocab_name: str | None = None,
    version: int = 1,
    overwrite: bool = False,
) -> list[str]:
    """Mixtures for the "scaling the number of samples" ablation of one strategy.

    Needs the fraction tasks (`register_corpus(..., fractions=fractions)`). Registers
    `{task}_mix` per fraction, each a one-task mixture, so every run of the ablation
    binds `MIXTURE_OR_TASK_NAME` to a mixture name and changes only the percentage.

    Returns:
      The mixture names, in the order of `fractions`.
    """
    names = []
    for fraction in fractions:
        task = task_name(name, strategy, vocab_name, fraction, version)
        if task not in seqio.TaskRegistry.names():
            raise ValueError(
                f"task {task!r} is not registered; call register_corpus(..., "
                f"fractions={tuple(fractions)}) first"
            )
        mixture = task.replace(f"_v{version}", f"_mix_v{version}")
        if overwrite:
            seqio.MixtureRegistry.remove(mixture)
        seqio.MixtureRegistry.add(mixture, [(task, 1.0)])
        names.append(mixture)
    return names


def filter_report(
    baseline_task: str, threshold: float | None = None, split: str = "train"
) -> dict[str, float]:
    """How much the filter baseline drops: samples and tokens above `threshold`.

    Args:
      baseline_task: a `*_baseline_v*` task of the corpus.
      threshold: default: the task's `AugmentConfig.filter_threshold`.
      split: the split to count.

    Returns:
      {"samples", "tokens", "dropped_samples", "dropped_tokens", "dropped_token_share"}.
    """
    if threshold is None:
        info = task_info(baseline_task)
        threshold = (info.config if info else AugmentConfig()).filter_threshold
    ds = seqio.get_mixture_or_task(baseline_task).get_dataset(
        None, split=split, shuffle=False, use_cached=False, seed=0
    )
    out = {"samples": 0, "tokens": 0, "dropped_samples": 0, "dropped_tokens": 0}
    for x in ds.as_numpy_iterator():
        n = len(x["targets"])
        drop = x["toxicity"] > np.float32(threshold)
        out["samples"] += 1
        out["tokens"] += n
        out["dropped_samples"] += int(drop)
        out["dropped_tokens"] += n * int(drop)
    out["dropped_token_share"] = out["dropped_tokens"] / max(out["tokens"], 1)
    return out

"""Register a scored corpus as one seqio Task per strategy (and per vocabulary).

    from toxjax import registry, vocab
    registry.register_corpus("mycorpus", "/data/scored-*.jsonl", vocab.Gpt2Vocabulary())
    # -> mycorpus_baseline_v1, mycorpus_meda_v1, mycorpus_inst_v1, mycorpus_filter_v1,
    #    mycorpus_ctrl_v1, mycorpus_mask_v1; switch strategy in gin with
    #    MIXTURE_OR_TASK_NAME = "mycorpus_inst_v1"

Sources (`toxjax.sources`): JSON lines written by `toxjax score` (schema in
docs/architecture.md), TFRecords of `tf.train.Example` with the same fields, a TFDS name
("tfds:name/config:1.0.0"), or any `seqio.DataSource` yielding those fields.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from toxjax.preprocessors import STRATEGIES, AugmentConfig, get_strategy, task_preprocessors
from toxjax.preprocessors.pipeline import token_output_features
from toxjax.sources import examples_to_records, keep_fraction, make_source
from toxjax.vocab import ControlTokenVocabulary

DEFAULT_FRACTIONS = (0.25, 0.5, 1.0)


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
      source: see `toxjax.sources.make_source`.
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
                    [functools.partial(examples_to_records, text_field=text_field)]
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

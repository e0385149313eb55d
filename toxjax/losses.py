"""Cross-entropy and per-token log-likelihood of a decoder LM's logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_log_likelihood(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(target) per position: `[b, l, v], [b, l] -> [b, l]` float32."""
    logits = logits.astype(jnp.float32)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return target_logit - jax.nn.logsumexp(logits, axis=-1)


@jax.custom_vjp
def _weighted_nll_sum(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
    return _nll_fwd(logits, targets, weights)[0]


def _nll_fwd(logits, targets, weights):
    logits32 = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits32, axis=-1)
    target_logit = jnp.take_along_axis(logits32, targets[..., None], axis=-1)[..., 0]
    return jnp.sum((lse - target_logit) * weights), (logits, targets, weights, lse)


def _nll_bwd(res, g):
    # d/dlogits = (softmax - onehot) * weight, in one elementwise pass: autodiff of the
    # gather would scatter into a zeroed [b, l, v] buffer and add it to the softmax
    # term (two extra passes over the largest tensor of the step).
    logits, targets, weights, lse = res
    vocab_ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    probs = jnp.exp(logits.astype(jnp.float32) - lse[..., None])
    onehot = (vocab_ids == targets[..., None]).astype(jnp.float32)
    dlogits = (probs - onehot) * (weights * g)[..., None]
    return dlogits.astype(logits.dtype), None, None


_weighted_nll_sum.defvjp(_nll_fwd, _nll_bwd)


def cross_entropy(
    logits: jax.Array, targets: jax.Array, weights: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Summed weighted cross-entropy and the summed weights (normalise by the latter).

    Returning sums keeps gradient accumulation and cross-device reduction exact: the
    mean over a global batch is `sum(loss) / sum(weights)` however it is split.
    """
    weights = weights.astype(jnp.float32)
    return _weighted_nll_sum(logits, targets, weights), jnp.sum(weights)

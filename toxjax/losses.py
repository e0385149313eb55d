"""Cross-entropy and per-token log-likelihood of a decoder LM's logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_log_likelihood(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(target) per position: `[b, l, v], [b, l] -> [b, l]` float32."""
    logits = logits.astype(jnp.float32)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return target_logit - jax.nn.logsumexp(logits, axis=-1)


def cross_entropy(
    logits: jax.Array, targets: jax.Array, weights: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Summed weighted cross-entropy and the summed weights (normalise by the latter).

    Returning sums keeps gradient accumulation and cross-device reduction exact: the
    mean over a global batch is `sum(loss) / sum(weights)` however it is split.
    """
    weights = weights.astype(jnp.float32)
    nll = -token_log_likelihood(logits, targets)
    return jnp.sum(nll * weights), jnp.sum(weights)

"""Cross-entropy and per-token log-likelihood of a decoder LM's logits, whole or from
the hidden states through a fused, chunked LM head."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from toxjax import sharding as sh


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


# ---------------------------------------------------------------- fused LM head + loss
#
# The logits of a 50k vocabulary are the largest tensor of a small model's step
# ([b, l, v] float32, plus the same again for their gradient). The functions below take
# the final hidden states and the output projection instead and run the head and the
# loss over `chunk` positions at a time, so at most `[b, chunk, v]` float32 exists at
# once. The forward pass of the loss also computes its gradient chunk by chunk (the
# head's input and weight gradients are small), so nothing is recomputed: the backward
# pass only scales them by the incoming cotangent.


def _chunks(x: jax.Array, chunk: int, fill=0) -> jax.Array:
    """`[b, l, ...] -> [n, b, chunk, ...]`, padding the length to a multiple of `chunk`."""
    b, length = x.shape[:2]
    n = -(-length // chunk)
    pad = n * chunk - length
    if pad:
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
    return x.reshape((b, n, chunk) + x.shape[2:]).swapaxes(0, 1)


def _unchunk(x: jax.Array, length: int) -> jax.Array:
    """Inverse of `_chunks`: `[n, b, chunk, ...] -> [b, length, ...]`."""
    x = x.swapaxes(0, 1)
    return x.reshape((x.shape[0], -1) + x.shape[3:])[:, :length]


def _chunk_logits(hidden: jax.Array, head: jax.Array) -> jax.Array:
    # As DecoderLM computes them: a matmul in the compute dtype, then float32.
    logits = jnp.einsum("bce,ve->bcv", hidden, head).astype(jnp.float32)
    return sh.constrain(logits, (sh.BATCH, sh.LENGTH, sh.ACT_VOCAB))


def _head_scan(hidden, head, targets, weights, chunk: int, grads: bool):
    """Summed weighted NLL and, with `grads`, its gradients w.r.t. hidden and head."""
    length = hidden.shape[1]
    xs = (_chunks(hidden, chunk), _chunks(targets, chunk), _chunks(weights, chunk))

    def body(carry, x):
        loss, d_head = carry
        h, t, w = x
        logits = _chunk_logits(h, head)
        lse = jax.nn.logsumexp(logits, axis=-1)
        target_logit = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
        loss = loss + jnp.sum((lse - target_logit) * w)
        if not grads:
            return (loss, d_head), None
        # (softmax - onehot) * weight, as `_nll_bwd`, then the head's two matmuls.
        vocab_ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 2)
        probs = jnp.exp(logits - lse[..., None])
        dlogits = (probs - (vocab_ids == t[..., None])) * w[..., None]
        dlogits = dlogits.astype(head.dtype)
        d_hidden = jnp.einsum("bcv,ve->bce", dlogits, head)
        d_head = d_head + jnp.einsum("bce,bcv->ve", h, dlogits, preferred_element_type=jnp.float32)
        return (loss, sh.constrain(d_head, (sh.VOCAB, sh.EMBED))), d_hidden

    init = (jnp.zeros((), jnp.float32), jnp.zeros(head.shape if grads else (), jnp.float32))
    (loss, d_head), d_hidden = jax.lax.scan(body, init, xs)
    if not grads:
        return loss
    return loss, _unchunk(d_hidden, length), d_head.astype(head.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _head_nll_sum(hidden, head, targets, weights, chunk):
    return _head_scan(hidden, head, targets, weights, chunk, grads=False)


def _head_nll_fwd(hidden, head, targets, weights, chunk):
    loss, d_hidden, d_head = _head_scan(hidden, head, targets, weights, chunk, grads=True)
    return loss, (d_hidden, d_head)


def _head_nll_bwd(chunk, res, g):
    del chunk
    d_hidden, d_head = res
    return (d_hidden * g).astype(d_hidden.dtype), (d_head * g).astype(d_head.dtype), None, None


_head_nll_sum.defvjp(_head_nll_fwd, _head_nll_bwd)


def head_cross_entropy(
    hidden: jax.Array, head: jax.Array, targets: jax.Array, weights: jax.Array, chunk: int
) -> tuple[jax.Array, jax.Array]:
    """`cross_entropy(hidden @ head.T, targets, weights)` without the whole logits.

    Args:
      hidden: `[b, l, e]` final hidden states (`DecoderLM.head_inputs`).
      head: `[v, e]` output projection, same dtype as `hidden`.
      targets: `[b, l]` int target ids.
      weights: `[b, l]` loss weights.
      chunk: positions per slice of the sequence (the last slice is padded).

    Returns:
      Summed weighted cross-entropy and summed weights, as `cross_entropy`.
    """
    weights = weights.astype(jnp.float32)
    return _head_nll_sum(hidden, head, targets, weights, chunk), jnp.sum(weights)


def head_token_log_likelihood(
    hidden: jax.Array, head: jax.Array, targets: jax.Array, chunk: int
) -> jax.Array:
    """`token_log_likelihood(hidden @ head.T, targets)` chunk by chunk: `[b, l]` float32."""
    return head_token_scores(hidden, head, targets, chunk)[0]


def token_scores(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per position: log p(target) `[b, l]` float32, and whether the target is the
    argmax `[b, l]` bool (what zero-shot evals need: likelihoods and greedy matches)."""
    return token_log_likelihood(logits, targets), jnp.argmax(logits, axis=-1) == targets


def head_token_scores(
    hidden: jax.Array, head: jax.Array, targets: jax.Array, chunk: int
) -> tuple[jax.Array, jax.Array]:
    """`token_scores(hidden @ head.T, targets)` chunk by chunk (the logits never whole)."""
    length = hidden.shape[1]

    def body(_, x):
        h, t = x
        logits = _chunk_logits(h, head)
        target_logit = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
        ll = target_logit - jax.nn.logsumexp(logits, axis=-1)
        return None, (ll, jnp.argmax(logits, axis=-1) == t)

    _, (ll, greedy) = jax.lax.scan(body, None, (_chunks(hidden, chunk), _chunks(targets, chunk)))
    return _unchunk(ll, length), _unchunk(greedy, length)

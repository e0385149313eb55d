"""Pure train / eval / score steps. No I/O; jitted by the caller with explicit shardings.

A batch is seqio's packed decoder features, each `[batch, length]`:
`decoder_input_tokens`, `decoder_target_tokens`, `decoder_loss_weights`,
`decoder_segment_ids`, `decoder_positions`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from toxjax import losses
from toxjax.train_state import TrainState

Batch = dict[str, jax.Array]


def _forward(model: nn.Module, params, batch: Batch, rng=None) -> jax.Array:
    rngs = {"dropout": rng} if rng is not None else None
    return model.apply(
        {"params": params},
        batch["decoder_input_tokens"],
        positions=batch.get("decoder_positions"),
        segment_ids=batch.get("decoder_segment_ids"),
        rngs=rngs,
    )


def _loss_sums(model, params, batch, rng):
    logits = _forward(model, params, batch, rng)
    return losses.cross_entropy(
        logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"]
    )


def all_finite(tree) -> jax.Array:
    """Scalar bool: every floating-point element of `tree` is finite."""
    checks = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return functools.reduce(jnp.logical_and, checks, jnp.array(True))


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    grad_accum_steps: int = 1,
    dropout_seed: int = 0,
    param_shardings: Any = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update on a global batch, accumulated over microbatches.

    The loss is the mean over every loss-weighted token of the global batch, whatever
    the microbatch split (sums are accumulated, normalised once). A step whose loss or
    gradient is not finite leaves the state unchanged and reports `nonfinite=1`, so the
    caller can stop without ever saving a poisoned state. With `param_shardings`, the
    accumulated gradients are constrained to the parameters' shardings (else XLA may
    keep the loop-carried sum replicated: a full copy of the parameters per device).
    """
    rng = jax.random.fold_in(jax.random.key(dropout_seed), state.step)
    use_rng = getattr(model, "deterministic", True) is False

    def grad_fn(params, micro, i):
        r = jax.random.fold_in(rng, i) if use_rng else None
        (loss_sum, weight_sum), grads = jax.value_and_grad(
            lambda p: _loss_sums(model, p, micro, r), has_aux=True
        )(params)
        return loss_sum, weight_sum, grads

    if grad_accum_steps == 1:
        loss_sum, weight_sum, grads = grad_fn(state.params, batch, 0)
    else:
        # Microbatch i takes rows i, i + A, i + 2A, ...: every device holding a block of
        # the batch contributes to every microbatch, so none idles.
        micro = jax.tree.map(
            lambda x: x.reshape(
                (x.shape[0] // grad_accum_steps, grad_accum_steps) + x.shape[1:]
            ).swapaxes(0, 1),
            batch,
        )

        def shard_like_params(tree):
            if param_shardings is None:
                return tree
            return jax.lax.with_sharding_constraint(tree, param_shardings)

        def body(carry, xs):
            i, mb = xs
            l_sum, w_sum, g = grad_fn(state.params, mb, i)
            l_acc, w_acc, g_acc = carry
            return (
                l_acc + l_sum,
                w_acc + w_sum,
                shard_like_params(jax.tree.map(jnp.add, g_acc, g)),
            ), None

        zeros = (
            jnp.zeros((), jnp.float32),
            jnp.zeros((), jnp.float32),
            shard_like_params(jax.tree.map(jnp.zeros_like, state.params)),
        )
        (loss_sum, weight_sum, grads), _ = jax.lax.scan(
            body, zeros, (jnp.arange(grad_accum_steps), micro)
        )

    denom = jnp.maximum(weight_sum, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    loss = loss_sum / denom
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    # A finite loss and gradient can still give a non-finite update (an overflowing
    # learning rate): the state that is accepted, and later checkpointed, must be finite.
    finite = finite & all_finite((new_params, new_opt_state))
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    new_state = TrainState(
        step=state.step + 1,
        params=keep(new_params, state.params),
        opt_state=keep(new_opt_state, state.opt_state),
    )
    metrics = {
        "loss": loss,
        "grad_norm": grad_norm,
        "learning_rate": schedule(state.step),
        "tokens": weight_sum,
        "nonfinite": 1 - finite.astype(jnp.int32),
    }
    return new_state, metrics


def eval_step(params, batch: Batch, *, model: nn.Module) -> dict[str, jax.Array]:
    """Summed loss and weight of a batch (perplexity = exp(sum loss / sum weight))."""
    loss_sum, weight_sum = _loss_sums(model, params, batch, None)
    return {"loss_sum": loss_sum, "weight_sum": weight_sum}


def score_step(params, batch: Batch, *, model: nn.Module) -> jax.Array:
    """Per-token log-likelihood of the targets, `[batch, length]`, zero where unweighted."""
    logits = _forward(model, params, batch)
    ll = losses.token_log_likelihood(logits, batch["decoder_target_tokens"])
    return ll * batch["decoder_loss_weights"].astype(ll.dtype)


def jit_train_step(step_fn: Any, state_shardings, batch_sharding, metric_sharding=None):
    """Jits a (partially applied) train step once, donating the old state."""
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, metric_sharding),
        donate_argnums=0,
    )

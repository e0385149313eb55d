"""Pure train / eval / score steps (no I/O), and the one builder of the train step.

A batch is seqio's packed decoder features (`FEATURES`), each `[batch, length]` int32:
`decoder_input_tokens`, `decoder_target_tokens`, `decoder_loss_weights`,
`decoder_segment_ids`, `decoder_positions`.

`build_train_step` is the only place that wires model, optimizer, shardings and the
jitted step: `toxjax train`, `toxjax compile-check` and the benchmarks all call it, so
what is compiled ahead of time is what trains.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding

from toxjax import attention, losses
from toxjax import sharding as sh
from toxjax.train_state import TrainState, abstract_state, create_train_state

Batch = dict[str, jax.Array]
FEATURES = (
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
    "decoder_segment_ids",
    "decoder_positions",
)


def _forward(model: nn.Module, params, batch: Batch, rng=None, method=None):
    rngs = {"dropout": rng} if rng is not None else None
    return model.apply(
        {"params": params},
        batch["decoder_input_tokens"],
        positions=batch.get("decoder_positions"),
        segment_ids=batch.get("decoder_segment_ids"),
        rngs=rngs,
        method=method,
    )


def _logits_chunk(model: nn.Module) -> int | None:
    """`ModelConfig.logits_chunk`: run the LM head and the loss chunk by chunk."""
    config = getattr(model, "config", None)
    return getattr(config, "logits_chunk", None)


def _loss_sums(model, params, batch, rng):
    targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
    chunk = _logits_chunk(model)
    if chunk:
        hidden, head = _forward(model, params, batch, rng, method="head_inputs")
        return losses.head_cross_entropy(hidden, head, targets, weights, chunk)
    logits = _forward(model, params, batch, rng)
    return losses.cross_entropy(logits, targets, weights)


def all_finite(tree) -> jax.Array:
    """Scalar bool: every floating-point element of `tree` is finite."""
    checks = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return functools.reduce(jnp.logical_and, checks, jnp.array(True))


def commit(finite: jax.Array, new, old):
    """`new` where the scalar `finite` holds, else `old` (trees of the same structure)."""
    return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)


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
    params, opt_state = commit(finite, (new_params, new_opt_state), (state.params, state.opt_state))
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
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


def score_step(params, batch: Batch, *, model: nn.Module) -> tuple[jax.Array, jax.Array]:
    """Per-token scores of the targets, each `[batch, length]`: the log-likelihood (zero
    where unweighted) and whether the target is the model's argmax. The evals score text
    through this (with `ModelConfig.logits_chunk`, the logits are never whole)."""
    targets = batch["decoder_target_tokens"]
    chunk = _logits_chunk(model)
    if chunk:
        hidden, head = _forward(model, params, batch, method="head_inputs")
        ll, greedy = losses.head_token_scores(hidden, head, targets, chunk)
    else:
        ll, greedy = losses.token_scores(_forward(model, params, batch), targets)
    return ll * batch["decoder_loss_weights"].astype(ll.dtype), greedy


def jit_train_step(step_fn: Any, state_shardings, batch_sharding, metric_sharding=None):
    """Jits a (partially applied) train step once, donating the old state."""
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, metric_sharding),
        donate_argnums=0,
    )


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """The jitted train step and everything it was built from.

    Attributes:
      model, tx, schedule: the model, the optax chain and its learning-rate schedule.
      mesh: the device mesh the step is sharded over.
      abstract_state: the train state's shapes, dtypes and shardings (nothing allocated).
      state_shardings: the same tree of `NamedSharding`s.
      batch_sharding: the sharding of every `[batch, length]` feature.
      batch_size, seq_len: the global batch the step takes.
      fn: `(state, batch) -> (state, metrics)`, jitted once, donating the old state.
    """

    model: nn.Module
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    mesh: Mesh
    abstract_state: Any
    state_shardings: Any
    batch_sharding: NamedSharding
    batch_size: int
    seq_len: int
    fn: Callable

    def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
        shape = (self.batch_size, self.seq_len)
        return {
            k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=self.batch_sharding)
            for k in FEATURES
        }

    def init(self, rng) -> TrainState:
        """A fresh state, born sharded."""
        state, _ = create_train_state(self.model, self.tx, self.seq_len, self.mesh, rng)
        return state

    def lower(self):
        """The step lowered for the abstract state and batch (nothing allocated)."""
        with jax.set_mesh(self.mesh):
            return self.fn.lower(self.abstract_state, self.abstract_batch())

    def __call__(self, state, batch: Batch):
        with jax.set_mesh(self.mesh):
            return self.fn(state, batch)


def build_train_step(
    model_config,
    optimizer,
    *,
    num_steps: int,
    batch_size: int,
    seq_len: int,
    mesh: Mesh,
    grad_accum_steps: int = 1,
    seed: int = 0,
) -> TrainStep:
    """Builds the train step of a run. The one place that does (see the module docstring).

    Args:
      model_config: a `toxjax.model.ModelConfig` with its vocabulary size resolved.
      optimizer: a `toxjax.optim.OptimizerConfig`.
      num_steps: the run's total steps (the schedule's length).
      batch_size: global rows per step.
      seq_len: packed length of a row.
      mesh: the `('data', 'fsdp', 'tensor')` mesh.
      grad_accum_steps: microbatches per step.
      seed: the dropout seed.

    Raises:
      ValueError: the batch does not split over the microbatches and the batch axes.
    """
    from toxjax.model import DecoderLM
    from toxjax.optim import make_optimizer, make_schedule

    rows = mesh.shape[sh.DATA] * mesh.shape[sh.FSDP]
    if grad_accum_steps < 1 or batch_size % (rows * grad_accum_steps):
        raise ValueError(
            f"batch_size {batch_size} must divide over the data x fsdp mesh axes "
            f"({mesh.shape[sh.DATA]} x {mesh.shape[sh.FSDP]}) times grad_accum_steps "
            f"({grad_accum_steps})"
        )
    if model_config.position == "learned" and seq_len > model_config.max_len:
        raise ValueError(
            f"sequence length {seq_len} exceeds ModelConfig.max_len {model_config.max_len}"
        )
    # A forced attention kernel the mesh's platform cannot run: one line, before any work.
    attention.candidates(model_config.attention, mesh.devices.flat[0].platform)
    model = DecoderLM(model_config, deterministic=model_config.dropout_rate == 0)
    tx = make_optimizer(optimizer, num_steps)
    schedule = make_schedule(optimizer, num_steps)
    abstract, shardings = abstract_state(model, tx, seq_len, mesh)
    batch_sharding = sh.batch_sharding(mesh, 2)
    step_fn = functools.partial(
        train_step,
        model=model,
        tx=tx,
        schedule=schedule,
        grad_accum_steps=grad_accum_steps,
        dropout_seed=seed,
        param_shardings=shardings.params,
    )
    return TrainStep(
        model=model,
        tx=tx,
        schedule=schedule,
        mesh=mesh,
        abstract_state=abstract,
        state_shardings=shardings,
        batch_sharding=batch_sharding,
        batch_size=batch_size,
        seq_len=seq_len,
        fn=jit_train_step(step_fn, shardings, batch_sharding),
    )

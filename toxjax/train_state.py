"""The training state pytree, its logical partitioning, and sharded initialisation.

State is born sharded: `jax.eval_shape(init)` gives the abstract state with logical
axis metadata, that becomes `NamedSharding`s, and `jax.jit(init, out_shardings=...)`
materialises every array directly on its devices.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from jax.sharding import Mesh

from toxjax import sharding as sh


@flax.struct.dataclass
class TrainState:
    """step: scalar int32; params: model parameters; opt_state: optax state."""

    step: jax.Array
    params: Any
    opt_state: Any


class MissingAxesError(ValueError):
    """A parameter was created without logical axis names."""


def validate_param_axes(boxed_params) -> None:
    """Every parameter must carry logical axes (each has a sharding decision)."""
    leaves = jax.tree_util.tree_flatten_with_path(
        boxed_params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )[0]
    missing = [
        jax.tree_util.keystr(path)
        for path, leaf in leaves
        if not isinstance(leaf, nn.LogicallyPartitioned)
    ]
    if missing:
        raise MissingAxesError(
            "parameters created without logical axis names (use "
            f"nn.with_logical_partitioning): {', '.join(missing)}"
        )


def _init_fn(model: nn.Module, tx: optax.GradientTransformation, seq_len: int):
    def init(rng):
        tokens = jnp.zeros((1, seq_len), jnp.int32)
        boxed = model.init(rng, tokens)["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=boxed, opt_state=tx.init(boxed))

    return init


def abstract_state(model: nn.Module, tx: optax.GradientTransformation, seq_len: int, mesh: Mesh):
    """Shapes, dtypes and shardings of the train state, without allocating it.

    Returns:
      (abstract_state, state_shardings): a pytree of `jax.ShapeDtypeStruct` carrying
      their `NamedSharding`s, and the same tree of shardings.
    """
    boxed = jax.eval_shape(_init_fn(model, tx, seq_len), jax.random.key(0))
    validate_param_axes(boxed.params)
    specs = nn.get_partition_spec(boxed)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, sh.LOGICAL_RULES)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.unbox(boxed), shardings
    )
    return abstract, shardings


def create_train_state(
    model: nn.Module, tx: optax.GradientTransformation, seq_len: int, mesh: Mesh, rng
) -> tuple[TrainState, Any]:
    """Initialises the state directly into its shardings; returns (state, shardings)."""
    _, shardings = abstract_state(model, tx, seq_len, mesh)
    init = _init_fn(model, tx, seq_len)
    with jax.set_mesh(mesh):
        state = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(rng)
    return state, shardings


def state_from_params(
    params, tx: optax.GradientTransformation, shardings, mesh: Mesh
) -> TrainState:
    """A fresh state around given parameters (step 0, the optimizer's initial state), born
    sharded: each host array is cut straight into its devices' shards (on every process,
    from its own host copy), never gathered on one device.

    Args:
      params: the parameter tree, host arrays of the model's shapes and dtypes.
      tx: the optimizer (`TrainStep.tx`).
      shardings: the state's shardings (`TrainStep.state_shardings`).
      mesh: the mesh (`TrainStep.mesh`).

    Raises:
      ValueError: a tree or a shape that is not the model's (naming the parameter).
    """
    want = jax.tree_util.tree_flatten_with_path(shardings.params)[0]
    have = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    if set(have) != {p for p, _ in want}:
        missing = [jax.tree_util.keystr(p) for p, _ in want if p not in have]
        extra = [jax.tree_util.keystr(p) for p in have if p not in dict(want)]
        raise ValueError(
            f"the parameters are not the model's (missing {missing or 'none'}, "
            f"unexpected {extra or 'none'})"
        )

    def place(path, sharding):
        x = have[path]
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    placed = jax.tree_util.tree_unflatten(
        jax.tree.structure(shardings.params), [place(p, s) for p, s in want]
    )

    def init(p):
        return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p))

    with jax.set_mesh(mesh):
        return jax.jit(init, out_shardings=shardings, donate_argnums=0)(placed)


def param_count(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))

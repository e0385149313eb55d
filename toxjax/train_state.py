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


def param_count(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))

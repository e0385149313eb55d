"""Logical axis names, the logical->mesh rules, mesh construction and constraints.

Every parameter and every constrained activation names its dimensions with the
logical axes below; `LOGICAL_RULES` maps them onto the physical mesh axes
`('data', 'fsdp', 'tensor')`. The rule list is short on purpose: it is reviewed as a
whole (tests check that every axis the model uses has a rule and that no array maps
two of its dimensions onto the same mesh axis).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Physical mesh axes.
DATA = "data"
FSDP = "fsdp"
TENSOR = "tensor"
MESH_AXES = (DATA, FSDP, TENSOR)

# Logical axes: parameters.
VOCAB = "vocab"
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV = "kv"  # per-head feature dimension
LAYERS = "layers"  # stacked (scanned) layer axis
POSITION = "position"  # learned position table rows
NORM = "norm"  # LayerNorm scale / bias, output biases
QKV = "qkv"  # the 3-way q/k/v axis of the fused attention projection
KV_HEADS = "kv_heads"  # key/value heads of grouped-query attention (fewer than HEADS)
# Logical axes: activations.
BATCH = "activation_batch"
LENGTH = "activation_length"
ACT_EMBED = "activation_embed"
ACT_HEADS = "activation_heads"
ACT_MLP = "activation_mlp"
ACT_VOCAB = "activation_vocab"
CACHE_LENGTH = "cache_length"

# Logical axis -> mesh axis (or None: replicated). Parameters are sharded over 'fsdp'
# on their embed dimension and over 'tensor' on heads / mlp / vocab (Megatron style);
# activations are sharded over ('data', 'fsdp') on batch and 'tensor' on heads / mlp.
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    (BATCH, (DATA, FSDP)),
    (LENGTH, None),
    (ACT_EMBED, None),
    (ACT_HEADS, TENSOR),
    (ACT_MLP, TENSOR),
    (ACT_VOCAB, TENSOR),
    (CACHE_LENGTH, None),
    (EMBED, FSDP),
    (VOCAB, TENSOR),
    (MLP, TENSOR),
    (HEADS, TENSOR),
    (KV, None),
    (LAYERS, None),
    (POSITION, None),
    (NORM, None),
    (QKV, None),
    # GQA models have few key/value heads (1-8), often fewer than 'tensor' shards, and
    # their kernels are small: replicated over 'tensor' (still 'fsdp' on embed).
    (KV_HEADS, None),
)


def make_mesh(
    shape: Sequence[int] = (-1, 1, 1),
    axis_names: Sequence[str] = MESH_AXES,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """Builds a device mesh; one entry of `shape` may be -1, meaning "the rest".

    Args:
      shape: size of each mesh axis, e.g. `(-1, 1, 1)` for pure data parallelism or
        `(2, 2, 2)` for data x fsdp x tensor.
      axis_names: names of the mesh axes.
      devices: devices to use (default: all of `jax.devices()`).

    An explicit shape smaller than the device count uses the first devices only.

    Returns:
      A `jax.sharding.Mesh` whose device order follows `jax.devices()`, so a
      multi-host mesh puts each host's devices contiguously on the leading axes.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = list(shape)
    if len(shape) != len(axis_names):
        raise ValueError(f"mesh shape {shape} does not match axis names {tuple(axis_names)}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one axis may be -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(
                f"mesh shape {shape}: {len(devices)} devices are not divisible by {known}"
            )
        shape[shape.index(-1)] = len(devices) // known
    if -1 not in shape and math.prod(shape) < len(devices):
        # An explicit smaller mesh (e.g. (1, 1, 1) for a single-device reference run).
        logging.warning(
            "mesh %s uses %d of %d devices", tuple(shape), math.prod(shape), len(devices)
        )
        devices = devices[: math.prod(shape)]
    if math.prod(shape) != len(devices):
        raise ValueError(
            f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices, "
            f"but {len(devices)} are available"
        )
    return Mesh(np.asarray(devices).reshape(shape), tuple(axis_names))


def logical_to_spec(logical_axes: Sequence[str | None]) -> PartitionSpec:
    """Maps logical axis names to a `PartitionSpec` with `LOGICAL_RULES`."""
    return nn.logical_to_mesh_axes(tuple(logical_axes), LOGICAL_RULES)


def logical_sharding(mesh: Mesh, logical_axes: Sequence[str | None]) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes))


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Constrains an activation's sharding by logical axes; a no-op outside a mesh."""
    return nn.with_logical_constraint(x, tuple(logical_axes), rules=LOGICAL_RULES)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding of a `[batch, ...]` input array: batch over ('data', 'fsdp')."""
    return logical_sharding(mesh, (BATCH,) + (None,) * (ndim - 1))


def spec_conflicts(spec: PartitionSpec) -> list[str]:
    """Mesh axes that a spec uses for more than one dimension (must be empty)."""
    seen: list[str] = []
    dup: list[str] = []
    for entry in spec:
        names = entry if isinstance(entry, tuple) else (entry,)
        for name in names:
            if name is None:
                continue
            (dup if name in seen else seen).append(name)
    return dup

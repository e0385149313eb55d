"""Attention behind one seam: the model calls `attention(...)`, a table picks the kernel.

    out = attention(q, k, v, q_segments, kv_segments, impl="auto")

Every implementation computes the same function (the `xla` one is the reference):
query `i` attends key `j` iff `kv_segments[j] != 0`, `q_segments[i] == kv_segments[j]`
and `kv_pos[j] <= q_pos[i]` (causal); the rows of padding queries (`q_segments == 0`)
are zero. Packed documents are runs of one segment id (seqio numbers them 1, 2, ...),
so they never attend across a boundary. Keys and values may have fewer heads than the
queries (grouped-query attention): query head `i` reads key/value head `i // (h / k)`.

`IMPLEMENTATIONS` is the one table of kernels (their code and limits:
`toxjax.attention_kernels`); `AUTO` says which ones `"auto"` tries on
each platform, first choice first. A kernel that cannot take an input (dtype, head dim,
sequence length, dropout, a KV-cache offset) falls back to the next one in that order
with an `AttentionFallbackWarning` naming why; a name the platform cannot run at all is
an `AttentionConfigError` (one line, naming the options). The Pallas kernels run on any
platform in interpret mode under the names `pallas_gpu_interpret` / `splash_interpret`
(slow: for CPU tests and debugging).

Under a mesh, the kernels run per shard (`jax.shard_map`): batch over the axes of
`sharding.BATCH`, heads over those of `sharding.ACT_HEADS`, the sequence whole.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from toxjax import sharding as sh
from toxjax.attention_kernels import (
    Problem,
    cudnn_kernel,
    cudnn_limits,
    interpreted,
    pallas_gpu_kernel,
    pallas_gpu_limits,
    splash_kernel,
    splash_limits,
)
from toxjax.errors import ConfigError

Array = jax.Array
AUTO_NAME = "auto"


class AttentionConfigError(ConfigError):
    """A forced attention implementation that this platform cannot run, or an unknown name."""


class AttentionFallbackWarning(UserWarning):
    """A kernel could not take this input; the next implementation ran instead."""


@dataclasses.dataclass(frozen=True)
class Implementation:
    """One entry of the table.

    Attributes:
      name: the `ModelConfig.attention` value.
      platforms: platforms it compiles for (`None`: any).
      kernel: `(q, k, v, segment_ids, block) -> out` on one shard, self-attention only,
        `[b, l, h, d]` in and out, `segment_ids [b, l]`; None for the dense reference.
      limits: `Problem -> reason it cannot take it`, or None when it can.
    """

    name: str
    platforms: tuple[str, ...] | None
    kernel: Callable | None
    limits: Callable[[Problem], str | None]


# ---------------------------------------------------------------- the reference


def attention_mask(q_segments: Array, k_segments: Array, q_pos: Array, k_pos: Array) -> Array:
    """Boolean `[b, 1, l, s]` mask: causal, within one packed document, not padding.

    Args:
      q_segments: `[b, l]` segment id of each query (0 = padding).
      k_segments: `[b, s]` segment id of each key / cache slot (0 = padding or empty).
      q_pos: `[b, l]` or `[l]` causal index of each query (its slot in the sequence).
      k_pos: `[s]` causal index of each key.
    """
    if q_pos.ndim == 1:
        q_pos = q_pos[None]
    causal = k_pos[None, None, :] <= q_pos[:, :, None]  # [b|1, l, s]
    same = q_segments[:, :, None] == k_segments[:, None, :]
    valid = k_segments[:, None, :] != 0
    return (causal & same & valid)[:, None]


def xla_attention(
    q: Array,
    k: Array,
    v: Array,
    q_segments: Array,
    kv_segments: Array,
    q_pos: Array,
    kv_pos: Array,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
) -> Array:
    """Dense attention, `[b, l, h, d] x [b, s, k, d] -> [b, l, h, d]`: float32 `[b, h, l, s]`
    scores, any query/key layout (KV cache), dropout on the probabilities, `k` key/value
    heads dividing the `h` query heads (grouped without repeating the keys)."""
    mask = attention_mask(q_segments, kv_segments, q_pos, kv_pos)
    b, length, heads, d = q.shape
    groups = heads // k.shape[2]
    if groups > 1:  # [b, l, k, g, d]: the g query heads of each key/value head
        q = q.reshape(b, length, k.shape[2], groups, d)
        logits = jnp.einsum("blkgd,bskd->bkgls", q, k).reshape(b, heads, length, k.shape[1])
    else:
        logits = jnp.einsum("blhd,bshd->bhls", q, k)
    logits = logits.astype(jnp.float32) * (d**-0.5)
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
    if dropout_rate > 0 and dropout_rng is not None:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0).astype(q.dtype)
    if groups > 1:
        probs = probs.reshape(b, k.shape[2], groups, length, k.shape[1])
        return jnp.einsum("bkgls,bskd->blkgd", probs, v).reshape(b, length, heads, d)
    return jnp.einsum("bhls,bshd->blhd", probs, v)


IMPLEMENTATIONS: dict[str, Implementation] = {
    impl.name: impl
    for impl in (
        Implementation("xla", None, None, lambda p: None),
        Implementation(
            "cudnn", ("gpu",), functools.partial(cudnn_kernel, interpret=False), cudnn_limits
        ),
        Implementation(
            "pallas_gpu",
            ("gpu",),
            functools.partial(pallas_gpu_kernel, interpret=False),
            pallas_gpu_limits,
        ),
        Implementation(
            "splash", ("tpu",), functools.partial(splash_kernel, interpret=False), splash_limits
        ),
        Implementation(
            "pallas_gpu_interpret", None, interpreted(pallas_gpu_kernel), pallas_gpu_limits
        ),
        Implementation("splash_interpret", None, interpreted(splash_kernel), splash_limits),
    )
}
NAMES = (AUTO_NAME, *IMPLEMENTATIONS)

# What "auto" tries per platform, first choice first (the rest are fallbacks). On a GPU
# the Pallas kernel comes first because it takes the packing as segment ids (cuDNN needs
# a [b, 1, l, l] mask); benchmarks/train_step_accel.py times both, exactness checked.
AUTO: dict[str, tuple[str, ...]] = {
    "tpu": ("splash", "xla"),
    "gpu": ("pallas_gpu", "cudnn", "xla"),
    "cpu": ("xla",),
}


def _platform_name(platform: str) -> str:
    return {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)


def runs_on(name: str, platform: str) -> bool:
    platforms = IMPLEMENTATIONS[name].platforms
    return platforms is None or _platform_name(platform) in platforms


def options(platform: str) -> list[str]:
    """The names `ModelConfig.attention` may take on `platform`."""
    return [AUTO_NAME] + [n for n in IMPLEMENTATIONS if runs_on(n, platform)]


def portable(name: str, platform: str) -> str:
    """`name` if it runs on `platform`, else "auto" (a run trained elsewhere)."""
    if name == AUTO_NAME or name not in IMPLEMENTATIONS or runs_on(name, platform):
        return name
    logging.info("attention %r does not run on %s: using %r", name, platform, AUTO_NAME)
    return AUTO_NAME


def check_name(name: str) -> None:
    if name not in NAMES:
        raise AttentionConfigError(
            f"ModelConfig.attention={name!r} is not an attention implementation; "
            f"choose one of {', '.join(map(repr, NAMES))}"
        )


def candidates(name: str, platform: str) -> tuple[str, ...]:
    """Implementations to try, in order, for `ModelConfig.attention = name` on `platform`.

    Raises:
      AttentionConfigError: unknown name, or one that cannot run on this platform.
    """
    check_name(name)
    platform = _platform_name(platform)
    order = AUTO.get(platform, ("xla",))
    if name == AUTO_NAME:
        return order
    if not runs_on(name, platform):
        raise AttentionConfigError(
            f"ModelConfig.attention={name!r} cannot run on {platform}; choose one of "
            f"{', '.join(map(repr, options(platform)))}"
        )
    rest = order[order.index(name) + 1 :] if name in order else ()
    return (name, *rest) if "xla" in rest or name == "xla" else (name, *rest, "xla")


def select(name: str, platform: str, problem: Problem) -> str:
    """The implementation that runs `problem`: the first candidate whose limits allow it.

    A candidate that cannot take the input is skipped with an `AttentionFallbackWarning`.
    """
    tried = candidates(name, platform)
    for i, cand in enumerate(tried):
        reason = IMPLEMENTATIONS[cand].limits(problem)
        if reason is None:
            return cand
        warnings.warn(
            f"attention: {cand} cannot take this input ({reason}); using {tried[i + 1]}",
            AttentionFallbackWarning,
            stacklevel=3,
        )
    raise AssertionError("xla takes every input")  # pragma: no cover


# ---------------------------------------------------------------- the seam


def context_mesh():
    """The mesh the caller traces under (`jax.set_mesh`), or None."""
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh.empty else mesh


def target_platform(mesh=None) -> str:
    """The platform being compiled for: the mesh's devices' (an AOT compile for TPU from a
    CPU host), else the default backend."""
    if isinstance(mesh, jax.sharding.Mesh):
        return _platform_name(mesh.devices.flat[0].platform)
    if mesh is not None:  # an AbstractMesh (what `jax.set_mesh` exposes while tracing)
        device = getattr(mesh, "abstract_device", None)
        if device is not None and getattr(device, "platform", None):
            return _platform_name(device.platform)
    return _platform_name(jax.default_backend())


def _mesh_axes(mesh, logical: str) -> tuple[str, ...]:
    entry = sh.logical_to_spec((logical,))[0]
    names = entry if isinstance(entry, tuple) else (entry,)
    return tuple(n for n in names if n is not None and n in mesh.axis_names)


def _shards(mesh, axes: tuple[str, ...]) -> int:
    return int(np.prod([mesh.shape[a] for a in axes])) if axes else 1


def attention(
    q: Array,
    k: Array,
    v: Array,
    q_segments: Array,
    kv_segments: Array,
    q_pos: Array | None = None,
    kv_pos: Array | None = None,
    *,
    impl: str = AUTO_NAME,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
    block: int | None = None,
) -> Array:
    """Causal multi-head attention within packed documents.

    Args:
      q: `[b, l, h, d]` queries (not scaled: the seam applies `d ** -0.5`).
      k, v: `[b, s, k, d]` keys and values; `k` divides `h` (grouped-query attention:
        the dense path groups, the fused kernels get them repeated to `h` heads).
      q_segments: `[b, l]` int segment id of each query (0 = padding).
      kv_segments: `[b, s]` int segment id of each key (0 = padding / empty slot).
      q_pos, kv_pos: `[b, l]` (or `[l]`) and `[s]` causal indices; both None for
        self-attention (`l == s`, query i at key slot i, segments the same array), the
        layout the fused kernels take.
      impl: `ModelConfig.attention`: "auto" or a name in `IMPLEMENTATIONS`.
      dropout_rate, dropout_rng: dropout on the probabilities (dense path only).
      block: tile size for the fused kernels (None: chosen from the sequence length).

    Returns:
      `[b, l, h, d]` in `q`'s dtype; rows of padding queries are zero.
    """
    b, length, heads, d = q.shape
    aligned = q_pos is None and kv_pos is None
    mesh = context_mesh()
    batch_axes = _mesh_axes(mesh, sh.BATCH) if mesh is not None else ()
    head_axes = _mesh_axes(mesh, sh.ACT_HEADS) if mesh is not None else ()
    problem = Problem(
        batch=b,
        q_len=length,
        kv_len=k.shape[1],
        heads=heads,
        head_dim=d,
        dtype=np.dtype(q.dtype).name,
        self_attention=aligned,
        dropout=dropout_rate > 0 and dropout_rng is not None,
        batch_shards=_shards(mesh, batch_axes) if mesh is not None else 1,
        head_shards=_shards(mesh, head_axes) if mesh is not None else 1,
    )
    name = select(impl, target_platform(mesh), problem)
    if name == "xla":
        if aligned:
            q_pos = kv_pos = jnp.arange(length)
        out = xla_attention(
            q, k, v, q_segments, kv_segments, q_pos, kv_pos, dropout_rate, dropout_rng
        )
    else:
        if k.shape[2] != heads:  # the kernels take as many key/value heads as queries
            k, v = (jnp.repeat(x, heads // k.shape[2], axis=2) for x in (k, v))
        kernel = functools.partial(IMPLEMENTATIONS[name].kernel, block=block)
        if mesh is not None and mesh.size > 1:
            qkv = PartitionSpec(batch_axes or None, None, head_axes or None, None)
            seg = PartitionSpec(batch_axes or None, None)
            kernel = jax.shard_map(
                kernel, mesh=mesh, in_specs=(qkv, qkv, qkv, seg), out_specs=qkv, check_vma=False
            )
        out = kernel(q, k, v, q_segments)
    return jnp.where((q_segments != 0)[:, :, None, None], out, 0).astype(q.dtype)


__all__ = [
    "AUTO",
    "AttentionConfigError",
    "AttentionFallbackWarning",
    "IMPLEMENTATIONS",
    "NAMES",
    "Problem",
    "attention",
    "attention_mask",
    "candidates",
    "options",
    "portable",
    "select",
    "xla_attention",
]

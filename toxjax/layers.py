"""Transformer building blocks; every parameter is created with logical axis names.

Shapes use b = batch, l = query length, s = key length (or cache slots),
h = heads, k = key/value heads (GQA; k == h without it), d = head dim, e = embed, m = mlp.

The defaults are GPT-2's block (LayerNorm, GELU-tanh MLP, biases, sequential residual);
the other settings express GPT-NeoX / Pythia (parallel residual, partial rotary) and
Llama (RMSNorm, SwiGLU, no biases, grouped-query attention) exactly.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from toxjax import sharding as sh
from toxjax.attention import attention

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """What a transformer block needs to know (a slice of `ModelConfig`)."""

    embed_dim: int
    num_heads: int
    head_dim: int
    mlp_dim: int
    rotary: bool
    dropout_rate: float
    layer_norm_eps: float
    init_std: float
    residual_init_std: float
    dtype: Any
    param_dtype: Any
    attention: str = "auto"
    num_kv_heads: int | None = None  # None: num_heads (no grouping)
    norm: str = "layernorm"  # a key of NORMS
    activation: str = "gelu_tanh"  # a key of ACTIVATIONS
    gated_mlp: bool = False
    attention_bias: bool = True
    mlp_bias: bool = True
    parallel_residual: bool = False
    rotary_dims: int | None = None  # leading dims of each head that rotate; None: all
    rotary_base: float = 10_000.0

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads


# MLP activations by name (HF: gelu_new / gelu_pytorch_tanh = gelu_tanh, gelu = exact erf).
ACTIVATIONS = {
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
}


def _param(module: nn.Module, name: str, init, shape, axes, dtype):
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: Array, scale: Array, bias: Array, eps: float) -> Array:
    """LayerNorm over the last axis in float32, `[..., e] -> [..., e]`.

    A hand-written backward pass: autodiff of the normalisation keeps many float32
    intermediates alive and XLA:CPU duplicates them into several fusions; the closed
    form below reads `x` and `dy` once each (about 7% of a training step's memory
    traffic at width 256).
    """
    return _layer_norm_fwd(x, scale, bias, eps)[0]


def _layer_norm_fwd(x, scale, bias, eps):
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    xc = x32 - mean
    inv = jax.lax.rsqrt(jnp.square(xc).mean(-1, keepdims=True) + eps)
    xhat = xc * inv
    y = (xhat * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)
    return y, (xhat, inv, scale)


def _layer_norm_bwd(eps, res, dy):
    del eps
    xhat, inv, scale = res
    dy32 = dy.astype(jnp.float32)
    g = dy32 * scale.astype(jnp.float32)
    dx = inv * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    red = tuple(range(dy.ndim - 1))
    dscale = (dy32 * xhat).sum(red).astype(scale.dtype)
    dbias = dy32.sum(red).astype(scale.dtype)
    return dx.astype(dy.dtype), dscale, dbias


layer_norm.defvjp(lambda x, s, b, eps: _layer_norm_fwd(x, s, b, eps), _layer_norm_bwd)


class LayerNorm(nn.Module):
    """Pre-LN LayerNorm with float32 statistics; params on the replicated `norm` axis."""

    eps: float
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: Array) -> Array:
        e = x.shape[-1]
        scale = _param(self, "scale", nn.initializers.ones, (e,), (sh.NORM,), self.param_dtype)
        bias = _param(self, "bias", nn.initializers.zeros, (e,), (sh.NORM,), self.param_dtype)
        return layer_norm(x.astype(self.dtype), scale, bias, self.eps)


class RMSNorm(nn.Module):
    """RMSNorm (Llama): `x * rsqrt(mean(x^2) + eps) * scale`, statistics in float32."""

    eps: float
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = _param(
            self, "scale", nn.initializers.ones, (x.shape[-1],), (sh.NORM,), self.param_dtype
        )
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.eps)
        return (y * scale.astype(jnp.float32)).astype(self.dtype)


NORMS = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}


def make_norm(cfg: BlockConfig, name: str) -> nn.Module:
    """The block's normalisation (`cfg.norm`) as a submodule called `name`."""
    return NORMS[cfg.norm](cfg.layer_norm_eps, cfg.dtype, cfg.param_dtype, name=name)


def rotary(x: Array, positions: Array, max_wavelength: float = 10_000.0) -> Array:
    """Rotary position embedding (half-split convention) of `x [b, l, h, d]`."""
    d = x.shape[-1]
    freq = max_wavelength ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)  # [d/2]
    angle = positions[..., None].astype(jnp.float32) * freq  # [b, l, d/2]
    sin, cos = jnp.sin(angle)[:, :, None, :], jnp.cos(angle)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def partial_rotary(x: Array, positions: Array, dims: int | None, base: float) -> Array:
    """Rotary on the first `dims` features of each head (GPT-NeoX `rotary_pct`), the rest
    passed through; `dims` None (or the head dim) rotates all of them."""
    if dims is None or dims == x.shape[-1]:
        return rotary(x, positions, base)
    return jnp.concatenate([rotary(x[..., :dims], positions, base), x[..., dims:]], axis=-1)


class Attention(nn.Module):
    """Multi-head causal self-attention with a fused QKV projection and a KV cache.

    The attention itself goes through `toxjax.attention.attention` (implementation
    `cfg.attention`): training, scoring and prefill; the one-token decode step over the
    cache uses its dense path.
    """

    cfg: BlockConfig

    @nn.compact
    def __call__(
        self,
        x: Array,
        positions: Array,
        segment_ids: Array,
        cache: dict[str, Array] | None,
        layer: Array | int,
        cache_index: Array | None,
        deterministic: bool,
    ) -> tuple[Array, dict[str, Array] | None]:
        cfg = self.cfg
        q, k, v = self._qkv(x)  # [b, l, h, d], [b, l, k, d] x 2
        w_out = _param(
            self,
            "out_kernel",
            nn.initializers.normal(cfg.residual_init_std),
            (cfg.num_heads, cfg.head_dim, cfg.embed_dim),
            (sh.HEADS, sh.KV, sh.EMBED),
            cfg.param_dtype,
        )
        b_out = None
        if cfg.attention_bias:
            b_out = _param(
                self,
                "out_bias",
                nn.initializers.zeros,
                (cfg.embed_dim,),
                (sh.NORM,),
                cfg.param_dtype,
            )
        if cfg.rotary:
            q = partial_rotary(q, positions, cfg.rotary_dims, cfg.rotary_base)
            k = partial_rotary(k, positions, cfg.rotary_dims, cfg.rotary_base)
        q = sh.constrain(q, (sh.BATCH, sh.LENGTH, sh.ACT_HEADS, None))

        length = x.shape[1]
        dropout = {}
        if cfg.dropout_rate > 0 and not deterministic:
            dropout = {"dropout_rate": cfg.dropout_rate, "dropout_rng": self.make_rng("dropout")}
        if cache is None:
            out = attention(q, k, v, segment_ids, segment_ids, impl=cfg.attention, **dropout)
            return self._project(out, w_out, b_out), None
        # `cache` holds every layer ([layers, b, slots, h, d]); this layer writes its new
        # tokens into slots [i, i + l) in place (no copy of the stacked cache). A None
        # `cache_index` is a prefill from slot 0 (see DecoderLM.__call__).
        idx = 0 if cache_index is None else cache_index
        new_cache = {
            "k": jax.lax.dynamic_update_slice(
                cache["k"], k[None].astype(cache["k"].dtype), (layer, 0, idx, 0, 0)
            ),
            "v": jax.lax.dynamic_update_slice(
                cache["v"], v[None].astype(cache["v"].dtype), (layer, 0, idx, 0, 0)
            ),
            "valid": jax.lax.dynamic_update_slice(
                cache["valid"], (segment_ids != 0)[None], (layer, 0, idx)
            ),
        }
        if cache_index is None:
            # Nothing precedes slot 0, so the new tokens attend only among themselves:
            # the self-attention layout every fused kernel takes.
            out = attention(q, k, v, segment_ids, segment_ids, impl=cfg.attention)
            return self._project(out, w_out, b_out), new_cache
        keys, values, valid = (
            jax.lax.dynamic_index_in_dim(new_cache[n], layer, 0, False) for n in ("k", "v", "valid")
        )
        # Query j sits in slot i + j and sees every valid slot up to it; this general
        # layout (the one-token decode step) stays on the dense path.
        out = attention(
            q,
            keys.astype(cfg.dtype),
            values.astype(cfg.dtype),
            jnp.ones_like(segment_ids),
            valid.astype(jnp.int32),
            q_pos=idx + jnp.arange(length),
            kv_pos=jnp.arange(keys.shape[1]),
            impl="xla",
        )
        return self._project(out, w_out, b_out), new_cache

    def _qkv(self, x: Array) -> tuple[Array, Array, Array]:
        """Query, key and value projections of `x [b, l, e]`.

        Without grouping one fused `qkv_kernel [e, 3, h, d]`; with `k < h` key/value
        heads, `q_kernel [e, h, d]` and `kv_kernel [e, 2, k, d]` (query head `i` reads
        key/value head `i // (h / k)`, as in transformers' `repeat_kv`).
        """
        cfg = self.cfg
        e, h, kh, d = cfg.embed_dim, cfg.num_heads, cfg.kv_heads, cfg.head_dim
        normal = nn.initializers.normal(cfg.init_std)
        zeros = nn.initializers.zeros

        def project(name, shape, axes, spec):
            w = _param(
                self, f"{name}_kernel", normal, (e, *shape), (sh.EMBED, *axes), cfg.param_dtype
            )
            y = jnp.einsum(spec, x, w.astype(cfg.dtype))
            if cfg.attention_bias:
                y = y + _param(self, f"{name}_bias", zeros, shape, axes, cfg.param_dtype).astype(
                    cfg.dtype
                )
            return y

        if kh == h:
            qkv = project("qkv", (3, h, d), (sh.QKV, sh.HEADS, sh.KV), "ble,ethd->blthd")
            return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q = project("q", (h, d), (sh.HEADS, sh.KV), "ble,ehd->blhd")
        kv = project("kv", (2, kh, d), (sh.QKV, sh.KV_HEADS, sh.KV), "ble,ethd->blthd")
        return q, kv[:, :, 0], kv[:, :, 1]

    def _project(self, out: Array, w_out: Array, b_out: Array | None) -> Array:
        cfg = self.cfg
        y = jnp.einsum("blhd,hde->ble", out, w_out.astype(cfg.dtype))
        return y if b_out is None else y + b_out.astype(cfg.dtype)


class Mlp(nn.Module):
    """Feed-forward block `e -> m -> e`: `act(x W_in + b_in) W_out + b_out` (GPT-2, GPT-NeoX),
    or gated, `(act(x W_gate) * x W_in) W_out` (SwiGLU: Llama's gate / up / down)."""

    cfg: BlockConfig

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        cfg = self.cfg
        e, m = cfg.embed_dim, cfg.mlp_dim

        def dense_in(name: str) -> Array:
            w = _param(
                self,
                f"{name}_kernel",
                nn.initializers.normal(cfg.init_std),
                (e, m),
                (sh.EMBED, sh.MLP),
                cfg.param_dtype,
            )
            y = jnp.dot(x, w.astype(cfg.dtype))
            if cfg.mlp_bias:
                b = _param(
                    self, f"{name}_bias", nn.initializers.zeros, (m,), (sh.MLP,), cfg.param_dtype
                )
                y = y + b.astype(cfg.dtype)
            return y

        act = ACTIVATIONS[cfg.activation]
        y = dense_in("in")
        y = act(dense_in("gate")) * y if cfg.gated_mlp else act(y)
        w_out = _param(
            self,
            "out_kernel",
            nn.initializers.normal(cfg.residual_init_std),
            (m, e),
            (sh.MLP, sh.EMBED),
            cfg.param_dtype,
        )
        y = sh.constrain(y, (sh.BATCH, sh.LENGTH, sh.ACT_MLP))
        if cfg.dropout_rate > 0 and not deterministic:
            y = nn.Dropout(cfg.dropout_rate)(y, deterministic=False)
        y = jnp.dot(y, w_out.astype(cfg.dtype))
        if cfg.mlp_bias:
            b = _param(self, "out_bias", nn.initializers.zeros, (e,), (sh.NORM,), cfg.param_dtype)
            y = y + b.astype(cfg.dtype)
        return y


class Block(nn.Module):
    """Pre-norm transformer block: `x + attn(norm1(x))`, then `+ mlp(norm2(.))`; with
    `parallel_residual` both branches read `x`: `x + attn(norm1(x)) + mlp(norm2(x))`.

    Its signature fits `nn.scan`: the carry is `(x, cache)` (the cache of every layer,
    updated in place at index `layer`), the scanned input is the layer index.
    """

    cfg: BlockConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, carry, positions, segment_ids, layer, cache_index):
        x, cache = carry
        cfg = self.cfg
        dropout = cfg.dropout_rate > 0 and not self.deterministic
        y, cache = Attention(cfg, name="attention")(
            make_norm(cfg, "ln_attention")(x),
            positions,
            segment_ids,
            cache,
            layer,
            cache_index,
            self.deterministic,
        )
        if dropout:
            y = nn.Dropout(cfg.dropout_rate)(y, deterministic=False)
        if cfg.parallel_residual:
            z = Mlp(cfg, name="mlp")(make_norm(cfg, "ln_mlp")(x), self.deterministic)
            if dropout:
                z = nn.Dropout(cfg.dropout_rate)(z, deterministic=False)
            x = sh.constrain(x + y + z, (sh.BATCH, sh.LENGTH, sh.ACT_EMBED))
            return (x, cache), None
        x = x + y
        y = Mlp(cfg, name="mlp")(make_norm(cfg, "ln_mlp")(x), self.deterministic)
        if dropout:
            y = nn.Dropout(cfg.dropout_rate)(y, deterministic=False)
        x = sh.constrain(x + y, (sh.BATCH, sh.LENGTH, sh.ACT_EMBED))
        return (x, cache), None

"""Building blocks every encoder family shares: Dense, LayerNorm, attention, BERT's blocks.

Flax module names follow the PyTorch `state_dict` keys (`encoders.convert` joins the few
dotted pieces that must become one Flax name), so a checkpoint converts by renaming.
Matmuls run in `cfg.compute_dtype` with float32 accumulation; LayerNorm, softmax and the
residual stream stay float32.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from toxjax.toxicity.encoders.config import EncoderConfig

NEG = float(jnp.finfo(jnp.float32).min)  # what transformers fills masked scores with


def act(name: str):
    """transformers' `ACT2FN[name]` for the activations the encoders support."""
    return {
        "gelu": functools.partial(jax.nn.gelu, approximate=False),
        "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
        "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
        "relu": jax.nn.relu,
        "tanh": jnp.tanh,
    }[name]


def dense(cfg: EncoderConfig, features: int, name: str, use_bias: bool = True) -> nn.Dense:
    return nn.Dense(
        features, use_bias=use_bias, precision=cfg.precision, dtype=cfg.compute_dtype, name=name
    )


def layer_norm(cfg: EncoderConfig, name: str) -> nn.LayerNorm:
    # Two-pass variance, as torch computes it (the fast E[x^2]-E[x]^2 form drifts); in
    # float32 whatever the matmul dtype.
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_eps, use_fast_variance=False, dtype=jnp.float32, name=name
    )


def key_mask_bias(mask: jax.Array) -> jax.Array:
    """`[batch, length]` 1/0 mask -> `[batch, 1, 1, length]` additive bias (0 or NEG)."""
    return jnp.where(mask[:, None, None, :] > 0, 0.0, NEG)


def split_heads(cfg: EncoderConfig, x: jax.Array) -> jax.Array:
    """`[batch, length, heads * dim]` -> `[batch, length, heads, dim]`."""
    return x.reshape(*x.shape[:-1], cfg.num_heads, -1)


def attention(
    cfg: EncoderConfig,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array,
    scale: float | None = None,
    extra: jax.Array | None = None,
) -> jax.Array:
    """Softmax attention over keys.

    Args:
      q, k, v: `[batch, length, heads, dim]`.
      bias: additive, broadcastable to `[batch, heads, length, length]` (0 / NEG).
      scale: scores are `q.k * scale` (default `1 / sqrt(dim)`).
      extra: more scores added before the softmax (DeBERTa's relative terms),
        `[batch, heads, length, length]` float32.

    Returns:
      `[batch, length, heads * dim]` context.
    """
    b, n, h, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    logits = jnp.einsum(
        "bqhd,bkhd->bhqk", q, k, precision=cfg.precision, preferred_element_type=jnp.float32
    )
    logits = logits * scale
    if extra is not None:
        logits = logits + extra
    probs = jax.nn.softmax(logits + bias, axis=-1).astype(cfg.compute_dtype)
    ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision=cfg.precision)
    return ctx.reshape(b, n, h * d)


def queries(x: jax.Array, cls_only: bool) -> jax.Array:
    """The positions a layer computes outputs for: all, or only `[CLS]` (position 0).

    A sequence classifier reads only `[CLS]` of the last layer, so that layer's queries,
    attention output and feed-forward run for position 0 alone (keys and values still
    cover every token): the same logits, about 1/3 of one layer's work instead of all.
    """
    return x[:, :1] if cls_only else x


class SelfAttention(nn.Module):
    """BERT's `attention.self`: query/key/value projections and softmax attention."""

    cfg: EncoderConfig

    @nn.compact
    def __call__(self, x, bias, cls_only: bool = False):
        cfg = self.cfg
        q = split_heads(cfg, dense(cfg, cfg.hidden_size, "query")(queries(x, cls_only)))
        k, v = (split_heads(cfg, dense(cfg, cfg.hidden_size, n)(x)) for n in ("key", "value"))
        return attention(cfg, q, k, v, bias)


class AddNorm(nn.Module):
    """`LayerNorm(residual + dense(x))`: BERT's `*.output` block."""

    cfg: EncoderConfig

    @nn.compact
    def __call__(self, x, residual):
        y = dense(self.cfg, residual.shape[-1], "dense")(x).astype(jnp.float32)
        return layer_norm(self.cfg, "LayerNorm")(residual + y)


class Intermediate(nn.Module):
    cfg: EncoderConfig

    @nn.compact
    def __call__(self, x):
        return act(self.cfg.hidden_act)(dense(self.cfg, self.cfg.intermediate_size, "dense")(x))


class Layer(nn.Module):
    """A post-LayerNorm transformer layer, `attention.{self,output}`, `intermediate`,
    `output`; `attention_cls` computes `attention.self` (BERT's, or DeBERTa's).
    `cls_only`: outputs for position 0 only (see `queries`)."""

    cfg: EncoderConfig
    attention_cls: type = SelfAttention

    @nn.compact
    def __call__(self, x, bias, *args, cls_only: bool = False):
        cfg = self.cfg
        ctx = Attention(cfg, self.attention_cls, name="attention")(
            x, bias, *args, cls_only=cls_only
        )
        return AddNorm(cfg, name="output")(Intermediate(cfg, name="intermediate")(ctx), ctx)


class Attention(nn.Module):
    cfg: EncoderConfig
    attention_cls: type

    @nn.compact
    def __call__(self, x, bias, *args, cls_only: bool = False):
        ctx = self.attention_cls(self.cfg, name="self")(x, bias, *args, cls_only=cls_only)
        return AddNorm(self.cfg, name="output")(ctx, queries(x, cls_only))


class Embeddings(nn.Module):
    """`LayerNorm(word + token type 0 + absolute position)` embeddings, float32.

    `positions` None leaves position embeddings out (DeBERTa-v3). The width is
    `cfg.embedding_size` when set (ALBERT and DeBERTa factorise it; DeBERTa projects it
    to the hidden size with `embed_proj` before the LayerNorm, ALBERT after it).
    """

    cfg: EncoderConfig

    @nn.compact
    def __call__(self, ids, positions=None):
        cfg = self.cfg
        width = cfg.embedding_size or cfg.hidden_size
        x = nn.Embed(cfg.vocab_size, width, name="word_embeddings")(ids)
        if cfg.type_vocab_size > 0:
            tt = nn.Embed(cfg.type_vocab_size, width, name="token_type_embeddings")
            x = x + tt(jnp.zeros_like(ids))
        if positions is not None:
            x = x + nn.Embed(cfg.max_positions, width, name="position_embeddings")(positions)
        if cfg.arch == "deberta" and width != cfg.hidden_size:
            x = nn.Dense(
                cfg.hidden_size, use_bias=False, precision=cfg.precision, name="embed_proj"
            )(x)
        return layer_norm(cfg, "LayerNorm")(x)

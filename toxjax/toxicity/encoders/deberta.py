"""DeBERTa-v2 / v3 sequence classifier (`DebertaV2ForSequenceClassification`).

Disentangled attention, as transformers 4.57's `modeling_deberta_v2.py` computes it:
the score of query `i` for key `j` is

    q_i.k_j / s  +  q_i.pk[r(i, j)] / s  (c2p)  +  k_j.pq[r'(j, i)] / s  (p2c)

with `s = sqrt(head_dim * (1 + #terms))`, `pk` / `pq` the key / query projections of the
relative-position embeddings (the content projections themselves when
`share_att_key`), `r(i, j) = clamp(bucket(i - j) + span, 0, 2 span - 1)` and
`r'(j, i) = clamp(-bucket(j - i) + span, ...)`. `bucket` is DeBERTa's log bucketing
(`make_log_bucket_position`) when `position_buckets > 0`, else the identity. The
relative-position table depends only on the padded length, so it is built with numpy
while tracing (one table per bucket shape). Embeddings are zeroed on padding; an
optional convolution (`conv_kernel_size`) runs beside the first layer.
`[batch, length]` ids and mask -> `[batch, num_labels]` float32 logits.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from toxjax.toxicity.encoders.config import EncoderConfig
from toxjax.toxicity.encoders.layers import (
    Embeddings,
    Layer,
    act,
    attention,
    dense,
    key_mask_bias,
    layer_norm,
    queries,
    split_heads,
)


def log_bucket_position(rel: np.ndarray, bucket_size: int, max_position: int) -> np.ndarray:
    """transformers' `make_log_bucket_position`, in float32 as torch computes it."""
    sign = np.sign(rel)
    mid = bucket_size // 2
    abs_pos = np.where((rel < mid) & (rel > -mid), mid - 1, np.abs(rel)).astype(np.float32)
    ratio = np.log(abs_pos / np.float32(mid)) / np.log(np.float32((max_position - 1) / mid))
    log_pos = np.ceil(ratio * np.float32(mid - 1)) + np.float32(mid)
    return np.where(abs_pos <= mid, rel.astype(np.float32), log_pos * sign).astype(np.int64)


def relative_positions(length: int, buckets: int, max_position: int) -> np.ndarray:
    """`[length, length]` bucketed `i - j` (transformers' `build_relative_position`)."""
    ids = np.arange(length)
    rel = ids[:, None] - ids[None, :]
    if buckets > 0 and max_position > 0:
        rel = log_bucket_position(rel, buckets, max_position)
    return rel


class _DisentangledSelfAttention(nn.Module):
    cfg: EncoderConfig

    @nn.compact
    def __call__(self, x, bias, rel_emb, cls_only: bool = False):
        cfg = self.cfg
        width = cfg.num_heads * cfg.head_dim
        proj = {n: dense(cfg, width, n) for n in ("query_proj", "key_proj", "value_proj")}
        q = split_heads(cfg, proj["query_proj"](queries(x, cls_only)))
        k, v = (split_heads(cfg, proj[n](x)) for n in ("key_proj", "value_proj"))
        nq = q.shape[1]
        terms = cfg.pos_att_type
        scale = 1.0 / math.sqrt(cfg.head_dim * (1 + len(terms)))
        extra = None
        if cfg.relative_attention and terms:
            n, span = x.shape[1], cfg.att_span
            rel = relative_positions(n, cfg.position_buckets, cfg.max_relative_positions)
            c2p_idx = jnp.asarray(np.clip(rel + span, 0, 2 * span - 1)[:nq])  # [q, k]
            p2c_idx = jnp.asarray(np.clip(-rel + span, 0, 2 * span - 1)[:, :nq])  # [k, q]
            extra = 0.0
            rows = (x.shape[0], cfg.num_heads, nq, n)
            if "c2p" in terms:
                pk = proj["key_proj"] if cfg.share_att_key else dense(cfg, width, "pos_key_proj")
                pos_key = split_heads(cfg, pk(rel_emb))  # [2 span, heads, dim]
                c2p = jnp.einsum(
                    "bqhd,jhd->bhqj",
                    q,
                    pos_key,
                    precision=cfg.precision,
                    preferred_element_type=jnp.float32,
                )
                idx = jnp.broadcast_to(c2p_idx, rows)
                extra = extra + jnp.take_along_axis(c2p, idx, axis=-1) * scale
            if "p2c" in terms:
                pq = (
                    proj["query_proj"] if cfg.share_att_key else dense(cfg, width, "pos_query_proj")
                )
                pos_query = split_heads(cfg, pq(rel_emb))
                p2c = jnp.einsum(
                    "bkhd,jhd->bhkj",
                    k,
                    pos_query,
                    precision=cfg.precision,
                    preferred_element_type=jnp.float32,
                )
                # [b, h, key, query] gathered at r'(key, query), then keys to the last axis.
                idx = jnp.broadcast_to(p2c_idx, (x.shape[0], cfg.num_heads, n, nq))
                extra = extra + jnp.swapaxes(jnp.take_along_axis(p2c, idx, axis=-1), -1, -2) * scale
        return attention(cfg, q, k, v, bias, scale=scale, extra=extra)


class _ConvLayer(nn.Module):
    """DeBERTa's `encoder.conv`, applied beside the first layer."""

    cfg: EncoderConfig

    @nn.compact
    def __call__(self, embedded, layer_out, mask):
        cfg = self.cfg
        k = cfg.conv_kernel_size
        out = nn.Conv(
            cfg.hidden_size,
            (k,),
            padding=[((k - 1) // 2, (k - 1) // 2)],
            feature_group_count=cfg.conv_groups,
            precision=cfg.precision,
            dtype=cfg.compute_dtype,
            name="conv",
        )(embedded).astype(jnp.float32)
        out = act(cfg.conv_act)(jnp.where(mask[..., None] > 0, out, 0.0))
        return layer_norm(cfg, "LayerNorm")(layer_out + out) * mask[..., None]


class _Encoder(nn.Module):
    cfg: EncoderConfig

    @nn.compact
    def __call__(self, x, mask):
        cfg = self.cfg
        rel_emb = None
        if cfg.relative_attention:
            rows = 2 * cfg.att_span
            rel_emb = nn.Embed(rows, cfg.hidden_size, name="rel_embeddings")(jnp.arange(rows))
            if cfg.norm_rel_ebd:
                rel_emb = layer_norm(cfg, "LayerNorm")(rel_emb)
        bias = key_mask_bias(mask)
        embedded = x
        for i in range(cfg.num_layers):
            # The last layer computes [CLS] only, unless the conv still needs every position.
            last = i == cfg.num_layers - 1 and not (i == 0 and cfg.conv_kernel_size > 0)
            layer = Layer(cfg, _DisentangledSelfAttention, name=f"layer_{i}")
            x = layer(x, bias, rel_emb, cls_only=last)
            if i == 0 and cfg.conv_kernel_size > 0:
                x = _ConvLayer(cfg, name="conv")(embedded, x, mask)
        return x


class _Backbone(nn.Module):
    cfg: EncoderConfig

    @nn.compact
    def __call__(self, ids, mask):
        cfg = self.cfg
        positions = None
        if cfg.position_biased_input:
            positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
        x = Embeddings(cfg, name="embeddings")(ids, positions)
        x = x * mask[..., None].astype(x.dtype)  # DeBERTa zeroes padding's embeddings
        return _Encoder(cfg, name="encoder")(x, mask)


class DebertaV2Classifier(nn.Module):
    """DeBERTa-v2/v3 sequence classifier: ids, mask -> logits."""

    cfg: EncoderConfig

    @nn.compact
    def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        cfg = self.cfg
        h = _Backbone(cfg, name="deberta")(ids, mask)[:, 0]
        h = act(cfg.pooler_act)(dense(cfg, cfg.hidden_size, "pooler_dense")(h))
        return dense(cfg, cfg.num_labels, "classifier")(h).astype(jnp.float32)

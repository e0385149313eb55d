"""DistilBERT sequence classifier (`DistilBertForSequenceClassification`).

BERT's layer with other names (`q_lin`..., `sa_layer_norm`, `ffn.lin1/lin2`,
`output_layer_norm`), no token types and no pooler; the head is `pre_classifier` ->
ReLU -> `classifier` on `[CLS]`. `[batch, length]` ids and mask -> `[batch, num_labels]`
float32 logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from toxjax.toxicity.encoders.config import EncoderConfig
from toxjax.toxicity.encoders.layers import (
    Embeddings,
    act,
    attention,
    dense,
    key_mask_bias,
    layer_norm,
    queries,
    split_heads,
)


class _Attention(nn.Module):
    cfg: EncoderConfig

    @nn.compact
    def __call__(self, x, bias, cls_only: bool = False):
        cfg = self.cfg
        q = split_heads(cfg, dense(cfg, cfg.hidden_size, "q_lin")(queries(x, cls_only)))
        k, v = (split_heads(cfg, dense(cfg, cfg.hidden_size, n)(x)) for n in ("k_lin", "v_lin"))
        return dense(cfg, cfg.hidden_size, "out_lin")(attention(cfg, q, k, v, bias))


class _Ffn(nn.Module):
    cfg: EncoderConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        h = act(cfg.hidden_act)(dense(cfg, cfg.intermediate_size, "lin1")(x))
        return dense(cfg, cfg.hidden_size, "lin2")(h)


class _Block(nn.Module):
    cfg: EncoderConfig

    @nn.compact
    def __call__(self, x, bias, cls_only: bool = False):
        cfg = self.cfg
        sa = _Attention(cfg, name="attention")(x, bias, cls_only).astype(jnp.float32)
        x = layer_norm(cfg, "sa_layer_norm")(sa + queries(x, cls_only))
        y = _Ffn(cfg, name="ffn")(x).astype(jnp.float32)
        return layer_norm(cfg, "output_layer_norm")(y + x)


class _Transformer(nn.Module):
    cfg: EncoderConfig

    @nn.compact
    def __call__(self, x, bias):
        last = self.cfg.num_layers - 1
        for i in range(self.cfg.num_layers):
            x = _Block(self.cfg, name=f"layer_{i}")(x, bias, cls_only=i == last)
        return x  # [batch, 1, hidden]: [CLS] only


class _Backbone(nn.Module):
    cfg: EncoderConfig

    @nn.compact
    def __call__(self, ids, mask):
        positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
        x = Embeddings(self.cfg, name="embeddings")(ids, positions)
        return _Transformer(self.cfg, name="transformer")(x, key_mask_bias(mask))


class DistilBertClassifier(nn.Module):
    """DistilBERT sequence classifier: ids, mask -> logits."""

    cfg: EncoderConfig

    @nn.compact
    def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        cfg = self.cfg
        h = _Backbone(cfg, name="distilbert")(ids, mask)[:, 0]
        h = jax.nn.relu(dense(cfg, cfg.hidden_size, "pre_classifier")(h))
        return dense(cfg, cfg.num_labels, "classifier")(h).astype(jnp.float32)

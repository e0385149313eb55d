"""BERT, RoBERTa / XLM-R and ALBERT sequence classifiers (`*ForSequenceClassification`).

`[batch, length]` ids and mask -> `[batch, num_labels]` float32 logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
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


class _AlbertAttention(nn.Module):
    """ALBERT's attention: query/key/value, output `dense` and `LayerNorm` in one module."""

    cfg: EncoderConfig

    @nn.compact
    def __call__(self, x, bias, cls_only: bool = False):
        cfg = self.cfg
        q = split_heads(cfg, dense(cfg, cfg.hidden_size, "query")(queries(x, cls_only)))
        k, v = (split_heads(cfg, dense(cfg, cfg.hidden_size, n)(x)) for n in ("key", "value"))
        y = dense(cfg, cfg.hidden_size, "dense")(attention(cfg, q, k, v, bias))
        return layer_norm(cfg, "LayerNorm")(queries(x, cls_only) + y.astype(jnp.float32))


class _AlbertLayer(nn.Module):
    cfg: EncoderConfig

    @nn.compact
    def __call__(self, x, bias, cls_only: bool = False):
        cfg = self.cfg
        x = _AlbertAttention(cfg, name="attention")(x, bias, cls_only)
        h = act(cfg.hidden_act)(dense(cfg, cfg.intermediate_size, "ffn")(x))
        h = dense(cfg, cfg.hidden_size, "ffn_output")(h)
        return layer_norm(cfg, "full_layer_layer_norm")(x + h.astype(jnp.float32))


class _Encoder(nn.Module):
    """BERT's `encoder.layer.<i>` list, or ALBERT's one shared layer applied N times."""

    cfg: EncoderConfig

    @nn.compact
    def __call__(self, x, bias):
        cfg = self.cfg
        if cfg.arch == "albert":
            x = dense(cfg, cfg.hidden_size, "embedding_hidden_mapping_in")(x).astype(jnp.float32)
            layer = _AlbertLayer(cfg, name="albert_layer_groups_0_albert_layers_0")
            for i in range(cfg.num_layers):
                x = layer(x, bias, cls_only=i == cfg.num_layers - 1)
            return x
        for i in range(cfg.num_layers):
            x = Layer(cfg, name=f"layer_{i}")(x, bias, cls_only=i == cfg.num_layers - 1)
        return x  # [batch, 1, hidden]: [CLS] only


class _Backbone(nn.Module):
    """Embeddings and encoder; BERT and ALBERT also pool `[CLS]` (dense + tanh)."""

    cfg: EncoderConfig

    @nn.compact
    def __call__(self, ids, mask):
        cfg = self.cfg
        if cfg.arch == "roberta":
            # RoBERTa numbers real tokens from pad_id + 1 (padding keeps pad_id).
            positions = jnp.cumsum(mask, axis=1) * mask + cfg.pad_token_id
        else:
            positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
        x = Embeddings(cfg, name="embeddings")(ids, positions)
        x = _Encoder(cfg, name="encoder")(x, key_mask_bias(mask))
        if cfg.arch == "roberta":
            return x
        return jnp.tanh(dense(cfg, cfg.hidden_size, "pooler_dense")(x[:, 0]))


class BertFamilyClassifier(nn.Module):
    """BERT / RoBERTa / XLM-R / ALBERT sequence classifier: ids, mask -> logits."""

    cfg: EncoderConfig

    @nn.compact
    def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        cfg = self.cfg
        h = _Backbone(cfg, name=cfg.arch)(ids, mask)
        if cfg.arch == "roberta":  # classifier.dense -> tanh -> classifier.out_proj on <s>
            h = jnp.tanh(dense(cfg, cfg.hidden_size, "classifier_dense")(h[:, 0]))
            return dense(cfg, cfg.num_labels, "classifier_out_proj")(h).astype(jnp.float32)
        return dense(cfg, cfg.num_labels, "classifier")(h).astype(jnp.float32)

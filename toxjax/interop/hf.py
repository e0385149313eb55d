"""Transformers checkpoints <-> toxjax models: one table of architecture families.

A `Family` says how one transformers architecture's config maps onto `ModelConfig` (and
back) and how its state-dict tensors map onto our parameter tree (and back):

| family | transformers class | what it is in `ModelConfig` |
|---|---|---|
| `gpt2` | `GPT2LMHeadModel` | our defaults: learned positions, LayerNorm, GELU MLP, biases |
| `gpt_neox` | `GPTNeoXForCausalLM` (Pythia) | rotary (`rotary_pct` -> `rotary_fraction`), LayerNorm, GELU, parallel or sequential residual |
| `llama` | `LlamaForCausalLM` | rotary, RMSNorm, SwiGLU, grouped-query attention, no biases |

Every conversion is a reshape / transpose of the same numbers, so import -> export gives
back the input bit for bit. Token ids here are the checkpoint's own: rows are moved between
id conventions by `toxjax.interop.hf_vocab`. A setting a family cannot express (a rope
scaling, an activation transformers and toxjax do not share) is refused in one line naming
it, never dropped. Tensors travel as numpy arrays (safetensors' numpy API): export needs
neither torch nor a device.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from toxjax.errors import ConfigError
from toxjax.model import DecoderLM, ModelConfig

Arrays = dict[str, np.ndarray]
SAFETENSORS = "model.safetensors"

# transformers activation names <-> ours (gelu_new and gelu_pytorch_tanh are one formula).
_ACT_FROM_HF = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu",
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
}
_ACT_TO_HF = {"gelu_tanh": "gelu_new", "gelu": "gelu", "silu": "silu", "relu": "relu"}


# ------------------------------------------------------------------ tensor links
@dataclasses.dataclass(frozen=True)
class Link:
    """Some of our tensors <-> some transformers tensors (usually one each).

    Attributes:
      ours: parameter paths (`"attention/qkv_kernel"`), within a layer for layer links.
      hf: state-dict names, after the layer prefix for layer links.
      to_hf: `(*our arrays) -> tuple of transformers arrays`.
      from_hf: the inverse.
    """

    ours: tuple[str, ...]
    hf: tuple[str, ...]
    to_hf: Callable[..., tuple]
    from_hf: Callable[..., tuple]


def _xp(x):
    """numpy for arrays, jax.numpy for tracers (expected shapes come from `eval_shape`)."""
    return jnp if isinstance(x, jax.Array) else np


def _same(ours: str, hf: str) -> Link:
    return Link((ours,), (hf,), lambda x: (x,), lambda x: (x,))


def _linear(ours: str, hf: str, shape: tuple[int, ...], n_in: int) -> Link:
    """Our kernel `[in..., out...]` (first `n_in` dims in) <-> torch `Linear.weight [out, in]`."""
    fan_in = math.prod(shape[:n_in])
    return Link(
        (ours,), (hf,), lambda w: (w.reshape(fan_in, -1).T,), lambda w: (w.T.reshape(shape),)
    )


def _conv1d(ours: str, hf: str, shape: tuple[int, ...], n_in: int) -> Link:
    """Our kernel <-> GPT-2's `Conv1D.weight [in, out]`."""
    fan_in = math.prod(shape[:n_in])
    return Link((ours,), (hf,), lambda w: (w.reshape(fan_in, -1),), lambda w: (w.reshape(shape),))


def _flat(ours: str, hf: str, shape: tuple[int, ...]) -> Link:
    """A bias of shape `shape` <-> its flat transformers vector."""
    return Link((ours,), (hf,), lambda b: (b.reshape(-1),), lambda b: (b.reshape(shape),))


def _norm(ours: str, hf: str, cfg: ModelConfig) -> list[Link]:
    links = [_same(f"{ours}/scale", f"{hf}.weight")]
    if cfg.norm == "layernorm":
        links.append(_same(f"{ours}/bias", f"{hf}.bias"))
    return links


def _dims(cfg: ModelConfig) -> tuple[int, int, int, int, int]:
    return (
        cfg.embed_dim,
        cfg.num_heads,
        cfg.resolved_kv_heads,
        cfg.resolved_head_dim,
        cfg.resolved_mlp_dim,
    )


# ------------------------------------------------------------------ the families
@dataclasses.dataclass(frozen=True)
class Family:
    """One transformers architecture (see the module docstring's table).

    Attributes:
      name: config.json's `model_type`.
      architecture: the `*ForCausalLM` class transformers builds.
      base: prefix of every tensor but the output head (`"transformer."`); old
        checkpoints saved from the base model lack it.
      layer: prefix of layer `i`'s tensors, `{i}` standing for the index.
      head: the output projection's tensor (absent or equal to the embedding when tied).
      buffers: suffixes of state-dict entries that are not parameters (causal-mask and
        rotary buffers of older transformers versions); skipped on import.
      why_not: `ModelConfig -> reason this architecture cannot compute it`, or None.
      to_config: transformers config -> `ModelConfig` (refusing what it cannot express).
      from_config: `ModelConfig -> transformers config keyword arguments`.
      links: `ModelConfig -> (top-level links, per-layer links)`.
    """

    name: str
    architecture: str
    base: str
    layer: str
    head: str
    buffers: tuple[str, ...]
    why_not: Callable[[ModelConfig], str | None]
    to_config: Callable[[Any], ModelConfig]
    from_config: Callable[[ModelConfig], dict]
    links: Callable[[ModelConfig], tuple[list[Link], list[Link]]]


def _refuse(family: str, field: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"{family} config.json: {field}={value!r} is not supported ({why})")


def _activation(family: str, field: str, name: str) -> str:
    if name not in _ACT_FROM_HF:
        raise _refuse(family, field, name, f"toxjax has {', '.join(sorted(_ACT_FROM_HF))}")
    return _ACT_FROM_HF[name]


def _check_rope(family: str, hf) -> None:
    scaling = getattr(hf, "rope_scaling", None) or {}
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind not in (None, "default"):
        raise ConfigError(
            f"{family} config.json: rope_scaling with rope_type={kind!r} is not supported "
            "(toxjax computes unscaled rotary positions: rope_scaling null)"
        )


def _common_mismatch(cfg: ModelConfig, arch: str) -> str | None:
    if cfg.resolved_head_dim * cfg.num_heads != cfg.embed_dim:
        return f"{arch} needs head_dim * num_heads == embed_dim"
    if cfg.activation not in _ACT_TO_HF:
        return f"activation {cfg.activation!r}"
    return None


def _block_mismatch(cfg: ModelConfig, arch: str, **want: Any) -> str | None:
    for field, value in want.items():
        if getattr(cfg, field) != value:
            return f"{arch} has {field}={value!r}, this model {getattr(cfg, field)!r}"
    return None


# GPT-2 ----------------------------------------------------------------------------
def _gpt2_why_not(cfg: ModelConfig) -> str | None:
    return _block_mismatch(
        cfg,
        "GPT-2",
        position="learned",
        norm="layernorm",
        gated_mlp=False,
        attention_bias=True,
        mlp_bias=True,
        parallel_residual=False,
        resolved_kv_heads=cfg.num_heads,
    ) or _common_mismatch(cfg, "GPT-2")


def _gpt2_to_config(hf) -> ModelConfig:
    for field, ok in (
        ("scale_attn_weights", True),
        ("scale_attn_by_inverse_layer_idx", False),
        ("add_cross_attention", False),
    ):
        if getattr(hf, field, ok) != ok:
            raise _refuse("gpt2", field, getattr(hf, field), f"toxjax computes {field}={ok}")
    return ModelConfig(
        vocab_size=hf.vocab_size,
        num_layers=hf.n_layer,
        num_heads=hf.n_head,
        embed_dim=hf.n_embd,
        mlp_dim=hf.n_inner or 4 * hf.n_embd,
        max_len=hf.n_positions,
        position="learned",
        tied_embeddings=hf.tie_word_embeddings,
        layer_norm_eps=hf.layer_norm_epsilon,
        activation=_activation("gpt2", "activation_function", hf.activation_function),
    )


def _gpt2_from_config(cfg: ModelConfig) -> dict:
    return dict(
        vocab_size=cfg.vocab_size,
        n_layer=cfg.num_layers,
        n_head=cfg.num_heads,
        n_embd=cfg.embed_dim,
        n_inner=cfg.resolved_mlp_dim,
        n_positions=cfg.max_len,
        activation_function=_ACT_TO_HF[cfg.activation],
        layer_norm_epsilon=cfg.layer_norm_eps,
        tie_word_embeddings=cfg.tied_embeddings,
        resid_pdrop=cfg.dropout_rate,
        embd_pdrop=cfg.dropout_rate,
        attn_pdrop=cfg.dropout_rate,
    )


def _gpt2_links(cfg: ModelConfig) -> tuple[list[Link], list[Link]]:
    e, h, _, d, m = _dims(cfg)
    top = [
        _same("embedding", "transformer.wte.weight"),
        _same("position_embedding", "transformer.wpe.weight"),
        *_norm("final_norm", "transformer.ln_f", cfg),
    ]
    if not cfg.tied_embeddings:
        top.append(_linear("lm_head", "lm_head.weight", (e, cfg.vocab_size), 1))
    layer = [
        *_norm("ln_attention", "ln_1", cfg),
        _conv1d("attention/qkv_kernel", "attn.c_attn.weight", (e, 3, h, d), 1),
        _flat("attention/qkv_bias", "attn.c_attn.bias", (3, h, d)),
        _conv1d("attention/out_kernel", "attn.c_proj.weight", (h, d, e), 2),
        _same("attention/out_bias", "attn.c_proj.bias"),
        *_norm("ln_mlp", "ln_2", cfg),
        _conv1d("mlp/in_kernel", "mlp.c_fc.weight", (e, m), 1),
        _same("mlp/in_bias", "mlp.c_fc.bias"),
        _conv1d("mlp/out_kernel", "mlp.c_proj.weight", (m, e), 1),
        _same("mlp/out_bias", "mlp.c_proj.bias"),
    ]
    return top, layer


# GPT-NeoX (Pythia) ------------------------------------------------------------------
def _neox_why_not(cfg: ModelConfig) -> str | None:
    return _block_mismatch(
        cfg,
        "GPT-NeoX",
        position="rotary",
        norm="layernorm",
        gated_mlp=False,
        mlp_bias=True,
        resolved_kv_heads=cfg.num_heads,
    ) or _common_mismatch(cfg, "GPT-NeoX")


def _neox_to_config(hf) -> ModelConfig:
    _check_rope("gpt_neox", hf)
    return ModelConfig(
        vocab_size=hf.vocab_size,
        num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        embed_dim=hf.hidden_size,
        mlp_dim=hf.intermediate_size,
        max_len=hf.max_position_embeddings,
        position="rotary",
        rotary_fraction=float(hf.rotary_pct),
        rotary_base=float(hf.rotary_emb_base),
        tied_embeddings=hf.tie_word_embeddings,
        layer_norm_eps=hf.layer_norm_eps,
        activation=_activation("gpt_neox", "hidden_act", hf.hidden_act),
        parallel_residual=hf.use_parallel_residual,
        attention_bias=hf.attention_bias,
    )


def _neox_from_config(cfg: ModelConfig) -> dict:
    return dict(
        vocab_size=cfg.vocab_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        hidden_size=cfg.embed_dim,
        intermediate_size=cfg.resolved_mlp_dim,
        max_position_embeddings=cfg.max_len,
        rotary_pct=cfg.rotary_fraction,
        rotary_emb_base=cfg.rotary_base,
        tie_word_embeddings=cfg.tied_embeddings,
        layer_norm_eps=cfg.layer_norm_eps,
        hidden_act=_ACT_TO_HF[cfg.activation],
        use_parallel_residual=cfg.parallel_residual,
        attention_bias=cfg.attention_bias,
        hidden_dropout=cfg.dropout_rate,
        attention_dropout=cfg.dropout_rate,
    )


def _neox_links(cfg: ModelConfig) -> tuple[list[Link], list[Link]]:
    e, h, _, d, m = _dims(cfg)
    top = [
        _same("embedding", "gpt_neox.embed_in.weight"),
        *_norm("final_norm", "gpt_neox.final_layer_norm", cfg),
    ]
    if not cfg.tied_embeddings:
        top.append(_linear("lm_head", "embed_out.weight", (e, cfg.vocab_size), 1))
    # query_key_value interleaves per head: output feature (head, q|k|v, d).
    qkv = Link(
        ("attention/qkv_kernel",),
        ("attention.query_key_value.weight",),
        lambda w: (w.transpose(2, 1, 3, 0).reshape(3 * h * d, e),),
        lambda w: (w.reshape(h, 3, d, e).transpose(3, 1, 0, 2),),
    )
    layer = [*_norm("ln_attention", "input_layernorm", cfg), qkv]
    if cfg.attention_bias:
        layer.append(
            Link(
                ("attention/qkv_bias",),
                ("attention.query_key_value.bias",),
                lambda b: (b.transpose(1, 0, 2).reshape(-1),),
                lambda b: (b.reshape(h, 3, d).transpose(1, 0, 2),),
            )
        )
    layer.append(_linear("attention/out_kernel", "attention.dense.weight", (h, d, e), 2))
    if cfg.attention_bias:
        layer.append(_same("attention/out_bias", "attention.dense.bias"))
    layer += [
        *_norm("ln_mlp", "post_attention_layernorm", cfg),
        _linear("mlp/in_kernel", "mlp.dense_h_to_4h.weight", (e, m), 1),
        _same("mlp/in_bias", "mlp.dense_h_to_4h.bias"),
        _linear("mlp/out_kernel", "mlp.dense_4h_to_h.weight", (m, e), 1),
        _same("mlp/out_bias", "mlp.dense_4h_to_h.bias"),
    ]
    return top, layer


# Llama --------------------------------------------------------------------------------
def _llama_why_not(cfg: ModelConfig) -> str | None:
    if reason := _block_mismatch(
        cfg,
        "Llama",
        position="rotary",
        norm="rmsnorm",
        gated_mlp=True,
        parallel_residual=False,
        rotary_fraction=1.0,
    ):
        return reason
    return None if cfg.activation in _ACT_TO_HF else f"activation {cfg.activation!r}"


def _llama_to_config(hf) -> ModelConfig:
    _check_rope("llama", hf)
    if getattr(hf, "pretraining_tp", 1) != 1:
        raise _refuse("llama", "pretraining_tp", hf.pretraining_tp, "transformers ignores it")
    return ModelConfig(
        vocab_size=hf.vocab_size,
        num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        num_kv_heads=hf.num_key_value_heads,
        embed_dim=hf.hidden_size,
        head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads,
        mlp_dim=hf.intermediate_size,
        max_len=hf.max_position_embeddings,
        position="rotary",
        rotary_base=float(hf.rope_theta),
        tied_embeddings=hf.tie_word_embeddings,
        layer_norm_eps=hf.rms_norm_eps,
        norm="rmsnorm",
        activation=_activation("llama", "hidden_act", hf.hidden_act),
        gated_mlp=True,
        attention_bias=hf.attention_bias,
        mlp_bias=getattr(hf, "mlp_bias", False),
    )


def _llama_from_config(cfg: ModelConfig) -> dict:
    return dict(
        vocab_size=cfg.vocab_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.resolved_kv_heads,
        hidden_size=cfg.embed_dim,
        head_dim=cfg.resolved_head_dim,
        intermediate_size=cfg.resolved_mlp_dim,
        max_position_embeddings=cfg.max_len,
        rope_theta=cfg.rotary_base,
        tie_word_embeddings=cfg.tied_embeddings,
        rms_norm_eps=cfg.layer_norm_eps,
        hidden_act=_ACT_TO_HF[cfg.activation],
        attention_bias=cfg.attention_bias,
        mlp_bias=cfg.mlp_bias,
        attention_dropout=cfg.dropout_rate,
    )


def _llama_links(cfg: ModelConfig) -> tuple[list[Link], list[Link]]:
    e, h, kh, d, m = _dims(cfg)
    top = [_same("embedding", "model.embed_tokens.weight"), *_norm("final_norm", "model.norm", cfg)]
    if not cfg.tied_embeddings:
        top.append(_linear("lm_head", "lm_head.weight", (e, cfg.vocab_size), 1))
    names = tuple(f"self_attn.{n}_proj" for n in "qkv")
    if kh == h:  # our fused [e, 3, h, d] kernel <-> three [h * d, e] weights
        proj = [
            Link(
                ("attention/qkv_kernel",),
                tuple(f"{n}.weight" for n in names),
                lambda w: tuple(w[:, t].reshape(e, h * d).T for t in range(3)),
                lambda *ws: (_xp(ws[0]).stack([w.T.reshape(e, h, d) for w in ws], axis=1),),
            )
        ]
        if cfg.attention_bias:
            proj.append(
                Link(
                    ("attention/qkv_bias",),
                    tuple(f"{n}.bias" for n in names),
                    lambda b: tuple(b[t].reshape(-1) for t in range(3)),
                    lambda *bs: (_xp(bs[0]).stack([b.reshape(h, d) for b in bs], axis=0),),
                )
            )
    else:  # q [e, h, d]; k and v fused as [e, 2, k, d]
        proj = [
            _linear("attention/q_kernel", f"{names[0]}.weight", (e, h, d), 1),
            Link(
                ("attention/kv_kernel",),
                (f"{names[1]}.weight", f"{names[2]}.weight"),
                lambda w: tuple(w[:, t].reshape(e, kh * d).T for t in range(2)),
                lambda *ws: (_xp(ws[0]).stack([w.T.reshape(e, kh, d) for w in ws], axis=1),),
            ),
        ]
        if cfg.attention_bias:
            proj += [
                _flat("attention/q_bias", f"{names[0]}.bias", (h, d)),
                Link(
                    ("attention/kv_bias",),
                    (f"{names[1]}.bias", f"{names[2]}.bias"),
                    lambda b: tuple(b[t].reshape(-1) for t in range(2)),
                    lambda *bs: (_xp(bs[0]).stack([b.reshape(kh, d) for b in bs], axis=0),),
                ),
            ]
    layer = [
        *_norm("ln_attention", "input_layernorm", cfg),
        *proj,
        _linear("attention/out_kernel", "self_attn.o_proj.weight", (h, d, e), 2),
        *_norm("ln_mlp", "post_attention_layernorm", cfg),
        _linear("mlp/gate_kernel", "mlp.gate_proj.weight", (e, m), 1),
        _linear("mlp/in_kernel", "mlp.up_proj.weight", (e, m), 1),
        _linear("mlp/out_kernel", "mlp.down_proj.weight", (m, e), 1),
    ]
    if cfg.attention_bias:
        layer.append(_same("attention/out_bias", "self_attn.o_proj.bias"))
    if cfg.mlp_bias:
        layer += [
            _same("mlp/gate_bias", "mlp.gate_proj.bias"),
            _same("mlp/in_bias", "mlp.up_proj.bias"),
            _same("mlp/out_bias", "mlp.down_proj.bias"),
        ]
    return top, layer


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "gpt2",
            "GPT2LMHeadModel",
            "transformer.",
            "transformer.h.{i}.",
            "lm_head.weight",
            (".attn.bias", ".attn.masked_bias"),
            _gpt2_why_not,
            _gpt2_to_config,
            _gpt2_from_config,
            _gpt2_links,
        ),
        Family(
            "gpt_neox",
            "GPTNeoXForCausalLM",
            "gpt_neox.",
            "gpt_neox.layers.{i}.",
            "embed_out.weight",
            (".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq"),
            _neox_why_not,
            _neox_to_config,
            _neox_from_config,
            _neox_links,
        ),
        Family(
            "llama",
            "LlamaForCausalLM",
            "model.",
            "model.layers.{i}.",
            "lm_head.weight",
            (".rotary_emb.inv_freq",),
            _llama_why_not,
            _llama_to_config,
            _llama_from_config,
            _llama_links,
        ),
    )
}


def family_of(hf_config) -> Family:
    """The family of a transformers config (object or config.json dict)."""
    model_type = (
        hf_config.get("model_type") if isinstance(hf_config, Mapping) else hf_config.model_type
    )
    if model_type not in FAMILIES:
        archs = ", ".join(f"{f.architecture} ({n})" for n, f in FAMILIES.items())
        raise ConfigError(
            f"config.json: model_type {model_type!r} is not supported; toxjax converts {archs}"
        )
    return FAMILIES[model_type]


def family_for(cfg: ModelConfig) -> Family:
    """The first transformers architecture whose forward pass equals this model's.

    Raises:
      ConfigError: none does (one line with each family's reason).
    """
    reasons = []
    for family in FAMILIES.values():
        reason = family.why_not(cfg)
        if reason is None:
            return family
        reasons.append(f"{family.architecture}: {reason}")
    raise ConfigError(
        "no transformers architecture computes this model (" + "; ".join(reasons) + ")"
    )


def config_from_hf(hf_config) -> ModelConfig:
    """`ModelConfig` of a transformers config object (`AutoConfig.from_pretrained(dir)`)."""
    return family_of(hf_config).to_config(hf_config)


def config_to_hf(cfg: ModelConfig, **extra: Any):
    """The transformers config object whose model computes `cfg` (plus `extra` fields such
    as token ids), with `architectures` set."""
    import transformers

    family = family_for(cfg)
    kwargs = {**family.from_config(cfg), **extra}
    return transformers.AutoConfig.for_model(
        family.name, architectures=[family.architecture], **kwargs
    )


# ------------------------------------------------------------------ parameters
def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _nest(flat: Mapping[str, Any]) -> dict:
    out: dict = {}
    for path, v in flat.items():
        *parents, leaf = path.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


def _split_layers(cfg: ModelConfig, params: Mapping) -> tuple[dict, list[dict]]:
    """Our tree -> (top-level flat dict, one flat dict per layer), scanned or not."""
    flat = _flatten(params)
    top = {k: v for k, v in flat.items() if not k.startswith(("blocks/", "block_"))}
    if cfg.scan_layers:
        stacked = {k[len("blocks/") :]: v for k, v in flat.items() if k.startswith("blocks/")}
        layers = [{k: v[i] for k, v in stacked.items()} for i in range(cfg.num_layers)]
    else:
        layers = [
            {k[len(f"block_{i}/") :]: v for k, v in flat.items() if k.startswith(f"block_{i}/")}
            for i in range(cfg.num_layers)
        ]
    return top, layers


def _join_layers(cfg: ModelConfig, top: dict, layers: list[dict]) -> dict:
    flat = dict(top)
    if cfg.scan_layers:
        for k in layers[0]:
            flat[f"blocks/{k}"] = np.stack([layer[k] for layer in layers])
    else:
        for i, layer in enumerate(layers):
            flat.update({f"block_{i}/{k}": v for k, v in layer.items()})
    return _nest(flat)


def params_to_hf(cfg: ModelConfig, params: Mapping) -> tuple[Family, Arrays]:
    """Our parameters -> the transformers state dict of `family_for(cfg)` (numpy arrays;
    a tied output head is not written: transformers ties it on load)."""
    family = family_for(cfg)
    top_links, layer_links = family.links(cfg)
    top, layers = _split_layers(cfg, jax.tree.map(np.asarray, params))
    out: Arrays = {}

    def apply(links, ours, prefix):
        for link in links:
            for name, value in zip(link.hf, link.to_hf(*(ours[p] for p in link.ours)), strict=True):
                out[prefix + name] = np.ascontiguousarray(value)

    apply(top_links, top, "")
    for i, layer in enumerate(layers):
        apply(layer_links, layer, family.layer.format(i=i))
    return family, out


def _expected_hf_shapes(cfg: ModelConfig, family: Family) -> dict[str, tuple[int, ...]]:
    """Every tensor name the checkpoint must hold, with its shape (from the config)."""
    from flax import linen as nn

    unscanned = dataclasses.replace(cfg, scan_layers=False, remat="none")
    abstract = jax.eval_shape(
        lambda: DecoderLM(unscanned).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    )
    top, layers = _split_layers(unscanned, nn.unbox(abstract["params"]))
    top_links, layer_links = family.links(cfg)
    shapes = {}
    for links, ours, prefixes in (
        (top_links, top, [""]),
        (layer_links, layers[0], [family.layer.format(i=i) for i in range(cfg.num_layers)]),
    ):
        for link in links:
            outs = jax.eval_shape(link.to_hf, *(ours[p] for p in link.ours))
            for prefix in prefixes:
                for name, o in zip(link.hf, outs, strict=True):
                    shapes[prefix + name] = tuple(o.shape)
    return shapes


def _with_base(family: Family, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Adds the base prefix to a checkpoint saved from the base model (`h.0...`)."""
    if any(k.startswith(family.base) for k in tensors):
        return dict(tensors)
    return {(k if k == family.head else family.base + k): v for k, v in tensors.items()}


def params_from_hf(
    cfg: ModelConfig, family: Family, tensors: Mapping[str, np.ndarray], where: str = "checkpoint"
) -> dict:
    """A transformers state dict -> our parameter tree (float32 numpy arrays).

    Raises:
      ConfigError: a tensor the config needs is missing, has another shape than the
        config implies, or is not one the architecture has (each names the tensor).
    """
    tensors = _with_base(family, tensors)
    expected = _expected_hf_shapes(cfg, family)
    for name, shape in expected.items():
        if name not in tensors:
            raise ConfigError(f"{where}: no tensor {name!r}, which config.json implies")
        if tuple(tensors[name].shape) != shape:
            raise ConfigError(
                f"{where}: tensor {name!r} has shape {tuple(tensors[name].shape)}, but "
                f"config.json implies {shape}; the config and the weights do not match"
            )
    if cfg.tied_embeddings and family.head in tensors:
        top_embedding = family.links(cfg)[0][0].hf[0]
        if not np.array_equal(tensors[family.head], tensors[top_embedding]):
            raise ConfigError(
                f"{where}: {family.head!r} differs from {top_embedding!r} although "
                "config.json ties the word embeddings"
            )
    extra = sorted(
        k
        for k in tensors
        if k not in expected and k != family.head and not k.endswith(family.buffers)
    )
    if extra:
        raise ConfigError(
            f"{where}: tensor {extra[0]!r} ({len(extra)} unexpected in all) is not part of "
            f"{family.architecture} as config.json describes it"
        )

    def f32(x):
        return np.asarray(x, np.float32)

    def apply(links, prefix):
        out = {}
        for link in links:
            values = link.from_hf(*(f32(tensors[prefix + n]) for n in link.hf))
            out.update({p: np.ascontiguousarray(v) for p, v in zip(link.ours, values, strict=True)})
        return out

    top_links, layer_links = family.links(cfg)
    layers = [apply(layer_links, family.layer.format(i=i)) for i in range(cfg.num_layers)]
    return _join_layers(cfg, apply(top_links, ""), layers)


# ------------------------------------------------------------------ files
def read_tensors(directory: str) -> dict[str, np.ndarray]:
    """The state dict of a transformers checkpoint directory: `model.safetensors`, a
    sharded `model.safetensors.index.json`, or (with torch) `pytorch_model.bin[.index.json]`."""
    from safetensors.numpy import load_file

    def shards(index: str) -> list[str]:
        with open(os.path.join(directory, index)) as f:
            return sorted(set(json.load(f)["weight_map"].values()))

    if os.path.exists(os.path.join(directory, SAFETENSORS)):
        files = [SAFETENSORS]
    elif os.path.exists(os.path.join(directory, SAFETENSORS + ".index.json")):
        files = shards(SAFETENSORS + ".index.json")
    elif os.path.exists(os.path.join(directory, "pytorch_model.bin")):
        files = ["pytorch_model.bin"]
    elif os.path.exists(os.path.join(directory, "pytorch_model.bin.index.json")):
        files = shards("pytorch_model.bin.index.json")
    else:
        raise FileNotFoundError(
            f"{directory}: no weights (model.safetensors or pytorch_model.bin, or their "
            ".index.json); is it a transformers checkpoint directory?"
        )
    out: dict[str, np.ndarray] = {}
    for name in files:
        path = os.path.join(directory, name)
        if name.endswith(".safetensors"):
            out.update(load_file(path))
        else:
            import torch

            state = torch.load(path, map_location="cpu", weights_only=True)
            out.update({k: v.float().numpy() for k, v in state.items()})
    return out


def write_safetensors(tensors: Mapping[str, np.ndarray], path: str) -> None:
    """Writes a state dict the way transformers reads it (`format: pt` metadata)."""
    from safetensors.numpy import save_file

    save_file(dict(tensors), path, metadata={"format": "pt"})


__all__ = [
    "FAMILIES",
    "Family",
    "Link",
    "config_from_hf",
    "config_to_hf",
    "family_for",
    "family_of",
    "params_from_hf",
    "params_to_hf",
    "read_tensors",
    "write_safetensors",
]

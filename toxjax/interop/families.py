"""The architecture families toxjax converts: one entry of `FAMILIES` each.

| family | transformers class | in `ModelConfig` |
|---|---|---|
| `gpt2` | `GPT2LMHeadModel` | our defaults: learned positions, LayerNorm, GELU MLP, biases |
| `gpt_neox` | `GPTNeoXForCausalLM` (Pythia) | rotary (`rotary_pct` -> `rotary_fraction`), LayerNorm, GELU, parallel or sequential residual |
| `llama` | `LlamaForCausalLM` | rotary, RMSNorm, SwiGLU, grouped-query attention, optional biases |

Adding a family: its four functions below and one `Family` in `FAMILIES`; a setting it
cannot express is refused in one line naming the config field, never dropped.
"""

from __future__ import annotations

from typing import Any

from toxjax.errors import ConfigError
from toxjax.interop.links import (
    Family,
    Link,
    conv1d,
    dims,
    flat,
    linear,
    norm_links,
    same,
    xp,
)
from toxjax.model import ModelConfig

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
    e, h, _, d, m = dims(cfg)
    top = [
        same("embedding", "transformer.wte.weight"),
        same("position_embedding", "transformer.wpe.weight"),
        *norm_links("final_norm", "transformer.ln_f", cfg),
    ]
    if not cfg.tied_embeddings:
        top.append(linear("lm_head", "lm_head.weight", (e, cfg.vocab_size), 1))
    layer = [
        *norm_links("ln_attention", "ln_1", cfg),
        conv1d("attention/qkv_kernel", "attn.c_attn.weight", (e, 3, h, d), 1),
        flat("attention/qkv_bias", "attn.c_attn.bias", (3, h, d)),
        conv1d("attention/out_kernel", "attn.c_proj.weight", (h, d, e), 2),
        same("attention/out_bias", "attn.c_proj.bias"),
        *norm_links("ln_mlp", "ln_2", cfg),
        conv1d("mlp/in_kernel", "mlp.c_fc.weight", (e, m), 1),
        same("mlp/in_bias", "mlp.c_fc.bias"),
        conv1d("mlp/out_kernel", "mlp.c_proj.weight", (m, e), 1),
        same("mlp/out_bias", "mlp.c_proj.bias"),
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
    e, h, _, d, m = dims(cfg)
    top = [
        same("embedding", "gpt_neox.embed_in.weight"),
        *norm_links("final_norm", "gpt_neox.final_layer_norm", cfg),
    ]
    if not cfg.tied_embeddings:
        top.append(linear("lm_head", "embed_out.weight", (e, cfg.vocab_size), 1))
    # query_key_value interleaves per head: output feature (head, q|k|v, d).
    qkv = Link(
        ("attention/qkv_kernel",),
        ("attention.query_key_value.weight",),
        lambda w: (w.transpose(2, 1, 3, 0).reshape(3 * h * d, e),),
        lambda w: (w.reshape(h, 3, d, e).transpose(3, 1, 0, 2),),
    )
    layer = [*norm_links("ln_attention", "input_layernorm", cfg), qkv]
    if cfg.attention_bias:
        layer.append(
            Link(
                ("attention/qkv_bias",),
                ("attention.query_key_value.bias",),
                lambda b: (b.transpose(1, 0, 2).reshape(-1),),
                lambda b: (b.reshape(h, 3, d).transpose(1, 0, 2),),
            )
        )
    layer.append(linear("attention/out_kernel", "attention.dense.weight", (h, d, e), 2))
    if cfg.attention_bias:
        layer.append(same("attention/out_bias", "attention.dense.bias"))
    layer += [
        *norm_links("ln_mlp", "post_attention_layernorm", cfg),
        linear("mlp/in_kernel", "mlp.dense_h_to_4h.weight", (e, m), 1),
        same("mlp/in_bias", "mlp.dense_h_to_4h.bias"),
        linear("mlp/out_kernel", "mlp.dense_4h_to_h.weight", (m, e), 1),
        same("mlp/out_bias", "mlp.dense_4h_to_h.bias"),
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
    e, h, kh, d, m = dims(cfg)
    top = [
        same("embedding", "model.embed_tokens.weight"),
        *norm_links("final_norm", "model.norm", cfg),
    ]
    if not cfg.tied_embeddings:
        top.append(linear("lm_head", "lm_head.weight", (e, cfg.vocab_size), 1))
    names = tuple(f"self_attn.{n}_proj" for n in "qkv")
    if kh == h:  # our fused [e, 3, h, d] kernel <-> three [h * d, e] weights
        proj = [
            Link(
                ("attention/qkv_kernel",),
                tuple(f"{n}.weight" for n in names),
                lambda w: tuple(w[:, t].reshape(e, h * d).T for t in range(3)),
                lambda *ws: (xp(ws[0]).stack([w.T.reshape(e, h, d) for w in ws], axis=1),),
            )
        ]
        if cfg.attention_bias:
            proj.append(
                Link(
                    ("attention/qkv_bias",),
                    tuple(f"{n}.bias" for n in names),
                    lambda b: tuple(b[t].reshape(-1) for t in range(3)),
                    lambda *bs: (xp(bs[0]).stack([b.reshape(h, d) for b in bs], axis=0),),
                )
            )
    else:  # q [e, h, d]; k and v fused as [e, 2, k, d]
        proj = [
            linear("attention/q_kernel", f"{names[0]}.weight", (e, h, d), 1),
            Link(
                ("attention/kv_kernel",),
                (f"{names[1]}.weight", f"{names[2]}.weight"),
                lambda w: tuple(w[:, t].reshape(e, kh * d).T for t in range(2)),
                lambda *ws: (xp(ws[0]).stack([w.T.reshape(e, kh, d) for w in ws], axis=1),),
            ),
        ]
        if cfg.attention_bias:
            proj += [
                flat("attention/q_bias", f"{names[0]}.bias", (h, d)),
                Link(
                    ("attention/kv_bias",),
                    (f"{names[1]}.bias", f"{names[2]}.bias"),
                    lambda b: tuple(b[t].reshape(-1) for t in range(2)),
                    lambda *bs: (xp(bs[0]).stack([b.reshape(kh, d) for b in bs], axis=0),),
                ),
            ]
    layer = [
        *norm_links("ln_attention", "input_layernorm", cfg),
        *proj,
        linear("attention/out_kernel", "self_attn.o_proj.weight", (h, d, e), 2),
        *norm_links("ln_mlp", "post_attention_layernorm", cfg),
        linear("mlp/gate_kernel", "mlp.gate_proj.weight", (e, m), 1),
        linear("mlp/in_kernel", "mlp.up_proj.weight", (e, m), 1),
        linear("mlp/out_kernel", "mlp.down_proj.weight", (m, e), 1),
    ]
    if cfg.attention_bias:
        layer.append(same("attention/out_bias", "self_attn.o_proj.bias"))
    if cfg.mlp_bias:
        layer += [
            same("mlp/gate_bias", "mlp.gate_proj.bias"),
            same("mlp/in_bias", "mlp.up_proj.bias"),
            same("mlp/out_bias", "mlp.down_proj.bias"),
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

"""`EncoderConfig`: the shape of a Hugging Face sequence classifier, for the Flax encoders.

`EncoderConfig.from_hf(config)` reads a transformers config of any architecture in
`FAMILIES` (`model_type` -> the Flax family that computes it); an architecture outside
the table raises `UnsupportedArchitecture`, whose message names the PyTorch fallback.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

# transformers `model_type` -> Flax family. XLM-R is RoBERTa's layout.
FAMILIES = {
    "bert": "bert",
    "roberta": "roberta",
    "xlm-roberta": "roberta",
    "albert": "albert",
    "distilbert": "distilbert",
    "deberta-v2": "deberta",
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class UnsupportedArchitecture(ValueError):
    """An architecture (or a variant of one) the JAX encoders do not compute."""


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Shape of a BERT-family sequence classifier (read from a Hugging Face config).

    The DeBERTa fields follow `DebertaV2Config` (transformers 4.57): relative attention
    over `2 * att_span` relative-position embeddings (`att_span` = `position_buckets`
    when > 0, else `max_relative_positions`, else `max_positions`), content->position
    (`c2p`) and position->content (`p2c`) terms, and query/key projections shared with
    the positions when `share_att_key`.
    """

    arch: str  # a FAMILIES value
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_act: str
    pad_token_id: int
    num_labels: int
    embedding_size: int | None = None  # ALBERT / DeBERTa factorise the embedding
    head_size: int | None = None  # DeBERTa's attention_head_size (default hidden / heads)
    # DeBERTa-v2/v3
    relative_attention: bool = False
    att_span: int = 0
    position_buckets: int = -1
    max_relative_positions: int = -1
    pos_att_type: tuple[str, ...] = ()
    share_att_key: bool = False
    norm_rel_ebd: bool = False
    position_biased_input: bool = True
    conv_kernel_size: int = 0
    conv_groups: int = 1
    conv_act: str = "tanh"
    pooler_act: str = "gelu"
    precision: str = "highest"  # matmul precision; "highest" keeps fp32 on TPU/GPU too
    dtype: str = "float32"  # matmul dtype: "float32" or "bfloat16"

    @classmethod
    def from_hf(cls, config, precision: str = "highest", dtype: str = "float32") -> EncoderConfig:
        """Reads a transformers config; raises `UnsupportedArchitecture` outside `FAMILIES`."""
        model_type = config.model_type
        if model_type not in FAMILIES:
            raise UnsupportedArchitecture(
                f"the JAX backend does not compute model type {model_type!r} "
                f"(it computes {', '.join(sorted(FAMILIES))}); use --backend torch"
            )
        arch = FAMILIES[model_type]
        common = dict(arch=arch, vocab_size=config.vocab_size, precision=precision, dtype=dtype)
        common["pad_token_id"] = config.pad_token_id or 0
        common["num_labels"] = config.num_labels
        if arch == "distilbert":
            if getattr(config, "activation", "gelu") not in _ACTS:
                raise UnsupportedArchitecture(
                    f"the JAX backend lacks activation {config.activation!r}; use --backend torch"
                )
            return cls(
                hidden_size=config.dim,
                num_layers=config.n_layers,
                num_heads=config.n_heads,
                intermediate_size=config.hidden_dim,
                max_positions=config.max_position_embeddings,
                type_vocab_size=0,
                layer_norm_eps=1e-12,  # fixed in DistilBERT's modules
                hidden_act=config.activation,
                **common,
            )
        if arch == "albert" and (config.num_hidden_groups != 1 or config.inner_group_num != 1):
            raise UnsupportedArchitecture(
                "the JAX backend computes ALBERT with one shared layer group (as albert-base-v2); "
                "use --backend torch"
            )
        if config.hidden_act not in _ACTS:
            raise UnsupportedArchitecture(
                f"the JAX backend lacks activation {config.hidden_act!r}; use --backend torch"
            )
        fields = dict(
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            num_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size,
            max_positions=config.max_position_embeddings,
            type_vocab_size=config.type_vocab_size,
            layer_norm_eps=config.layer_norm_eps,
            hidden_act=config.hidden_act,
        )
        if arch == "albert":
            fields["embedding_size"] = config.embedding_size
        if arch == "deberta":
            fields.update(_deberta_fields(config))
        return cls(**fields, **common)

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def head_dim(self) -> int:
        return self.head_size or self.hidden_size // self.num_heads


# Activations the encoders compute (transformers' ACT2FN names).
_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "tanh")


def _deberta_fields(config) -> dict:
    if getattr(config, "z_steps", 0) > 1:
        raise UnsupportedArchitecture(
            "the JAX backend lacks DeBERTa's z_steps; use --backend torch"
        )
    # DeBERTa-v2 computes only these two terms (and scales by them even without relative
    # attention); other entries are ignored there too.
    pos_att_type = tuple(t for t in (config.pos_att_type or ()) if t in ("c2p", "p2c"))
    relative = bool(getattr(config, "relative_attention", False))
    max_rel = getattr(config, "max_relative_positions", -1)
    if max_rel < 1:
        max_rel = config.max_position_embeddings
    buckets = getattr(config, "position_buckets", -1)
    norm = [x.strip() for x in getattr(config, "norm_rel_ebd", "none").lower().split("|")]
    pooler_size = getattr(config, "pooler_hidden_size", config.hidden_size)
    if pooler_size != config.hidden_size:
        raise UnsupportedArchitecture(
            "the JAX backend needs DeBERTa's pooler_hidden_size == hidden_size; use --backend torch"
        )
    for act in (getattr(config, "conv_act", "tanh"), getattr(config, "pooler_hidden_act", "gelu")):
        if act not in _ACTS:
            raise UnsupportedArchitecture(
                f"the JAX backend lacks activation {act!r}; use --backend torch"
            )
    embedding = getattr(config, "embedding_size", None) or config.hidden_size
    return dict(
        embedding_size=embedding,
        head_size=getattr(config, "attention_head_size", None),
        relative_attention=relative,
        att_span=buckets if buckets > 0 else max_rel,
        position_buckets=buckets,
        max_relative_positions=max_rel,
        pos_att_type=pos_att_type,
        share_att_key=bool(getattr(config, "share_att_key", False)),
        norm_rel_ebd="layer_norm" in norm,
        position_biased_input=bool(getattr(config, "position_biased_input", True)),
        conv_kernel_size=int(getattr(config, "conv_kernel_size", 0) or 0),
        conv_groups=int(getattr(config, "conv_groups", 1)),
        conv_act=getattr(config, "conv_act", "tanh"),
        pooler_act=getattr(config, "pooler_hidden_act", "gelu"),
    )

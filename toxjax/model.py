"""A GPT-style decoder-only language model (the paper's family) with a KV-cache path.

Pre-LayerNorm blocks, learned or rotary positions, tied or untied embeddings, optional
scan over layers and rematerialisation. Every parameter carries logical axis names
(see `toxjax.sharding`). The defaults are GPT-2's architecture; a few settings express
GPT-NeoX / Pythia and the Llama family exactly (`toxjax.interop.hf` converts them).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from toxjax import attention as attn
from toxjax import sharding as sh
from toxjax.errors import ConfigError
from toxjax.layers import ACTIVATIONS, NORMS, Block, BlockConfig

Array = jax.Array

# Cache leaves are stacked over layers on axis 0; the batch is on this axis.
CACHE_BATCH_AXIS = 1

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Model hyper-parameters (bound from gin files under gin_configs/models/).

    Attributes:
      vocab_size: number of token ids (the embedding has this many rows); None in a
        training config means the task vocabulary's size rounded up to 128.
      num_layers, num_heads, embed_dim: depth, heads, width.
      head_dim: per-head width; defaults to `embed_dim // num_heads`.
      mlp_dim: feed-forward width; defaults to `4 * embed_dim`.
      max_len: longest sequence (rows of the learned position table).
      position: "learned" (GPT-2) or "rotary".
      tied_embeddings: output projection is the transposed input embedding.
      dtype, param_dtype: compute and parameter dtypes ("float32", "bfloat16").
      remat: "none", "dots_saveable" or "full".
      scan_layers: stack the blocks with `nn.scan` (fast compiles for deep models).
      scan_unroll: layers per iteration of that scan; `num_layers` unrolls it into
        straight-line code with the same stacked parameters (and initialisation). A
        rolled scan stacks every layer's saved activations into `[layers, ...]` buffers
        (zero-filled, written and read back each step: 40% of a 4-layer step's memory
        traffic on CPU, docs/benchmarks.md); unrolled, XLA keeps them apart. Costs
        compile time in proportion to depth.
      dropout_rate: dropout on attention probs, MLP and residual branches.
      attention: the attention implementation (`toxjax.attention`): "auto" picks the
        fastest exact one for the platform (splash on TPU, a fused Pallas / cuDNN
        kernel on GPU, the dense "xla" reference on CPU); a name forces one.
      logits_chunk: None computes the `[batch, length, vocab]` float32 logits whole for
        the loss; N > 0 runs the LM head and the loss over N positions at a time
        (`losses.head_cross_entropy`), same loss and gradients, less memory.
      num_kv_heads: key/value heads of grouped-query attention (a divisor of num_heads);
        None means num_heads (no grouping). The KV cache holds this many heads.
      norm: "layernorm" (with bias) or "rmsnorm" (scale only, Llama);
        `layer_norm_eps` is its epsilon.
      activation: MLP activation, "gelu_tanh" (GPT-2's gelu_new), "gelu" (exact erf,
        GPT-NeoX), "silu", "relu".
      gated_mlp: `(act(x W_gate) * x W_in) W_out` (SwiGLU with "silu", Llama).
      attention_bias, mlp_bias: biases on the attention / MLP projections.
      parallel_residual: `x + attn(norm1(x)) + mlp(norm2(x))` (GPT-NeoX / Pythia).
      rotary_fraction: share of each head's features that rotate (Pythia: 0.25); the
        first `int(head_dim * rotary_fraction)` ones, half-split convention.
      rotary_base: the rotary maximum wavelength (transformers' `rope_theta`).
    """

    vocab_size: int | None = 50257
    num_layers: int = 2
    num_heads: int = 4
    embed_dim: int = 64
    head_dim: int | None = None
    mlp_dim: int | None = None
    max_len: int = 256
    position: str = "learned"
    tied_embeddings: bool = True
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    scan_layers: bool = True
    scan_unroll: int = 1
    dropout_rate: float = 0.0
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02
    attention: str = "auto"
    logits_chunk: int | None = None
    # Added for other families (toxjax.interop); the defaults are the model above, so
    # run.json files written before these fields existed load unchanged.
    num_kv_heads: int | None = None
    norm: str = "layernorm"
    activation: str = "gelu_tanh"
    gated_mlp: bool = False
    attention_bias: bool = True
    mlp_bias: bool = True
    parallel_residual: bool = False
    rotary_fraction: float = 1.0
    rotary_base: float = 10_000.0

    def __post_init__(self):
        if self.position not in ("learned", "rotary"):
            raise ConfigError(
                f"ModelConfig.position must be 'learned' or 'rotary', got {self.position!r}"
            )
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(
                f"ModelConfig.remat must be one of {sorted(REMAT_POLICIES)}, got {self.remat!r}"
            )
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ConfigError(f"ModelConfig.{name} must be one of {sorted(DTYPES)}")
        attn.check_name(self.attention)
        if self.scan_unroll < 1:
            raise ConfigError(f"ModelConfig.scan_unroll must be >= 1, got {self.scan_unroll}")
        if self.logits_chunk is not None and self.logits_chunk < 1:
            raise ConfigError(
                f"ModelConfig.logits_chunk must be None or a positive number of positions, "
                f"got {self.logits_chunk}"
            )
        if self.head_dim is None and self.embed_dim % self.num_heads:
            raise ConfigError(
                f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )
        for name, table in (("norm", NORMS), ("activation", ACTIVATIONS)):
            if getattr(self, name) not in table:
                raise ConfigError(
                    f"ModelConfig.{name} must be one of {sorted(table)}, got {getattr(self, name)!r}"
                )
        if self.num_kv_heads is not None and (
            self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads
        ):
            raise ConfigError(
                f"ModelConfig.num_kv_heads={self.num_kv_heads} must divide num_heads "
                f"{self.num_heads} (or be None)"
            )
        if self.position == "rotary":
            dims = self.rotary_dims
            if not 0 < self.rotary_fraction <= 1 or dims < 2 or dims % 2:
                raise ConfigError(
                    f"ModelConfig.rotary_fraction={self.rotary_fraction} rotates {dims} of "
                    f"{self.resolved_head_dim} head features; it must be in (0, 1] and rotate "
                    "an even number of them"
                )
            if self.rotary_base <= 0:
                raise ConfigError(f"ModelConfig.rotary_base must be > 0, got {self.rotary_base}")

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.embed_dim // self.num_heads

    @property
    def resolved_mlp_dim(self) -> int:
        return self.mlp_dim or 4 * self.embed_dim

    @property
    def resolved_kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def rotary_dims(self) -> int:
        """Features of each head that rotate (transformers: `int(head_dim * pct)`)."""
        return int(self.resolved_head_dim * self.rotary_fraction)

    def block_config(self) -> BlockConfig:
        return BlockConfig(
            embed_dim=self.embed_dim,
            num_heads=self.num_heads,
            head_dim=self.resolved_head_dim,
            mlp_dim=self.resolved_mlp_dim,
            rotary=self.position == "rotary",
            dropout_rate=self.dropout_rate,
            layer_norm_eps=self.layer_norm_eps,
            init_std=self.init_std,
            residual_init_std=self.init_std / (2 * self.num_layers) ** 0.5,
            dtype=DTYPES[self.dtype],
            param_dtype=DTYPES[self.param_dtype],
            attention=self.attention,
            num_kv_heads=self.resolved_kv_heads,
            norm=self.norm,
            activation=self.activation,
            gated_mlp=self.gated_mlp,
            attention_bias=self.attention_bias,
            mlp_bias=self.mlp_bias,
            parallel_residual=self.parallel_residual,
            rotary_dims=self.rotary_dims if self.rotary_fraction < 1 else None,
            rotary_base=self.rotary_base,
        )

    def non_embedding_params(self) -> int:
        """N in the 6N FLOPs formula: all parameters but the token / position tables."""
        e, h, d, m = self.embed_dim, self.num_heads, self.resolved_head_dim, self.resolved_mlp_dim
        qkv = (h + 2 * self.resolved_kv_heads) * d
        attn = e * qkv + h * d * e + (qkv + e if self.attention_bias else 0)
        ins = 2 if self.gated_mlp else 1
        mlp = ins * e * m + m * e + (ins * m + e if self.mlp_bias else 0)
        norm = 2 * e if self.norm == "layernorm" else e  # scale (+ bias)
        head = 0 if self.tied_embeddings else e * self.vocab_size
        return self.num_layers * (attn + mlp + 2 * norm) + norm + head

    def train_flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6N + 12 * L * H * Q * T.

        N counts non-embedding parameters plus the output projection (tied or not: it is
        a real matmul), L layers, H heads, Q head dim, T sequence length. The attention
        term assumes no causal halving (the usual convention, as in PaLM / nanoGPT).
        """
        n = self.non_embedding_params() + (
            self.embed_dim * self.vocab_size if self.tied_embeddings else 0
        )
        attn = 12 * self.num_layers * self.num_heads * self.resolved_head_dim * seq_len
        return 6 * n + attn


@jax.custom_vjp
def tied_logits(x: Array, embedding: Array) -> Array:
    """Output projection with the input embedding: `[b, l, e], [v, e] -> [b, l, v]`.

    The custom backward computes the embedding gradient as `(x^T @ dlogits)^T`, so XLA
    transposes `x` and the `[e, v]` result instead of the `[b*l, v]` logits gradient,
    the largest tensor of the step.
    """
    return jnp.einsum("ble,ve->blv", x, embedding)


def _tied_fwd(x, embedding):
    return tied_logits(x, embedding), (x, embedding)


def _tied_bwd(res, g):
    x, embedding = res
    dx = jnp.einsum("blv,ve->ble", g, embedding)
    d_emb = jnp.einsum("ble,blv->ev", x, g).T
    return dx.astype(x.dtype), d_emb.astype(embedding.dtype)


tied_logits.defvjp(_tied_fwd, _tied_bwd)


class DecoderLM(nn.Module):
    """Decoder-only LM. See docs/architecture.md for the training and decoding contract."""

    config: ModelConfig
    deterministic: bool = True

    def setup(self):
        cfg = self.config
        pdtype = DTYPES[cfg.param_dtype]
        normal = nn.initializers.normal(cfg.init_std)
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(normal, (sh.VOCAB, sh.EMBED)),
            (cfg.vocab_size, cfg.embed_dim),
            pdtype,
        )
        if cfg.position == "learned":
            self.position_embedding = self.param(
                "position_embedding",
                nn.with_logical_partitioning(nn.initializers.normal(0.01), (sh.POSITION, sh.EMBED)),
                (cfg.max_len, cfg.embed_dim),
                pdtype,
            )
        if not cfg.tied_embeddings:
            self.lm_head = self.param(
                "lm_head",
                nn.with_logical_partitioning(normal, (sh.EMBED, sh.VOCAB)),
                (cfg.embed_dim, cfg.vocab_size),
                pdtype,
            )
        block = Block
        policy = REMAT_POLICIES[cfg.remat]
        if cfg.remat != "none":
            # An unrolled scan is straight-line code: CSE could undo the remat there.
            rolled = cfg.scan_layers and cfg.scan_unroll == 1
            block = nn.remat(Block, policy=policy, prevent_cse=not rolled)
        bcfg = cfg.block_config()
        if cfg.scan_layers:
            self.blocks = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast),
                length=cfg.num_layers,
                unroll=cfg.scan_unroll,
                metadata_params={nn.PARTITION_NAME: sh.LAYERS},
            )(bcfg, self.deterministic, name="blocks")
        else:
            self.blocks = [
                block(bcfg, self.deterministic, name=f"block_{i}") for i in range(cfg.num_layers)
            ]
        self.final_norm = NORMS[cfg.norm](
            cfg.layer_norm_eps, DTYPES[cfg.dtype], pdtype, name="final_norm"
        )

    def __call__(
        self,
        tokens: Array,
        positions: Array | None = None,
        segment_ids: Array | None = None,
        cache: dict[str, Array] | None = None,
        cache_index: Array | int | None = None,
    ):
        """Runs the model.

        Args:
          tokens: `[batch, length]` int token ids.
          positions: `[batch, length]` position of each token within its document
            (defaults to 0..length-1).
          segment_ids: `[batch, length]` packed-document id of each token; 0 is padding.
            Attention never crosses segments. With a cache: 1 real token, 0 padding.
          cache: KV cache from `init_cache` (decoding), or None (training / scoring).
          cache_index: with a cache, the slot of `tokens[:, 0]` (same for every row). A
            Python int 0 with several tokens is a prefill: nothing precedes slot 0, so
            its attention runs through the fused kernels like training does.

        Returns:
          `logits [batch, length, vocab]` float32, and the updated cache when one is given.
        """
        x, new_cache = self._trunk(tokens, positions, segment_ids, cache, cache_index)
        dtype = DTYPES[self.config.dtype]
        if self.config.tied_embeddings:
            logits = tied_logits(x, self.embedding.astype(dtype))
        else:
            logits = jnp.dot(x, self.lm_head.astype(dtype))
        logits = sh.constrain(logits.astype(jnp.float32), (sh.BATCH, sh.LENGTH, sh.ACT_VOCAB))
        return logits if cache is None else (logits, new_cache)

    def head_inputs(
        self, tokens: Array, positions: Array | None = None, segment_ids: Array | None = None
    ) -> tuple[Array, Array]:
        """What a fused LM head + loss needs instead of the logits (training / scoring).

        `model.apply(variables, tokens, positions=..., segment_ids=...,
        method="head_inputs")`; `logits == hidden @ head.T` up to the float32 cast.

        Returns:
          `hidden [batch, length, embed]` (after the final LayerNorm) and
          `head [vocab, embed]` (the output projection), both in the compute dtype.
        """
        x, _ = self._trunk(tokens, positions, segment_ids, None, None)
        dtype = DTYPES[self.config.dtype]
        head = self.embedding if self.config.tied_embeddings else self.lm_head.T
        return x, head.astype(dtype)

    def _trunk(self, tokens, positions, segment_ids, cache, cache_index):
        """Embeddings, blocks and the final LayerNorm: `[b, l] -> [b, l, e]`, new cache."""
        cfg = self.config
        dtype = DTYPES[cfg.dtype]
        b, length = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
        if segment_ids is None:
            segment_ids = jnp.ones((b, length), jnp.int32)
        x = jnp.take(self.embedding, tokens, axis=0).astype(dtype)
        if cfg.position == "learned":
            x = x + jnp.take(self.position_embedding, positions, axis=0).astype(dtype)
        x = sh.constrain(x, (sh.BATCH, sh.LENGTH, sh.ACT_EMBED))
        if cache is not None:
            if cache_index is None:
                raise ValueError("DecoderLM: a call with a cache needs cache_index")
            if isinstance(cache_index, (int, np.integer)) and cache_index == 0 and length > 1:
                cache_index = None  # the blocks read None as "prefill from slot 0"
            else:
                cache_index = jnp.asarray(cache_index, jnp.int32)

        if cfg.scan_layers:
            (x, new_cache), _ = self.blocks(
                (x, cache), positions, segment_ids, jnp.arange(cfg.num_layers), cache_index
            )
        else:
            new_cache = cache
            for i, blk in enumerate(self.blocks):
                (x, new_cache), _ = blk((x, new_cache), positions, segment_ids, i, cache_index)
        return self.final_norm(x), new_cache

    def init_cache(self, batch: int, max_length: int, dtype: Any = None) -> dict[str, Array]:
        """An empty KV cache: k, v `[layers, batch, max_length, kv_heads, head_dim]`, valid
        `[layers, batch, max_length]`. Callable without binding: `DecoderLM(cfg).init_cache(...)`."""
        return init_cache(self.config, batch, max_length, dtype)


def init_cache(config: ModelConfig, batch: int, max_length: int, dtype: Any = None):
    """Empty KV cache for `config` (see `DecoderLM.init_cache`)."""
    if config.position == "learned" and max_length > config.max_len:
        raise ValueError(f"cache length {max_length} exceeds the model's max_len {config.max_len}")
    dtype = dtype or DTYPES[config.dtype]
    shape = (
        config.num_layers,
        batch,
        max_length,
        config.resolved_kv_heads,
        config.resolved_head_dim,
    )
    return {
        "k": jnp.zeros(shape, dtype),
        "v": jnp.zeros(shape, dtype),
        "valid": jnp.zeros(shape[:3], bool),
    }

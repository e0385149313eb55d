"""Detoxify natively in JAX: the checkpoints' weights in a Flax encoder, jitted, data-sharded.

The same `.ckpt` files as the PyTorch path (`detoxify_torch`) are read once with torch,
converted to a Flax parameter tree, and from then on scoring runs on whatever JAX runs on
(the TPU/GPU that trains the model) with no PyTorch in the loop. Supported backbones:
BERT (`original`), RoBERTa (`unbiased`), XLM-RoBERTa (`multilingual`, RoBERTa's layout)
and ALBERT (`*-small`). Parity with the PyTorch model is tested to 1e-4.

Batches are length-sorted and padded to a few bucket lengths (one compile per bucket
shape); rows are padded to a multiple of the mesh's `data` axis and split over it, with
the (small) classifier parameters replicated. On an accelerator the batch is sized to
the device's memory, and host work overlaps device work (`WindowedClassifier`: the next
chunk is tokenized on a thread and the next batch is dispatched before the last one's
scores are fetched).

`dtype="bfloat16"` runs the matmuls in bfloat16 (weights stored in bfloat16, f32
accumulation) with embeddings, residual stream, LayerNorm, softmax and the output
sigmoid in float32, the usual mixed precision; its scores differ from PyTorch's fp32
ones by about 1e-2 (tested on tiny random checkpoints), against 1e-4 for float32.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from toxjax.toxicity.detoxify_torch import (
    build_model_and_tokenizer,
    class_names_of,
    load_checkpoint_dict,
)
from toxjax.toxicity.windows import DEFAULT_BUCKETS, WindowedClassifier

_ARCH = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta", "albert": "albert"}
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_PREFIX = {"bert": "bert", "roberta": "roberta", "albert": "albert"}


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Shape of a BERT-family sequence classifier (read from a Hugging Face config)."""

    arch: str  # "bert", "roberta" (also XLM-R) or "albert"
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
    embedding_size: int | None = None  # ALBERT factorises the embedding
    precision: str = "highest"  # matmul precision; "highest" keeps fp32 on TPU too
    dtype: str = "float32"  # matmul dtype: "float32" or "bfloat16" (see the module doc)

    @classmethod
    def from_hf(cls, config, precision: str = "highest", dtype: str = "float32") -> EncoderConfig:
        if config.model_type not in _ARCH:
            raise ValueError(
                f"unsupported backbone {config.model_type!r}; the JAX path supports "
                f"{sorted(_ARCH)}; use the PyTorch scorer for this checkpoint"
            )
        arch = _ARCH[config.model_type]
        if arch == "albert" and (config.num_hidden_groups != 1 or config.inner_group_num != 1):
            raise ValueError("only ALBERT with one shared layer group (as in albert-base-v2)")
        return cls(
            arch=arch,
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            num_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size,
            max_positions=config.max_position_embeddings,
            type_vocab_size=config.type_vocab_size,
            layer_norm_eps=config.layer_norm_eps,
            hidden_act=config.hidden_act,
            pad_token_id=config.pad_token_id or 0,
            num_labels=config.num_labels,
            embedding_size=getattr(config, "embedding_size", None) if arch == "albert" else None,
            precision=precision,
            dtype=dtype,
        )

    def __post_init__(self):
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]


def _act(name: str):
    acts = {
        "gelu": functools.partial(jax.nn.gelu, approximate=False),
        "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
        "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
        "relu": jax.nn.relu,
        "tanh": jnp.tanh,
    }
    if name not in acts:
        raise ValueError(f"unsupported hidden_act {name!r}")
    return acts[name]


def _dense(cfg: EncoderConfig, features: int, name: str) -> nn.Dense:
    return nn.Dense(features, precision=cfg.precision, dtype=cfg.compute_dtype, name=name)


def _layer_norm(cfg: EncoderConfig, name: str) -> nn.LayerNorm:
    # Two-pass variance, as torch computes it (the fast E[x^2]-E[x]^2 form drifts); in
    # float32 whatever the matmul dtype (the residual stream stays float32).
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_eps, use_fast_variance=False, dtype=jnp.float32, name=name
    )


def _attend(cfg: EncoderConfig, x: jax.Array, bias: jax.Array) -> jax.Array:
    """Multi-head self-attention context (query/key/value Dense live in the caller).

    Args:
      x: `[batch, length, hidden]`.
      bias: `[batch, 1, 1, length]`, 0 on real keys and a large negative on padding.

    Returns:
      `[batch, length, hidden]` context before the output projection.
    """
    b, n, _ = x.shape
    heads, dim = cfg.num_heads, cfg.hidden_size // cfg.num_heads
    q, k, v = (
        _dense(cfg, cfg.hidden_size, name)(x).reshape(b, n, heads, dim)
        for name in ("query", "key", "value")
    )
    logits = jnp.einsum(
        "bqhd,bkhd->bhqk", q, k, precision=cfg.precision, preferred_element_type=jnp.float32
    )
    probs = jax.nn.softmax(logits / math.sqrt(dim) + bias, axis=-1).astype(cfg.compute_dtype)
    ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision=cfg.precision)
    return ctx.reshape(b, n, cfg.hidden_size)


class _SelfAttention(nn.Module):
    cfg: EncoderConfig

    @nn.compact
    def __call__(self, x, bias):
        return _attend(self.cfg, x, bias)


class _AddNorm(nn.Module):
    """`LayerNorm(residual + dense(x))`: BERT's `*.output` block."""

    cfg: EncoderConfig

    @nn.compact
    def __call__(self, x, residual):
        y = _dense(self.cfg, residual.shape[-1], "dense")(x).astype(jnp.float32)
        return _layer_norm(self.cfg, "LayerNorm")(residual + y)


class _Attention(nn.Module):
    cfg: EncoderConfig

    @nn.compact
    def __call__(self, x, bias):
        return _AddNorm(self.cfg, name="output")(_SelfAttention(self.cfg, name="self")(x, bias), x)


class _Intermediate(nn.Module):
    cfg: EncoderConfig

    @nn.compact
    def __call__(self, x):
        return _act(self.cfg.hidden_act)(_dense(self.cfg, self.cfg.intermediate_size, "dense")(x))


class _BertLayer(nn.Module):
    cfg: EncoderConfig

    @nn.compact
    def __call__(self, x, bias):
        x = _Attention(self.cfg, name="attention")(x, bias)
        return _AddNorm(self.cfg, name="output")(_Intermediate(self.cfg, name="intermediate")(x), x)


class _AlbertAttention(nn.Module):
    cfg: EncoderConfig

    @nn.compact
    def __call__(self, x, bias):
        ctx = _attend(self.cfg, x, bias)
        y = _dense(self.cfg, self.cfg.hidden_size, "dense")(ctx).astype(jnp.float32)
        return _layer_norm(self.cfg, "LayerNorm")(x + y)


class _AlbertLayer(nn.Module):
    cfg: EncoderConfig

    @nn.compact
    def __call__(self, x, bias):
        cfg = self.cfg
        x = _AlbertAttention(cfg, name="attention")(x, bias)
        h = _act(cfg.hidden_act)(_dense(cfg, cfg.intermediate_size, "ffn")(x))
        h = _dense(cfg, cfg.hidden_size, "ffn_output")(h)
        return _layer_norm(cfg, "full_layer_layer_norm")(x + h.astype(jnp.float32))


class _Embeddings(nn.Module):
    cfg: EncoderConfig

    @nn.compact
    def __call__(self, ids, positions):
        cfg = self.cfg
        dim = cfg.embedding_size or cfg.hidden_size
        x = nn.Embed(cfg.vocab_size, dim, name="word_embeddings")(ids)
        x = x + nn.Embed(cfg.type_vocab_size, dim, name="token_type_embeddings")(
            jnp.zeros_like(ids)
        )
        x = x + nn.Embed(cfg.max_positions, dim, name="position_embeddings")(positions)
        return _layer_norm(cfg, "LayerNorm")(x)


class _Layers(nn.Module):
    """BERT's `encoder.layer.<i>` list, or ALBERT's one shared layer applied N times."""

    cfg: EncoderConfig

    @nn.compact
    def __call__(self, x, bias):
        cfg = self.cfg
        if cfg.arch == "albert":
            x = _dense(cfg, cfg.hidden_size, "embedding_hidden_mapping_in")(x).astype(jnp.float32)
            layer = _AlbertLayer(cfg, name="albert_layer_groups_0_albert_layers_0")
            for _ in range(cfg.num_layers):
                x = layer(x, bias)
            return x
        for i in range(cfg.num_layers):
            x = _BertLayer(cfg, name=f"layer_{i}")(x, bias)
        return x


class _Backbone(nn.Module):
    cfg: EncoderConfig

    @nn.compact
    def __call__(self, ids, mask):
        cfg = self.cfg
        if cfg.arch == "roberta":
            # RoBERTa numbers real tokens from pad_id + 1 (padding keeps pad_id).
            positions = jnp.cumsum(mask, axis=1) * mask + cfg.pad_token_id
        else:
            positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
        x = _Embeddings(cfg, name="embeddings")(ids, positions)
        bias = jnp.where(mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
        x = _Layers(cfg, name="encoder")(x, bias)
        if cfg.arch == "roberta":
            return x
        return jnp.tanh(_dense(cfg, cfg.hidden_size, "pooler_dense")(x[:, 0]))  # pooled


class DetoxifyClassifier(nn.Module):
    """BERT / RoBERTa / XLM-R / ALBERT sequence classifier with Detoxify's sigmoid outputs.

    `[batch, length]` int ids and mask -> `[batch, num_labels]` probabilities.
    """

    cfg: EncoderConfig

    @nn.compact
    def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        cfg = self.cfg
        h = _Backbone(cfg, name=_PREFIX[cfg.arch])(ids, mask)
        if cfg.arch == "roberta":  # classifier.dense -> tanh -> classifier.out_proj on <s>
            h = jnp.tanh(_dense(cfg, cfg.hidden_size, "classifier_dense")(h[:, 0]))
            logits = _dense(cfg, cfg.num_labels, "classifier_out_proj")(h)
        else:
            logits = _dense(cfg, cfg.num_labels, "classifier")(h)
        return jax.nn.sigmoid(logits.astype(jnp.float32))


# Torch key pieces that become one Flax module name (Flax names have no dots).
_JOIN = [
    (r"encoder\.layer\.(\d+)\.", r"encoder.layer_\1."),
    (r"albert_layer_groups\.0\.albert_layers\.0\.", "albert_layer_groups_0_albert_layers_0."),
    (r"pooler\.dense\.", "pooler_dense."),
    (r"^albert\.pooler\.", "albert.pooler_dense."),
    (r"^classifier\.dense\.", "classifier_dense."),
    (r"^classifier\.out_proj\.", "classifier_out_proj."),
]


def params_from_torch(state_dict: dict, cfg: EncoderConfig) -> dict:
    """Converts a Hugging Face classifier's torch `state_dict` to `DetoxifyClassifier` params.

    Linear weights are transposed to Flax kernels, LayerNorm weights become `scale`,
    embedding tables `embedding`. The result is checked key-for-key and shape-for-shape
    against the Flax model, so a checkpoint of another layout fails loudly here.
    """
    flat = {}
    for key, tensor in state_dict.items():
        if key.endswith(("position_ids", "token_type_ids")):  # buffers, not weights
            continue
        for pattern, repl in _JOIN:
            key = re.sub(pattern, repl, key)
        *path, leaf = key.split(".")
        value = tensor.detach().cpu().float().numpy()
        if "norm" in path[-1].lower():
            leaf = {"weight": "scale"}.get(leaf, leaf)
        elif path[-1].endswith("embeddings") and leaf == "weight":
            leaf = "embedding"
        elif leaf == "weight":
            leaf, value = "kernel", value.T
        flat[(*path, leaf)] = value
    params = traverse_util.unflatten_dict(flat)
    expected = jax.eval_shape(
        DetoxifyClassifier(cfg).init,
        jax.random.key(0),
        jnp.zeros((1, 4), jnp.int32),
        jnp.ones((1, 4), jnp.int32),
    )["params"]
    want = {k: v.shape for k, v in traverse_util.flatten_dict(expected).items()}
    got = {k: v.shape for k, v in flat.items()}
    if want != got:
        missing = sorted("/".join(k) for k in want.keys() - got.keys())
        extra = sorted("/".join(k) for k in got.keys() - want.keys())
        shapes = sorted("/".join(k) for k in want.keys() & got.keys() if want[k] != got[k])
        raise ValueError(
            f"checkpoint does not match the {cfg.arch} layout: missing {missing}, "
            f"unexpected {extra}, wrong shape {shapes}"
        )
    return params


def data_mesh() -> Mesh:
    """A 1-axis mesh named `data` over all devices."""
    return Mesh(np.asarray(jax.devices()), ("data",))


# Padded tokens per batch on each accelerator: enough rows to fill the device, capped so
# that a batch takes at most a quarter of its memory (the sampler shares the device).
_MAX_DEVICE_TOKENS = 2**18


def device_batch(cfg: EncoderConfig, mesh: Mesh) -> tuple[int, int]:
    """`(tokens_per_batch, max_rows)` sized to the mesh's devices.

    CPU keeps small batches (16,384 tokens, 128 rows: larger ones only add padding
    there). An accelerator gets the largest power of two of tokens whose activations (a
    rough per-token bound: Q/K/V/context, the feed-forward and 512-key attention rows,
    float32) fit a quarter of its memory, at most 2**18, per device on `data`.
    """
    device = mesh.devices.flat[0]
    if device.platform == "cpu":
        return 16384, 128
    try:
        limit = int((device.memory_stats() or {}).get("bytes_limit", 16 * 2**30))
    except Exception:  # a backend without memory statistics: assume a 16 GiB device
        limit = 16 * 2**30
    per_token = 4 * (4 * cfg.hidden_size + 2 * cfg.intermediate_size + cfg.num_heads * 512)
    tokens = max(512, min(_MAX_DEVICE_TOKENS, limit // 4 // per_token))
    tokens = (1 << (tokens.bit_length() - 1)) * int(mesh.shape["data"])
    return tokens, tokens // 16  # rows: the shortest bucket fills a batch


def cast_matmul_params(params: dict, dtype) -> dict:
    """Dense kernels and biases in `dtype`; LayerNorm and embedding tables stay float32."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict(
        {
            k: v.astype(dtype) if k[-1] in ("kernel", "bias") and "norm" not in k[-2].lower() else v
            for k, v in flat.items()
        }
    )


class DetoxifyJaxScorer(WindowedClassifier):
    """A Detoxify checkpoint scored with JAX.

    Args:
      model: Detoxify model name; names the scorer `detoxify-<model>` (the same name as
        the PyTorch path: the scores agree to 1e-4).
      checkpoint: local `.ckpt` path (default: Detoxify's released checkpoint).
      config_dir: local backbone config + tokenizer directory (offline loading).
      mesh: device mesh with a `data` axis (default: all devices on one `data` axis).
      precision: matmul precision (`"highest"` keeps fp32 on TPU; `"default"` is faster
        there and less exact).
      dtype: `"float32"` (scores as PyTorch's to 1e-4) or `"bfloat16"` (mixed precision,
        the accelerator setting; about 1e-2 from PyTorch's fp32 scores).
      buckets: padded lengths (each a separate compile).
      **kwargs: batching options of `WindowedClassifier`; `tokens_per_batch` and
        `max_rows` default to `device_batch` (sized to the device).
    """

    def __init__(
        self,
        model: str = "original",
        checkpoint: str | None = None,
        config_dir: str | None = None,
        mesh: Mesh | None = None,
        precision: str = "highest",
        dtype: str = "float32",
        buckets=DEFAULT_BUCKETS,
        **kwargs,
    ):
        loaded = load_checkpoint_dict(model, checkpoint)
        torch_model, tokenizer = build_model_and_tokenizer(loaded, config_dir)
        self.config = EncoderConfig.from_hf(torch_model.config, precision, dtype)
        params = params_from_torch(torch_model.state_dict(), self.config)
        params = cast_matmul_params(params, self.config.compute_dtype)
        class_names = class_names_of(loaded)
        del torch_model, loaded
        max_length = min(self.config.max_positions, 512)
        if self.config.arch == "roberta":
            max_length = min(max_length, self.config.max_positions - self.config.pad_token_id - 1)
        mesh = mesh or data_mesh()
        if "data" not in mesh.axis_names:
            raise ValueError(f"mesh axes {mesh.axis_names} have no 'data' axis to shard batches on")
        self.mesh = mesh
        self.row_multiple = int(mesh.shape["data"])
        self.buckets = tuple(b for b in buckets if b < max_length) + (max_length,)
        replicated = NamedSharding(mesh, PartitionSpec())
        rows = NamedSharding(mesh, PartitionSpec("data"))
        self.params = jax.device_put(params, replicated)
        module = DetoxifyClassifier(self.config)
        self._classify = jax.jit(
            lambda p, ids, mask: module.apply({"params": p}, ids, mask),
            in_shardings=(replicated, rows, rows),
            out_shardings=rows,
        )
        tokens, rows = device_batch(self.config, mesh)
        kwargs.setdefault("tokens_per_batch", tokens)
        kwargs.setdefault("max_rows", rows)
        super().__init__(f"detoxify-{model}", tokenizer, class_names, max_length, **kwargs)

    def _dispatch(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> jax.Array:
        return self._classify(self.params, input_ids, attention_mask)  # returns at once

    def _forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return np.asarray(self._dispatch(input_ids, attention_mask))

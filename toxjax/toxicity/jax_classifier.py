"""A Hugging Face sequence classifier scored with JAX: jitted, bucketed, data-sharded.

Shared by the Detoxify checkpoints (`detoxify_jax`) and any local `hf:DIR` classifier
(`hf`). The torch weights are converted once (`encoders.params_from_torch`, strict) and
from then on scoring runs on whatever JAX runs on (the TPU/GPU that trains the model),
with no PyTorch in the loop.

Batches are length-sorted and padded to a few bucket lengths (one compile per bucket
shape); rows are padded to a multiple of the mesh's `data` axis and split over it, with
the (small) classifier parameters replicated. On an accelerator the batch is sized to
the device's memory, and host work overlaps device work (`WindowedClassifier`: the next
chunk is tokenized on a thread and the next batch is dispatched before the last one's
scores are fetched).

`dtype="bfloat16"` runs the matmuls in bfloat16 (weights stored in bfloat16, f32
accumulation) with embeddings, residual stream, LayerNorm, softmax and the output
activation in float32, the usual mixed precision; its scores differ from PyTorch's fp32
ones by about 1e-2 (tested on tiny random checkpoints), against 1e-4 for float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from toxjax.toxicity.encoders import EncoderConfig, cast_matmul_params, classifier
from toxjax.toxicity.encoders import params_from_torch as _params_from_torch
from toxjax.toxicity.torch_classifier import ACTIVATIONS
from toxjax.toxicity.windows import DEFAULT_BUCKETS, WindowedClassifier


def data_mesh() -> Mesh:
    """A 1-axis mesh named `data` over all devices."""
    return Mesh(np.asarray(jax.devices()), ("data",))


# Padded tokens per batch on each accelerator: enough rows to fill the device, capped so
# that a batch takes at most a quarter of its memory (the sampler shares the device).
_MAX_DEVICE_TOKENS = 2**18


def device_batch(cfg: EncoderConfig, mesh: Mesh) -> tuple[int, int]:
    """`(tokens_per_batch, max_rows)` sized to the mesh's devices.

    CPU takes the PyTorch path's batches (`WindowedClassifier`'s 16,384 tokens, at most
    512 rows: a short text's batch is then 512 rows, where 128 left the two CPU cores
    waiting on each other between small matmuls). An accelerator gets the largest power of two of tokens whose activations (a
    rough per-token bound: Q/K/V/context, the feed-forward and 512-key attention rows,
    float32) fit a quarter of its memory, at most 2**18, per device on `data`.
    """
    device = mesh.devices.flat[0]
    if device.platform == "cpu":
        return 16384, 512
    try:
        limit = int((device.memory_stats() or {}).get("bytes_limit", 16 * 2**30))
    except Exception:  # a backend without memory statistics: assume a 16 GiB device
        limit = 16 * 2**30
    per_token = 4 * (4 * cfg.hidden_size + 2 * cfg.intermediate_size + cfg.num_heads * 512)
    tokens = max(512, min(_MAX_DEVICE_TOKENS, limit // 4 // per_token))
    tokens = (1 << (tokens.bit_length() - 1)) * int(mesh.shape["data"])
    return tokens, tokens // 16  # rows: the shortest bucket fills a batch


class JaxClassifier(WindowedClassifier):
    """A sequence classifier's torch weights scored with the Flax encoders.

    Args:
      name: scorer name.
      tokenizer: the classifier's tokenizer.
      hf_config: its transformers config (`EncoderConfig.from_hf` reads it; an
        architecture the encoders lack raises `UnsupportedArchitecture`).
      state_dict: its torch weights (`{key: tensor}`), converted strictly.
      attributes: attribute names, `"toxicity"` first.
      columns: the output unit of each attribute.
      activation: `"sigmoid"` or `"softmax"` (over all output units).
      max_length: tokens per classifier window.
      source: what the weights came from, for messages.
      mesh: device mesh with a `data` axis (default: all devices on one `data` axis).
      precision: matmul precision (`"highest"` keeps fp32 on TPU/GPU; `"default"` is
        faster there and less exact).
      dtype: `"float32"` (scores as PyTorch's to 1e-4) or `"bfloat16"`.
      buckets: padded lengths (each a separate compile).
      **kwargs: batching options of `WindowedClassifier`; `tokens_per_batch` and
        `max_rows` default to `device_batch` (sized to the device), `chunk_texts` to
        8 batches' rows (at least 8,192).
    """

    def __init__(
        self,
        name: str,
        tokenizer,
        hf_config,
        state_dict: dict,
        attributes: Sequence[str],
        columns: Sequence[int],
        activation: str,
        max_length: int,
        source: str = "checkpoint",
        mesh: Mesh | None = None,
        precision: str = "highest",
        dtype: str = "float32",
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        **kwargs,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.config = EncoderConfig.from_hf(hf_config, precision, dtype)
        params = _params_from_torch(state_dict, self.config, source)
        params = cast_matmul_params(params, self.config.compute_dtype)
        mesh = mesh or data_mesh()
        if "data" not in mesh.axis_names:
            raise ValueError(f"mesh axes {mesh.axis_names} have no 'data' axis to shard batches on")
        self.mesh = mesh
        self.row_multiple = int(mesh.shape["data"])
        self.buckets = tuple(b for b in buckets if b < max_length) + (max_length,)
        self.activation = activation
        replicated = NamedSharding(mesh, PartitionSpec())
        rows = NamedSharding(mesh, PartitionSpec("data"))
        self.params = jax.device_put(params, replicated)
        module = classifier(self.config)
        cols = jnp.asarray(list(columns), jnp.int32)

        def classify(p, ids, mask):
            logits = module.apply({"params": p}, ids, mask)
            probs = jax.nn.sigmoid(logits) if activation == "sigmoid" else jax.nn.softmax(logits)
            return probs[:, cols]

        self._classify = jax.jit(
            classify, in_shardings=(replicated, rows, rows), out_shardings=rows
        )
        tokens, max_rows = device_batch(self.config, mesh)
        kwargs.setdefault("tokens_per_batch", tokens)
        kwargs.setdefault("max_rows", max_rows)
        # Length-sorted chunks of several batches each: a batch then spans few lengths
        # (an accelerator's 8,192-row batch would otherwise be a whole 8,192-text chunk).
        kwargs.setdefault("chunk_texts", max(8192, 8 * kwargs["max_rows"]))
        super().__init__(name, tokenizer, attributes, max_length, **kwargs)

    def _dispatch(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> jax.Array:
        return self._classify(self.params, input_ids, attention_mask)  # returns at once

    def _forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return np.asarray(self._dispatch(input_ids, attention_mask))

"""Detoxify natively in JAX: the checkpoints' weights in the Flax encoders, jitted, sharded.

The same `.ckpt` files as the PyTorch path (`detoxify_torch`) are read once with torch
(strictly: weights that do not fit are refused), converted to Flax parameters
(`toxjax.toxicity.encoders`), and scored by `JaxClassifier`. Detoxify's backbones are
BERT (`original`), RoBERTa (`unbiased`), XLM-RoBERTa (`multilingual`) and ALBERT
(`*-small`); parity with the PyTorch model is tested to 1e-4.
"""

from __future__ import annotations

from collections.abc import Sequence

from jax.sharding import Mesh

from toxjax.toxicity.detoxify_torch import (
    build_model_and_tokenizer,
    class_names_of,
    load_checkpoint_dict,
)
from toxjax.toxicity.jax_classifier import JaxClassifier
from toxjax.toxicity.windows import DEFAULT_BUCKETS, classifier_max_length


class DetoxifyJaxScorer(JaxClassifier):
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
        `max_rows` default to `jax_classifier.device_batch` (sized to the device).
    """

    def __init__(
        self,
        model: str = "original",
        checkpoint: str | None = None,
        config_dir: str | None = None,
        mesh: Mesh | None = None,
        precision: str = "highest",
        dtype: str = "float32",
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        **kwargs,
    ):
        loaded = load_checkpoint_dict(model, checkpoint)
        torch_model, tokenizer = build_model_and_tokenizer(loaded, config_dir, checkpoint)
        names = class_names_of(loaded)
        state = torch_model.state_dict()
        del loaded
        super().__init__(
            f"detoxify-{model}",
            tokenizer,
            torch_model.config,
            state,
            names,
            range(len(names)),
            "sigmoid",
            classifier_max_length(torch_model.config),
            source=checkpoint or f"the released detoxify-{model} checkpoint",
            mesh=mesh,
            precision=precision,
            dtype=dtype,
            buckets=buckets,
            **kwargs,
        )

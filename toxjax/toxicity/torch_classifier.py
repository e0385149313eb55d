"""A Hugging Face sequence classifier scored with PyTorch (windowed, length-sorted batches).

Shared by the Detoxify checkpoints (`detoxify_torch`) and any local `hf:DIR` classifier
(`hf`): `strict_from_pretrained` loads a model that accounts for every weight, and
`TorchClassifier` scores texts with it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from toxjax.toxicity import weights
from toxjax.toxicity.windows import WindowedClassifier

ACTIVATIONS = ("sigmoid", "softmax")


@contextlib.contextmanager
def quiet_transformers():
    """transformers' multi-line loading warnings off (a refusal is our one line)."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def strict_from_pretrained(model_class, source: str, what: str, *args, **kwargs) -> Any:
    """`model_class.from_pretrained(*args, **kwargs)` that refuses weights that do not fit.

    transformers fills missing weights at random and drops unexpected ones with a logged
    warning; here either is a `weights.WeightsMismatch` naming the keys, as is a weight
    of the wrong shape.

    Args:
      model_class: a `PreTrainedModel` class (or an Auto class).
      source: what the weights came from, for messages.
      what: what they should fit, for messages (`"a BertForSequenceClassification"`).
    """
    try:
        with quiet_transformers():
            model, info = model_class.from_pretrained(*args, output_loading_info=True, **kwargs)
    except RuntimeError as e:  # "size mismatch for ...": a checkpoint of another shape
        detail = " ".join(str(e).split())
        if "size mismatch" not in detail:
            raise
        raise weights.WeightsMismatch(
            f"{source}: the weights do not fit {what}: {detail[detail.find('size mismatch') :]}"
        ) from None
    missing, unexpected = list(info["missing_keys"]), list(info["unexpected_keys"])
    wrong = {k: (a, b) for k, a, b in _mismatched(info)}
    if missing or unexpected or wrong:
        raise weights.WeightsMismatch(weights.describe(source, what, missing, unexpected, wrong))
    return model.eval()


def _mismatched(info: dict):
    for item in info.get("mismatched_keys") or ():
        if isinstance(item, tuple) and len(item) == 3:
            yield item
        else:
            yield item, (), ()


class TorchClassifier(WindowedClassifier):
    """A loaded PyTorch sequence classifier: `attributes[i]` is output column `columns[i]`.

    Args:
      name: scorer name.
      model: the `*ForSequenceClassification` module (eval mode).
      tokenizer: its tokenizer.
      attributes: attribute names, `"toxicity"` first.
      columns: the output unit of each attribute.
      activation: `"sigmoid"` (each unit its own probability) or `"softmax"` (over all).
      max_length: tokens per classifier window, special tokens included.
      device: torch device.
      num_threads: if set, `torch.set_num_threads(num_threads)`.
      **kwargs: batching options of `WindowedClassifier`.
    """

    def __init__(
        self,
        name: str,
        model,
        tokenizer,
        attributes: Sequence[str],
        columns: Sequence[int],
        activation: str,
        max_length: int,
        device: str = "cpu",
        num_threads: int | None = None,
        **kwargs,
    ):
        import torch

        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if num_threads:
            torch.set_num_threads(num_threads)
        self.model = model.to(device)
        self.device = device
        self.activation = activation
        self.columns = torch.as_tensor(list(columns), dtype=torch.long)
        super().__init__(name, tokenizer, attributes, max_length, **kwargs)

    def _forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            logits = self.model(
                input_ids=torch.from_numpy(input_ids).long().to(self.device),
                attention_mask=torch.from_numpy(attention_mask).long().to(self.device),
            ).logits.float()
            if self.activation == "sigmoid":
                probs = torch.sigmoid(logits)
            else:
                probs = torch.softmax(logits, dim=-1)
            return probs[:, self.columns.to(probs.device)].cpu().numpy()

"""Detoxify in PyTorch: the five Detoxify checkpoints, offline-capable, windowed, batched.

Loading follows Detoxify 0.5.4's `load_checkpoint` (same config, same `from_pretrained`
call, so the same weights land in the same modules), with one change: the backbone
config and tokenizer are read from `config_dir` when given. Detoxify's own loader reads
the config from `checkpoint["config"]["arch"]["args"]["model_type"]` (e.g.
`"bert-base-uncased"`, a hub name) even when a local `huggingface_config_path` is given,
so it needs the network; here a local directory replaces that name and nothing is
fetched.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from toxjax.toxicity import DETOXIFY_MODELS
from toxjax.toxicity.windows import WindowedClassifier

# Detoxify renames these Jigsaw labels so that every model reports the same names.
_RENAME = {
    "toxic": "toxicity",
    "identity_hate": "identity_attack",
    "severe_toxic": "severe_toxicity",
}


def check_local_files(checkpoint: str | None, config_dir: str | None) -> None:
    """Checks a local checkpoint and config dir exist, without loading anything.

    Raises:
      FileNotFoundError: naming the missing or wrong path and what to do.
    """
    if checkpoint is not None:
        if not os.path.exists(checkpoint):
            raise FileNotFoundError(
                f"Detoxify checkpoint --checkpoint {checkpoint!r} does not exist"
            )
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(
                f"Detoxify checkpoint --checkpoint {checkpoint!r} is not a file (give the .ckpt)"
            )
    if config_dir is not None and not os.path.isfile(os.path.join(config_dir, "config.json")):
        what = "does not exist" if not os.path.exists(config_dir) else "has no config.json"
        raise FileNotFoundError(
            f"--config_dir {config_dir!r} {what}; save the backbone config and tokenizer "
            "there (config.save_pretrained / tokenizer.save_pretrained) while online"
        )


def _torch_load(load, source: str) -> dict:
    """Runs a `torch.load`-like `load()` that reads plain data only, with one-line errors.

    `weights_only=True` unpickles tensors and plain containers and refuses everything
    else, so a crafted checkpoint cannot run code while it loads (Detoxify's own loader
    uses `weights_only=False`).
    """
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():  # its protocol note would be a second line
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            return load()
    except pickle.UnpicklingError as e:
        text = " ".join(str(e).split())
        if "Weights only load failed" not in text:  # not a pickle at all
            raise ValueError(f"{source}: not a readable torch checkpoint ({text})") from None
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        detail = re.search(r"WeightsUnpickler error: (.+?)(?: Check the documentation|$)", text)
        what = (
            f"the Python object {found.group(1)}"
            if found
            else f"pickle instructions beyond plain data ({detail.group(1) if detail else '?'})"
        )
        raise ValueError(
            f"{source}: refused to load: it holds {what}, not just weights, and unpickling it "
            "could run code; a Detoxify checkpoint is a dict of plain config values and "
            "tensors ({'config': ..., 'state_dict': ...}); load only files you trust"
        ) from None
    except RuntimeError as e:  # not a torch file at all (truncated, wrong format)
        raise ValueError(f"{source}: not a readable torch checkpoint ({e})") from None


def load_checkpoint_dict(model: str = "original", checkpoint: str | None = None) -> dict:
    """Reads a Detoxify checkpoint dict (`{"config": ..., "state_dict": ...}`), data only.

    Args:
      model: one of `DETOXIFY_MODELS`; used only when `checkpoint` is None, to download
        the released checkpoint exactly as Detoxify does (needs the network once; torch
        caches it).
      checkpoint: path of a local Detoxify `.ckpt`.

    Raises:
      ValueError: the file is not a plain Detoxify checkpoint (e.g. it holds code).
      FileNotFoundError: `checkpoint` does not exist.
    """
    import torch

    if checkpoint is None:
        from detoxify.detoxify import MODEL_URLS

        if model not in MODEL_URLS:
            raise ValueError(f"unknown Detoxify model {model!r}; choose one of {DETOXIFY_MODELS}")
        url = MODEL_URLS[model]
        return _torch_load(
            lambda: torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True),
            url,
        )
    check_local_files(checkpoint, None)
    loaded = _torch_load(
        lambda: torch.load(checkpoint, map_location="cpu", weights_only=True), checkpoint
    )
    if not isinstance(loaded, dict) or "config" not in loaded or "state_dict" not in loaded:
        raise ValueError(
            f"{checkpoint}: not a Detoxify checkpoint (needs 'config' and 'state_dict' keys)"
        )
    return loaded


def class_names_of(loaded: dict) -> list[str]:
    """Detoxify's standardised attribute names for a checkpoint's output units."""
    return [_RENAME.get(c, c) for c in loaded["config"]["dataset"]["args"]["classes"]]


def build_model_and_tokenizer(loaded: dict, config_dir: str | None = None) -> tuple[Any, Any]:
    """Builds the Hugging Face classifier and a fast tokenizer from a checkpoint dict.

    Args:
      loaded: the checkpoint dict.
      config_dir: local directory with the backbone's `config.json` and tokenizer files;
        when given, nothing is fetched from the hub (this is the offline path).

    Returns:
      `(model, tokenizer)`, the model in eval mode on CPU.
    """
    import transformers

    args = loaded["config"]["arch"]["args"]
    source = config_dir or args["model_type"]
    local = config_dir is not None
    if local and not os.path.isfile(os.path.join(config_dir, "config.json")):
        raise FileNotFoundError(
            f"config_dir {config_dir!r} has no config.json; save the backbone config and "
            f"tokenizer of {args['model_type']!r} there (config.save_pretrained / "
            "tokenizer.save_pretrained) while online, then load with no network"
        )
    model_class = getattr(transformers, args["model_name"])
    config = model_class.config_class.from_pretrained(
        source, num_labels=args["num_classes"], local_files_only=local
    )
    model = model_class.from_pretrained(
        pretrained_model_name_or_path=None, config=config, state_dict=loaded["state_dict"]
    )
    model.eval()
    # The fast twin of Detoxify's (slow) tokenizer: same ids, much faster, and it can
    # tokenize a multi-megabyte document.
    name = args["tokenizer_name"]
    tok_class = getattr(transformers, name + "Fast", None) or getattr(transformers, name)
    tokenizer = tok_class.from_pretrained(source, local_files_only=local)
    return model, tokenizer


class DetoxifyTorchScorer(WindowedClassifier):
    """A Detoxify model run with PyTorch.

    Args:
      model: Detoxify model name (`original`, `unbiased`, `multilingual`,
        `original-small`, `unbiased-small`); names the scorer `detoxify-<model>`.
      checkpoint: local `.ckpt` path (default: Detoxify's released checkpoint).
      config_dir: local backbone config + tokenizer directory (offline loading).
      device: torch device.
      num_threads: if set, `torch.set_num_threads(num_threads)`.
      **kwargs: batching options of `WindowedClassifier` (`tokens_per_batch`, `max_rows`,
        `progress`).
    """

    def __init__(
        self,
        model: str = "original",
        checkpoint: str | None = None,
        config_dir: str | None = None,
        device: str = "cpu",
        num_threads: int | None = None,
        **kwargs,
    ):
        import torch

        if num_threads:
            torch.set_num_threads(num_threads)
        loaded = load_checkpoint_dict(model, checkpoint)
        self.model, tokenizer = build_model_and_tokenizer(loaded, config_dir)
        self.model.to(device)
        self.device = device
        max_length = min(int(self.model.config.max_position_embeddings), 512)
        if self.model.config.model_type in ("roberta", "xlm-roberta"):
            max_length = min(max_length, self.model.config.max_position_embeddings - 2)
        super().__init__(
            f"detoxify-{model}", tokenizer, class_names_of(loaded), max_length, **kwargs
        )

    def _forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            logits = self.model(
                input_ids=torch.from_numpy(input_ids).long().to(self.device),
                attention_mask=torch.from_numpy(attention_mask).long().to(self.device),
            ).logits
            return torch.sigmoid(logits).float().cpu().numpy()

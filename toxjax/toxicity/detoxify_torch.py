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
from typing import Any

from toxjax.toxicity import DETOXIFY_MODELS, weights
from toxjax.toxicity.torch_classifier import TorchClassifier, strict_from_pretrained
from toxjax.toxicity.weights import torch_load_data
from toxjax.toxicity.windows import classifier_max_length

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
        return torch_load_data(
            lambda: torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True),
            url,
        )
    check_local_files(checkpoint, None)
    loaded = torch_load_data(
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


def build_model_and_tokenizer(
    loaded: dict, config_dir: str | None = None, checkpoint: str | None = None
) -> tuple[Any, Any]:
    """Builds the Hugging Face classifier and a fast tokenizer from a checkpoint dict.

    The weights must fit the classifier exactly (`torch_classifier.strict_from_pretrained`):
    Lightning's `model.` prefix is mapped, any other missing, unexpected or wrongly shaped
    weight is refused, never filled at random.

    Args:
      loaded: the checkpoint dict.
      config_dir: local directory with the backbone's `config.json` and tokenizer files;
        when given, nothing is fetched from the hub (this is the offline path).
      checkpoint: the checkpoint's path, for messages.

    Returns:
      `(model, tokenizer)`, the model in eval mode on CPU.

    Raises:
      weights.WeightsMismatch: the weights do not fit (one line naming the keys).
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
    state = loaded["state_dict"]
    # A self-trained Detoxify is a Lightning module holding the classifier as `self.model`.
    names = weights.normalize_keys(state)
    state = {names[k]: v for k, v in state.items()}
    model = strict_from_pretrained(
        model_class,
        checkpoint or "the Detoxify checkpoint",
        f"a {args['model_name']} with {args['num_classes']} labels",
        pretrained_model_name_or_path=None,
        config=config,
        state_dict=state,
    )
    # The fast twin of Detoxify's (slow) tokenizer: same ids, much faster, and it can
    # tokenize a multi-megabyte document.
    name = args["tokenizer_name"]
    tok_class = getattr(transformers, name + "Fast", None) or getattr(transformers, name)
    tokenizer = tok_class.from_pretrained(source, local_files_only=local)
    return model, tokenizer


class DetoxifyTorchScorer(TorchClassifier):
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
        loaded = load_checkpoint_dict(model, checkpoint)
        classifier, tokenizer = build_model_and_tokenizer(loaded, config_dir, checkpoint)
        names = class_names_of(loaded)
        super().__init__(
            f"detoxify-{model}",
            classifier,
            tokenizer,
            names,
            range(len(names)),
            "sigmoid",
            classifier_max_length(classifier.config),
            device=device,
            num_threads=num_threads,
            **kwargs,
        )

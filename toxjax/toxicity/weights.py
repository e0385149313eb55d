"""Classifier weights: reading them from disk, and refusing ones that do not fit.

One home for the rule every scorer backend follows: a loaded classifier accounts for
every weight it expects. `from_pretrained(None, config=..., state_dict=...)` and
`load_state_dict(strict=False)` fill a missing weight (say the classification head) with
random numbers and go on, so a checkpoint of another layout would score every text about
0.5 with exit code 0. Here the expected and the found key sets are compared and any
difference is refused, naming the missing and unexpected keys. Key layouts we know are
mapped first, not refused: PyTorch Lightning's `model.` prefix (a self-trained Detoxify),
a base-model checkpoint's missing `<prefix>.` (then only the head is missing, and said
so), TF-era `LayerNorm.gamma/beta` names.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

# A Hugging Face model directory's weights, in the order transformers prefers them.
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS, SAFETENSORS_INDEX, TORCH_BIN, TORCH_BIN_INDEX)

LIGHTNING_PREFIX = "model."
_SHOWN = 4  # keys named in a message, per kind


class WeightsMismatch(ValueError):
    """A state dict that does not fit the model (missing or unexpected keys, wrong shapes)."""


def weight_files(model_dir: str) -> list[str]:
    """The weight files of a Hugging Face model directory (shards included).

    Raises:
      FileNotFoundError: no `model.safetensors` / `pytorch_model.bin` (or their index).
    """
    for name in WEIGHT_FILES:
        path = os.path.join(model_dir, name)
        if not os.path.isfile(path):
            continue
        if not name.endswith(".index.json"):
            return [path]
        with open(path) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(model_dir, s) for s in shards]
    raise FileNotFoundError(
        f"{model_dir!r} has no weights ({' / '.join(WEIGHT_FILES)}); save the classifier "
        "there with model.save_pretrained(DIR)"
    )


def torch_load_data(load, source: str) -> Any:
    """Runs a `torch.load`-like `load()` that reads plain data only, with one-line errors.

    `weights_only=True` unpickles tensors and plain containers and refuses everything
    else, so a crafted checkpoint cannot run code while it loads (Detoxify's own loader
    uses `weights_only=False`).

    Raises:
      ValueError: the file holds code (named), or is not a torch file at all.
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
            "could run code; weights need only plain values and tensors (a Detoxify .ckpt "
            "is {'config': ..., 'state_dict': ...}); load only files you trust"
        ) from None
    except RuntimeError as e:  # not a torch file at all (truncated, wrong format)
        raise ValueError(f"{source}: not a readable torch checkpoint ({e})") from None


def _torch_file(path: str, mmap: bool) -> dict:
    import torch

    return torch_load_data(
        lambda: torch.load(path, map_location="cpu", weights_only=True, mmap=mmap), path
    )


def file_keys(paths: Iterable[str]) -> list[str]:
    """The tensor names in weight files, read without loading the tensors."""
    keys: list[str] = []
    for path in paths:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                keys += list(f.keys())
        else:  # memory-mapped: the names cost no tensor reads
            keys += list(_torch_file(path, mmap=True))
    return keys


def load_files(paths: Iterable[str]) -> dict[str, Any]:
    """Every tensor of the weight files (torch tensors, on the CPU)."""
    state: dict[str, Any] = {}
    for path in paths:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state.update(load_file(path, device="cpu"))
        else:
            state.update(_torch_file(path, mmap=False))
    return state


def _rename(key: str) -> str:
    # TF-era BERT checkpoints name LayerNorm parameters gamma / beta (transformers renames too).
    if key.endswith("LayerNorm.gamma"):
        return key[: -len("gamma")] + "weight"
    if key.endswith("LayerNorm.beta"):
        return key[: -len("beta")] + "bias"
    return key


def normalize_keys(keys: Iterable[str], prefix: str | None = None) -> dict[str, str]:
    """Maps each checkpoint key to the model's name for it (the known layouts only).

    Args:
      keys: the checkpoint's keys.
      prefix: the model's base-model prefix (`"bert"`, `"roberta"`, `"deberta"`...): a
        checkpoint none of whose keys carry it is a base model's, saved without the
        prefix (and without the task head). None: leave prefixes alone.

    Returns:
      `{checkpoint key: model key}`, one entry per checkpoint key.
    """
    keys = list(keys)
    mapped = {k: _rename(k) for k in keys}
    if keys and all(k.startswith(LIGHTNING_PREFIX) for k in keys):
        # PyTorch Lightning saves the wrapped module as `self.model`.
        mapped = {k: v[len(LIGHTNING_PREFIX) :] for k, v in mapped.items()}
    if prefix and not any(v.startswith(prefix + ".") for v in mapped.values()):
        mapped = {k: f"{prefix}.{v}" for k, v in mapped.items()}
    return mapped


def ignored(key: str, patterns: Iterable[str]) -> bool:
    """Whether `key` matches one of the regexes `patterns` (a model's ignore lists)."""
    return any(re.search(p, key) for p in patterns)


def mismatch(
    got: Iterable[str],
    expected: Iterable[str],
    ignore_unexpected: Iterable[str] = (),
    ignore_missing: Iterable[str] = (),
) -> tuple[list[str], list[str]]:
    """`(missing, unexpected)` keys, sorted, after the model's own ignore patterns.

    Args:
      got: the checkpoint's keys (already normalized).
      expected: the model's keys.
      ignore_unexpected: regexes of checkpoint keys the model drops on purpose (buffers
        older versions saved, e.g. `position_ids`; transformers' per-class lists).
      ignore_missing: regexes of model keys a checkpoint may lack.
    """
    got, expected = set(got), set(expected)
    missing = sorted(k for k in expected - got if not ignored(k, ignore_missing))
    unexpected = sorted(k for k in got - expected if not ignored(k, ignore_unexpected))
    return missing, unexpected


def _some(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > _SHOWN else ''})" if keys else "0"


def describe(
    source: str,
    what: str,
    missing: list[str],
    unexpected: list[str],
    wrong_shape: Mapping[str, tuple] | None = None,
) -> str:
    """The one-line refusal: `<source>: the weights do not fit <what>: missing N (...)...`."""
    text = (
        f"{source}: the weights do not fit {what}: missing {_some(missing)}, "
        f"unexpected {_some(unexpected)}"
    )
    if wrong_shape:
        shapes = [f"{k} {tuple(a)} vs {tuple(b)}" for k, (a, b) in sorted(wrong_shape.items())]
        text += f", wrong shape {_some(shapes)}"
    if any(k.startswith("classifier.") and k.endswith("weight") for k in missing) and all(
        _is_head(k) for k in missing
    ):
        text += "; the checkpoint has no classification head (a base model?)"
    return text + "; refusing to score with randomly initialised weights"


_HEAD = re.compile(r"^(classifier|pre_classifier|pooler\.dense|score)\b")


def _is_head(key: str) -> bool:
    return bool(_HEAD.match(key))


def check(
    source: str,
    what: str,
    got: Iterable[str],
    expected: Iterable[str],
    ignore_unexpected: Iterable[str] = (),
    ignore_missing: Iterable[str] = (),
) -> None:
    """Raises `WeightsMismatch` (one line) unless `got` and `expected` agree."""
    missing, unexpected = mismatch(got, expected, ignore_unexpected, ignore_missing)
    if missing or unexpected:
        raise WeightsMismatch(describe(source, what, missing, unexpected))

"""Transformers checkpoints <-> toxjax models: one table of architecture families.

A `Family` (`toxjax.interop.families.FAMILIES`: GPT-2, GPT-NeoX / Pythia, Llama) says
how one transformers architecture's config maps onto `ModelConfig` (and back) and how its
state-dict tensors map onto our parameter tree (and back); this module runs them.

Every conversion is a reshape / transpose of the same numbers, so import -> export gives
back the input bit for bit. Token ids here are the checkpoint's own: rows are moved between
id conventions by `toxjax.interop.hf_vocab`. A setting a family cannot express (a rope
scaling, an activation transformers and toxjax do not share) is refused in one line naming
it, never dropped. Tensors travel as numpy arrays (safetensors' numpy API): export needs
neither torch nor a device.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from toxjax.errors import ConfigError
from toxjax.interop.families import FAMILIES
from toxjax.interop.links import Family, Link
from toxjax.model import DecoderLM, ModelConfig

Arrays = dict[str, np.ndarray]
SAFETENSORS = "model.safetensors"


def family_of(hf_config) -> Family:
    """The family of a transformers config (object or config.json dict)."""
    model_type = (
        hf_config.get("model_type") if isinstance(hf_config, Mapping) else hf_config.model_type
    )
    if model_type not in FAMILIES:
        archs = ", ".join(f"{f.architecture} ({n})" for n, f in FAMILIES.items())
        raise ConfigError(
            f"config.json: model_type {model_type!r} is not supported; toxjax converts {archs}"
        )
    return FAMILIES[model_type]


def family_for(cfg: ModelConfig) -> Family:
    """The first transformers architecture whose forward pass equals this model's.

    Raises:
      ConfigError: none does (one line with each family's reason).
    """
    reasons = []
    for family in FAMILIES.values():
        reason = family.why_not(cfg)
        if reason is None:
            return family
        reasons.append(f"{family.architecture}: {reason}")
    raise ConfigError(
        "no transformers architecture computes this model (" + "; ".join(reasons) + ")"
    )


def config_from_hf(hf_config) -> ModelConfig:
    """`ModelConfig` of a transformers config object (`AutoConfig.from_pretrained(dir)`)."""
    return family_of(hf_config).to_config(hf_config)


def config_to_hf(cfg: ModelConfig, **extra: Any):
    """The transformers config object whose model computes `cfg` (plus `extra` fields such
    as token ids), with `architectures` set."""
    import transformers

    family = family_for(cfg)
    kwargs = {**family.from_config(cfg), **extra}
    return transformers.AutoConfig.for_model(
        family.name, architectures=[family.architecture], **kwargs
    )


# ------------------------------------------------------------------ parameters
def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _nest(flat: Mapping[str, Any]) -> dict:
    out: dict = {}
    for path, v in flat.items():
        *parents, leaf = path.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


def _split_layers(cfg: ModelConfig, params: Mapping) -> tuple[dict, list[dict]]:
    """Our tree -> (top-level flat dict, one flat dict per layer), scanned or not."""
    flat = _flatten(params)
    top = {k: v for k, v in flat.items() if not k.startswith(("blocks/", "block_"))}
    if cfg.scan_layers:
        stacked = {k[len("blocks/") :]: v for k, v in flat.items() if k.startswith("blocks/")}
        layers = [{k: v[i] for k, v in stacked.items()} for i in range(cfg.num_layers)]
    else:
        layers = [
            {k[len(f"block_{i}/") :]: v for k, v in flat.items() if k.startswith(f"block_{i}/")}
            for i in range(cfg.num_layers)
        ]
    return top, layers


def _join_layers(cfg: ModelConfig, top: dict, layers: list[dict]) -> dict:
    flat = dict(top)
    if cfg.scan_layers:
        for k in layers[0]:
            flat[f"blocks/{k}"] = np.stack([layer[k] for layer in layers])
    else:
        for i, layer in enumerate(layers):
            flat.update({f"block_{i}/{k}": v for k, v in layer.items()})
    return _nest(flat)


def relayout(params: Mapping, src: ModelConfig, dst: ModelConfig) -> dict:
    """Parameters of `src`'s layer layout in `dst`'s (`scan_layers` stacked or not): an
    imported tree (stacked) for a training config that does not scan."""
    top, layers = _split_layers(src, jax.tree.map(np.asarray, params))
    return _join_layers(dst, top, layers)


def params_to_hf(cfg: ModelConfig, params: Mapping) -> tuple[Family, Arrays]:
    """Our parameters -> the transformers state dict of `family_for(cfg)` (numpy arrays;
    a tied output head is not written: transformers ties it on load)."""
    family = family_for(cfg)
    top_links, layer_links = family.links(cfg)
    top, layers = _split_layers(cfg, jax.tree.map(np.asarray, params))
    out: Arrays = {}

    def apply(links, ours, prefix):
        for link in links:
            for name, value in zip(link.hf, link.to_hf(*(ours[p] for p in link.ours)), strict=True):
                out[prefix + name] = np.ascontiguousarray(value)

    apply(top_links, top, "")
    for i, layer in enumerate(layers):
        apply(layer_links, layer, family.layer.format(i=i))
    return family, out


def _expected_hf_shapes(cfg: ModelConfig, family: Family) -> dict[str, tuple[int, ...]]:
    """Every tensor name the checkpoint must hold, with its shape (from the config)."""
    from flax import linen as nn

    unscanned = dataclasses.replace(cfg, scan_layers=False, remat="none")
    abstract = jax.eval_shape(
        lambda: DecoderLM(unscanned).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    )
    top, layers = _split_layers(unscanned, nn.unbox(abstract["params"]))
    top_links, layer_links = family.links(cfg)
    shapes = {}
    for links, ours, prefixes in (
        (top_links, top, [""]),
        (layer_links, layers[0], [family.layer.format(i=i) for i in range(cfg.num_layers)]),
    ):
        for link in links:
            outs = jax.eval_shape(link.to_hf, *(ours[p] for p in link.ours))
            for prefix in prefixes:
                for name, o in zip(link.hf, outs, strict=True):
                    shapes[prefix + name] = tuple(o.shape)
    return shapes


def _with_base(family: Family, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Adds the base prefix to a checkpoint saved from the base model (`h.0...`)."""
    if any(k.startswith(family.base) for k in tensors):
        return dict(tensors)
    return {(k if k == family.head else family.base + k): v for k, v in tensors.items()}


def params_from_hf(
    cfg: ModelConfig, family: Family, tensors: Mapping[str, np.ndarray], where: str = "checkpoint"
) -> dict:
    """A transformers state dict -> our parameter tree (float32 numpy arrays).

    Raises:
      ConfigError: a tensor the config needs is missing, has another shape than the
        config implies, or is not one the architecture has (each names the tensor).
    """
    tensors = _with_base(family, tensors)
    expected = _expected_hf_shapes(cfg, family)
    for name, shape in expected.items():
        if name not in tensors:
            raise ConfigError(f"{where}: no tensor {name!r}, which config.json implies")
        if tuple(tensors[name].shape) != shape:
            raise ConfigError(
                f"{where}: tensor {name!r} has shape {tuple(tensors[name].shape)}, but "
                f"config.json implies {shape}; the config and the weights do not match"
            )
    if cfg.tied_embeddings and family.head in tensors:
        top_embedding = family.links(cfg)[0][0].hf[0]
        if not np.array_equal(tensors[family.head], tensors[top_embedding]):
            raise ConfigError(
                f"{where}: {family.head!r} differs from {top_embedding!r} although "
                "config.json ties the word embeddings"
            )
    extra = sorted(
        k
        for k in tensors
        if k not in expected and k != family.head and not k.endswith(family.buffers)
    )
    if extra:
        raise ConfigError(
            f"{where}: tensor {extra[0]!r} ({len(extra)} unexpected in all) is not part of "
            f"{family.architecture} as config.json describes it"
        )

    def f32(x):
        return np.asarray(x, np.float32)

    def apply(links, prefix):
        out = {}
        for link in links:
            values = link.from_hf(*(f32(tensors[prefix + n]) for n in link.hf))
            out.update({p: np.ascontiguousarray(v) for p, v in zip(link.ours, values, strict=True)})
        return out

    top_links, layer_links = family.links(cfg)
    layers = [apply(layer_links, family.layer.format(i=i)) for i in range(cfg.num_layers)]
    return _join_layers(cfg, apply(top_links, ""), layers)


# ------------------------------------------------------------------ files
def read_tensors(directory: str) -> dict[str, np.ndarray]:
    """The state dict of a transformers checkpoint directory: `model.safetensors`, a
    sharded `model.safetensors.index.json`, or (with torch) `pytorch_model.bin[.index.json]`."""
    from safetensors.numpy import load_file

    def shards(index: str) -> list[str]:
        with open(os.path.join(directory, index)) as f:
            return sorted(set(json.load(f)["weight_map"].values()))

    if os.path.exists(os.path.join(directory, SAFETENSORS)):
        files = [SAFETENSORS]
    elif os.path.exists(os.path.join(directory, SAFETENSORS + ".index.json")):
        files = shards(SAFETENSORS + ".index.json")
    elif os.path.exists(os.path.join(directory, "pytorch_model.bin")):
        files = ["pytorch_model.bin"]
    elif os.path.exists(os.path.join(directory, "pytorch_model.bin.index.json")):
        files = shards("pytorch_model.bin.index.json")
    else:
        raise FileNotFoundError(
            f"{directory}: no weights (model.safetensors or pytorch_model.bin, or their "
            ".index.json); is it a transformers checkpoint directory?"
        )
    out: dict[str, np.ndarray] = {}
    for name in files:
        path = os.path.join(directory, name)
        if name.endswith(".safetensors"):
            out.update(load_file(path))
        else:
            import torch

            state = torch.load(path, map_location="cpu", weights_only=True)
            out.update({k: v.float().numpy() for k, v in state.items()})
    return out


def write_safetensors(tensors: Mapping[str, np.ndarray], path: str) -> None:
    """Writes a state dict the way transformers reads it (`format: pt` metadata)."""
    from safetensors.numpy import save_file

    save_file(dict(tensors), path, metadata={"format": "pt"})


__all__ = [
    "FAMILIES",
    "Family",
    "Link",
    "config_from_hf",
    "config_to_hf",
    "family_for",
    "family_of",
    "params_from_hf",
    "params_to_hf",
    "read_tensors",
    "relayout",
    "write_safetensors",
]

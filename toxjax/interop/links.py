"""The pieces a family of `toxjax.interop.families` is made of.

A `Link` ties some of our parameters to some transformers state-dict tensors (usually one
each) with a pair of inverse functions (reshapes and transposes only, so conversions are
exact); a `Family` bundles one architecture's config mapping and links.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from toxjax.model import ModelConfig


@dataclasses.dataclass(frozen=True)
class Link:
    """Some of our tensors <-> some transformers tensors (usually one each).

    Attributes:
      ours: parameter paths (`"attention/qkv_kernel"`), within a layer for layer links.
      hf: state-dict names, after the layer prefix for layer links.
      to_hf: `(*our arrays) -> tuple of transformers arrays`.
      from_hf: the inverse.
    """

    ours: tuple[str, ...]
    hf: tuple[str, ...]
    to_hf: Callable[..., tuple]
    from_hf: Callable[..., tuple]


def xp(x):
    """numpy for arrays, jax.numpy for tracers (expected shapes come from `eval_shape`)."""
    return jnp if isinstance(x, jax.Array) else np


def same(ours: str, hf: str) -> Link:
    return Link((ours,), (hf,), lambda x: (x,), lambda x: (x,))


def linear(ours: str, hf: str, shape: tuple[int, ...], n_in: int) -> Link:
    """Our kernel `[in..., out...]` (first `n_in` dims in) <-> torch `Linear.weight [out, in]`."""
    fan_in = math.prod(shape[:n_in])
    return Link(
        (ours,), (hf,), lambda w: (w.reshape(fan_in, -1).T,), lambda w: (w.T.reshape(shape),)
    )


def conv1d(ours: str, hf: str, shape: tuple[int, ...], n_in: int) -> Link:
    """Our kernel <-> GPT-2's `Conv1D.weight [in, out]`."""
    fan_in = math.prod(shape[:n_in])
    return Link((ours,), (hf,), lambda w: (w.reshape(fan_in, -1),), lambda w: (w.reshape(shape),))


def flat(ours: str, hf: str, shape: tuple[int, ...]) -> Link:
    """A bias of shape `shape` <-> its flat transformers vector."""
    return Link((ours,), (hf,), lambda b: (b.reshape(-1),), lambda b: (b.reshape(shape),))


def norm_links(ours: str, hf: str, cfg: ModelConfig) -> list[Link]:
    links = [same(f"{ours}/scale", f"{hf}.weight")]
    if cfg.norm == "layernorm":
        links.append(same(f"{ours}/bias", f"{hf}.bias"))
    return links


def dims(cfg: ModelConfig) -> tuple[int, int, int, int, int]:
    return (
        cfg.embed_dim,
        cfg.num_heads,
        cfg.resolved_kv_heads,
        cfg.resolved_head_dim,
        cfg.resolved_mlp_dim,
    )


@dataclasses.dataclass(frozen=True)
class Family:
    """One transformers architecture (see the module docstring's table).

    Attributes:
      name: config.json's `model_type`.
      architecture: the `*ForCausalLM` class transformers builds.
      base: prefix of every tensor but the output head (`"transformer."`); old
        checkpoints saved from the base model lack it.
      layer: prefix of layer `i`'s tensors, `{i}` standing for the index.
      head: the output projection's tensor (absent or equal to the embedding when tied).
      buffers: suffixes of state-dict entries that are not parameters (causal-mask and
        rotary buffers of older transformers versions); skipped on import.
      why_not: `ModelConfig -> reason this architecture cannot compute it`, or None.
      to_config: transformers config -> `ModelConfig` (refusing what it cannot express).
      from_config: `ModelConfig -> transformers config keyword arguments`.
      links: `ModelConfig -> (top-level links, per-layer links)`.
    """

    name: str
    architecture: str
    base: str
    layer: str
    head: str
    buffers: tuple[str, ...]
    why_not: Callable[[ModelConfig], str | None]
    to_config: Callable[[Any], ModelConfig]
    from_config: Callable[[ModelConfig], dict]
    links: Callable[[ModelConfig], tuple[list[Link], list[Link]]]

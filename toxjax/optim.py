"""Optimizer: AdamW with linear warmup + cosine decay and global-norm clipping."""

from __future__ import annotations

import dataclasses

import jax
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW hyper-parameters; defaults are the paper's GPT recipe (0.9 / 0.95 / 0.1 / 1.0).

    Attributes:
      learning_rate: peak learning rate, reached after `warmup_steps`.
      warmup_steps: linear warmup from 0.
      decay_steps: length of the cosine decay (default: the run's total steps).
      min_lr_ratio: the cosine decays to `learning_rate * min_lr_ratio`.
      weight_decay: decoupled weight decay, masked off norms and biases, and off the
        embeddings unless `decay_embeddings`.
      clip_norm: global gradient-norm clip (None: off).
    """

    learning_rate: float = 3e-4
    warmup_steps: int = 100
    decay_steps: int | None = None
    min_lr_ratio: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_embeddings: bool = False
    clip_norm: float | None = 1.0


def make_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    decay = max(cfg.decay_steps or total_steps, cfg.warmup_steps + 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        decay_steps=decay,
        end_value=cfg.learning_rate * cfg.min_lr_ratio,
    )


def _path_names(path) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def decay_mask(params, decay_embeddings: bool = False):
    """True for the parameters weight decay applies to: matrices, not norms or biases."""

    def wants_decay(path, _):
        names = _path_names(path)
        last = next((n for n in reversed(names) if n != "value"), "")
        if last in ("embedding", "position_embedding"):
            return decay_embeddings
        if last.endswith("bias") or last in ("scale",):
            return False
        return True

    return jax.tree_util.tree_map_with_path(wants_decay, params)


def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    """The full chain: clip -> AdamW(schedule, masked weight decay)."""
    parts = []
    if cfg.clip_norm:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(
        optax.adamw(
            make_schedule(cfg, total_steps),
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=lambda p: decay_mask(p, cfg.decay_embeddings),
        )
    )
    return optax.chain(*parts)

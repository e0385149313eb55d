"""PyTorch `state_dict` -> Flax parameters for the encoder families, strictly.

Linear weights become transposed Flax kernels, Conv1d weights `[out, in, k]` kernels
`[k, in, out]`, LayerNorm weights `scale`, embedding tables `embedding`. The converted
tree must equal the Flax model's key for key and shape for shape: a missing weight (the
classification head of a base-model checkpoint, say) or an unexpected one is refused
with `weights.WeightsMismatch`, never filled at random.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
from flax import traverse_util

from toxjax.toxicity import weights
from toxjax.toxicity.encoders.config import EncoderConfig

# The torch module prefix of each family's backbone.
PREFIX = {
    "bert": "bert",
    "roberta": "roberta",
    "albert": "albert",
    "distilbert": "distilbert",
    "deberta": "deberta",
}
# Checkpoint keys the models drop on purpose: buffers older transformers saved, and
# DeBERTa's unused absolute positions (its `_keys_to_ignore_on_load_unexpected`).
IGNORE_UNEXPECTED = (r"position_ids$", r"token_type_ids$")
_IGNORE_BY_FAMILY = {"deberta": (r"position_embeddings",)}

# Torch key pieces that become one Flax module name (Flax names have no dots).
_JOIN = [
    (r"(encoder|transformer)\.layer\.(\d+)\.", r"\1.layer_\2."),
    (r"albert_layer_groups\.0\.albert_layers\.0\.", "albert_layer_groups_0_albert_layers_0."),
    (r"pooler\.dense\.", "pooler_dense."),
    (r"^albert\.pooler\.", "albert.pooler_dense."),
    (r"^classifier\.dense\.", "classifier_dense."),
    (r"^classifier\.out_proj\.", "classifier_out_proj."),
]
_SPLIT = [  # the way back, for messages in the checkpoint's own names
    (r"layer_(\d+)\.", r"layer.\1."),
    (r"albert_layer_groups_0_albert_layers_0\.", "albert_layer_groups.0.albert_layers.0."),
    (r"^albert\.pooler_dense\.", "albert.pooler."),
    (r"pooler_dense\.", "pooler.dense."),
    (r"^classifier_dense\.", "classifier.dense."),
    (r"^classifier_out_proj\.", "classifier.out_proj."),
    (r"\.(kernel|scale|embedding)$", ".weight"),
]


def _flax_path(key: str, value) -> tuple[tuple[str, ...], object]:
    for pattern, repl in _JOIN:
        key = re.sub(pattern, repl, key)
    *path, leaf = key.split(".")
    if "norm" in path[-1].lower():
        leaf = {"weight": "scale"}.get(leaf, leaf)
    elif path[-1].endswith("embeddings") and leaf == "weight":
        leaf = "embedding"
    elif leaf == "weight":
        leaf = "kernel"
        value = value.transpose(2, 1, 0) if value.ndim == 3 else value.T  # Conv1d / Linear
    return (*path, leaf), value


def _torch_name(path: tuple[str, ...]) -> str:
    key = ".".join(path)
    for pattern, repl in _SPLIT:
        key = re.sub(pattern, repl, key)
    return key


def expected_shapes(cfg: EncoderConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """The Flax classifier's parameter shapes, by path (no memory allocated)."""
    from toxjax.toxicity.encoders import classifier

    tree = jax.eval_shape(
        classifier(cfg).init,
        jax.random.key(0),
        jnp.zeros((1, 4), jnp.int32),
        jnp.ones((1, 4), jnp.int32),
    )["params"]
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(tree).items()}


def params_from_torch(state_dict: dict, cfg: EncoderConfig, source: str = "checkpoint") -> dict:
    """Converts a Hugging Face classifier's torch `state_dict` to Flax params, strictly.

    Args:
      state_dict: `{key: tensor}` of a `*ForSequenceClassification` model (torch tensors
        or numpy arrays); Lightning's `model.` prefix and a missing backbone prefix are
        mapped (`weights.normalize_keys`).
      cfg: the classifier's shape.
      source: what the weights came from, for messages.

    Returns:
      The parameter tree of `classifier(cfg)`, float32 numpy arrays.

    Raises:
      weights.WeightsMismatch: a missing, unexpected or wrongly shaped weight.
    """
    want = expected_shapes(cfg)
    prefix = PREFIX[cfg.arch]
    expected_names = {_torch_name(p) for p in want}
    names = weights.normalize_keys(state_dict, prefix)
    ignore = IGNORE_UNEXPECTED + _IGNORE_BY_FAMILY.get(cfg.arch, ())
    flat, origin = {}, {}
    for key, tensor in state_dict.items():
        name = names[key]
        if name not in expected_names and weights.ignored(name, ignore):
            continue  # a buffer or weight the model drops on purpose
        value = tensor.detach().cpu().float().numpy() if hasattr(tensor, "detach") else tensor
        path, value = _flax_path(name, value)
        flat[path], origin[path] = value, name
    missing = sorted(_torch_name(p) for p in want.keys() - flat.keys())
    unexpected = sorted(origin[p] for p in flat.keys() - want.keys())
    wrong = {
        origin[p]: (flat[p].shape, want[p])
        for p in want.keys() & flat.keys()
        if tuple(flat[p].shape) != want[p]
    }
    if missing or unexpected or wrong:
        raise weights.WeightsMismatch(
            weights.describe(source, f"a {cfg.arch} classifier", missing, unexpected, wrong)
        )
    return traverse_util.unflatten_dict(flat)


def cast_matmul_params(params: dict, dtype) -> dict:
    """Dense kernels and biases in `dtype`; LayerNorm and embedding tables stay float32."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict(
        {
            k: v.astype(dtype) if k[-1] in ("kernel", "bias") and "norm" not in k[-2].lower() else v
            for k, v in flat.items()
        }
    )

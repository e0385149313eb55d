"""Sharding: logical axes on every parameter, complete rules, born-sharded state."""

import jax
import numpy as np
import pytest
from flax import linen as nn

from toxjax import sharding as sh
from toxjax.model import DecoderLM, ModelConfig
from toxjax.optim import OptimizerConfig, make_optimizer
from toxjax.train_state import (
    MissingAxesError,
    abstract_state,
    create_train_state,
    validate_param_axes,
)

RULE_AXES = {name for name, _ in sh.LOGICAL_RULES}


def _boxed_params(**kw):
    cfg = ModelConfig(vocab_size=128, num_layers=2, num_heads=4, embed_dim=32, max_len=16, **kw)
    return jax.eval_shape(
        lambda: DecoderLM(cfg).init(jax.random.key(0), np.zeros((1, 4), np.int32))["params"]
    )


LLAMA_GQA = dict(
    position="rotary", norm="rmsnorm", gated_mlp=True, activation="silu", num_kv_heads=2
)


@pytest.mark.parametrize("family", [{}, LLAMA_GQA], ids=["gpt2", "llama-gqa"])
@pytest.mark.parametrize("scan", [True, False])
def test_every_param_has_axes_with_rules_and_no_duplicate_mesh_axes(scan, family):
    boxed = _boxed_params(scan_layers=scan, tied_embeddings=False, **family)
    validate_param_axes(boxed)
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    for leaf in leaves:
        assert len(leaf.names) == len(leaf.value.shape)
        for name in leaf.names:
            assert name in RULE_AXES, f"logical axis {name!r} has no rule"
        spec = sh.logical_to_spec(leaf.names)
        assert sh.spec_conflicts(spec) == [], (leaf.names, spec)


def test_activation_axes_have_rules():
    for name in (sh.BATCH, sh.LENGTH, sh.ACT_EMBED, sh.ACT_HEADS, sh.ACT_MLP, sh.ACT_VOCAB):
        assert name in RULE_AXES


def test_param_without_axes_is_rejected():
    class Bad(nn.Module):
        @nn.compact
        def __call__(self, x):
            return x @ self.param("raw", nn.initializers.zeros, (x.shape[-1], 2))

    boxed = jax.eval_shape(lambda: Bad().init(jax.random.key(0), np.zeros((1, 3))))["params"]
    with pytest.raises(MissingAxesError, match="raw"):
        validate_param_axes(boxed)


def test_make_mesh_shapes():
    assert dict(sh.make_mesh((-1, 1, 1)).shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    assert dict(sh.make_mesh((2, -1, 2)).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert sh.make_mesh((1, 1, 1)).devices.size == 1
    with pytest.raises(ValueError, match="not divisible"):
        sh.make_mesh((3, -1, 1))
    with pytest.raises(ValueError, match="at most one"):
        sh.make_mesh((-1, -1, 1))


def test_state_is_born_sharded_on_2x2x2():
    mesh = sh.make_mesh((2, 2, 2))
    cfg = ModelConfig(vocab_size=128, num_layers=2, num_heads=4, embed_dim=32, max_len=16)
    model, tx = DecoderLM(cfg), make_optimizer(OptimizerConfig(), 10)
    state, shardings = create_train_state(model, tx, 16, mesh, jax.random.key(0))
    abstract, _ = abstract_state(model, tx, 16, mesh)
    emb = state.params["embedding"]
    # vocab over 'tensor', embed over 'fsdp'
    assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert emb.addressable_shards[0].data.shape == (64, 16)
    mu = state.opt_state[1][0].mu["embedding"]  # adam moments follow the params
    assert mu.sharding.spec == emb.sharding.spec
    for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(state), strict=True):
        assert a.shape == s.shape and a.sharding == s.sharding

"""The memory-lean LM head + loss equals the whole-logits reference: loss and gradients,
per-token log-likelihoods, and the train / eval / score steps with `logits_chunk`."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from toxjax import losses, steps
from toxjax.model import DecoderLM, ModelConfig, tied_logits

# Relative to a tensor's largest element. float32: reassociation of sums only (a few
# dozen float32 ulps); bfloat16: the reference rounds the head-weight gradient to
# bfloat16 once per batch, the chunked head once per sum of chunks (4 bfloat16 ulps).
TOL = {jnp.float32: 2e-6, jnp.bfloat16: 4 * 2.0**-8}


def _close(got, want, dtype, what):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    scale = max(float(np.abs(want).max()), 1e-3)
    err = float(np.abs(got - want).max())
    assert err <= TOL[dtype] * scale, f"{what}: max error {err} (scale {scale})"


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("chunk", [4, 13], ids=["ragged", "one_chunk"])
def test_head_cross_entropy_equals_whole_logits(dtype, chunk):
    k = jax.random.split(jax.random.key(0), 4)
    hidden = jax.random.normal(k[0], (3, 13, 16)).astype(dtype)
    head = (jax.random.normal(k[1], (50, 16)) * 0.5).astype(dtype)
    targets = jax.random.randint(k[2], (3, 13), 0, 50)
    weights = (jax.random.uniform(k[3], (3, 13)) > 0.3).astype(jnp.int32)

    def ref(h, e):
        return losses.cross_entropy(tied_logits(h, e).astype(jnp.float32), targets, weights)

    def lean(h, e):
        return losses.head_cross_entropy(h, e, targets, weights, chunk)

    (ref_loss, ref_n), ref_g = jax.value_and_grad(ref, argnums=(0, 1), has_aux=True)(hidden, head)
    (loss, n), g = jax.value_and_grad(lean, argnums=(0, 1), has_aux=True)(hidden, head)
    assert float(n) == float(ref_n) == float(weights.sum())
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    for name, a, b in zip(("hidden", "head"), g, ref_g, strict=True):
        assert a.dtype == b.dtype == dtype
        _close(a, b, dtype, f"d{name}")
    # Without differentiation the forward-only path gives the same sum.
    np.testing.assert_allclose(jax.jit(lean)(hidden, head)[0], ref_loss, rtol=1e-6)
    ll = losses.head_token_log_likelihood(hidden, head, targets, chunk)
    ref_ll = losses.token_log_likelihood(tied_logits(hidden, head), targets)
    np.testing.assert_allclose(ll, ref_ll, atol=1e-5)


def _batch():
    rng = np.random.default_rng(0)
    seg = np.repeat([[1] * 20 + [2] * 9 + [0] * 3], 4, axis=0)
    tokens = rng.integers(1, 128, seg.shape) * (seg > 0)
    pos = np.concatenate([np.arange(20), np.arange(9), np.zeros(3, int)])[None].repeat(4, 0)
    return {
        "decoder_input_tokens": jnp.asarray(tokens, jnp.int32),
        "decoder_target_tokens": jnp.asarray(np.roll(tokens, -1, 1), jnp.int32),
        "decoder_loss_weights": jnp.asarray(seg > 0, jnp.int32),
        "decoder_segment_ids": jnp.asarray(seg, jnp.int32),
        "decoder_positions": jnp.asarray(pos, jnp.int32),
    }


def _tiny(**kw):
    cfg = ModelConfig(
        vocab_size=128, num_layers=1, num_heads=2, embed_dim=32, max_len=32, scan_layers=False, **kw
    )
    model = DecoderLM(cfg)
    init = jax.jit(model.init)
    params = nn.unbox(init(jax.random.key(1), jnp.zeros((1, 8), jnp.int32))["params"])
    return cfg, model, params


def test_untied_head_inputs_give_the_models_logits():
    # (The tied head is checked through the loss below.)
    _, model, params = _tiny(tied_embeddings=False)
    batch = _batch()
    hidden, head = jax.jit(lambda p: steps._forward(model, p, batch, method="head_inputs"))(params)
    logits = jax.jit(lambda p: steps._forward(model, p, batch))(params)
    assert head.shape == (128, 32)
    np.testing.assert_allclose(tied_logits(hidden, head), logits, rtol=1e-6, atol=1e-6)


def test_steps_with_logits_chunk_equal_the_reference():
    cfg, ref_model, params = _tiny()
    lean_model = DecoderLM(dataclasses.replace(cfg, logits_chunk=12))
    batch = _batch()

    def grads(model):
        f = lambda p: steps._loss_sums(model, p, batch, None)  # noqa: E731
        return jax.jit(jax.value_and_grad(f, has_aux=True))(params)

    (loss, n), g = grads(lean_model)
    (ref_loss, ref_n), ref_g = grads(ref_model)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    assert float(n) == float(ref_n)
    flat, ref_flat = (jax.tree_util.tree_leaves_with_path(x) for x in (g, ref_g))
    for (path, a), (_, b) in zip(flat, ref_flat, strict=True):
        _close(a, b, jnp.float32, jax.tree_util.keystr(path))
    ev = jax.jit(lambda p: steps.eval_step(p, batch, model=lean_model))(params)
    np.testing.assert_allclose(ev["loss_sum"], ref_loss, rtol=1e-6)
    score = lambda m: jax.jit(lambda p: steps.score_step(p, batch, model=m))(params)  # noqa: E731
    (ll, greedy), (ref_ll, ref_greedy) = score(lean_model), score(ref_model)
    np.testing.assert_allclose(ll, ref_ll, atol=1e-5)
    np.testing.assert_array_equal(greedy, ref_greedy)


def test_logits_chunk_must_be_positive():
    with pytest.raises(ValueError, match="ModelConfig.logits_chunk"):
        ModelConfig(logits_chunk=0)

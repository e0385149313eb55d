"""`ModelConfig.scan_unroll`: the same model, unrolled.

An unrolled layer scan must keep the parameters (names, shapes, initial values), so a
checkpoint or run.json means the same thing either way, and compute the same function:
logits, loss, gradients and sampled tokens. XLA may fuse the unrolled program
differently (another summation order), so float32 results agree to rounding, not bit
for bit; sampled tokens are the same.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from toxjax import decode, steps
from toxjax.errors import ConfigError
from toxjax.model import CACHE_BATCH_AXIS, DecoderLM, ModelConfig

CFG = dict(vocab_size=128, num_layers=3, num_heads=2, embed_dim=32, max_len=32)


def _models():
    rolled, unrolled = DecoderLM(ModelConfig(**CFG)), DecoderLM(ModelConfig(**CFG, scan_unroll=3))
    init = lambda m: meta.unbox(m.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])  # noqa: E731
    return rolled, unrolled, init(rolled), init(unrolled)


@pytest.mark.slow
def test_unrolled_scan_has_the_same_parameters_and_function():
    rolled, unrolled, params, params_unrolled = _models()
    assert jax.tree.structure(params) == jax.tree.structure(params_unrolled)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_unrolled), strict=True):
        np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(0)
    batch = {
        "decoder_input_tokens": jnp.asarray(rng.integers(1, 128, (2, 16)), jnp.int32),
        "decoder_target_tokens": jnp.asarray(rng.integers(1, 128, (2, 16)), jnp.int32),
        "decoder_loss_weights": jnp.ones((2, 16), jnp.int32),
        "decoder_segment_ids": jnp.asarray([[1] * 9 + [2] * 7, [1] * 12 + [0] * 4], jnp.int32),
        "decoder_positions": jnp.asarray([list(range(9)) + list(range(7)), list(range(16))]),
    }

    def loss_and_grads(model):
        f = lambda p: steps._loss_sums(model, p, batch, None)[0]  # noqa: E731
        return jax.jit(jax.value_and_grad(f))(params)

    (loss_r, grads_r), (loss_u, grads_u) = loss_and_grads(rolled), loss_and_grads(unrolled)
    np.testing.assert_allclose(loss_u, loss_r, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads_u), jax.tree.leaves(grads_r), strict=True):
        # Summation order may differ: float32 rounding of sums whose terms are as large
        # as the array's largest entry (a small entry can differ by ~1e-7 of that).
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * float(np.abs(b).max()))

    ids = np.asarray(batch["decoder_input_tokens"])
    tokens = []
    for model in (rolled, unrolled):
        t2l, init = decode.model_callbacks(model)
        sampling = decode.SamplingConfig(num_decodes=2, max_new_tokens=5, exact_length=True)
        sampler = decode.Sampler(t2l, init, sampling, CACHE_BATCH_AXIS)
        tokens.append(np.asarray(sampler(params, ids, np.ones_like(ids), jax.random.key(1)).tokens))
    np.testing.assert_array_equal(tokens[0], tokens[1])


def test_scan_unroll_must_be_positive():
    with pytest.raises(ConfigError, match="ModelConfig.scan_unroll must be >= 1, got 0"):
        ModelConfig(**CFG, scan_unroll=0)

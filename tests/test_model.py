"""Model: KV-cache decoding equals the full forward pass; packing isolates documents."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toxjax.model import DecoderLM, ModelConfig, init_cache

VOCAB = 128


def _model(**kw):
    cfg = ModelConfig(vocab_size=VOCAB, num_layers=2, num_heads=4, embed_dim=32, max_len=32, **kw)
    model = DecoderLM(cfg)
    tokens = jax.random.randint(jax.random.key(0), (3, 12), 1, VOCAB)
    params = model.init(jax.random.key(1), tokens)["params"]
    from flax import linen as nn

    return cfg, model, nn.unbox(params), tokens


@pytest.mark.parametrize("scan", [True, False])
@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_kv_cache_decode_matches_full_forward(scan, position):
    cfg, model, params, tokens = _model(scan_layers=scan, position=position)
    full = model.apply({"params": params}, tokens)
    cache = init_cache(cfg, 3, 16)
    logits, cache = model.apply({"params": params}, tokens[:, :5], cache=cache, cache_index=0)
    outs = [logits]
    for i in range(5, 12):
        pos = jnp.full((3, 1), i)
        logits, cache = model.apply(
            {"params": params}, tokens[:, i : i + 1], positions=pos, cache=cache, cache_index=i
        )
        outs.append(logits)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=2e-5, rtol=0)


def test_left_padded_prompts_decode_like_unpadded():
    """Rows of different prompt lengths, left-padded, give each row's own logits."""
    cfg, model, params, tokens = _model()
    lengths = [4, 7, 2]
    width = max(lengths)
    padded = np.zeros((3, width), np.int32)
    seg = np.zeros((3, width), np.int32)
    pos = np.zeros((3, width), np.int32)
    for r, n in enumerate(lengths):
        padded[r, width - n :] = tokens[r, :n]
        seg[r, width - n :] = 1
        pos[r, width - n :] = np.arange(n)
    cache = init_cache(cfg, 3, 16)
    logits, cache = model.apply(
        {"params": params}, padded, positions=pos, segment_ids=seg, cache=cache, cache_index=0
    )
    nxt = tokens[:, 9:10]
    step_pos = jnp.asarray(lengths)[:, None]
    logits2, _ = model.apply(
        {"params": params},
        nxt,
        positions=step_pos,
        segment_ids=jnp.ones((3, 1), jnp.int32),
        cache=cache,
        cache_index=width,
    )
    for r, n in enumerate(lengths):
        ref = model.apply(
            {"params": params}, jnp.concatenate([tokens[r : r + 1, :n], nxt[r : r + 1]], 1)
        )
        np.testing.assert_allclose(logits[r, -1], ref[0, n - 1], atol=2e-5)
        np.testing.assert_allclose(logits2[r, 0], ref[0, n], atol=2e-5)


def test_packed_documents_do_not_attend_across_boundary():
    _, model, params, tokens = _model()
    a, b = tokens[0, :5], tokens[1, :7]
    packed = jnp.concatenate([a, b])[None]
    seg = jnp.asarray([[1] * 5 + [2] * 7])
    pos = jnp.asarray([list(range(5)) + list(range(7))])
    out = model.apply({"params": params}, packed, positions=pos, segment_ids=seg)
    alone_a = model.apply({"params": params}, a[None])
    alone_b = model.apply({"params": params}, b[None])
    np.testing.assert_allclose(out[0, :5], alone_a[0], atol=2e-5)
    np.testing.assert_allclose(out[0, 5:], alone_b[0], atol=2e-5)
    # And the packed row is not what an unsegmented row would give (the mask matters).
    unseg = model.apply({"params": params}, packed, positions=pos)
    assert np.abs(np.asarray(unseg[0, 5:] - alone_b[0])).max() > 1e-3


def test_untied_embeddings_and_flops_formula():
    cfg, model, params, tokens = _model(tied_embeddings=False)
    assert params["lm_head"].shape == (32, VOCAB)
    n_total = sum(x.size for x in jax.tree.leaves(params))
    # N excludes the token and position tables but includes the untied head.
    assert cfg.non_embedding_params() == n_total - VOCAB * 32 - 32 * 32
    # 6N + 12 * L * H * Q * T, by hand: L=2, H=4, Q=8, T=10.
    assert cfg.train_flops_per_token(10) == 6 * cfg.non_embedding_params() + 12 * 2 * 4 * 8 * 10


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="position"):
        ModelConfig(position="alibi")
    with pytest.raises(ValueError, match="remat"):
        ModelConfig(remat="some")
    with pytest.raises(ValueError, match="ModelConfig.norm must be one of"):
        ModelConfig(norm="batchnorm")
    with pytest.raises(ValueError, match="ModelConfig.activation must be one of"):
        ModelConfig(activation="gelu_fast")
    with pytest.raises(ValueError, match="num_kv_heads=3 must divide num_heads 4"):
        ModelConfig(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="rotary_fraction=0.1 rotates 1 of 16"):
        ModelConfig(position="rotary", rotary_fraction=0.1)


def test_model_config_of_an_older_run_json_loads_with_todays_behaviour():
    """run.json files written before the GPT-NeoX / Llama fields lack them: the defaults
    are the model those runs trained (the field list as of that format)."""
    import dataclasses

    old_fields = (
        "vocab_size num_layers num_heads embed_dim head_dim mlp_dim max_len position "
        "tied_embeddings dtype param_dtype remat scan_layers dropout_rate layer_norm_eps "
        "init_std attention logits_chunk"
    ).split()
    old = {k: v for k, v in dataclasses.asdict(ModelConfig(position="rotary")).items()}
    assert set(old) - set(old_fields)  # the new fields exist ...
    loaded = ModelConfig(**{k: old[k] for k in old_fields})  # ... and default to the old model
    assert loaded == ModelConfig(position="rotary")
    bc = loaded.block_config()
    assert (bc.kv_heads, bc.norm, bc.activation, bc.gated_mlp) == (
        4,
        "layernorm",
        "gelu_tanh",
        False,
    )
    assert (bc.attention_bias, bc.mlp_bias, bc.parallel_residual) == (True, True, False)
    assert (bc.rotary_dims, bc.rotary_base) == (None, 10_000.0)


# The other families' blocks (toxjax.interop converts them from transformers).
FAMILIES = {
    "neox": dict(
        position="rotary", parallel_residual=True, rotary_fraction=0.25, activation="gelu"
    ),
    "llama-gqa": dict(
        position="rotary",
        norm="rmsnorm",
        gated_mlp=True,
        activation="silu",
        attention_bias=False,
        mlp_bias=False,
        num_kv_heads=2,
        rotary_base=500.0,
    ),
    "llama-mqa-biases": dict(
        position="rotary", norm="rmsnorm", gated_mlp=True, activation="silu", num_kv_heads=1
    ),
}


@pytest.mark.parametrize("scan", [True, False])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_other_families_decode_with_the_cache_like_the_full_forward(scan, family):
    cfg, model, params, tokens = _model(scan_layers=scan, **FAMILIES[family])
    cache = init_cache(cfg, 3, 16)
    assert cache["k"].shape == (2, 3, 16, cfg.resolved_kv_heads, 8)  # the cache holds kv heads
    full = model.apply({"params": params}, tokens)
    logits, cache = model.apply({"params": params}, tokens[:, :5], cache=cache, cache_index=0)
    outs = [logits]
    for i in range(5, 12):
        pos = jnp.full((3, 1), i)
        logits, cache = model.apply(
            {"params": params}, tokens[:, i : i + 1], positions=pos, cache=cache, cache_index=i
        )
        outs.append(logits)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=2e-5, rtol=0)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_parameter_count_of_other_families(family):
    cfg, _, params, _ = _model(tied_embeddings=False, **FAMILIES[family])
    n_total = sum(x.size for x in jax.tree.leaves(params))
    assert cfg.non_embedding_params() == n_total - VOCAB * 32


def _grads(f, *args):
    return jax.grad(lambda *a: f(*a), argnums=tuple(range(len(args))))(*args)


def test_hand_written_backward_passes_equal_autodiff():
    """layer_norm, tied_logits and cross_entropy have custom VJPs: check them exactly."""
    from toxjax import losses
    from toxjax.layers import layer_norm
    from toxjax.model import tied_logits

    k = jax.random.split(jax.random.key(0), 6)
    x = jax.random.normal(k[0], (3, 5, 16)) * 3 + 1
    scale, bias = jax.random.normal(k[1], (16,)), jax.random.normal(k[2], (16,))
    probe = jax.random.normal(k[3], (3, 5, 16))

    def ln_ref(x, s, b):
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / jnp.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * s + b

    ours = _grads(lambda x, s, b: (layer_norm(x, s, b, 1e-5) * probe).sum(), x, scale, bias)
    ref = _grads(lambda x, s, b: (ln_ref(x, s, b) * probe).sum(), x, scale, bias)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5)

    emb = jax.random.normal(k[4], (11, 16))
    lprobe = jax.random.normal(k[5], (3, 5, 11))
    ours = _grads(lambda x, e: (tied_logits(x, e) * lprobe).sum(), x, emb)
    ref = _grads(lambda x, e: (jnp.einsum("ble,ve->blv", x, e) * lprobe).sum(), x, emb)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)

    logits = lprobe * 4
    targets = jax.random.randint(k[0], (3, 5), 0, 11)
    weights = (jax.random.uniform(k[1], (3, 5)) > 0.3).astype(jnp.float32)
    ours = jax.grad(lambda lg: losses.cross_entropy(lg, targets, weights)[0])(logits)
    ref = jax.grad(lambda lg: -(losses.token_log_likelihood(lg, targets) * weights).sum())(logits)
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    # and the value: hand-computed mean NLL over weighted tokens
    nll = -jax.nn.log_softmax(logits)[jnp.arange(3)[:, None], jnp.arange(5)[None], targets]
    total, count = losses.cross_entropy(logits, targets, weights)
    np.testing.assert_allclose(total, (nll * weights).sum(), rtol=1e-6)
    assert float(count) == float(weights.sum())

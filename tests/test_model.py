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
        logits, cache = model.apply({"params": params}, tokens[:, i:i + 1], positions=pos,
                                    cache=cache, cache_index=i)
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
        padded[r, width - n:] = tokens[r, :n]
        seg[r, width - n:] = 1
        pos[r, width - n:] = np.arange(n)
    cache = init_cache(cfg, 3, 16)
    logits, cache = model.apply({"params": params}, padded, positions=pos, segment_ids=seg,
                                cache=cache, cache_index=0)
    nxt = tokens[:, 9:10]
    step_pos = jnp.asarray(lengths)[:, None]
    logits2, _ = model.apply({"params": params}, nxt, positions=step_pos,
                             segment_ids=jnp.ones((3, 1), jnp.int32), cache=cache,
                             cache_index=width)
    for r, n in enumerate(lengths):
        ref = model.apply({"params": params},
                          jnp.concatenate([tokens[r:r + 1, :n], nxt[r:r + 1]], 1))
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

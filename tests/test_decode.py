"""Tests of the model-agnostic sampler (toxjax/decode.py).

Two tiny models: a pure-JAX toy whose "cache" is the token buffer itself (the callback
recomputes the full forward pass; leaves carry a leading layer axis so the batch is on
axis 1, like DecoderLM), and the real `toxjax.model.DecoderLM` with its KV cache.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from toxjax import decode, sampling
from toxjax.sharding import make_mesh

VOCAB = 48


# ---------------------------------------------------------------- toy model
def toy_params(seed=0, vocab=VOCAB, width=16, max_len=64):
    rng = np.random.default_rng(seed)
    return {
        "emb": jnp.asarray(rng.normal(size=(vocab, width)), jnp.float32),
        "pos": jnp.asarray(rng.normal(size=(max_len, width)) * 0.5, jnp.float32),
        "qk": jnp.asarray(rng.normal(size=(width, width)) / width**0.5, jnp.float32),
        "out": jnp.asarray(rng.normal(size=(width, vocab)) * 2, jnp.float32),
    }


def toy_forward(params, tokens, positions, segment_ids):
    """Full forward: `[b, L]` -> logits `[b, L, vocab]`, causal, padding masked."""
    x = params["emb"][tokens] + params["pos"][positions]
    scores = jnp.einsum("bld,de,bse->bls", x, params["qk"], x)
    slots = jnp.arange(tokens.shape[1])
    mask = (slots[None, :, None] >= slots[None, None, :]) & (segment_ids[:, None, :] != 0)
    scores = jnp.where(mask, scores, -1e9)
    h = jnp.einsum("bls,bsd->bld", jax.nn.softmax(scores, -1), x) + x
    return jnp.tanh(h) @ params["out"]


def toy_init_cache(batch, max_length):
    # A leading "layer" axis of size 1, so the batch sits on axis 1 as in DecoderLM.
    z = jnp.zeros((1, batch, max_length), jnp.int32)
    return {"tokens": z, "segments": z, "positions": z}


def buffer_tokens_to_logits(forward):
    """A decode callback whose cache is the token buffer: recompute everything from it."""

    def tokens_to_logits(params, tokens, positions, segment_ids, cache, cache_index):
        def write(buf, x):
            return jax.lax.dynamic_update_slice(buf, x[None].astype(buf.dtype), (0, 0, cache_index))

        cache = {
            "tokens": write(cache["tokens"], tokens),
            "segments": write(cache["segments"], segment_ids),
            "positions": write(cache["positions"], positions),
        }
        logits = forward(params, cache["tokens"][0], cache["positions"][0], cache["segments"][0])
        return jax.lax.dynamic_slice_in_dim(logits, cache_index, tokens.shape[1], 1), cache

    return tokens_to_logits


toy_tokens_to_logits = buffer_tokens_to_logits(toy_forward)


def toy_sampler(config, mesh=None):
    return decode.Sampler(
        toy_tokens_to_logits, toy_init_cache, config, cache_batch_axis=1, mesh=mesh
    )


def reference_greedy(forward, prompt, steps, length=16):
    """Greedy continuation by re-running the full forward pass over the sequence so far.

    The sequence is right-padded to a fixed `length` (causal: padding after a position
    cannot change its logits), so the jitted forward compiles once.
    """
    forward = jax.jit(forward)
    seq, lps = list(prompt), []
    for _ in range(steps):
        toks = jnp.asarray([seq + [0] * (length - len(seq))], jnp.int32)
        logits = forward(toks, jnp.arange(length)[None], jnp.ones_like(toks))[0, len(seq) - 1]
        nxt = int(jnp.argmax(logits))
        lps.append(float(jax.nn.log_softmax(logits)[nxt]))
        seq.append(nxt)
    return seq[len(prompt) :], lps


PROMPTS = [[5, 9, 2], [7], [1, 2, 3, 4, 5, 6], [11, 12]]


# ---------------------------------------------------------------- top-p
def sort_reference_keep(probs, p):
    """Sort-based nucleus set (tie-safe): keep probs >= the last probability needed."""
    order = np.argsort(-probs, kind="stable")
    csum = np.cumsum(probs[order].astype(np.float64))
    k = min(int(np.searchsorted(csum, p - 1e-12)), len(order) - 1)
    return probs >= probs[order[k]]


def test_top_p_threshold_hand_computed_with_ties():
    probs = jnp.asarray([[0.5, 0.125, 0.25, 0.125], [0.5, 0.125, 0.25, 0.125]], jnp.float32)
    keep = np.asarray(probs >= sampling.top_p_threshold(probs, 0.75)[:, None])
    assert keep.tolist()[0] == [True, False, True, False]  # 0.5 + 0.25 = 0.75 >= 0.75
    keep = np.asarray(probs >= sampling.top_p_threshold(probs, 0.76)[:, None])
    assert keep.tolist()[0] == [True, True, True, True]  # the two tied 0.125 both kept
    keep = np.asarray(probs >= sampling.top_p_threshold(probs, 0.4)[:, None])
    assert keep.tolist()[0] == [True, False, False, False]


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.95])
def test_top_p_threshold_matches_sort_reference(p):
    rng = np.random.default_rng(int(p * 100))
    logits = rng.normal(size=(64, 1000)) * rng.uniform(0.5, 4, size=(64, 1))
    logits[::2] = np.round(logits[::2])  # integer logits: many exact ties
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), -1))
    thr = np.asarray(sampling.top_p_threshold(jnp.asarray(probs), p))
    for row in range(len(probs)):
        np.testing.assert_array_equal(probs[row] >= thr[row], sort_reference_keep(probs[row], p))


def adversarial_probs(vocab=257):
    """Rows that stress the threshold search: ties, all mass on one token, uniform,
    denormals and zeros, very peaked, exact dyadic sums, an all-zero row."""
    rng = np.random.default_rng(0)
    rows = []
    for scale in (0.1, 1.0, 3.0, 50.0):  # flat .. very peaked
        rows += list(jax.nn.softmax(jnp.asarray(rng.normal(size=(3, vocab)) * scale), -1))
    ties = np.round(rng.normal(size=(3, vocab)) * 2)  # integer logits: many exact ties
    rows += list(jax.nn.softmax(jnp.asarray(ties, jnp.float32), -1))
    one_hot = np.zeros(vocab, np.float32)
    one_hot[17] = 1.0
    rows += [one_hot, np.full(vocab, 1 / vocab, np.float32), np.zeros(vocab, np.float32)]
    dyadic = np.zeros(vocab, np.float32)
    dyadic[[3, 9, 40, 41]] = [0.5, 0.25, 0.125, 0.125]
    halves = np.zeros(vocab, np.float32)
    halves[[5, 6]] = 0.5
    tiny = np.zeros(vocab, np.float32)
    tiny[:100] = np.float32(1e-40)  # denormals
    tiny[100:150] = np.float32(1e-30)
    tiny[200] = np.float32(0.6)
    tiny[201] = np.float32(0.4) - np.float32(5e-29)
    rows += [dyadic, halves, tiny, np.where(np.arange(vocab) % 2, 2.0 / vocab, 0.0)]
    return jnp.asarray(np.stack([np.asarray(r, np.float32) for r in rows]))


TOP_PS = (0.05, 0.4, 0.5, 0.75, 0.76, 0.9, 0.95, 0.999, 0.9999999, 1.0)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_radix_search_equals_bisection_bit_for_bit(bits):
    """The few-pass radix search returns the bisection's threshold exactly, so the kept
    set is the same, on random and adversarial rows and every top_p (1 included)."""
    probs = adversarial_probs()
    random = jax.nn.softmax(
        jnp.asarray(np.random.default_rng(bits).normal(size=(48, 2000)) * 2, jnp.float32), -1
    )
    bisect = jax.jit(functools.partial(sampling.top_p_threshold, radix_bits=1))
    radix = jax.jit(functools.partial(sampling.top_p_threshold, radix_bits=bits))
    for rows in (probs, random):
        for p in TOP_PS:
            want, got = np.asarray(bisect(rows, p)), np.asarray(radix(rows, p))
            np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))
            keep = np.asarray(rows) >= got[:, None]
            np.testing.assert_array_equal(keep, np.asarray(rows) >= want[:, None])
    # and both are the definition: the sort-based set where the float sums are exact
    for p, row, kept in ((0.75, -4, [3, 9]), (0.76, -4, [3, 9, 40, 41]), (0.5, -3, [5, 6])):
        keep = np.asarray(probs[row] >= radix(probs, p)[row])
        assert np.flatnonzero(keep).tolist() == kept
    assert np.flatnonzero(probs[-7] >= radix(probs, 0.9)[-7]).tolist() == [17]  # all on one


def test_radix_bits_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="radix_bits must be in 1..8"):
        sampling.top_p_threshold(jnp.ones((1, 4)) / 4, 0.9, radix_bits=9)


def test_sample_logits_frequencies_follow_truncated_distribution():
    logits = jnp.log(jnp.asarray([0.4, 0.3, 0.2, 0.06, 0.04] + [0.0] * 200 + [1e-9]))
    n = 20000
    keys = jax.random.split(jax.random.key(3), n)
    cfg = decode.SamplingConfig(top_p=0.85)
    toks, lps = jax.jit(lambda k, lg: sampling.sample_logits(k, lg, cfg))(
        keys, jnp.broadcast_to(logits, (n, logits.shape[0]))
    )
    freq = np.bincount(np.asarray(toks), minlength=logits.shape[0]) / n
    # kept set {0.4, 0.3, 0.2} (0.9 >= 0.85), renormalised to 4/9, 3/9, 2/9
    np.testing.assert_allclose(freq[:3], [4 / 9, 3 / 9, 2 / 9], atol=0.012)
    assert freq[3:].sum() == 0
    np.testing.assert_allclose(
        np.asarray(lps), np.log([0.4, 0.3, 0.2])[np.asarray(toks)], rtol=1e-5
    )


def test_top_k_limits_tokens():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(500, 30)), jnp.float32)
    cfg = decode.SamplingConfig(top_p=1.0, top_k=2)
    toks, _ = sampling.sample_logits(jax.random.split(jax.random.key(0), 500), logits, cfg)
    top2 = np.argsort(-np.asarray(logits), axis=1)[:, :2]
    assert all(int(t) in top2[i] for i, t in enumerate(np.asarray(toks)))
    assert {int(t) == top2[i, 0] for i, t in enumerate(np.asarray(toks))} == {True, False}


# ---------------------------------------------------------------- sampler on the toy
def test_greedy_matches_full_forward_for_padded_batch():
    params = toy_params()
    cfg = decode.SamplingConfig(num_decodes=2, max_new_tokens=5, temperature=0.0)
    tokens, mask = decode.left_pad(PROMPTS, multiple=4)
    out = toy_sampler(cfg)(params, tokens, mask, jax.random.key(0))
    assert out.tokens.shape == (4, 2, 5)

    def fwd(t, p, s):
        return toy_forward(params, t, p, s)

    for i, prompt in enumerate(PROMPTS):
        want, want_lps = reference_greedy(fwd, prompt, 5)
        for d in range(2):
            assert np.asarray(out.tokens[i, d]).tolist() == want
            np.testing.assert_allclose(
                np.asarray(out.logprobs[i, d]), want_lps, rtol=1e-4, atol=1e-5
            )
    assert np.asarray(out.lengths).tolist() == [[5, 5]] * 4


def test_prefill_once_then_fan_out():
    seen = []

    def spy(params, tokens, positions, segment_ids, cache, cache_index):
        seen.append((tokens.shape, cache["tokens"].shape))
        return toy_tokens_to_logits(params, tokens, positions, segment_ids, cache, cache_index)

    cfg = decode.SamplingConfig(num_decodes=3, max_new_tokens=4)
    tokens, mask = decode.left_pad(PROMPTS)
    decode.Sampler(spy, toy_init_cache, cfg, cache_batch_axis=1)(
        toy_params(), tokens, mask, jax.random.key(0)
    )
    # traced once: prefill over 4 prompts x 6 tokens, then 12 rows x 1 token in the loop
    assert seen == [((4, 6), (1, 4, 10)), ((12, 1), (1, 12, 10))]


def test_deterministic_and_independent_of_batch_company():
    params = toy_params(1)
    cfg = decode.SamplingConfig(num_decodes=4, max_new_tokens=6)
    sampler = toy_sampler(cfg)
    keys = jax.random.split(jax.random.key(7), len(PROMPTS))
    tokens, mask = decode.left_pad(PROMPTS)
    a = sampler(params, tokens, mask, keys)
    b = sampler(params, tokens, mask, keys)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    # copies of one prompt differ from each other (independent keys per copy)
    assert len({tuple(np.asarray(a.tokens[0, d]).tolist()) for d in range(4)}) > 1
    # prompt 2 sampled alone (different padding, different neighbours) gives the same
    alone_t, alone_m = decode.left_pad([PROMPTS[2]])
    alone = sampler(params, alone_t, alone_m, keys[2:3])
    np.testing.assert_array_equal(alone.tokens[0], a.tokens[2])
    np.testing.assert_allclose(alone.logprobs[0], a.logprobs[2], rtol=1e-5, atol=1e-6)
    other = sampler(params, tokens, mask, jax.random.split(jax.random.key(8), len(PROMPTS)))
    assert not np.array_equal(other.tokens, a.tokens)


def cycle_tokens_to_logits(params, tokens, positions, segment_ids, cache, cache_index):
    """Greedy next token is (last token + 1) % 10: a hand-checkable model."""
    del params, positions, segment_ids
    return jax.nn.one_hot((tokens + 1) % 10, 10) * 10.0, cache


def test_eos_stops_and_pads_and_exact_length_ignores_it():
    def init(b, n):
        return {"x": jnp.zeros((b, n))}

    prompts, mask = decode.left_pad([[5], [1, 7]])
    cfg = decode.SamplingConfig(
        num_decodes=1, max_new_tokens=5, temperature=0.0, eos_id=8, pad_id=0
    )
    out = decode.Sampler(cycle_tokens_to_logits, init, cfg)(None, prompts, mask, jax.random.key(0))
    assert np.asarray(out.tokens[:, 0]).tolist() == [[6, 7, 8, 0, 0], [8, 0, 0, 0, 0]]
    assert np.asarray(out.lengths[:, 0]).tolist() == [3, 1]
    assert np.asarray(out.logprobs[1, 0, 1:]).tolist() == [0.0] * 4
    exact = decode.Sampler(
        cycle_tokens_to_logits,
        init,
        decode.SamplingConfig(
            num_decodes=1, max_new_tokens=5, temperature=0.0, eos_id=8, exact_length=True
        ),
    )
    out = exact(None, prompts, mask, jax.random.key(0))
    assert np.asarray(out.tokens[:, 0]).tolist() == [[6, 7, 8, 9, 0], [8, 9, 0, 1, 2]]
    assert np.asarray(out.lengths[:, 0]).tolist() == [5, 5]


def test_sharded_over_mesh_equals_single_device():
    params = toy_params(2)
    cfg = decode.SamplingConfig(num_decodes=3, max_new_tokens=4)
    prompts = PROMPTS * 2  # 8 prompts over 8 devices
    tokens, mask = decode.left_pad(prompts)
    key = jax.random.key(5)
    single = toy_sampler(cfg)(params, tokens, mask, key)
    mesh = make_mesh((4, 2, 1))
    sharded = toy_sampler(cfg, mesh)(params, tokens, mask, key)
    assert len(sharded.tokens.sharding.device_set) == 8
    np.testing.assert_array_equal(single.tokens, sharded.tokens)
    np.testing.assert_allclose(single.logprobs, sharded.logprobs, rtol=1e-5, atol=1e-6)


def test_radix_top_p_sampler_samples_what_bisection_does():
    """The accelerator search in the sampler draws exactly the CPU search's samples."""
    cfg = decode.SamplingConfig(num_decodes=3, max_new_tokens=5, top_p=0.8)
    tokens, mask = decode.left_pad(PROMPTS)
    runs = [
        decode.Sampler(toy_tokens_to_logits, toy_init_cache, cfg, 1, top_p_radix_bits=b)(
            toy_params(3), tokens, mask, jax.random.key(3)
        )
        for b in (1, 3)
    ]
    np.testing.assert_array_equal(runs[0].tokens, runs[1].tokens)
    np.testing.assert_array_equal(runs[0].logprobs, runs[1].logprobs)


def test_empty_prompt_is_an_error():
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        decode.left_pad([[1], []])


# ---------------------------------------------------------------- the real DecoderLM
@pytest.fixture(scope="module")
def real_model():
    model_lib = pytest.importorskip("toxjax.model")
    cfg = model_lib.ModelConfig(vocab_size=64, num_layers=2, num_heads=2, embed_dim=32, max_len=32)
    model = model_lib.DecoderLM(cfg)
    params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    params = jax.tree.map(
        lambda x: x * 4 if x.ndim > 1 else x,  # peaky logits
        meta.unbox(params),
    )
    return model_lib, model, params


def test_real_model_kv_cache_greedy_matches_full_forward(real_model):
    model_lib, model, params = real_model
    t2l, init = decode.model_callbacks(model)
    cfg = decode.SamplingConfig(num_decodes=2, max_new_tokens=6, temperature=0.0)
    sampler = decode.Sampler(t2l, init, cfg, cache_batch_axis=model_lib.CACHE_BATCH_AXIS)
    tokens, mask = decode.left_pad(PROMPTS)
    out = sampler(params, tokens, mask, jax.random.key(0))

    def fwd(t, p, s):
        return model.apply({"params": params}, t, positions=p, segment_ids=s)

    for i, prompt in enumerate(PROMPTS):
        want, want_lps = reference_greedy(fwd, prompt, 6)
        assert np.asarray(out.tokens[i, 1]).tolist() == want
        np.testing.assert_allclose(np.asarray(out.logprobs[i, 1]), want_lps, rtol=1e-4, atol=1e-4)

    # A bfloat16 KV cache is what the decode loop carries, and reads the same tokens.
    dtypes = []

    def spy(params, tokens, positions, segment_ids, cache, cache_index):
        dtypes.append(cache["k"].dtype)
        return t2l(params, tokens, positions, segment_ids, cache, cache_index)

    bf16_cfg = dataclasses.replace(cfg, cache_dtype="bfloat16")
    bf16 = decode.Sampler(spy, init, bf16_cfg, model_lib.CACHE_BATCH_AXIS)
    bf16 = bf16(params, tokens, mask, jax.random.key(0))
    assert dtypes == [jnp.bfloat16, jnp.bfloat16]  # prefill and the loop body
    np.testing.assert_array_equal(bf16.tokens, out.tokens)
    # bf16 keeps 8 significant bits: log-probabilities agree to about 2**-8 relative
    np.testing.assert_allclose(bf16.logprobs, out.logprobs, rtol=2e-2, atol=2e-2)
    with pytest.raises(ValueError, match="cache_dtype must name a floating dtype"):
        decode.SamplingConfig(cache_dtype="int8")


def test_real_model_kv_cache_sampling_matches_recompute(real_model):
    """Top-p sampling through the KV cache == through a full recompute of the buffer."""
    model_lib, model, params = real_model
    t2l, init = decode.model_callbacks(model)

    def forward(p, t, pos, s):
        return model.apply({"params": p}, t, positions=pos, segment_ids=s)

    buffer_t2l = buffer_tokens_to_logits(forward)
    cfg = decode.SamplingConfig(num_decodes=5, max_new_tokens=8)
    tokens, mask = decode.left_pad(PROMPTS)
    key = jax.random.key(11)
    kv = decode.Sampler(t2l, init, cfg, model_lib.CACHE_BATCH_AXIS)(params, tokens, mask, key)
    full = decode.Sampler(buffer_t2l, toy_init_cache, cfg, 1)(params, tokens, mask, key)
    np.testing.assert_array_equal(kv.tokens, full.tokens)
    np.testing.assert_allclose(kv.logprobs, full.logprobs, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- guided decoding
# Each prompt after a positive and a negative prefix of different lengths (the padding of
# the two rows differs).
POSITIVE, NEGATIVE = [20, 21, 22], [30, 31]


def guided_prompts(prompts=PROMPTS):
    pos = decode.left_pad([POSITIVE + p for p in prompts])
    neg = decode.left_pad([NEGATIVE + p for p in prompts])
    return pos, neg


def reference_guided(forward, positive, negative, continuation, scale, length=24):
    """Guided log-probabilities `[T, vocab]` before each token of `continuation`, from two
    full forward passes (`forward`, jitted) over [prompt + tokens so far] (right-padded:
    causal)."""
    out = []
    for t in range(len(continuation)):
        rows = [positive + continuation[:t], negative + continuation[:t]]
        toks = jnp.asarray([r + [0] * (length - len(r)) for r in rows], jnp.int32)
        pos = jnp.broadcast_to(jnp.arange(length), toks.shape)
        logits = forward(toks, pos, jnp.ones_like(toks))
        lp = jax.nn.log_softmax(logits[0, len(rows[0]) - 1])
        lq = jax.nn.log_softmax(logits[1, len(rows[1]) - 1])
        out.append(np.asarray(lp + scale * (lp - lq)))
    return np.stack(out)


def test_guided_log_probs_hand_computed_and_logit_invariant():
    p, q = np.log([0.5, 0.25, 0.25]), np.log([0.25, 0.25, 0.5])
    # log p + 2 (log p - log q) = log [2, 1/4, 1/16]: softmax [32, 4, 1] / 37
    guided = sampling.guided_log_probs(jnp.asarray(p + 3.0), jnp.asarray(q - 1.0), 2.0)
    np.testing.assert_allclose(np.asarray(guided), np.log([2, 0.25, 1 / 16]), rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(jax.nn.softmax(guided)), np.array([32, 4, 1]) / 37, rtol=1e-6
    )
    # On raw logits the formula differs by a constant per row: the same softmax.
    raw = (p + 3.0) + 2.0 * ((p + 3.0) - (q - 1.0))
    np.testing.assert_allclose(jax.nn.softmax(raw), jax.nn.softmax(guided), rtol=1e-6)


def test_guidance_zero_is_the_plain_sampler_bit_for_bit():
    params = toy_params(4)
    cfg = decode.SamplingConfig(num_decodes=3, max_new_tokens=6, top_p=0.8)
    (pos, pos_mask), (neg, neg_mask) = guided_prompts()
    key = jax.random.key(9)
    plain = toy_sampler(cfg)(params, pos, pos_mask, key)
    zero = toy_sampler(dataclasses.replace(cfg, guidance=0.0))
    zero = zero(params, pos, pos_mask, key, neg, neg_mask)
    np.testing.assert_array_equal(zero.tokens, plain.tokens)
    np.testing.assert_array_equal(zero.logprobs, plain.logprobs)
    np.testing.assert_array_equal(zero.lengths, plain.lengths)
    with pytest.raises(ValueError, match="guidance=1.0 needs negative_prompts"):
        toy_sampler(dataclasses.replace(cfg, guidance=1.0))(params, pos, pos_mask, key)
    with pytest.raises(ValueError, match="guidance must be a finite number"):
        decode.SamplingConfig(guidance=float("nan"))


@pytest.mark.parametrize("top_p", [1.0, 0.8], ids=["greedy", "top_p"])
def test_guided_steps_equal_two_full_forward_passes(real_model, top_p):
    """Through the KV cache, each step samples from the guidance of two full forward
    passes over [prefix + prompt + sampled so far]; top-p applies after guidance."""
    model_lib, model, params = real_model
    t2l, init = decode.model_callbacks(model)
    scale = 1.5
    temperature = 0.0 if top_p == 1.0 else 1.0
    cfg = decode.SamplingConfig(
        num_decodes=2, max_new_tokens=6, temperature=temperature, top_p=top_p, guidance=scale
    )
    (pos, pos_mask), (neg, neg_mask) = guided_prompts()
    sampler = decode.Sampler(t2l, init, cfg, cache_batch_axis=model_lib.CACHE_BATCH_AXIS)
    out = sampler(params, pos, pos_mask, jax.random.key(2), neg, neg_mask)

    @jax.jit
    def fwd(t, p, s):
        return model.apply({"params": params}, t, positions=p, segment_ids=s)

    for i, prompt in enumerate(PROMPTS):
        for d in range(2):
            toks = np.asarray(out.tokens[i, d]).tolist()
            guided = reference_guided(fwd, POSITIVE + prompt, NEGATIVE + prompt, toks, scale)
            logp = np.asarray(jax.nn.log_softmax(guided, axis=-1))
            chosen = logp[np.arange(len(toks)), toks]
            np.testing.assert_allclose(np.asarray(out.logprobs[i, d]), chosen, atol=1e-4)
            if temperature == 0:
                assert toks == np.argmax(guided, axis=-1).tolist()
            else:  # every token in the nucleus of the guided distribution
                nucleus = [sort_reference_keep(np.exp(row), top_p) for row in logp]
                assert all(keep[t] for keep, t in zip(nucleus, toks, strict=True))
    plain = decode.Sampler(
        t2l, init, dataclasses.replace(cfg, guidance=0.0), model_lib.CACHE_BATCH_AXIS
    )(params, pos, pos_mask, jax.random.key(2))
    assert not np.array_equal(plain.tokens, out.tokens)  # the negative prefix mattered


def test_guided_kv_cache_sampling_matches_recompute(real_model):
    model_lib, model, params = real_model
    t2l, init = decode.model_callbacks(model)

    def forward(p, t, pos, s):
        return model.apply({"params": p}, t, positions=pos, segment_ids=s)

    cfg = decode.SamplingConfig(num_decodes=5, max_new_tokens=8, guidance=2.0)
    (pos, pos_mask), (neg, neg_mask) = guided_prompts()
    key = jax.random.key(12)
    kv = decode.Sampler(t2l, init, cfg, model_lib.CACHE_BATCH_AXIS)
    kv = kv(params, pos, pos_mask, key, neg, neg_mask)
    full = decode.Sampler(buffer_tokens_to_logits(forward), toy_init_cache, cfg, 1)
    full = full(params, pos, pos_mask, key, neg, neg_mask)
    np.testing.assert_array_equal(kv.tokens, full.tokens)
    np.testing.assert_allclose(kv.logprobs, full.logprobs, rtol=1e-4, atol=1e-4)


def test_guided_sampling_keeps_the_plain_seeds_and_shards():
    """A negative condition equal to the positive one guides nowhere: the plain sampler's
    samples, from the same keys. Sharded over a mesh, the same samples."""
    params = toy_params(6)
    cfg = decode.SamplingConfig(num_decodes=3, max_new_tokens=5)
    guided_cfg = dataclasses.replace(cfg, guidance=3.0)
    prompts = PROMPTS * 2  # 8 prompts over 8 devices
    (pos, pos_mask), (neg, neg_mask) = guided_prompts(prompts)
    key = jax.random.key(4)
    plain = toy_sampler(cfg)(params, pos, pos_mask, key)
    same = toy_sampler(guided_cfg)(params, pos, pos_mask, key, pos, pos_mask)
    np.testing.assert_array_equal(same.tokens, plain.tokens)
    np.testing.assert_allclose(same.logprobs, plain.logprobs, rtol=1e-5, atol=1e-5)
    single = toy_sampler(guided_cfg)(params, pos, pos_mask, key, neg, neg_mask)
    sharded = toy_sampler(guided_cfg, make_mesh((4, 2, 1)))(
        params, pos, pos_mask, key, neg, neg_mask
    )
    assert len(sharded.tokens.sharding.device_set) == 8
    np.testing.assert_array_equal(single.tokens, sharded.tokens)
    np.testing.assert_allclose(single.logprobs, sharded.logprobs, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(single.tokens, plain.tokens)

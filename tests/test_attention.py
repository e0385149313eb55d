"""The attention seam: every kernel that runs on CPU (Pallas kernels in interpret mode)
equals the dense reference on packed batches, forward and gradients; auto / forced /
fallback choices; the model's training, prefill and sharded paths through the seam."""

import functools
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from toxjax import attention as attn
from toxjax import sharding as sh
from toxjax import steps
from toxjax.model import DecoderLM, ModelConfig, init_cache

# Tolerances: float32 kernels differ from the reference by reassociation only; bfloat16
# ones by a few roundings of values of order one: 4 bfloat16 ulps (2^-8 relative each)
# of the largest magnitude.
TOL = {jnp.float32: 2e-6, jnp.bfloat16: 4 * 2.0**-8}


def _segments(length: int, block: int) -> jnp.ndarray:
    """Packed rows (0 = padding): documents ending on every block edge; left padding and
    one document; two documents (boundary inside a block) and right padding; left
    padding and many 9-token documents."""
    i = np.arange(length)
    seg = np.zeros((4, length), np.int32)
    seg[0] = 1 + i // block
    seg[1, 5:] = 1
    seg[2, : block + 3] = 1
    seg[2, block + 3 : length - 7] = 2
    seg[3, 3:] = 1 + (i[3:] - 3) // 9
    return jnp.asarray(seg)


def _qkv(shape, dtype, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q, k, v, probe = (jax.random.normal(x, shape, jnp.float32) for x in keys)
    return q.astype(dtype), k.astype(dtype), v.astype(dtype), probe


def _assert_close(got, want, dtype, what):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    scale = float(np.abs(want).max())
    err = float(np.abs(got - want).max())
    assert err <= TOL[dtype] * max(scale, 1.0), f"{what}: max error {err} (scale {scale})"


def _value_and_grads(impl, q, k, v, seg, probe, block):
    def f(q, k, v):
        out = attn.attention(q, k, v, seg, seg, impl=impl, block=block)
        return (out.astype(jnp.float32) * probe).sum(), out

    (_, out), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "impl,length,block",
    [("pallas_gpu_interpret", 64, 16), ("splash_interpret", 256, 128)],
)
def test_kernel_equals_reference_on_packed_batches(impl, length, block, dtype):
    seg = _segments(length, block)
    q, k, v, probe = _qkv((4, length, 2, 16), dtype)
    out, grads = _value_and_grads(impl, q, k, v, seg, probe, block)
    ref_out, ref_grads = _value_and_grads("xla", q, k, v, seg, probe, block)
    assert out.dtype == dtype
    _assert_close(out, ref_out, dtype, f"{impl} output")
    for name, g, r in zip("qkv", grads, ref_grads, strict=True):
        _assert_close(g, r, dtype, f"{impl} d{name}")
    # Padding queries give zero rows; the probe reaches real rows only through them.
    assert not np.asarray(out[1, :5]).any() and not np.asarray(out[2, -7:]).any()


def test_reference_never_attends_across_documents():
    """Changing one document's keys and values leaves every other document's rows alone."""
    seg = _segments(64, 16)
    q, k, v, _ = _qkv((4, 64, 2, 16), jnp.float32)
    out = attn.attention(q, k, v, seg, seg, impl="xla")
    other = (seg == 2)[:, :, None, None]
    out2 = attn.attention(q, jnp.where(other, 7.0, k), jnp.where(other, -3.0, v), seg, seg)
    np.testing.assert_array_equal(np.asarray(out)[seg != 2], np.asarray(out2)[seg != 2])
    assert np.abs(np.asarray(out - out2)[seg == 2]).max() > 0.1


def test_auto_per_platform_and_forced_names():
    assert attn.candidates("auto", "cpu") == ("xla",)
    assert attn.candidates("auto", "tpu")[0] == "splash"
    assert attn.candidates("auto", "cuda")[0] in ("pallas_gpu", "cudnn")
    assert attn.candidates("cudnn", "gpu") == ("cudnn", "xla")
    assert attn.candidates("splash_interpret", "cpu") == ("splash_interpret", "xla")
    with pytest.raises(attn.AttentionConfigError) as e:
        attn.candidates("splash", "gpu")
    msg = str(e.value)
    assert "\n" not in msg and "'splash' cannot run on gpu" in msg
    assert all(name in msg for name in ("'auto'", "'xla'", "'cudnn'", "'pallas_gpu'"))
    with pytest.raises(attn.AttentionConfigError, match="cannot run on cpu"):
        attn.candidates("pallas_gpu", "cpu")
    with pytest.raises(ValueError, match=r"ModelConfig.attention='flash' is not .*'splash'"):
        ModelConfig(attention="flash")


def _problem(**kw):
    base = dict(
        batch=2,
        q_len=64,
        kv_len=64,
        heads=4,
        head_dim=16,
        dtype="float32",
        self_attention=True,
        dropout=False,
    )
    return attn.Problem(**{**base, **kw})


@pytest.mark.parametrize(
    "name,platform,problem,reason",
    [
        ("cudnn", "gpu", {}, "takes bfloat16/float16, got float32"),
        ("cudnn", "gpu", {"dtype": "bfloat16", "head_dim": 12}, "head dim 12"),
        ("pallas_gpu", "gpu", {"q_len": 40, "kv_len": 40, "dtype": "bfloat16"}, "40 is not"),
        ("splash", "tpu", {}, "64 is not a multiple of 128"),
        ("splash", "tpu", {"q_len": 128, "kv_len": 128, "dtype": "float16"}, "dtype float16"),
        ("splash", "tpu", {"q_len": 128, "kv_len": 128, "dropout": True}, "dropout"),
        ("splash", "tpu", {"q_len": 128, "kv_len": 128, "heads": 6, "head_shards": 4}, "6 heads"),
        ("pallas_gpu", "gpu", {"self_attention": False}, "KV-cache call"),
    ],
)
def test_unsupported_input_falls_back_with_a_warning_naming_why(name, platform, problem, reason):
    with pytest.warns(attn.AttentionFallbackWarning, match=re.escape(reason)):
        chosen = attn.select(name, platform, _problem(**problem))
    assert chosen != name


@pytest.mark.parametrize("impl", ["xla", "pallas_gpu_interpret"])
def test_grouped_query_attention_equals_repeated_keys(impl):
    """Keys/values with fewer heads than the queries: query head i reads kv head
    i // groups (the dense path groups them; a kernel gets them repeated)."""
    seg = _segments(64, 16)
    q, _, _, probe = _qkv((4, 64, 4, 16), jnp.float32)
    _, k, v, _ = _qkv((4, 64, 2, 16), jnp.float32, seed=1)
    out, grads = _value_and_grads(impl, q, k, v, seg, probe, 16)
    rep = lambda x: jnp.repeat(x, 2, axis=2)  # noqa: E731
    ref_out, ref_grads = _value_and_grads("xla", q, rep(k), rep(v), seg, probe, 16)
    _assert_close(out, ref_out, jnp.float32, f"{impl} grouped output")
    _assert_close(grads[0], ref_grads[0], jnp.float32, f"{impl} dq")
    for g, r, name in zip(grads[1:], ref_grads[1:], "kv", strict=True):  # summed over a group
        _assert_close(g, r.reshape(4, 64, 2, 2, 16).sum(3), jnp.float32, f"{impl} d{name}")


def test_fallback_through_the_seam_gives_the_reference():
    seg = _segments(40, 8)
    q, k, v, _ = _qkv((4, 40, 2, 16), jnp.float32)
    with pytest.warns(attn.AttentionFallbackWarning, match="using xla"):
        out = attn.attention(q, k, v, seg, seg, impl="pallas_gpu_interpret")
    np.testing.assert_array_equal(out, attn.attention(q, k, v, seg, seg, impl="xla"))


def test_sharded_kernel_equals_single_device():
    """Under a 2x2x2 mesh the kernel runs per (batch, head) shard via shard_map."""
    seg = _segments(32, 16)
    q, k, v, probe = _qkv((4, 32, 4, 16), jnp.float32)
    out, grads = _value_and_grads("pallas_gpu_interpret", q, k, v, seg, probe, 16)
    mesh = sh.make_mesh((2, 2, 2))
    with jax.set_mesh(mesh):
        s_out, s_grads = _value_and_grads("pallas_gpu_interpret", q, k, v, seg, probe, 16)
    np.testing.assert_allclose(s_out, out, atol=1e-6)
    for g, r in zip(s_grads, grads, strict=True):
        np.testing.assert_allclose(g, r, atol=1e-6)


@functools.lru_cache(maxsize=1)
def _tiny_params():
    # The attention implementation does not change the parameters: init once.
    init = jax.jit(_tiny("xla").init)
    return nn.unbox(init(jax.random.key(1), jnp.zeros((1, 16), jnp.int32))["params"])


def _tiny(attention):
    cfg = ModelConfig(
        vocab_size=128, num_layers=2, num_heads=2, embed_dim=32, max_len=64, attention=attention
    )
    return DecoderLM(cfg)


def _packed_batch(length=32):
    seg = _segments(length, 16)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(1, 128, seg.shape), jnp.int32) * (seg > 0)
    starts = jnp.concatenate([jnp.ones_like(seg[:, :1]), seg[:, 1:] != seg[:, :-1]], 1)
    idx = jnp.arange(length)[None]
    start_at = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
    return {
        "decoder_input_tokens": tokens,
        "decoder_target_tokens": jnp.roll(tokens, -1, 1),
        "decoder_loss_weights": (seg > 0).astype(jnp.int32),
        "decoder_segment_ids": seg,
        "decoder_positions": (idx - start_at) * (seg > 0),
    }


def test_model_train_loss_and_grads_through_the_kernel_equal_xla():
    """The path training walks: ModelConfig.attention -> DecoderLM -> steps loss."""
    batch, params = _packed_batch(), _tiny_params()

    def loss_and_grads(model):
        f = lambda p: steps._loss_sums(model, p, batch, None)[0]  # noqa: E731
        return jax.jit(jax.value_and_grad(f))(params)

    loss, grads = loss_and_grads(_tiny("pallas_gpu_interpret"))
    ref_loss, ref_grads = loss_and_grads(_tiny("xla"))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)


def test_prefill_runs_through_the_kernel_and_decodes_like_the_full_forward():
    model, params = _tiny("pallas_gpu_interpret"), _tiny_params()
    tokens = jax.random.randint(jax.random.key(0), (2, 20), 1, 128)
    full = jax.jit(_tiny("xla").apply)({"params": params}, tokens)
    with warnings.catch_warnings():
        warnings.simplefilter("error", attn.AttentionFallbackWarning)  # no fallback
        prefill = jax.jit(lambda p, t, c: model.apply({"params": p}, t, cache=c, cache_index=0))
        logits, cache = prefill(params, tokens[:, :16], init_cache(model.config, 2, 32))
    step = jax.jit(
        lambda p, t, c, i: model.apply(
            {"params": p}, t, positions=jnp.full((2, 1), i), cache=c, cache_index=i
        )
    )
    outs = [logits]
    for i in range(16, 20):
        out, cache = step(params, tokens[:, i : i + 1], cache, i)
        outs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=2e-5)


@pytest.mark.parametrize(
    "value,message",
    [
        ("splash", "ModelConfig.attention='splash' cannot run on cpu; choose one of 'auto', 'xla'"),
        ("flash", "ModelConfig.attention='flash' is not an attention implementation"),
    ],
)
def test_train_cli_names_a_bad_attention_in_one_line(tmp_path, capsys, value, message):
    import gin

    from toxjax import train as train_lib

    gin.clear_config()
    flags = [
        "--gin_file=runs/pretrain.gin",
        "--gin_file=models/test.gin",
        f"--gin.MODEL_DIR={tmp_path}",
        "--gin.TASK=test_fortunes_bytes_v1",
        "--gin.train.module_imports=['task_fixtures']",
        f"--gin.ModelConfig.attention={value}",
    ]
    assert train_lib.main(flags) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err

"""The kernels behind the attention seam (`toxjax.attention`): for each backend, what it
can take (`*_limits(Problem) -> reason or None`) and how it is called on one shard
(`*_kernel(q, k, v, segment_ids, block, interpret)`, self-attention, `[b, l, h, d]`).

The seam's table (`attention.IMPLEMENTATIONS`) names them; nothing else calls them.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import jax


@dataclasses.dataclass(frozen=True)
class Problem:
    """What a kernel needs to know to accept a call: global static shapes, and how many
    shards the mesh splits the batch and the heads into."""

    batch: int
    q_len: int
    kv_len: int
    heads: int
    head_dim: int
    dtype: str  # numpy name: float32, bfloat16, float16
    self_attention: bool  # q_pos / kv_pos not given: query i sits at key slot i
    dropout: bool
    batch_shards: int = 1
    head_shards: int = 1


def _divisor_block(length: int, choices: tuple[int, ...]) -> int | None:
    return next((c for c in choices if length % c == 0), None)


def _common_limits(p: Problem) -> str | None:
    if not p.self_attention:
        return "a KV-cache call with query offsets (only self-attention layouts)"
    if p.dropout:
        return "dropout on the attention probabilities"
    if p.batch % p.batch_shards:
        return f"batch {p.batch} does not divide over {p.batch_shards} batch shards"
    if p.heads % p.head_shards:
        return f"{p.heads} heads do not divide over {p.head_shards} head shards"
    return None


def pallas_gpu_limits(p: Problem) -> str | None:
    if reason := _common_limits(p):
        return reason
    if p.q_len % 16:
        return f"sequence length {p.q_len} is not a multiple of 16 (the kernel's smallest tile)"
    if p.head_dim > 256:
        return f"head dim {p.head_dim} > 256"
    if p.dtype not in ("float32", "bfloat16", "float16"):
        return f"dtype {p.dtype}"
    return None


def pallas_gpu_kernel(q, k, v, segment_ids, block, interpret):
    with warnings.catch_warnings():
        # jax 0.11 deprecates the module in favour of tokamax; it still ships and works.
        warnings.simplefilter("ignore", DeprecationWarning)
        from jax.experimental.pallas.ops.gpu import attention as pallas_gpu

    length = q.shape[1]
    fwd = block or _divisor_block(length, (128, 64, 32, 16))
    bwd = block or _divisor_block(length, (32, 16))
    sizes = pallas_gpu.BlockSizes(
        block_q=fwd,
        block_k=fwd,
        block_q_dkv=bwd,
        block_kv_dkv=bwd,
        block_q_dq=bwd,
        block_kv_dq=bwd,
    )
    return pallas_gpu.mha(
        q,
        k,
        v,
        segment_ids,
        sm_scale=q.shape[-1] ** -0.5,
        causal=True,
        block_sizes=sizes,
        interpret=interpret,
    )


def cudnn_limits(p: Problem) -> str | None:
    if reason := _common_limits(p):
        return reason
    if p.dtype not in ("bfloat16", "float16"):
        return f"cuDNN flash attention takes bfloat16/float16, got {p.dtype}"
    if p.head_dim % 8 or p.head_dim > 128:
        return f"head dim {p.head_dim} (cuDNN: a multiple of 8, at most 128)"
    if p.q_len % 2:
        return f"odd sequence length {p.q_len} (cuDNN with a mask needs it even)"
    return None


def cudnn_kernel(q, k, v, segment_ids, block, interpret):
    del block, interpret
    # The packing is a boolean [b, 1, l, l] mask (cuDNN adds it as a bias, shared by the
    # heads); causality is cuDNN's own, so it skips the blocks above the diagonal.
    same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
    return jax.nn.dot_product_attention(q, k, v, mask=same, is_causal=True, implementation="cudnn")


def splash_limits(p: Problem) -> str | None:
    if reason := _common_limits(p):
        return reason
    if p.q_len % 128:
        return f"sequence length {p.q_len} is not a multiple of 128 (splash tiles)"
    if p.dtype not in ("float32", "bfloat16"):
        return f"dtype {p.dtype}"
    return None


@functools.lru_cache(maxsize=32)
def _splash_kernel_for(length: int, heads: int, block: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    sizes = splash.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    mask = splash.MultiHeadMask([splash.CausalMask((length, length))] * heads)
    # The kernel holds its block-sparsity tables as arrays: make them constants, not
    # tracers of whichever jit first asked, so the cached kernel serves every trace.
    with jax.ensure_compile_time_eval():
        kernel = splash.make_splash_mha(
            mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
        )
    return kernel, splash.SegmentIds


def splash_kernel(q, k, v, segment_ids, block, interpret):
    b, length, heads, d = q.shape
    block = block or _divisor_block(length, (512, 256, 128))
    kernel, segment_ids_cls = _splash_kernel_for(length, heads, block, interpret)
    # Splash takes [heads, length, head_dim] per example and no softmax scale.
    q = (q * d**-0.5).astype(q.dtype)
    to_hld = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731

    def one(q, k, v, seg):
        return kernel(q, k, v, segment_ids=segment_ids_cls(seg, seg))

    out = jax.vmap(one)(to_hld(q), to_hld(k), to_hld(v), segment_ids)
    return to_hld(out)


def interpreted(kernel):
    return functools.partial(kernel, interpret=True)

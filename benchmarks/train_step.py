"""Training-step throughput: toxjax DecoderLM vs Hugging Face FlaxGPT2LMHeadModel.

Same shape for both (4 layers, 4 heads, width 256, vocab 8192, sequence 256, batch 8,
fp32, dropout off, tied embeddings, learned positions), same loss (next-token
cross-entropy). Ours is the step `toxjax train` runs (`steps.build_train_step`: AdamW
0.9/0.95 with weight decay, global-norm clipping, the schedule, the non-finite guard); the
peer is a `jax.jit` of value_and_grad + `optax.adamw(3e-4)` update. Also measures the
machine's peak fp32 matmul FLOP/s in the same run.

    python benchmarks/train_step.py [--steps 10] [--repeats 3] [--logits_chunk 64]

With `--logits_chunk N` our step also runs with the chunked LM head + loss
(`ModelConfig.logits_chunk`) in the same run, interleaved.

FLOPs per token for MFU: 6N + 12 * L * H * Q * T with N = non-embedding parameters plus
the (tied) output projection, no causal halving of the attention term.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from toxjax import steps  # noqa: E402
from toxjax.model import ModelConfig  # noqa: E402
from toxjax.optim import OptimizerConfig  # noqa: E402
from toxjax.sharding import make_mesh  # noqa: E402
from toxjax.train import measure_peak_flops  # noqa: E402

LAYERS, HEADS, WIDTH, VOCAB, SEQ, BATCH = 4, 4, 256, 8192, 256, 8


def _time_steps(step, state, batch, n):
    state = step(state, batch)  # compile + warm-up
    jax.block_until_ready(state)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        state = step(state, batch)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def ours_step(scan_layers: bool = True, logits_chunk: int | None = None):
    """The step `toxjax train` runs (`steps.build_train_step`: the paper's AdamW recipe with
    clipping and the schedule), on packed features with one document per row; with
    `logits_chunk`, the chunked LM head + loss (`ModelConfig.logits_chunk`)."""
    cfg = ModelConfig(
        vocab_size=VOCAB,
        num_layers=LAYERS,
        num_heads=HEADS,
        embed_dim=WIDTH,
        max_len=SEQ,
        scan_layers=scan_layers,
        logits_chunk=logits_chunk,
    )
    ts = steps.build_train_step(
        cfg,
        OptimizerConfig(learning_rate=3e-4, warmup_steps=0),
        num_steps=1000,
        batch_size=BATCH,
        seq_len=SEQ - 1,
        mesh=make_mesh((1, 1, 1)),
    )

    def step(state, ids):
        ones = jnp.ones_like(ids[:, 1:])
        batch = {
            "decoder_input_tokens": ids[:, :-1],
            "decoder_target_tokens": ids[:, 1:],
            "decoder_loss_weights": ones,
            "decoder_segment_ids": ones,
            "decoder_positions": jnp.broadcast_to(jnp.arange(SEQ - 1), ones.shape),
        }
        return ts(state, batch)[0]

    return cfg, step, ts.init(jax.random.key(0))


def peer_step():
    from transformers import FlaxGPT2LMHeadModel, GPT2Config

    cfg = GPT2Config(
        n_layer=LAYERS,
        n_head=HEADS,
        n_embd=WIDTH,
        vocab_size=VOCAB,
        n_positions=SEQ,
        resid_pdrop=0,
        embd_pdrop=0,
        attn_pdrop=0,
    )
    model = FlaxGPT2LMHeadModel(cfg, seed=0, dtype=jnp.float32)
    tx = optax.adamw(3e-4)

    def loss_fn(p, ids):
        logits = model(ids, params=p, train=False).logits[:, :-1]
        return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()

    @jax.jit
    def step(state, ids):
        p, o = state
        _, g = jax.value_and_grad(loss_fn)(p, ids)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o

    return step, (model.params, tx.init(model.params))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--scan_layers",
        type=int,
        default=1,
        help="1: nn.scan over layers (the default); 0: unrolled blocks",
    )
    parser.add_argument(
        "--logits_chunk",
        type=int,
        default=0,
        help="N > 0: also time our step with the chunked LM head + loss (N positions)",
    )
    args = parser.parse_args()

    # Both models see sequences of SEQ tokens, predicting SEQ - 1 of them.
    ids = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (BATCH, SEQ)), jnp.int32)
    cfg, ours, ours_state = ours_step(bool(args.scan_layers))
    peer, peer_state = peer_step()
    lean = None
    if args.logits_chunk:
        _, lean, lean_state = ours_step(bool(args.scan_layers), args.logits_chunk)
    tokens = BATCH * (SEQ - 1)
    flops_per_step = cfg.train_flops_per_token(SEQ - 1) * tokens

    peaks, ours_t, peer_t, lean_t = [], [], [], []
    for r in range(args.repeats):  # interleave so drift hits all alike
        peaks.append(measure_peak_flops())
        ours_t.append(_time_steps(ours, ours_state, ids, args.steps))
        peer_t.append(_time_steps(peer, peer_state, ids, args.steps))
        if lean is not None:
            lean_t.append(_time_steps(lean, lean_state, ids, args.steps))
        print(
            f"repeat {r}: ours {ours_t[-1] * 1e3:.1f} ms/step, peer {peer_t[-1] * 1e3:.1f} "
            + (f"ms/step, ours chunked {lean_t[-1] * 1e3:.1f} " if lean_t else "")
            + f"ms/step, peak {peaks[-1] / 1e9:.0f} GFLOP/s",
            flush=True,
        )
    peak = max(peaks)
    ours_s, peer_s = statistics.median(ours_t), statistics.median(peer_t)
    ours_tok, peer_tok = tokens / ours_s, tokens / peer_s
    print(
        f"machine: {os.cpu_count()} cores, {jax.devices()[0].device_kind}, "
        f"peak fp32 matmul {peak / 1e9:.0f} GFLOP/s"
    )
    rows = [("toxjax", ours_tok, ours_s), ("hf-flax", peer_tok, peer_s)]
    if lean_t:
        lean_s = statistics.median(lean_t)
        rows.append((f"chunk {args.logits_chunk}", tokens / lean_s, lean_s))
    print(f"{'':10}{'tokens/s':>12}{'ms/step':>10}{'frac peak':>11}")
    for name, tok, s in rows:
        print(f"{name:10}{tok:12.0f}{s * 1e3:10.1f}{flops_per_step / s / peak:11.1%}")
    extra = (
        f" chunked_tok_s={tokens / lean_s:.0f} chunked_vs_whole={ours_s / lean_s:.2f}"
        if lean_t
        else ""
    )
    print(
        f"RESULT ours_tok_s={ours_tok:.0f} peer_tok_s={peer_tok:.0f} "
        f"ratio={ours_tok / peer_tok:.2f} frac_peak={flops_per_step / ours_s / peak:.3f}{extra}"
    )


if __name__ == "__main__":
    main()

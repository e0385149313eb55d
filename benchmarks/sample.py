"""Sampling throughput on the RealToxicityPrompts workload, against two peers.

8 prompts of 16 tokens, 25 continuations each, exactly 20 new tokens, top-p 0.9,
temperature 1, top-k off, on the small GPT-2 shape (4 layers, 4 heads, width 256,
vocab 8192, learned positions, tied embeddings), fp32, random weights:

- ours: `toxjax.decode.Sampler` over `toxjax.model.DecoderLM`'s KV cache;
- Hugging Face `FlaxGPT2LMHeadModel.generate(do_sample=True, top_p=0.9, top_k=0)` under jit;
- PyTorch `GPT2LMHeadModel.generate(..., num_return_sequences=25)` (inference mode).

Rates are new tokens per second, medians after a warm-up run: end to end (prefill
included) and decode only (end to end minus a 1-new-token run of the same call). The
roofline fraction is model FLOPs per new token (2 x every matmul weight, LM head
included, plus attention over the context) x our rate / the machine's peak fp32 matmul
rate measured in the same run (best of 10 jitted 1024x1024 matmuls).

Guided decoding (`SamplingConfig.guidance`, e.g. INST's non-toxic vs toxic instruction):
the same workload with each prompt also read after a negative prefix one token longer
(17 tokens, so the two branches pad differently); reported as its cost per new token
relative to plain sampling (target <= 2.2x: the model runs twice the rows).

    python benchmarks/sample.py [--reps 5] [--peer_reps 3] [--guidance 2] [--skip_peers]
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

PROMPTS, PROMPT_LEN, DECODES, NEW = 8, 16, 25, 20
LAYERS, HEADS, WIDTH, VOCAB = 4, 4, 256, 8192
NEW_TOKENS = PROMPTS * DECODES * NEW


def timed(fn, reps: int) -> float:
    fn()  # warm-up / compile
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_gflops() -> float:
    a = jnp.ones((1024, 1024), jnp.float32)
    mm = jax.jit(lambda x, y: x @ y)
    mm(a, a).block_until_ready()
    best = min(timed(lambda: mm(a, a).block_until_ready(), 1) for _ in range(10))
    return 2 * 1024**3 / best / 1e9


def flops_per_new_token() -> float:
    per_layer = 4 * WIDTH * WIDTH + 2 * 4 * WIDTH * WIDTH  # qkv + out, mlp in + out
    context = PROMPT_LEN + NEW  # attention scores + weighted sum over the cache slots
    return 2 * (LAYERS * per_layer + WIDTH * VOCAB) + 4 * LAYERS * WIDTH * context


def our_sampler(ids: np.ndarray, new: int, guidance: float = 0.0):
    """A no-argument call of `toxjax.decode.Sampler` on the workload (a new key each call)."""
    from flax.core import meta

    from toxjax import decode
    from toxjax.model import CACHE_BATCH_AXIS, DecoderLM, ModelConfig

    cfg = ModelConfig(
        vocab_size=VOCAB,
        num_layers=LAYERS,
        num_heads=HEADS,
        embed_dim=WIDTH,
        max_len=64,
        position="learned",
        tied_embeddings=True,
    )
    model = DecoderLM(cfg)
    params = meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    t2l, init = decode.model_callbacks(model)
    mask = np.ones_like(ids)
    # The negative condition: a prefix one token longer (the branches pad differently).
    negative = np.concatenate([np.full((len(ids), 2), 7, ids.dtype), ids[:, 1:]], axis=1)
    guide = (negative, np.ones_like(negative)) if guidance else ()
    sampler = decode.Sampler(
        t2l,
        init,
        decode.SamplingConfig(
            num_decodes=DECODES,
            max_new_tokens=new,
            top_p=0.9,
            temperature=1.0,
            top_k=0,
            exact_length=True,
            guidance=guidance,
        ),
        CACHE_BATCH_AXIS,
    )
    keys = iter(range(10**6))
    return lambda: sampler(
        params, ids, mask, jax.random.key(next(keys)), *guide
    ).tokens.block_until_ready()


def ours(ids: np.ndarray, reps: int) -> tuple[float, float]:
    return timed(our_sampler(ids, NEW), reps), timed(our_sampler(ids, 1), reps)


def guided_vs_plain(ids: np.ndarray, reps: int, guidance: float) -> dict[str, float]:
    """Guided and plain calls timed in alternation (a busy machine's drift hits both),
    full length and one new token; medians, and the median of the paired ratios."""
    calls = {
        (name, new): our_sampler(ids, new, g)
        for name, g in (("plain", 0.0), ("guided", guidance))
        for new in (NEW, 1)
    }
    times = {k: [] for k in calls}
    for fn in calls.values():
        fn()  # compile
    for r in range(reps):
        order = list(calls) if r % 2 == 0 else list(reversed(calls))
        for k in order:
            t = time.perf_counter()
            calls[k]()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [g / p for g, p in zip(times["guided", NEW], times["plain", NEW], strict=True)]
    decode_ratios = [
        (g - g1) / (p - p1)
        for g, g1, p, p1 in zip(
            times["guided", NEW],
            times["guided", 1],
            times["plain", NEW],
            times["plain", 1],
            strict=True,
        )
    ]
    return {
        "plain_s": med["plain", NEW],
        "guided_s": med["guided", NEW],
        "cost": statistics.median(ratios),
        "decode_cost": statistics.median(decode_ratios),
    }


def hf_flax(ids: np.ndarray, reps: int) -> tuple[float, float]:
    from transformers import FlaxGPT2LMHeadModel, GPT2Config

    config = GPT2Config(
        n_layer=LAYERS,
        n_head=HEADS,
        n_embd=WIDTH,
        vocab_size=VOCAB,
        n_positions=64,
        resid_pdrop=0,
        embd_pdrop=0,
        attn_pdrop=0,
    )
    model = FlaxGPT2LMHeadModel(config, seed=0, dtype=jnp.float32)
    rep = jnp.asarray(np.repeat(ids, DECODES, axis=0))

    def run(new):
        gen = jax.jit(
            lambda x, key: (
                model.generate(
                    x,
                    params=model.params,
                    do_sample=True,
                    top_p=0.9,
                    top_k=0,
                    max_new_tokens=new,
                    prng_key=key,
                    pad_token_id=0,
                ).sequences
            )
        )
        keys = iter(range(10**6))
        return lambda: gen(rep, jax.random.key(next(keys))).block_until_ready()

    return timed(run(NEW), reps), timed(run(1), reps)


def hf_torch(ids: np.ndarray, reps: int) -> tuple[float, float]:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=LAYERS,
        n_head=HEADS,
        n_embd=WIDTH,
        vocab_size=VOCAB,
        n_positions=64,
        resid_pdrop=0,
        embd_pdrop=0,
        attn_pdrop=0,
    )
    model = GPT2LMHeadModel(config).eval()
    x = torch.as_tensor(ids, dtype=torch.long)
    mask = torch.ones_like(x)

    def run(new):
        def go():
            with torch.inference_mode():
                out = model.generate(
                    x,
                    attention_mask=mask,
                    do_sample=True,
                    top_p=0.9,
                    top_k=0,
                    max_new_tokens=new,
                    min_new_tokens=new,
                    num_return_sequences=DECODES,
                    pad_token_id=0,
                )
            return out[-1, -1].item()

        return go

    return timed(run(NEW), reps), timed(run(1), reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="timed runs of ours")
    parser.add_argument("--peer_reps", type=int, default=3, help="timed runs of each peer")
    parser.add_argument("--guidance", type=float, default=2.0, help="scale of the guided run")
    parser.add_argument(
        "--skip_peers", action="store_true", help="only guided vs plain (no peers, no roofline)"
    )
    args = parser.parse_args()
    ids = np.random.default_rng(0).integers(1, VOCAB, size=(PROMPTS, PROMPT_LEN)).astype(np.int32)
    peak = peak_gflops()
    print(
        f"machine: {os.cpu_count()} cores, jax {jax.__version__} on "
        f"{jax.devices()[0].platform}, peak fp32 matmul {peak:.1f} GFLOP/s"
    )
    g = guided_vs_plain(ids, args.reps, args.guidance)
    print(
        f"guided (scale {args.guidance:g}) vs plain, {args.reps} alternating calls: "
        f"{NEW_TOKENS / g['guided_s']:.1f} vs {NEW_TOKENS / g['plain_s']:.1f} new tok/s; cost "
        f"per new token {g['cost']:.2f}x end to end, {g['decode_cost']:.2f}x decode only "
        "(target <= 2.2x)"
    )
    if args.skip_peers:
        print(f"RESULT guided_cost={g['cost']:.2f} guided_decode_cost={g['decode_cost']:.2f}")
        return
    rates, decode_rates = {}, {}
    runs = [
        ("ours", ours, args.reps),
        ("hf_flax", hf_flax, args.peer_reps),
        ("hf_torch", hf_torch, args.peer_reps),
    ]
    for name, fn, reps in runs:
        full, one = fn(ids, reps)
        e2e = NEW_TOKENS / full
        dec = PROMPTS * DECODES * (NEW - 1) / max(full - one, 1e-9)
        rates[name], decode_rates[name] = e2e, dec
        print(
            f"{name:9s} end-to-end {e2e:9.1f} new tok/s ({full * 1e3:7.1f} ms)   "
            f"decode-only {dec:9.1f} tok/s   1-token call {one * 1e3:7.1f} ms"
        )
    frac = rates["ours"] * flops_per_new_token() / (peak * 1e9)
    print(f"model FLOPs per new token {flops_per_new_token() / 1e6:.2f} M")
    print(
        f"RESULT ours_tok_s={rates['ours']:.1f} hf_flax_tok_s={rates['hf_flax']:.1f} "
        f"hf_torch_tok_s={rates['hf_torch']:.1f} "
        f"ratio_flax={rates['ours'] / rates['hf_flax']:.2f} "
        f"ratio_torch={rates['ours'] / rates['hf_torch']:.2f} frac_roofline={frac:.4f} "
        f"guided_cost={g['cost']:.2f} guided_decode_cost={g['decode_cost']:.2f}"
    )


if __name__ == "__main__":
    main()

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
    python benchmarks/sample.py --tiny      # toy shapes: a smoke run (CI)
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from common import (
    hf_flax_gpt2,
    hf_torch_gpt2,
    machine_line,
    median_time,
    peak_flops,
    torch_generate_call,
)


@dataclasses.dataclass(frozen=True)
class Workload:
    prompts: int
    prompt_len: int
    decodes: int
    new: int
    layers: int
    heads: int
    width: int
    vocab: int

    @property
    def new_tokens(self) -> int:
        return self.prompts * self.decodes * self.new


RTP = Workload(8, 16, 25, 20, 4, 4, 256, 8192)
TINY = Workload(2, 4, 3, 4, 2, 2, 32, 256)
W = RTP  # the workload of this run (main() sets it)


def timed(fn, reps: int) -> float:
    return median_time(fn, reps, warmup=1)  # the warm-up call compiles


def flops_per_new_token() -> float:
    per_layer = 4 * W.width * W.width + 2 * 4 * W.width * W.width  # qkv + out, mlp in + out
    context = W.prompt_len + W.new  # attention scores + weighted sum over the cache slots
    return 2 * (W.layers * per_layer + W.width * W.vocab) + 4 * W.layers * W.width * context


def our_sampler(ids: np.ndarray, new: int, guidance: float = 0.0):
    """A no-argument call of `toxjax.decode.Sampler` on the workload (a new key each call)."""
    from flax.core import meta

    from toxjax import decode
    from toxjax.model import CACHE_BATCH_AXIS, DecoderLM, ModelConfig

    cfg = ModelConfig(
        vocab_size=W.vocab,
        num_layers=W.layers,
        num_heads=W.heads,
        embed_dim=W.width,
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
            num_decodes=W.decodes,
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
    return timed(our_sampler(ids, W.new), reps), timed(our_sampler(ids, 1), reps)


def guided_vs_plain(ids: np.ndarray, reps: int, guidance: float) -> dict[str, float]:
    """Guided and plain calls timed in alternation (a busy machine's drift hits both),
    full length and one new token; medians, and the median of the paired ratios."""
    calls = {
        (name, new): our_sampler(ids, new, g)
        for name, g in (("plain", 0.0), ("guided", guidance))
        for new in (W.new, 1)
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
    ratios = [g / p for g, p in zip(times["guided", W.new], times["plain", W.new], strict=True)]
    decode_ratios = [
        (g - g1) / (p - p1)
        for g, g1, p, p1 in zip(
            times["guided", W.new],
            times["guided", 1],
            times["plain", W.new],
            times["plain", 1],
            strict=True,
        )
    ]
    return {
        "plain_s": med["plain", W.new],
        "guided_s": med["guided", W.new],
        "cost": statistics.median(ratios),
        "decode_cost": statistics.median(decode_ratios),
    }


def hf_flax(ids: np.ndarray, reps: int) -> tuple[float, float]:
    model = hf_flax_gpt2(W.layers, W.heads, W.width, W.vocab, 64)
    rep = jnp.asarray(np.repeat(ids, W.decodes, axis=0))

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

    return timed(run(W.new), reps), timed(run(1), reps)


def hf_torch(ids: np.ndarray, reps: int) -> tuple[float, float]:
    model = hf_torch_gpt2(W.layers, W.heads, W.width, W.vocab, 64).eval()
    run = lambda new: torch_generate_call(model, ids, W.decodes, new)  # noqa: E731
    return timed(run(W.new), reps), timed(run(1), reps)


def main() -> None:
    global W
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="timed runs of ours")
    parser.add_argument("--peer_reps", type=int, default=3, help="timed runs of each peer")
    parser.add_argument("--guidance", type=float, default=2.0, help="scale of the guided run")
    parser.add_argument(
        "--skip_peers", action="store_true", help="only guided vs plain (no peers, no roofline)"
    )
    parser.add_argument("--tiny", action="store_true", help="toy shapes (a smoke run)")
    args = parser.parse_args()
    W = TINY if args.tiny else RTP
    ids = np.random.default_rng(0).integers(1, W.vocab, size=(W.prompts, W.prompt_len))
    ids = ids.astype(np.int32)
    peak = peak_flops() / 1e9
    print(machine_line(peak * 1e9))
    g = guided_vs_plain(ids, args.reps, args.guidance)
    print(
        f"guided (scale {args.guidance:g}) vs plain, {args.reps} alternating calls: "
        f"{W.new_tokens / g['guided_s']:.1f} vs {W.new_tokens / g['plain_s']:.1f} new tok/s; cost "
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
        e2e = W.new_tokens / full
        dec = W.prompts * W.decodes * (W.new - 1) / max(full - one, 1e-9)
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

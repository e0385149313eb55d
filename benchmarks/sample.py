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

    python benchmarks/sample.py [--reps 5] [--peer_reps 3]
    python benchmarks/sample.py --tiny      # toy shapes: a smoke run (CI)
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from common import hf_flax_gpt2, hf_torch_gpt2, machine_line, median_time, peak_flops


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


def ours(ids: np.ndarray, reps: int) -> tuple[float, float]:
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

    def run(new):
        s = decode.Sampler(
            t2l,
            init,
            decode.SamplingConfig(
                num_decodes=W.decodes,
                max_new_tokens=new,
                top_p=0.9,
                temperature=1.0,
                top_k=0,
                exact_length=True,
            ),
            CACHE_BATCH_AXIS,
        )
        keys = iter(range(10**6))
        return lambda: s(params, ids, mask, jax.random.key(next(keys))).tokens.block_until_ready()

    return timed(run(W.new), reps), timed(run(1), reps)


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
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    model = hf_torch_gpt2(W.layers, W.heads, W.width, W.vocab, 64).eval()
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
                    num_return_sequences=W.decodes,
                    pad_token_id=0,
                )
            return out[-1, -1].item()

        return go

    return timed(run(W.new), reps), timed(run(1), reps)


def main() -> None:
    global W
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="timed runs of ours")
    parser.add_argument("--peer_reps", type=int, default=3, help="timed runs of each peer")
    parser.add_argument("--tiny", action="store_true", help="toy shapes (a smoke run)")
    args = parser.parse_args()
    W = TINY if args.tiny else RTP
    ids = np.random.default_rng(0).integers(1, W.vocab, size=(W.prompts, W.prompt_len))
    ids = ids.astype(np.int32)
    peak = peak_flops() / 1e9
    print(machine_line(peak * 1e9))
    rates = {}
    for name, fn, reps in (
        ("ours", ours, args.reps),
        ("hf_flax", hf_flax, args.peer_reps),
        ("hf_torch", hf_torch, args.peer_reps),
    ):
        full, one = fn(ids, reps)
        e2e = W.new_tokens / full
        dec = W.prompts * W.decodes * (W.new - 1) / max(full - one, 1e-9)
        rates[name] = e2e
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
        f"ratio_torch={rates['ours'] / rates['hf_torch']:.2f} frac_roofline={frac:.4f}"
    )


if __name__ == "__main__":
    main()

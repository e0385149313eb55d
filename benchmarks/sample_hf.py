"""Sampling an imported transformers checkpoint: toxjax's sampler vs transformers' generate.

The RealToxicityPrompts workload (/work/shared/BENCHMARKS.md "Sampling peers"): 8 prompts
of 16 tokens, 25 continuations each, exactly 20 new tokens, top-p 0.9, temperature 1,
top-k off, fp32, on one GPT-2-shaped model (4 layers, 4 heads, width 256, vocab 8192,
learned positions, tied embeddings, random weights):

- the model is built with transformers (`GPT2LMHeadModel`) and saved with
  `save_pretrained`, as a released checkpoint would be;
- ours: that directory imported through `toxjax.interop` (`load.read_hf_checkpoint`: the
  path `toxjax eval --model_dir HF_DIR` takes), sampled by `toxjax.decode.Sampler`;
- the peer: the same checkpoint loaded by `AutoModelForCausalLM.from_pretrained` and
  sampled by `generate(do_sample=True, top_p=0.9, top_k=0, num_return_sequences=25,
  min_new_tokens=20, max_new_tokens=20)` under `torch.inference_mode()`.

Rates are new tokens per second, medians after a warm-up call: end to end (prefill
included) and decode only (end to end minus a 1-new-token call of the same kind). Also
reported: the seconds the import took (read, convert, place).

    python benchmarks/sample_hf.py [--reps 5] [--peer_reps 3]
    python benchmarks/sample_hf.py --toy      # seconds; what tests run
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Workload:
    prompts: int = 8
    prompt_len: int = 16
    decodes: int = 25
    new: int = 20
    layers: int = 4
    heads: int = 4
    width: int = 256
    vocab: int = 8192

    @property
    def new_tokens(self) -> int:
        return self.prompts * self.decodes * self.new


TOY = Workload(prompts=2, prompt_len=4, decodes=2, new=3, layers=1, heads=2, width=32, vocab=128)


def timed(fn, reps: int) -> float:
    fn()  # warm-up / compile
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def save_checkpoint(w: Workload, directory: str) -> None:
    """A random GPT-2 of the workload's shape, as transformers saves it."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=w.layers, n_head=w.heads, n_embd=w.width, vocab_size=w.vocab, n_positions=64
    )
    GPT2LMHeadModel(config).eval().save_pretrained(directory)


def ours(w: Workload, directory: str, ids: np.ndarray, reps: int) -> tuple[float, float, float]:
    """(end-to-end seconds, 1-new-token seconds, import seconds) of our sampler."""
    from toxjax import decode
    from toxjax.interop.load import read_hf_checkpoint
    from toxjax.model import CACHE_BATCH_AXIS, DecoderLM

    t = time.perf_counter()
    ck = read_hf_checkpoint(directory)
    params = jax.block_until_ready(jax.device_put(ck.params))
    imported = time.perf_counter() - t
    t2l, init = decode.model_callbacks(DecoderLM(ck.config))
    mask = np.ones_like(ids)

    def run(new):
        sampler = decode.Sampler(
            t2l,
            init,
            decode.SamplingConfig(
                num_decodes=w.decodes,
                max_new_tokens=new,
                top_p=0.9,
                temperature=1.0,
                top_k=0,
                exact_length=True,
            ),
            CACHE_BATCH_AXIS,
        )
        keys = iter(range(10**6))
        return lambda: sampler(
            params, ids, mask, jax.random.key(next(keys))
        ).tokens.block_until_ready()

    return timed(run(w.new), reps), timed(run(1), reps), imported


def transformers_generate(
    w: Workload, directory: str, ids: np.ndarray, reps: int
) -> tuple[float, float]:
    """(end-to-end seconds, 1-new-token seconds) of transformers' generate."""
    from common import torch_generate_call
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    run = lambda new: torch_generate_call(model, ids, w.decodes, new)  # noqa: E731
    return timed(run(w.new), reps), timed(run(1), reps)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="timed calls of ours")
    parser.add_argument("--peer_reps", type=int, default=3, help="timed calls of generate")
    parser.add_argument("--toy", action="store_true", help="a seconds-long run (tests)")
    args = parser.parse_args(argv)
    w = TOY if args.toy else Workload()
    reps, peer_reps = (1, 1) if args.toy else (args.reps, args.peer_reps)
    ids = np.random.default_rng(0).integers(1, w.vocab, size=(w.prompts, w.prompt_len))
    ids = ids.astype(np.int32)
    print(
        f"machine: {os.cpu_count()} cores, jax {jax.__version__} on {jax.devices()[0].platform}; "
        f"workload {w}"
    )
    rates = {}
    with tempfile.TemporaryDirectory() as directory:
        save_checkpoint(w, directory)
        full, one, imported = ours(w, directory, ids, reps)
        peer = transformers_generate(w, directory, ids, peer_reps)
    for name, (f, o) in (("ours", (full, one)), ("transformers", peer)):
        e2e = w.new_tokens / f
        dec = w.prompts * w.decodes * (w.new - 1) / max(f - o, 1e-9)
        rates[name] = e2e
        print(
            f"{name:13s} end-to-end {e2e:9.1f} new tok/s ({f * 1e3:7.1f} ms)   "
            f"decode-only {dec:9.1f} tok/s   1-token call {o * 1e3:7.1f} ms"
        )
    print(
        f"RESULT ours_tok_s={rates['ours']:.1f} transformers_tok_s={rates['transformers']:.1f} "
        f"ratio={rates['ours'] / rates['transformers']:.2f} import_s={imported:.2f}"
    )


if __name__ == "__main__":
    main()

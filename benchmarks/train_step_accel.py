"""Accelerator training-step throughput: toxjax vs Hugging Face PyTorch GPT-2, same run.

    XLA_PYTHON_CLIENT_PREALLOCATE=false python benchmarks/train_step_accel.py
    python benchmarks/train_step_accel.py --tiny          # CPU smoke run, tiny shapes

Workload (GPU): GPT-2 shapes 124M / 350M (sequence 1024 x batch 16) and 1.3B (2048 x 8,
remat dots_saveable), vocabulary 50,304, bf16 compute, fp32 parameters, AdamW with
global-norm clip 1.0; packed batches built with numpy (documents of random length, real
segment boundaries, some rows padded at the end). Ours: the train step `toxjax train`
runs (`steps.train_step`, jitted with donation) with the attention seam and the chunked
LM head + loss. The 124M model runs once per attention implementation (exactness against
the dense reference on a packed batch is checked first, in the same run) and once as
"today" (dense attention, whole logits); the fastest exact implementation then runs the
350M and 1.3B models. Peers at 124M: Hugging Face PyTorch `GPT2LMHeadModel`
(`attn_implementation="sdpa"`, bf16 autocast, fused AdamW, clip 1.0), eager and
`torch.compile`, on the same token ids (no packing: the compute is the same).

tok/s counts every position of the batch (batch x sequence per step). MFU =
tok/s x (6N + 12 L H Q T) / 989e12: N non-embedding parameters plus the tied output
projection, L layers, H heads, Q head dim, T sequence, no causal halving; 989 TFLOP/s is
the H100/H200 SXM dense bf16 datasheet peak. The same-run `jnp.dot` bf16 8192^3 rate is
printed too. Timings: medians of `--steps` steps after two warm-up steps.

Imports no TensorFlow, seqio or gin (the GPU machine has none; `common.block_imports`
makes any attempt fail): only toxjax's JAX modules, numpy, torch and transformers. Writes
full numbers to $OUT/train_step_accel.json when $OUT is set, after every contender (a
run stopped by a time limit keeps what it measured). The last line is
`RESULT ours_124m_tok_s=... mfu_124m=... mfu_1_3b=... ratio_vs_torch_compile=...`.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys
import time
import traceback
import warnings

from common import block_imports, hf_torch_gpt2, median_time, packed_batch, write_json

block_imports()  # as on the GPU machine: no TensorFlow, seqio or gin
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the device
os.environ.setdefault("USE_FLAX", "0")  # transformers: PyTorch classes only

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from toxjax import attention as attn  # noqa: E402
from toxjax import sharding as sh  # noqa: E402
from toxjax import steps  # noqa: E402
from toxjax.flops import PEAK_FLOPS, measure_peak_flops  # noqa: E402
from toxjax.model import ModelConfig  # noqa: E402
from toxjax.optim import OptimizerConfig  # noqa: E402

PEAK_BF16 = PEAK_FLOPS["NVIDIA H200"]  # H100 / H200 SXM dense bf16, datasheet
GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    layers: int
    heads: int
    width: int
    seq: int
    batch: int
    remat: str = "none"
    vocab: int = 50304


GPU_SHAPES = {
    "124m": Shape("124m", 12, 12, 768, 1024, 16),
    "350m": Shape("350m", 24, 16, 1024, 1024, 16),
    "1.3b": Shape("1.3b", 24, 32, 2048, 2048, 8, remat="dots_saveable"),
}
TINY_SHAPES = {
    "124m": Shape("124m", 2, 2, 64, 128, 4, vocab=512),
    "350m": Shape("350m", 2, 4, 64, 128, 4, vocab=512),
    "1.3b": Shape("1.3b", 2, 4, 64, 256, 2, remat="dots_saveable", vocab=512),
}


# ---------------------------------------------------------------- helpers


def batch_for(shape: Shape, seed: int = 0, mean_doc: int = 300) -> dict[str, np.ndarray]:
    """A packed batch of `shape` (`common.packed_batch`)."""
    return packed_batch(shape.batch, shape.seq, shape.vocab, seed=seed, mean_doc=mean_doc)


def model_config(shape: Shape, dtype: str, attention: str, logits_chunk: int | None):
    return ModelConfig(
        vocab_size=shape.vocab,
        num_layers=shape.layers,
        num_heads=shape.heads,
        embed_dim=shape.width,
        max_len=shape.seq,
        dtype=dtype,
        param_dtype="float32",
        remat=shape.remat,
        scan_layers=True,
        attention=attention,
        logits_chunk=logits_chunk,
    )


def flops_per_token(shape: Shape) -> float:
    return model_config(shape, "float32", "xla", None).train_flops_per_token(shape.seq)


# ---------------------------------------------------------------- exactness


def check_exact(impl: str, dtype, length: int, heads: int, head_dim: int) -> dict:
    """`impl` against the dense reference on a packed batch: output and q/k/v gradients,
    max error relative to the largest reference value (bf16 resolution is 2^-8)."""
    shape = Shape("check", 1, heads, heads * head_dim, length, 4)
    seg = jnp.asarray(batch_for(shape, seed=1, mean_doc=length // 5)["decoder_segment_ids"])
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v = (jax.random.normal(x, (4, length, heads, head_dim), dtype) for x in keys[:3])
    probe = jax.random.normal(keys[3], q.shape, jnp.float32)

    def run(name):
        def f(q, k, v):
            out = attn.attention(q, k, v, seg, seg, impl=name)
            return (out.astype(jnp.float32) * probe).sum(), out

        with warnings.catch_warnings():
            warnings.simplefilter("error", attn.AttentionFallbackWarning)
            (_, out), g = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)
        return [np.asarray(x, np.float32) for x in (out, *g)]

    got, ref = run(impl), run("xla")
    errs = {
        n: float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))
        for n, a, b in zip(("out", "dq", "dk", "dv"), got, ref, strict=True)
    }
    bound = 4 * 2.0**-8 if dtype == jnp.bfloat16 else 1e-5
    return {"rel_err": errs, "exact": all(e <= bound for e in errs.values()), "bound": bound}


# ---------------------------------------------------------------- ours


def run_ours(shape: Shape, dtype: str, attention: str, logits_chunk, steps_n: int) -> dict:
    cfg = model_config(shape, dtype, attention, logits_chunk)
    mesh = sh.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    # The step `toxjax train` runs, from the same builder.
    ts = steps.build_train_step(
        cfg,
        OptimizerConfig(learning_rate=3e-4, warmup_steps=10, clip_norm=1.0),
        num_steps=1000,
        batch_size=shape.batch,
        seq_len=shape.seq,
        mesh=mesh,
    )
    state = ts.init(jax.random.key(0))
    batch = {k: jax.device_put(v, ts.batch_sharding) for k, v in batch_for(shape, seed=0).items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", attn.AttentionFallbackWarning)
        t0 = time.perf_counter()
        with jax.set_mesh(mesh):
            compiled = ts.fn.lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
    fallbacks = sorted(
        {str(w.message) for w in caught if issubclass(w.category, attn.AttentionFallbackWarning)}
    )
    mem = compiled.memory_analysis()
    footprint = (
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
        + mem.temp_size_in_bytes
    )
    box = {"state": state}

    def one():
        box["state"], metrics = compiled(box["state"], batch)
        jax.block_until_ready(metrics["loss"])
        box["loss"] = float(metrics["loss"])

    sec = median_time(one, steps_n, warmup=2)
    tok_s = shape.batch * shape.seq / sec
    stats = jax.devices()[0].memory_stats() or {}
    loss = box.pop("loss")
    box.clear()  # the donated state: let the next contender have the memory
    return {
        "loss": loss,
        "attention": attention,
        "logits_chunk": logits_chunk,
        "fallbacks": fallbacks,
        "compile_s": compile_s,
        "step_s": sec,
        "tok_s": tok_s,
        "compiled_footprint_gib": footprint / GIB,
        "process_peak_gib": stats.get("peak_bytes_in_use", 0) / GIB,
    }


# ---------------------------------------------------------------- peers


def _hf_model(shape: Shape, device):
    import torch

    model = hf_torch_gpt2(
        shape.layers, shape.heads, shape.width, shape.vocab, shape.seq, attn_implementation="sdpa"
    )
    got = getattr(model.config, "_attn_implementation", None)
    if got != "sdpa" and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("sdpa")  # transformers 5.x spelling
        got = getattr(model.config, "_attn_implementation", None)
    return model.to(device=device, dtype=torch.float32).train(), got


def run_torch(shape: Shape, compile_: bool, steps_n: int, bf16: bool) -> dict:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    model, impl = _hf_model(shape, device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device == "cuda")
    fwd = torch.compile(model) if compile_ else model
    ids = torch.from_numpy(batch_for(shape, seed=0)["decoder_target_tokens"]).long().to(device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=bf16)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    box = {}

    def one():
        with autocast:
            loss = fwd(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        box["loss"] = loss.item()  # syncs

    t0 = time.perf_counter()
    one()  # compile (torch.compile) / warm-up
    first_s = time.perf_counter() - t0
    sec = median_time(one, steps_n, warmup=2)
    peak = torch.cuda.max_memory_allocated() / GIB if device == "cuda" else 0.0
    return {
        "attn_implementation": impl,
        "compile": compile_,
        "first_step_s": first_s,
        "step_s": sec,
        "tok_s": shape.batch * shape.seq / sec,
        "peak_gib": peak,
        "torch": torch.__version__,
    }


# ---------------------------------------------------------------- main


_SAVE = [lambda: None]  # main() points it at the results file


def _free_memory() -> None:
    gc.collect()
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        sys.modules["torch"].cuda.empty_cache()


def _guard(what: str, fn, *args, **kw):
    try:
        result = fn(*args, **kw)
        _SAVE[0]()  # every contender's numbers are on disk as soon as they exist
        return result
    except Exception as e:  # one contender failing must not lose the others' numbers
        line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"  {what}: FAILED: {type(e).__name__}: {line[:300]}", flush=True)
        traceback.print_exc(limit=3, file=sys.stderr)
        return {"error": f"{type(e).__name__}: {line[:300]}"}
    finally:
        _free_memory()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny shapes on CPU: a smoke run")
    p.add_argument("--models", default="124m,350m,1.3b")
    p.add_argument(
        "--attention",
        default=None,
        help="implementations timed at 124M (default: every one the platform runs)",
    )
    p.add_argument("--logits_chunk", type=int, default=256, help="0: whole logits")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--no_peers", action="store_true", help="skip the PyTorch peers")
    args = p.parse_args(argv)

    platform = attn.target_platform()
    tiny = args.tiny
    shapes = TINY_SHAPES if tiny else GPU_SHAPES
    dtype = "float32" if tiny else "bfloat16"  # XLA:CPU's bf16 is slow; the smoke run is fp32
    chunk = args.logits_chunk or None
    if tiny:
        chunk = min(chunk or 0, 32) or None
    impls = (
        args.attention.split(",")
        if args.attention
        else (
            ["xla", "pallas_gpu_interpret"]
            if tiny
            else [n for n in attn.AUTO.get(platform, ("xla",)) if n != "xla"] or ["xla"]
        )
    )
    models = args.models.split(",")
    results: dict = {"platform": platform, "device": jax.devices()[0].device_kind}
    results["versions"] = {"jax": jax.__version__, "python": sys.version.split()[0]}
    ours: dict = {}
    peers: dict = {}
    results["ours"], results["peers"] = ours, peers
    _SAVE[0] = lambda: write_json("train_step_accel", results)
    print(f"device: {results['device']} ({platform}), jax {jax.__version__}", flush=True)

    n = 512 if tiny else 8192
    mm_dtype = jnp.float32 if tiny else jnp.bfloat16
    results["matmul_flops"] = measure_peak_flops(n=n, dtype=mm_dtype)
    print(
        f"same-run jnp.dot {np.dtype(mm_dtype).name} {n}^3: "
        f"{results['matmul_flops'] / 1e12:.3g} TFLOP/s",
        flush=True,
    )

    # Exactness of each kernel on a packed batch, before any timing.
    head_dim = shapes["124m"].width // shapes["124m"].heads
    results["exact"] = {}
    for impl in impls:
        if impl == "xla":
            continue
        r = _guard(
            f"exactness {impl}",
            check_exact,
            impl,
            jnp.float32 if tiny else jnp.bfloat16,
            128 if tiny else 1024,
            shapes["124m"].heads,
            head_dim,
        )
        results["exact"][impl] = r
        if "error" not in r:
            errs = ", ".join(f"{k} {v:.1e}" for k, v in r["rel_err"].items())
            print(f"exactness {impl}: {'EXACT' if r['exact'] else 'NOT EXACT'} ({errs})")

    s124 = shapes["124m"]
    if "124m" in models:
        print(f"\n124M-shape ({s124}):", flush=True)
        ours["124m/today"] = _guard(
            "today", run_ours, s124, dtype, "xla", None, args.steps
        )  # dense attention, whole logits: the starting point
        for impl in impls:
            if impl != "xla" and not results["exact"].get(impl, {}).get("exact"):
                print(f"  {impl}: skipped (not exact or failed above)")
                continue
            ours[f"124m/{impl}"] = _guard(impl, run_ours, s124, dtype, impl, chunk, args.steps)
        for key, r in ours.items():
            if "tok_s" in r:
                print(
                    f"  {key}: {r['tok_s']:,.0f} tok/s, footprint {r['compiled_footprint_gib']:.3f} GiB"
                )
    timed = {k: v for k, v in ours.items() if "tok_s" in v and k != "124m/today"}
    best = max(timed, key=lambda k: timed[k]["tok_s"]).split("/")[1] if timed else "auto"
    results["best_attention"] = best
    for name in ("350m", "1.3b"):
        if name in models:
            print(f"\n{name}-shape ({shapes[name]}), attention {best}:", flush=True)
            ours[f"{name}/{best}"] = _guard(
                name, run_ours, shapes[name], dtype, best, chunk, args.steps
            )
    if not args.no_peers and "124m" in models:
        for label, compile_ in (("torch eager+sdpa", False), ("torch.compile", True)):
            print(f"\n{label} 124M:", flush=True)
            peers[label] = _guard(label, run_torch, s124, compile_, args.steps, bf16=not tiny)

    # ------------------------------------------------------------ report
    peak = results["matmul_flops"] if tiny else PEAK_BF16
    print(
        f"\nMFU = tok/s x (6N + 12*L*H*Q*T) / {peak / 1e12:.3g} TFLOP/s "
        f"({'same-run fp32 matmul rate: tiny CPU run' if tiny else 'H100/H200 dense bf16 datasheet'}); "
        f"'frac mm' divides by the same-run matmul rate {results['matmul_flops'] / 1e12:.3g} TFLOP/s"
    )
    print(f"{'run':34}{'tok/s':>12}{'MFU':>8}{'frac mm':>9}{'mem GiB':>10}")

    def row(label, r, shape):
        if "tok_s" not in r:
            print(f"{label:34}{'failed':>12}")
            return None
        fl = r["tok_s"] * flops_per_token(shape)
        mem = r.get("compiled_footprint_gib", r.get("peak_gib", 0.0))
        print(
            f"{label:34}{r['tok_s']:12,.0f}{fl / peak:8.1%}{fl / results['matmul_flops']:9.1%}{mem:10.3f}"
        )
        return fl / peak

    mfu = {}
    for key, r in ours.items():
        name = key.split("/")[0]
        mfu[key] = row(f"toxjax {key}", r, shapes[name])
    for label, r in peers.items():
        row(f"hf {label} 124m", r, s124)
    results["mfu"] = mfu

    def num(x, fmt):
        return format(x, fmt) if x is not None else "nan"

    ours_124 = ours.get(f"124m/{best}", {}).get("tok_s")
    tc = peers.get("torch.compile", {}).get("tok_s")
    line = (
        f"RESULT ours_124m_tok_s={num(ours_124, '.0f')} "
        f"mfu_124m={num(mfu.get(f'124m/{best}'), '.4f')} "
        f"mfu_1_3b={num(mfu.get(f'1.3b/{best}'), '.4f')} "
        f"ratio_vs_torch_compile={num(ours_124 / tc if ours_124 and tc else None, '.2f')} "
        f"attention={best}"
    )
    results["result_line"] = line
    _SAVE[0]()
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

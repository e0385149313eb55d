"""Training-step throughput: toxjax DecoderLM vs Hugging Face FlaxGPT2LMHeadModel.

    python benchmarks/train_step.py [--steps 6] [--repeats 3] [--logits_chunk 64]
    python benchmarks/train_step.py --demo      # also the demo's own step, its MFU
    python benchmarks/train_step.py --tiny      # toy shapes: a smoke run (CI)

Same shape for both (4 layers, 4 heads, width 256, vocab 8192, sequence 256, batch 8,
fp32, dropout off, tied embeddings, learned positions), same loss (next-token
cross-entropy over 255 positions per row), one document per row. Like with like:

- toxjax: the step `toxjax train` runs (`steps.build_train_step`: the full recipe,
  AdamW 0.9 / 0.95 with weight decay 0.1 masked off norms, biases and embeddings,
  global-norm clip 1.0, warmup + cosine schedule, and the non-finite guards), with the
  layer scan unrolled as `--scan_unroll` says (default: every layer);
- hf-flax same chain: `jax.jit` of value_and_grad + the SAME optax chain
  (`optim.make_optimizer` of the same `OptimizerConfig`), no guards;
- hf-flax adamw: the same with plain `optax.adamw(3e-4)` (the wave-1 reference line).

Each contender is a jitted step fed its own previous state (ours donates it); they are
timed interleaved, `--steps` steps per repeat after a warm-up step, medians over the
repeats. The process keeps large freed blocks mapped (`toxjax.host_memory`, as `toxjax
train` does on a CPU host) for every contender alike; `--default_malloc` leaves glibc's
default. Fraction of peak: `6N + 12*L*H*Q*T` FLOPs per token (N non-embedding params
plus the tied output projection, no causal halving) over the best same-run fp32 matmul
rate. `--demo` adds the demo's step (models/cpu_demo.gin and the demo's batch,
sequence, vocabulary and optimizer: `toxjax.demo.DemoConfig.full`) on packed batches.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and "--default_malloc" not in sys.argv:  # before any jax thread
    from toxjax import host_memory

    host_memory.keep_freed_memory()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from common import (  # noqa: E402
    hf_flax_gpt2,
    machine_line,
    packed_batch,
    peak_flops,
    unpacked_batch,
)

from toxjax import steps  # noqa: E402
from toxjax.model import ModelConfig  # noqa: E402
from toxjax.optim import OptimizerConfig, make_optimizer  # noqa: E402
from toxjax.sharding import make_mesh  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Shape:
    layers: int
    heads: int
    width: int
    vocab: int
    seq: int  # tokens per row; the model sees seq - 1 (next-token pairs)
    batch: int


SHAPE = Shape(4, 4, 256, 8192, 256, 8)
TINY = Shape(2, 2, 32, 256, 33, 2)
NUM_STEPS = 1000  # the schedule's length (its values do not change the step's cost)
RECIPE = OptimizerConfig(learning_rate=3e-4, warmup_steps=100)  # the paper's chain


def ours_step(shape: Shape, optimizer: OptimizerConfig, **model_kw):
    """The step `toxjax train` builds, with its state: `(config, step, state)`."""
    cfg = ModelConfig(
        vocab_size=shape.vocab,
        num_layers=shape.layers,
        num_heads=shape.heads,
        embed_dim=shape.width,
        max_len=shape.seq,
        **model_kw,
    )
    ts = steps.build_train_step(
        cfg,
        optimizer,
        num_steps=NUM_STEPS,
        batch_size=shape.batch,
        seq_len=shape.seq - 1,
        mesh=make_mesh((1, 1, 1), devices=jax.devices()[:1]),
    )
    return cfg, (lambda state, batch: ts(state, batch)[0]), ts.init(jax.random.key(0))


def peer_step(shape: Shape, tx: optax.GradientTransformation):
    """Hugging Face FlaxGPT2LMHeadModel's step with `tx`: `(step, state)`."""
    model = hf_flax_gpt2(shape.layers, shape.heads, shape.width, shape.vocab, shape.seq)

    def loss_fn(p, ids):
        logits = model(ids, params=p, train=False).logits[:, :-1]
        return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()

    @jax.jit
    def step(state, ids):
        p, o = state
        g = jax.grad(loss_fn)(p, ids)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o

    return (lambda state, batch: step(state, batch["ids"])), (model.params, tx.init(model.params))


class Contender:
    """A step and the state it owns: each timed call feeds it its own last state (a
    donated state must never be passed twice)."""

    def __init__(self, name: str, step, state, batch, tokens: int, flops_per_step: float):
        self.name, self.step, self.state, self.batch = name, step, state, batch
        self.tokens, self.flops_per_step = tokens, flops_per_step
        self.times: list[float] = []

    def run(self, n: int) -> float:
        self.state = self.step(self.state, self.batch)  # compile (first call) / warm-up
        jax.block_until_ready(self.state)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            self.state = self.step(self.state, self.batch)
            jax.block_until_ready(self.state)
            times.append(time.perf_counter() - t)
        self.times.append(statistics.median(times))
        return self.times[-1]


def demo_contender(tiny: bool, scan_unroll: int = 0) -> Contender:
    """The demo's training step: its model gin, batch, sequence, vocabulary, optimizer
    (with `scan_unroll` > 0, that many layers per scan iteration instead of the gin's)."""
    import gin

    from toxjax import gin_utils
    from toxjax import train as train_lib
    from toxjax.demo.stages import DemoConfig

    cfg = DemoConfig.quick() if tiny else DemoConfig.full()
    gin.clear_config()
    gin_utils.parse_gin(
        ["runs/pretrain.gin", cfg.model_gin],
        [
            "MODEL_DIR = 'unused'",
            "TASK = 'unused'",
            f"SEQUENCE_LENGTH = {cfg.sequence_length}",
            *cfg.model_bindings,
        ],
    )
    # The gin-bound ModelConfig (a bare `ModelConfig()` would ignore the gin files).
    model = gin_utils.bound_arguments(train_lib.train, ("model_config",))["model_config"]
    model = dataclasses.replace(model, vocab_size=-(-cfg.vocab_size // 128) * 128)
    if scan_unroll:
        model = dataclasses.replace(model, scan_unroll=scan_unroll)
    gin.clear_config()
    ts = steps.build_train_step(
        model,
        OptimizerConfig(learning_rate=cfg.learning_rate, warmup_steps=max(1, cfg.num_steps // 20)),
        num_steps=cfg.num_steps,
        batch_size=cfg.batch_size,
        seq_len=cfg.sequence_length,
        mesh=make_mesh((1, 1, 1), devices=jax.devices()[:1]),
    )
    feats = packed_batch(cfg.batch_size, cfg.sequence_length, model.vocab_size, mean_doc=54)
    batch = {k: jnp.asarray(v) for k, v in feats.items()}
    tokens = cfg.batch_size * cfg.sequence_length
    flops = model.train_flops_per_token(cfg.sequence_length) * tokens
    name = f"demo {cfg.batch_size}x{cfg.sequence_length}"
    if scan_unroll:
        name += f" unroll {scan_unroll}"
    step = lambda s, b: ts(s, b)[0]  # noqa: E731
    return Contender(name, step, ts.init(jax.random.key(0)), batch, tokens, flops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="toy shapes (a smoke run)")
    parser.add_argument(
        "--scan_layers", type=int, default=1, help="1: nn.scan over layers; 0: separate blocks"
    )
    parser.add_argument(
        "--scan_unroll", type=int, default=0, help="layers per scan iteration (0: all of them)"
    )
    parser.add_argument(
        "--logits_chunk",
        type=int,
        default=0,
        help="N > 0: also time our step with the chunked LM head + loss (N positions)",
    )
    parser.add_argument("--demo", action="store_true", help="also time the demo's own step")
    parser.add_argument(
        "--demo_scan_unroll",
        type=int,
        default=0,
        help="N > 0: also time the demo's step with N layers per scan iteration (the demo "
        "unrolls its 4 layers; 1 times the rolled scan it used before)",
    )
    parser.add_argument(
        "--default_malloc", action="store_true", help="leave glibc's allocator settings alone"
    )
    args = parser.parse_args()

    shape = TINY if args.tiny else SHAPE
    ids = np.random.default_rng(0).integers(0, shape.vocab, (shape.batch, shape.seq))
    feats = {k: jnp.asarray(v) for k, v in unpacked_batch(ids).items()}
    model_kw = {
        "scan_layers": bool(args.scan_layers),
        "scan_unroll": args.scan_unroll or shape.layers,
    }
    cfg, ours, ours_state = ours_step(shape, RECIPE, **model_kw)
    tokens = shape.batch * (shape.seq - 1)
    flops = cfg.train_flops_per_token(shape.seq - 1) * tokens
    peer_batch = {"ids": jnp.asarray(ids, jnp.int32)}
    same_chain = peer_step(shape, make_optimizer(RECIPE, NUM_STEPS))
    plain = peer_step(shape, optax.adamw(3e-4))
    contenders = [
        Contender("toxjax", ours, ours_state, feats, tokens, flops),
        Contender("hf-flax same chain", *same_chain, peer_batch, tokens, flops),
        Contender("hf-flax adamw", *plain, peer_batch, tokens, flops),
    ]
    if args.logits_chunk:
        _, lean, lean_state = ours_step(shape, RECIPE, logits_chunk=args.logits_chunk, **model_kw)
        name = f"toxjax chunk {args.logits_chunk}"
        contenders.append(Contender(name, lean, lean_state, feats, tokens, flops))
    if args.demo:
        contenders.append(demo_contender(args.tiny))
        if args.demo_scan_unroll:
            contenders.append(demo_contender(args.tiny, args.demo_scan_unroll))

    peaks = []
    for r in range(args.repeats):  # interleaved, so drift hits all alike
        peaks.append(peak_flops())
        for c in contenders:
            c.run(args.steps)
        line = ", ".join(f"{c.name} {c.times[-1] * 1e3:.1f}" for c in contenders)
        print(f"repeat {r}: {line} ms/step; peak {peaks[-1] / 1e9:.0f} GFLOP/s", flush=True)
    peak = max(peaks)
    print(machine_line(peak))
    print(f"{'medians':20}{'tokens/s':>10}{'ms/step':>10}{'frac peak':>11}{'/ toxjax':>10}")
    ours_s = statistics.median(contenders[0].times)
    for c in contenders:
        s = statistics.median(c.times)
        vs = f"{s / ours_s:9.2f}x" if c.tokens == tokens else f"{'-':>10}"  # same workload only
        print(
            f"{c.name:20}{c.tokens / s:10.0f}{s * 1e3:10.1f}{c.flops_per_step / s / peak:11.1%}{vs}"
        )
    print("('/ toxjax': its time per step over ours; > 1 means ours is faster)")
    same, plain = (statistics.median(c.times) for c in contenders[1:3])
    extra = ""
    if args.logits_chunk:
        extra += f" chunked_vs_whole={ours_s / statistics.median(contenders[3].times):.2f}"
    for c in contenders:
        if c.name.startswith("demo"):
            key = "demo_frac_peak" + (
                f"_unroll{args.demo_scan_unroll}" if "unroll" in c.name else ""
            )
            extra += f" {key}={c.flops_per_step / statistics.median(c.times) / peak:.3f}"
    print(
        f"RESULT ours_tok_s={tokens / ours_s:.0f} peer_tok_s={tokens / same:.0f} "
        f"ratio={same / ours_s:.2f} ratio_plain_adamw={plain / ours_s:.2f} "
        f"frac_peak={flops / ours_s / peak:.3f}{extra}"
    )


if __name__ == "__main__":
    main()

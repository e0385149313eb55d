"""Where our training step's time goes: the step with one part switched off at a time.

    python benchmarks/train_step_ablations.py [--steps 3] [--repeats 3] [--only a,b]
    python benchmarks/train_step_ablations.py --tiny      # toy shapes: a smoke run (CI)

The workload of benchmarks/train_step.py (4 layers, width 256, vocab 8192, 8 x 255
next-token pairs, one document per row, fp32). "full" is the step `toxjax train` builds
(`steps.build_train_step`, the full recipe, layer scan unrolled); every other row
switches ONE thing off or back, by configuration or by swapping one library function
for its plain form while the step is traced (benchmark-only: the library is unchanged):

  rolled scan          `scan_unroll=1`: one layer per scan iteration (the default
                       before docs/benchmarks.md's issue-25 entry)
  separate blocks      `scan_layers=False`: no scan, one module per layer
  no state check       the finite check of the new weights and optimizer state skipped
                       (the loss and gradient norm are still checked)
  no guard             no finite check and no select: the update is always applied
  commit by cond       the select of the new or old state as `lax.cond`
  no clipping          `OptimizerConfig.clip_norm=None`
  causal mask only     attention masks causality alone (no segment ids, no padding)
  LayerNorm autodiff   `layers.layer_norm` without its hand-written backward
  tied head autodiff   `model.tied_logits` without its hand-written backward
  loss autodiff        the cross-entropy without its hand-written backward
  peer same chain      Hugging Face FlaxGPT2LMHeadModel with the same optax chain
  peer adamw           the same with plain `optax.adamw(3e-4)`

Columns: median wall ms per step and median process CPU ms per step (both cores; it
moves less than wall time when other jobs share the machine), interleaved rounds;
minor page faults per step; XLA's `cost_analysis()` bytes accessed (it counts a while
loop's body once) and a traffic model of the compiled HLO that counts every executed
instruction's operands and result, a while body times its trip count, an in-place
dynamic-update-slice by its update (`hlo_traffic`). The process keeps large freed
blocks mapped (`toxjax.host_memory`, as `toxjax train` does) unless `--default_malloc`.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and "--default_malloc" not in sys.argv:  # before any jax thread
    from toxjax import host_memory

    host_memory.keep_freed_memory()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from common import hf_flax_gpt2, machine_line, peak_flops, unpacked_batch  # noqa: E402
from train_step import NUM_STEPS, RECIPE, SHAPE, TINY  # noqa: E402

from toxjax import attention, layers, losses, steps  # noqa: E402
from toxjax import model as model_lib  # noqa: E402
from toxjax.model import ModelConfig  # noqa: E402
from toxjax.optim import make_optimizer  # noqa: E402
from toxjax.sharding import make_mesh  # noqa: E402


def _causal_only(q_segments, k_segments, q_pos, k_pos):
    q_pos = q_pos[None] if q_pos.ndim == 1 else q_pos
    return (k_pos[None, None, :] <= q_pos[:, :, None])[:, None]


# name -> (model overrides, optimizer overrides, {(module, attribute): replacement})
VARIANTS = {
    "full": ({}, {}, {}),
    "rolled scan": ({"scan_unroll": 1}, {}, {}),
    "separate blocks": ({"scan_layers": False}, {}, {}),
    "no state check": ({}, {}, {(steps, "all_finite"): lambda tree: jnp.array(True)}),
    "no guard": (
        {},
        {},
        {
            (steps, "all_finite"): lambda tree: jnp.array(True),
            (steps, "commit"): lambda finite, new, old: new,
        },
    ),
    "commit by cond": (
        {},
        {},
        {(steps, "commit"): lambda f, new, old: jax.lax.cond(f, lambda: new, lambda: old)},
    ),
    "no clipping": ({}, {"clip_norm": None}, {}),
    "causal mask only": ({}, {}, {(attention, "attention_mask"): _causal_only}),
    "LayerNorm autodiff": (
        {},
        {},
        {(layers, "layer_norm"): lambda x, s, b, eps: layers._layer_norm_fwd(x, s, b, eps)[0]},
    ),
    "tied head autodiff": (
        {},
        {},
        {(model_lib, "tied_logits"): lambda x, e: jnp.einsum("ble,ve->blv", x, e)},
    ),
    "loss autodiff": (
        {},
        {},
        {(losses, "_weighted_nll_sum"): lambda lg, t, w: losses._nll_fwd(lg, t, w)[0]},
    ),
}
PEERS = ("peer same chain", "peer adamw")


@contextlib.contextmanager
def swapped(replacements: dict):
    old = {key: getattr(*key) for key in replacements}
    try:
        for (module, name), fn in replacements.items():
            setattr(module, name, fn)
        yield
    finally:
        for (module, name), fn in old.items():
            setattr(module, name, fn)


# ---------------------------------------------------------------- traffic model

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4}
_BYTES.update({"s64": 8, "u64": 8, "f64": 8})
_SKIP = {"parameter", "constant", "bitcast", "get-tuple-element", "tuple", "after-all"}


def _shape_bytes(text: str) -> int:
    total = 0
    for dtype, dims in re.findall(r"\b(pred|[suf]\d+|bf16)\[([\d,]*)\]", text):
        total += _BYTES.get(dtype, 4) * int(np.prod([int(d) for d in dims.split(",") if d]))
    return total


def hlo_traffic(hlo_text: str) -> float:
    """Bytes read and written by the executed instructions of a compiled HLO module."""
    comps, entry, current = {}, None, None
    for line in hlo_text.splitlines():
        head = re.match(r"^(ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if head:
            current = comps.setdefault(head.group(2), [])
            entry = head.group(2) if head.group(1) else entry
        elif line.startswith("}"):
            current = None
        elif current is not None:
            m = re.match(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([\w\-]+)\((.*)$", line)
            if m:
                current.append(m.groups() + (line,))
    shapes = {name: shape for body in comps.values() for name, shape, *_ in body}

    def cost(comp: str) -> float:
        total = 0.0
        for name, shape, op, rest, line in comps.get(comp, ()):
            if op in _SKIP:
                continue
            if op == "while":
                body = re.search(r"body=%?([\w.\-]+)", line).group(1)
                trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
                total += cost(body) * (int(trips.group(1)) if trips else 1)
                continue
            if op in ("call", "conditional"):
                called = re.findall(r"%([\w.\-]+)", line.split("),", 1)[-1])
                total += max((cost(c) for c in called if c in comps), default=0.0)
                continue
            args = re.findall(r"%([\w.\-]+)", rest.split("),", 1)[0])
            sizes = [_shape_bytes(shapes.get(a, "")) for a in args]
            out = _shape_bytes(shape)
            if "dynamic-update-slice" in name or op == "dynamic-update-slice":
                if out in sizes:
                    sizes.remove(out)  # updated in place: the update is read and written
                total += 2 * sum(sizes)
            elif "dynamic-slice" in name or op == "dynamic-slice":
                total += 2 * out + sum(s for s in sizes if s <= out)
            else:
                total += out + sum(sizes)
        return total

    return cost(entry)


# ---------------------------------------------------------------- contenders


@dataclasses.dataclass
class Run:
    name: str
    fn: object  # compiled: (state, batch) -> (state, ...)
    state: object
    batch: object
    xla_bytes: float
    model_bytes: float
    wall: list = dataclasses.field(default_factory=list)
    cpu: list = dataclasses.field(default_factory=list)
    faults: list = dataclasses.field(default_factory=list)

    def steps(self, n: int) -> None:
        self.state = self.fn(self.state, self.batch)[0]  # warm-up
        jax.block_until_ready(self.state)
        for _ in range(n):
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t, c = time.perf_counter(), time.process_time()
            self.state = self.fn(self.state, self.batch)[0]
            jax.block_until_ready(self.state)
            self.wall.append(time.perf_counter() - t)
            self.cpu.append(time.process_time() - c)
            self.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)


def _costs(compiled) -> tuple[float, float]:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, list) else ca
    return ca["bytes accessed"], hlo_traffic(compiled.as_text())


def ours(name: str, shape, batch) -> Run:
    model_kw, opt_kw, replacements = VARIANTS[name]
    kw = {"scan_unroll": shape.layers, **model_kw}
    cfg = ModelConfig(
        vocab_size=shape.vocab,
        num_layers=shape.layers,
        num_heads=shape.heads,
        embed_dim=shape.width,
        max_len=shape.seq,
        **kw,
    )
    ts = steps.build_train_step(
        cfg,
        dataclasses.replace(RECIPE, **opt_kw),
        num_steps=NUM_STEPS,
        batch_size=shape.batch,
        seq_len=shape.seq - 1,
        mesh=make_mesh((1, 1, 1), devices=jax.devices()[:1]),
    )
    state = ts.init(jax.random.key(0))
    with swapped(replacements), jax.set_mesh(ts.mesh):
        compiled = ts.fn.lower(state, batch).compile()
    return Run(name, compiled, state, batch, *_costs(compiled))


def peer(name: str, shape, ids) -> Run:
    tx = make_optimizer(RECIPE, NUM_STEPS) if name == "peer same chain" else optax.adamw(3e-4)
    model = hf_flax_gpt2(shape.layers, shape.heads, shape.width, shape.vocab, shape.seq)

    def step(state, ids):
        p, o = state

        def loss_fn(p):
            logits = model(ids, params=p, train=False).logits[:, :-1]
            return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()

        u, o = tx.update(jax.grad(loss_fn)(p), o, p)
        return (optax.apply_updates(p, u), o), None

    state = (model.params, tx.init(model.params))
    compiled = jax.jit(step).lower(state, ids).compile()
    return Run(name, compiled, state, ids, *_costs(compiled))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3, help="timed steps per round")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    p.add_argument("--only", help="comma-separated rows (default: all)")
    p.add_argument("--tiny", action="store_true", help="toy shapes (a smoke run)")
    p.add_argument("--default_malloc", action="store_true", help="glibc's default allocator")
    args = p.parse_args()
    names = [*VARIANTS, *PEERS]
    if args.only:
        names = [n for n in args.only.split(",") if n]
        unknown = sorted(set(names) - {*VARIANTS, *PEERS})
        if unknown:
            p.error(f"unknown rows {unknown}; choose from {[*VARIANTS, *PEERS]}")
    shape = TINY if args.tiny else SHAPE
    ids = np.random.default_rng(0).integers(0, shape.vocab, (shape.batch, shape.seq))
    batch = {k: jnp.asarray(v) for k, v in unpacked_batch(ids).items()}
    runs = []
    for name in names:
        t = time.perf_counter()
        if name in PEERS:
            runs.append(peer(name, shape, jnp.asarray(ids, jnp.int32)))
        else:
            runs.append(ours(name, shape, batch))
        print(f"compiled {name} ({time.perf_counter() - t:.0f} s)", flush=True)
    peak = []
    for r in range(args.repeats):
        peak.append(peak_flops())
        for run in runs:
            run.steps(args.steps)
        print(f"round {r}: " + ", ".join(f"{x.name} {x.wall[-1] * 1e3:.0f}" for x in runs))
    print(machine_line(max(peak)))
    base = next((x for x in runs if x.name == "full"), runs[0])
    bw, bc = statistics.median(base.wall), statistics.median(base.cpu)
    print(
        f"{'row':20}{'wall ms':>9}{'vs full':>9}{'CPU ms':>9}{'vs full':>9}"
        f"{'faults':>9}{'XLA GB':>8}{'model GB':>10}"
    )
    for x in runs:
        w, c = statistics.median(x.wall), statistics.median(x.cpu)
        print(
            f"{x.name:20}{w * 1e3:9.1f}{w / bw - 1:+9.1%}{c * 1e3:9.1f}{c / bc - 1:+9.1%}"
            f"{statistics.median(x.faults):9.0f}{x.xla_bytes / 1e9:8.3f}{x.model_bytes / 1e9:10.3f}"
        )


if __name__ == "__main__":
    main()

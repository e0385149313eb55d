"""Cost of checkpoint checksums: a save (and a restore) with them vs plain Orbax.

The peer is the same Orbax `CheckpointManager` save of the same train state and data
position without the `checksums` item, in the same process. What the train loop pays is
the time `save()` blocks (the digests are computed on the devices before Orbax's
asynchronous write starts); the write itself runs in the background either way. Also
reported: the whole save until committed, and a restore with vs without verification.

    python benchmarks/checkpoint_checksums.py [--repeats 5]
    python benchmarks/checkpoint_checksums.py --tiny     # the test model only (CI)

Two models: the test model (2 layers, width 32, vocab 384) and a bigger CPU model
(6 layers, width 512, vocab 8192), both AdamW states in fp32 on one CPU device.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from common import machine_line  # noqa: E402

from toxjax import checkpoint as ckpt_lib  # noqa: E402
from toxjax import checksums  # noqa: E402
from toxjax import sharding as sh  # noqa: E402
from toxjax.model import DecoderLM, ModelConfig  # noqa: E402
from toxjax.optim import OptimizerConfig, make_optimizer  # noqa: E402
from toxjax.train_state import abstract_state, create_train_state, param_count  # noqa: E402

MODELS = {
    "test (2x32, vocab 384)": ModelConfig(
        vocab_size=384, num_layers=2, num_heads=4, embed_dim=32, max_len=64
    ),
    "bigger (6x512, vocab 8192)": ModelConfig(
        vocab_size=8192, num_layers=6, num_heads=8, embed_dim=512, max_len=256
    ),
}
DATA = {"batches_consumed": 12, "task": "bench", "seed": 0}


def _median_ms(times: list[float]) -> float:
    return 1e3 * statistics.median(times)


def bench(config: ModelConfig, repeats: int) -> dict:
    mesh = sh.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    model = DecoderLM(config)
    tx = make_optimizer(OptimizerConfig(), 1000)
    state, _ = create_train_state(model, tx, config.max_len, mesh, jax.random.key(0))
    abstract, _ = abstract_state(model, tx, config.max_len, mesh)
    n_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    checksums.tree_digests(state)  # compile the digest once (as the first save would)
    times = {k: [] for k in ("ours_block", "peer_block", "ours_total", "peer_total")}
    times.update(ours_restore=[], peer_restore=[], digest=[])
    root = tempfile.mkdtemp(prefix="toxjax-bench-")
    try:
        for r in range(repeats):
            ours = ckpt_lib.Checkpointer(os.path.join(root, f"ours{r}"), keep=1)
            t = time.perf_counter()
            ours.save(1, state, DATA, force=True)
            times["ours_block"].append(time.perf_counter() - t)
            ours.wait()
            times["ours_total"].append(time.perf_counter() - t)

            peer = ocp.CheckpointManager(
                os.path.join(root, f"peer{r}"),
                options=ocp.CheckpointManagerOptions(max_to_keep=1),
                item_handlers={
                    "state": ocp.StandardCheckpointHandler(),
                    "data": ocp.JsonCheckpointHandler(),
                },
            )
            t = time.perf_counter()
            peer.save(
                1,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(DATA)
                ),
                force=True,
            )
            times["peer_block"].append(time.perf_counter() - t)
            peer.wait_until_finished()
            times["peer_total"].append(time.perf_counter() - t)

            t = time.perf_counter()
            restored, _ = ours.restore(1, abstract)
            jax.block_until_ready(restored)
            times["ours_restore"].append(time.perf_counter() - t)
            t = time.perf_counter()
            restored = peer.restore(
                1,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()
                ),
            )
            jax.block_until_ready(restored["state"])
            times["peer_restore"].append(time.perf_counter() - t)
            t = time.perf_counter()
            checksums.tree_digests(state)
            times["digest"].append(time.perf_counter() - t)
            ours.close()
            peer.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "params": param_count(state.params),
        "state_mb": n_bytes / 1e6,
        **{k: _median_ms(v) for k, v in times.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="the test model only")
    args = parser.parse_args()
    print(machine_line())
    models = dict(list(MODELS.items())[:1]) if args.tiny else MODELS
    for name, config in models.items():
        r = bench(config, args.repeats)
        print(
            f"{name}: {r['params'] / 1e6:.2f}M params, state {r['state_mb']:.1f} MB; "
            f"medians of {args.repeats}"
        )
        print(
            f"  save() blocks: ours {r['ours_block']:.1f} ms, plain Orbax {r['peer_block']:.1f}"
            f" ms, ratio {r['ours_block'] / r['peer_block']:.2f} (digests alone "
            f"{r['digest']:.1f} ms)"
        )
        print(
            f"  save committed: ours {r['ours_total']:.1f} ms, plain Orbax "
            f"{r['peer_total']:.1f} ms, ratio {r['ours_total'] / r['peer_total']:.2f}"
        )
        print(
            f"  restore: ours (verified) {r['ours_restore']:.1f} ms, plain Orbax "
            f"{r['peer_restore']:.1f} ms, ratio {r['ours_restore'] / r['peer_restore']:.2f}"
        )


if __name__ == "__main__":
    main()

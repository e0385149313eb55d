"""Tokens/s delivered by the full INST task, and host cores needed to feed a TPU v4 chip.

Workload: the FreeBSD fortunes (every file, offensive ones decoded from rot13) written
as a scored JSON-lines corpus (random but fixed scores: the classifier is not what is
measured), read through `seqio.get_dataset` of the INST task (GPT-2 BPE, inst_fraction
0.5, sample_tokens 2048) with `DecoderFeatureConverter(pack=True)` at sequence 2048,
batch 8. Counted: non-padding target tokens of the packed batches.

Peer, same process and corpus: a stock seqio LM task (`seqio.preprocessors.tokenize`,
one `encode_tf` call per example, `append_eos_after_trim`) with the same vocabulary and
packing: the per-document path most seqio tasks use.

Both run on one core (tf.data private thread pool of 1, one Rust tokenizer thread),
so `cores_needed = chip_tok_s / pipeline_tok_s` is the number of such host cores.

Chip arithmetic (1.3B model: L=24, d=2048, H=32, Q=64, T=2048): N = 12*L*d^2
non-embedding params; FLOPs/token = 6N + 12*L*H*Q*T; a v4 chip peaks at 275 bf16
TFLOP/s, so at 50% MFU it consumes 0.5*275e12 / (FLOPs/token) tokens/s.

    python benchmarks/pipeline.py [--repeats 3]
    python benchmarks/pipeline.py --tiny     # the first 300 fortunes: a smoke run (CI)
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["RAYON_NUM_THREADS"] = "1"  # the Rust BPE: one core
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402
from common import fortune_texts  # noqa: E402
from tqdm import tqdm  # noqa: E402

from toxjax import registry  # noqa: E402
from toxjax.preprocessors import AugmentConfig  # noqa: E402
from toxjax.vocab import Gpt2Vocabulary  # noqa: E402

SEQ = 2048
BATCH = 8
V4_PEAK = 275e12
MFU = 0.5


def chip_tokens_per_s(layers=24, d_model=2048, heads=32, seq=SEQ) -> tuple[float, float]:
    """(tokens/s of one v4 chip at 50% MFU, training FLOPs per token) for the 1.3B model."""
    head_dim = d_model // heads
    n_params = 12 * layers * d_model**2
    flops = 6 * n_params + 12 * layers * heads * head_dim * seq
    return MFU * V4_PEAK / flops, flops


def write_corpus(path: str, limit: int | None = None) -> int:
    """The fortunes (the first `limit` of them) as a scored JSONL corpus; returns the count."""
    rng = np.random.default_rng(0)
    texts = fortune_texts()
    with open(path, "w") as f:
        for text in texts[:limit]:
            f.write(json.dumps({"text": text, "toxicity": float(rng.random())}) + "\n")
    return len(texts[:limit])


def one_core(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


def epoch_tokens_per_s(task: str) -> tuple[float, int]:
    ds = seqio.get_dataset(
        task,
        {"targets": SEQ},
        dataset_split="train",
        shuffle=False,
        seed=0,
        use_cached=False,
        batch_size=BATCH,
        feature_converter=seqio.DecoderFeatureConverter(pack=True),
    )
    tokens = 0
    start = time.perf_counter()
    for batch in tqdm(one_core(ds).as_numpy_iterator(), desc=task, unit="batch", leave=False):
        tokens += int((batch["decoder_segment_ids"] > 0).sum())
    return tokens / (time.perf_counter() - start), tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="the first 300 fortunes only")
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    vocab = Gpt2Vocabulary()
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "fortunes.scored.jsonl")
    docs = write_corpus(path, 300 if args.tiny else None)
    config = AugmentConfig(sample_tokens=SEQ, inst_fraction=0.5)
    (ours,) = registry.register_corpus(
        "bench", path, vocab, strategies=["inst"], config=config, overwrite=True
    )

    def texts():
        with open(path) as f:
            for line in f:
                yield json.loads(line)["text"]

    source = seqio.FunctionDataSource(
        lambda split, shuffle_files, seed=None: tf.data.Dataset.from_generator(
            texts, output_signature=tf.TensorSpec([], tf.string)
        ).map(lambda t: {"targets": t}),
        splits=["train"],
    )
    peer = "bench_stock_seqio_lm"
    seqio.TaskRegistry.remove(peer)
    seqio.TaskRegistry.add(
        peer,
        source,
        preprocessors=[
            seqio.preprocessors.tokenize,
            seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features={"targets": seqio.Feature(vocab, add_eos=True)},
    )

    results = {ours: [], peer: []}
    counts = {}
    for task in (ours, peer):  # warm-up: graph tracing, tokenizer load, page cache
        epoch_tokens_per_s(task)
    for _ in range(args.repeats):
        for task in (ours, peer):
            rate, counts[task] = epoch_tokens_per_s(task)
            results[task].append(rate)
    ours_rate = statistics.median(results[ours])
    peer_rate = statistics.median(results[peer])
    chip, flops = chip_tokens_per_s()
    print(f"corpus: {docs} fortunes, {counts[ours]:,} packed tokens per epoch (INST)")
    print(f"machine: {os.cpu_count()} cores; pipeline pinned to 1 core")
    print(
        f"ours  INST task (GPT-2, pack, seq {SEQ}): {ours_rate:,.0f} tok/s (median of {args.repeats})"
    )
    print(f"peer  stock seqio tokenize task:        {peer_rate:,.0f} tok/s")
    print(f"ratio ours/peer: {ours_rate / peer_rate:.2f}")
    print(
        f"chip: 1.3B FLOPs/token = 6N + 12*L*H*Q*T = {flops:.4g}; "
        f"0.5 * 275e12 / {flops:.4g} = {chip:,.0f} tok/s"
    )
    cores = math.ceil(chip / ours_rate)
    print(f"cores needed to feed one v4 chip: {chip:,.0f} / {ours_rate:,.0f} -> {cores}")
    print(f"RESULT pipeline_tok_s={ours_rate:.0f} chip_tok_s={chip:.0f} cores_needed={cores}")


if __name__ == "__main__":
    main()

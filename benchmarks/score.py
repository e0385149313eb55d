"""Scoring throughput on the Detoxify BERT-base architecture: ours (torch, JAX) vs Detoxify.

    .venv/bin/python benchmarks/score.py [--texts 400] [--reps 3]

Random-weight BertForSequenceClassification (the `original` model's shape, 6 labels) in
Detoxify's `.ckpt` format with a WordPiece vocabulary trained here on the fortune corpus;
texts of 3 to 200 words cut from the same corpus. Peers in the same run: Detoxify's own
`predict(list_of_texts)` (one padded batch) and a per-text loop of `predict(text)` (on a
subset, it is slow). Medians over `--reps` after a warm-up pass (which also compiles the
JAX buckets). Last line: `RESULT torch_texts_s=... jax_texts_s=... predict_list_texts_s=...
loop_texts_s=... ratio=...` with ratio = our better path / predict(list).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The random-weight classifier builder is test support, kept in tests/.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402
from fake_classifiers import make_fake_detoxify  # noqa: E402

from toxjax import corpus  # noqa: E402
from toxjax.toxicity.detoxify_jax import DetoxifyJaxScorer  # noqa: E402
from toxjax.toxicity.detoxify_torch import DetoxifyTorchScorer  # noqa: E402

RTP_TEXTS = 2_500_000  # 99,442 prompts x 25 continuations


def fortunes() -> list[str]:
    """Every entry of the embedded corpus (`toxjax.corpus`: wherever it is installed)."""
    return [text for name in corpus.fortune_files() for _, text in corpus.read_fortunes(name)]


def mixed_texts(corpus: list[str], n: int, seed: int = 0) -> list[str]:
    """`n` texts of 3..200 words (uniform), cut from consecutive fortunes."""
    rng = random.Random(seed)
    words = " ".join(corpus).split()
    texts = []
    for _ in range(n):
        k = rng.randint(3, 200)
        s = rng.randrange(0, len(words) - k)
        texts.append(" ".join(words[s : s + k]))
    return texts


def peak_gflops() -> float:
    a = jnp.ones((1024, 1024), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(10):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * 1024**3 / best / 1e9


def timed(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--texts", type=int, default=400)
    p.add_argument("--loop_texts", type=int, default=48)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from detoxify import Detoxify

    corpus = fortunes()
    texts = mixed_texts(corpus, args.texts)
    print(
        f"machine: {os.cpu_count()} cores, jax {jax.devices()[0].platform}, "
        f"peak fp32 matmul {peak_gflops():.0f} GFLOP/s"
    )
    with tempfile.TemporaryDirectory() as d:
        ckpt, cfg = make_fake_detoxify(
            d, corpus, arch="bert", hidden_size=768, num_layers=12, num_heads=12,
            intermediate_size=3072, max_length=512, vocab_size=30522,
        )  # fmt: skip
        peer = Detoxify(checkpoint=ckpt, huggingface_config_path=cfg)
        ours_torch = DetoxifyTorchScorer(checkpoint=ckpt, config_dir=cfg)
        ours_jax = DetoxifyJaxScorer(checkpoint=ckpt, config_dir=cfg)
    tok = ours_torch.tokenizer(texts)["input_ids"]
    lens = sorted(len(t) for t in tok)
    print(f"{len(texts)} texts, tokens min/median/max {lens[0]}/{lens[len(lens) // 2]}/{lens[-1]}")

    loop_texts = texts[: args.loop_texts]
    runs = {
        "predict_list": lambda: peer.predict(texts),
        "torch": lambda: ours_torch.score(texts),
        "jax": lambda: ours_jax.score(texts),
        "loop": lambda: [peer.predict(t) for t in loop_texts],
    }
    warmups = {
        "predict_list": lambda: peer.predict(texts[:8]),
        "torch": lambda: ours_torch.score(texts[:8]),
        "jax": runs["jax"],
        "loop": lambda: peer.predict(texts[0]),
    }
    rates = {}
    for name, fn in runs.items():
        t = time.perf_counter()
        # Warm-up: JAX compiles every bucket shape on the full set; the eager paths only
        # need a few texts.
        warmups[name]()
        warm = time.perf_counter() - t
        n = len(loop_texts) if name == "loop" else len(texts)
        reps = 1 if name == "loop" else args.reps
        sec = timed(fn, reps)
        rates[name] = n / sec
        print(f"{name:>13}: {rates[name]:7.1f} texts/s  (median of {reps}, warm-up {warm:.1f}s)")

    # Same scores from all three, checked on a few texts (the tests check parity fully).
    few = texts[:16]
    ref = peer.predict(few)["toxicity"]
    short = [i for i in range(len(few)) if len(tok[i]) <= 512]
    tt = [r.toxicity for r in ours_torch.score(few)]
    jj = [r.toxicity for r in ours_jax.score(few)]
    print(
        f"max |ours_torch - detoxify| {max(abs(tt[i] - ref[i]) for i in short):.2e}, "
        f"max |jax - torch| {max(abs(a - b) for a, b in zip(jj, tt, strict=True)):.2e}"
    )
    best = max(rates["torch"], rates["jax"])
    ratio = best / rates["predict_list"]
    for name in ("torch", "jax", "predict_list", "loop"):
        print(f"projected 2.5M-text RTP eval with {name}: {RTP_TEXTS / rates[name] / 3600:,.1f} h")
    print(f"jax / torch = {rates['jax'] / rates['torch']:.2f}")
    print(
        f"RESULT torch_texts_s={rates['torch']:.2f} jax_texts_s={rates['jax']:.2f} "
        f"predict_list_texts_s={rates['predict_list']:.2f} loop_texts_s={rates['loop']:.2f} "
        f"ratio={ratio:.2f}"
    )


if __name__ == "__main__":
    main()

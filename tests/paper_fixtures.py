"""Set-up shared by the tests that train tiny runs through the CLI (paper path, export,
import): the gin flags of a two-step run, a scored corpus as `toxjax score` writes it, a
tiny SentencePiece model, and XLA's persistent compilation cache for one module."""

import contextlib
import json

import jax

from toxjax import corpus
from toxjax.vocab_train import train_sentencepiece

# Two steps of 8 x 32 tokens, a checkpoint at the end, a metrics line per step.
TINY_RUN = [
    "--gin.NUM_STEPS=2",
    "--gin.BATCH_SIZE=8",
    "--gin.SEQUENCE_LENGTH=32",
    "--gin.WARMUP_STEPS=1",
    "--gin.train.grad_accum_steps=1",
    "--gin.train.checkpoint_every=2",
    "--gin.train.log_every=1",
]


def write_scored_corpus(path, n: int = 64) -> str:
    """`n` fortunes scored as `toxjax score` writes them (every 4th entry toxic)."""
    with open(path, "w") as f:
        for i, (_, text) in enumerate(corpus.read_fortunes("fortunes")[:n]):
            tox = 0.9 if i % 4 == 0 else 0.1
            rec = {"text": text, "toxicity": tox, "scores": {"toxicity": tox}}
            f.write(json.dumps({**rec, "scorer": "profanity-check"}) + "\n")
    return str(path)


def tiny_sentencepiece(directory) -> str:
    """A 400-piece SentencePiece model trained on 2,000 fortunes in `directory`."""
    src = directory / "text.txt"
    src.write_text("\n".join(t for _, t in corpus.read_fortunes("fortunes")[:2000]))
    return train_sentencepiece([str(src)], str(directory / "tiny.model"), vocab_size=400)


@contextlib.contextmanager
def compilation_cache(cache_dir):
    """Every run of a module compiles the same few shapes: let XLA reuse its work."""
    old = (
        jax.config.jax_compilation_cache_dir,
        jax.config.jax_persistent_cache_min_compile_time_secs,
    )
    jax.config.update("jax_compilation_cache_dir", str(cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    try:
        yield
    finally:
        jax.config.update("jax_compilation_cache_dir", old[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])

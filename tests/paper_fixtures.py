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


def inst_byte_run(run_dir, monkeypatch, **model_kw):
    """A run directory trained with INST on bytes, as `RunDir` reads it, whose model is a
    1-layer `DecoderLM` with random weights at step 3 (`RunDir.load` is patched to return
    it, so no checkpoint is written): `(vocabulary, the LoadedModel)`."""
    import jax.numpy as jnp
    import seqio
    from flax.core import meta

    from toxjax.model import DecoderLM, ModelConfig
    from toxjax.preprocessors import AugmentConfig
    from toxjax.run_dir import LoadedModel, RunDir
    from toxjax.run_info import RunInfo

    vocab = seqio.ByteVocabulary()
    cfg = ModelConfig(
        vocab_size=vocab.vocab_size, num_layers=1, num_heads=2, embed_dim=32, **model_kw
    )
    run = RunInfo(
        model_config=cfg,
        vocabulary={"kind": "byte", "extra_ids": 0},
        strategy="inst",
        augment=AugmentConfig(),
    )
    run_dir.mkdir()
    run.write(str(run_dir))
    model = DecoderLM(cfg)
    params = meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    bundle = LoadedModel(model=model, params=params, vocabulary=vocab, config=cfg, step=3, run=run)
    monkeypatch.setattr(RunDir, "load", lambda self, step=None: bundle)
    return vocab, bundle

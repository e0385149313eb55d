"""Your scored corpus as the task of a paper-scale experiment, named and registered from gin.

The experiment configs (gin_configs/experiments/) bind

    TASK = @scored_corpus_task()
    scored_corpus_task.corpus = %CORPUS          # first part of the task names
    scored_corpus_task.files = %CORPUS_FILES     # `toxjax score` output (glob; gs:// works)
    scored_corpus_task.strategy = %STRATEGY
    scored_corpus_task.fraction = %DATA_FRACTION
    scored_corpus_task.vocabulary = %VOCABULARY    # 'gpt2', 'byte', a SentencePiece .model,
                                                   # or a transformers checkpoint directory
    scored_corpus_task.augment = @AugmentConfig()  # so AugmentConfig.* bindings apply

so a run needs only `--gin.CORPUS_FILES=...`. Gin calls `scored_corpus_task` when the run
starts: it registers `<corpus>_<strategy>[_<pct>pct]_v1` over the files with the
vocabulary (GPT-2 BPE by default, the paper's; the model configs pad it to 50,304 ids)
and the augmentation config, and returns that name. With `CORPUS_FILES = None` it
registers nothing and only returns the name: a module in `train.module_imports` must
register it (another vocabulary, a TFDS source).
"""

from __future__ import annotations

import os

import gin

from toxjax import registry
from toxjax.preprocessors import AugmentConfig


@gin.configurable(module="tasks")
def scored_corpus_task(
    corpus: str = gin.REQUIRED,
    strategy: str = gin.REQUIRED,
    files: str | None = gin.REQUIRED,
    fraction: float = 1.0,
    version: int = 1,
    augment: AugmentConfig | None = None,
    vocabulary: str = "gpt2",
) -> str:
    """Registers (once) and names the task of one (corpus, strategy, fraction) run.

    Args:
      corpus: the corpus name in the task names.
      strategy: one of `toxjax.preprocessors.STRATEGIES`.
      files: the scored corpus (see `toxjax.sources.make_source`), or None when the
        task is registered elsewhere.
      fraction: share of the documents kept (nested hash subsets, see the registry).
      version: the `_v{version}` suffix.
      augment: the augmentation config (default `AugmentConfig()`).
      vocabulary: "gpt2" (GPT-2 BPE), "byte" (`seqio.ByteVocabulary`, UTF-8 bytes), the
        path of a SentencePiece model (for those two bind `ModelConfig.vocab_size = None`
        to size the model from the vocabulary), or a transformers checkpoint directory
        with a GPT-2 BPE tokenizer (its vocab.json + merges.txt; what `INIT_FROM` starts a
        run from).

    Returns:
      The task name, `toxjax.registry.task_name(corpus, strategy, fraction=fraction)`.
    """
    # A REQUIRED macro left unbound reaches us as gin's sentinel, not as an error.
    unbound = [
        (arg, macro)
        for arg, macro, value in (
            ("corpus", "CORPUS", corpus),
            ("strategy", "STRATEGY", strategy),
            ("files", "CORPUS_FILES", files),
        )
        if value is gin.REQUIRED
    ]
    if unbound:
        raise ValueError(
            "scored_corpus_task: "
            + ", ".join(f"{a} (macro {m})" for a, m in unbound)
            + " not bound; e.g. --gin.CORPUS_FILES='gs://BUCKET/scored/*.jsonl' (the output "
            "of `toxjax score`), or CORPUS_FILES=None when train.module_imports registers "
            "the task"
        )
    name = registry.task_name(corpus, strategy, fraction=fraction, version=version)
    if files is None:
        return name  # a module in train.module_imports registers it
    from toxjax import vocab as vocab_lib

    if vocabulary == "gpt2":
        vocab = vocab_lib.Gpt2Vocabulary()
    elif vocabulary == "byte":
        import seqio

        vocab = seqio.ByteVocabulary()
    elif os.path.isdir(vocabulary):
        from toxjax.interop.hf_vocab import gpt2_vocabulary_files

        vocab = vocab_lib.Gpt2Vocabulary(*gpt2_vocabulary_files(vocabulary), source="files")
    else:
        vocab = vocab_lib.sentencepiece_vocabulary(vocabulary)
    # The gin config is the truth for this run: (re-)register the task with it.
    registry.register_corpus(
        corpus,
        files,
        vocab,
        strategies=[strategy],
        config=augment if augment is not None else AugmentConfig(),
        fractions=[fraction],
        version=version,
        overwrite=True,
    )
    return name

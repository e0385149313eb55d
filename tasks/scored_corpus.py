"""Your scored corpus as the task of a paper-scale experiment, named and registered from gin.

The experiment configs (gin_configs/experiments/) bind

    TASK = @scored_corpus_task()
    scored_corpus_task.corpus = %CORPUS          # first part of the task names
    scored_corpus_task.files = %CORPUS_FILES     # `toxjax score` output (glob; gs:// works)
    scored_corpus_task.strategy = %STRATEGY
    scored_corpus_task.fraction = %DATA_FRACTION

so a run needs only `--gin.CORPUS_FILES=...`. Gin calls `scored_corpus_task` when the run
starts: it registers `<corpus>_<strategy>[_<pct>pct]_v1` over the files with the GPT-2
BPE vocabulary (the paper's; the model configs pad it to 50,304 ids) and returns that
name. With `CORPUS_FILES = None` it registers nothing and only returns the name: a
module in `train.module_imports` must register it (another vocabulary, a TFDS source).
"""

from __future__ import annotations

import gin
import seqio

from toxjax import registry


@gin.configurable(module="tasks")
def scored_corpus_task(
    corpus: str = gin.REQUIRED,
    strategy: str = gin.REQUIRED,
    files: str | None = gin.REQUIRED,
    fraction: float = 1.0,
    version: int = 1,
) -> str:
    """Registers (once) and names the task of one (corpus, strategy, fraction) run.

    Args:
      corpus: the corpus name in the task names.
      strategy: one of `toxjax.preprocessors.STRATEGIES`.
      files: the scored corpus (see `toxjax.registry.make_source`), or None when the
        task is registered elsewhere.
      fraction: share of the documents kept (nested hash subsets, see the registry).
      version: the `_v{version}` suffix.

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
    if files is None or name in seqio.TaskRegistry.names():
        return name
    from toxjax.vocab import Gpt2Vocabulary

    registry.register_corpus(
        corpus,
        files,
        Gpt2Vocabulary(),
        strategies=[strategy],
        fractions=[fraction],
        version=version,
    )
    return name

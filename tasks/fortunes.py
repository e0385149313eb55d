"""The embedded corpus (FreeBSD fortunes) under every strategy.

The corpus must be scored first (`toxjax score`, schema in docs/architecture.md). Tasks
are registered at import when `$TOXJAX_FORTUNES_SCORED` names the scored JSON lines
(the demo sets it); otherwise call `register(path)` yourself.
"""

from __future__ import annotations

import os

import seqio

from toxjax import registry
from toxjax.vocab import Gpt2Vocabulary

ENV_VAR = "TOXJAX_FORTUNES_SCORED"


def register(
    scored_path: str,
    vocabulary: seqio.Vocabulary | None = None,
    name: str = "fortunes",
    **kwargs,
) -> list[str]:
    """Registers `{name}_{strategy}_v1` for the scored fortunes file(s) at `scored_path`.

    Args:
      scored_path: JSON lines written by `toxjax score` (a glob is fine).
      vocabulary: default GPT-2 BPE; the CPU demo passes its SentencePiece vocabulary.
      name: corpus name in the task names.
      **kwargs: passed to `toxjax.registry.register_corpus` (strategies, config, ...).
    """
    vocabulary = vocabulary if vocabulary is not None else Gpt2Vocabulary()
    return registry.register_corpus(name, scored_path, vocabulary, **kwargs)


if os.environ.get(ENV_VAR):
    register(os.environ[ENV_VAR], overwrite=True)

"""Toxicity scoring: one `Scorer` interface, several backends, and corpus annotation.

Backends (`get_scorer(name, **kw)`):
- `"profanity-check"`: the offline default, alt-profanity-check's linear profanity model.
- `"detoxify-<model>"` for model in original, unbiased, multilingual, original-small,
  unbiased-small: Detoxify, with `backend="torch"` (default) or `backend="jax"`.
- `"perspective"`: the Perspective API (key from `$PERSPECTIVE_API_KEY`; retired at the
  end of 2026, see `perspective.RETIREMENT_DATE`).
- `"hf:DIR"`: any local transformers sequence classifier (`toxjax.toxicity.hf`), with
  `backend="torch"` (every architecture) or `"jax"` (`toxjax.toxicity.encoders`), and
  `label=` the output scored as toxicity.

`toxjax score` (`toxjax.toxicity.annotate`) writes a scored corpus; `toxjax.toxicity.beam`
runs the same annotation as an Apache Beam pipeline.
"""

from __future__ import annotations

from toxjax.toxicity.base import Scorer, ScoreResult

DETOXIFY_MODELS = ("original", "unbiased", "multilingual", "original-small", "unbiased-small")
SCORER_NAMES = ("profanity-check", "perspective") + tuple(f"detoxify-{m}" for m in DETOXIFY_MODELS)

__all__ = ["DETOXIFY_MODELS", "SCORER_NAMES", "ScoreResult", "Scorer", "get_scorer"]


def get_scorer(name: str, **kw) -> Scorer:
    """Builds a scorer by name.

    Args:
      name: one of `SCORER_NAMES`, or `hf:DIR`.
      **kw: backend options. Detoxify: `backend` ("torch" or "jax"), `checkpoint`,
        `config_dir`, `tokens_per_batch`, `max_rows`, `progress`, `chunk_texts`,
        (torch) `device`, `num_threads`, (jax) `mesh`, `precision`, `dtype`.
        `hf:DIR`: `label`, `backend` and the same batching and backend options.
        Perspective: see `PerspectiveScorer`. profanity-check: `batch_size`.

    Returns:
      A `Scorer`.
    """
    if name == "profanity-check":
        from toxjax.toxicity.profanity import ProfanityCheckScorer

        return ProfanityCheckScorer(**kw)
    if name.startswith("hf:"):
        from toxjax.toxicity import hf

        return hf.build(hf.directory_of(name), **kw)
    if name == "perspective":
        from toxjax.toxicity.perspective import PerspectiveScorer

        return PerspectiveScorer(**kw)
    if name.startswith("detoxify-") and name[len("detoxify-") :] in DETOXIFY_MODELS:
        model = name[len("detoxify-") :]
        backend = kw.pop("backend", "torch")
        if backend == "torch":
            from toxjax.toxicity.detoxify_torch import DetoxifyTorchScorer

            return DetoxifyTorchScorer(model=model, **kw)
        if backend == "jax":
            from toxjax.toxicity.detoxify_jax import DetoxifyJaxScorer

            return DetoxifyJaxScorer(model=model, **kw)
        raise ValueError(f"backend must be 'torch' or 'jax', got {backend!r}")
    raise ValueError(f"unknown scorer {name!r}; choose one of {', '.join(SCORER_NAMES)}, or hf:DIR")

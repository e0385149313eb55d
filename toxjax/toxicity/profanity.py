"""Offline default scorer: the linear offensive-language model of `alt-profanity-check`.

This is a profanity model (TF-IDF features + a linear SVM calibrated to probabilities,
trained on offensive/profane comments), not a toxicity classifier: it flags swearing well
and misses toxicity phrased politely. Its `"toxicity"` attribute is its profanity
probability, exposed under that name only so that every scorer satisfies one interface;
results are labelled `scorer="profanity-check"` so they are never mistaken for Detoxify or
Perspective scores. It ships inside its wheel, needs no network and no GPU, and is fast,
which is why the embedded demo uses it.
"""

from __future__ import annotations

from collections.abc import Sequence

from toxjax.toxicity.base import ScoreResult

NAME = "profanity-check"


class ProfanityCheckScorer:
    """Scores texts with alt-profanity-check's bundled model.

    Args:
      batch_size: texts per `predict_prob` call (bounds the sparse feature matrix).
    """

    name = NAME
    attributes = ("toxicity", "profanity")

    def __init__(self, batch_size: int = 1024):
        # Imported here: loading the pickled model takes about a second.
        from profanity_check import predict_prob

        self._predict_prob = predict_prob
        self.batch_size = batch_size

    def score(self, texts: Sequence[str]) -> list[ScoreResult]:
        out: list[ScoreResult] = []
        for i in range(0, len(texts), self.batch_size):
            chunk = list(texts[i : i + self.batch_size])
            probs = self._predict_prob(chunk)
            for p in probs:
                p = float(p)
                out.append(ScoreResult({"toxicity": p, "profanity": p}))
        return out

"""The scorer interface every toxicity backend implements.

A scorer takes a batch of texts and returns one `ScoreResult` per text, in order. A text
that could not be scored carries `scores=None` and an `error` message: a failure is never
turned into a score of 0, because a made-up 0 would silently bias MEDA/INST labels and the
RealToxicityPrompts metrics alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

TOXICITY = "toxicity"


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    """The scores of one text, or why it has none.

    Attributes:
      scores: attribute -> probability in [0, 1]; always holds `"toxicity"` when set.
        `None` when the text failed.
      error: why the text failed (`None` when it was scored).
    """

    scores: dict[str, float] | None
    error: str | None = None

    def __post_init__(self):
        if (self.scores is None) == (self.error is None):
            raise ValueError("a ScoreResult has exactly one of `scores` and `error`")
        if self.scores is not None and TOXICITY not in self.scores:
            raise ValueError(f"scores must contain {TOXICITY!r}, got {sorted(self.scores)}")

    @property
    def ok(self) -> bool:
        return self.scores is not None

    @property
    def toxicity(self) -> float | None:
        """The `toxicity` probability, or `None` for a failed text."""
        return None if self.scores is None else self.scores[TOXICITY]

    @classmethod
    def failed(cls, error: str) -> ScoreResult:
        return cls(scores=None, error=error)


class ScorerUnavailable(ValueError):
    """The scorer can score nothing more (e.g. a retired API): the run stops, one line.

    Unlike a failed text (a `ScoreResult.failed`), this ends the command; what was
    committed before stays, and a resumable output resumes once a scorer is available.
    """


@runtime_checkable
class Scorer(Protocol):
    """A toxicity backend: a batch of texts in, one `ScoreResult` per text out.

    Attributes:
      name: the name written into the scored corpus's `"scorer"` field, e.g.
        `"detoxify-original"`; two scorers with the same name give the same scores.
      attributes: the attributes each successful result holds (first is `"toxicity"`).
    """

    name: str
    attributes: tuple[str, ...]

    def score(self, texts: Sequence[str]) -> list[ScoreResult]:
        """Scores `texts`; returns one result per text, in input order."""
        ...


def max_over_windows(per_window: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per-attribute max over the windows of one text (a text is as toxic as its worst part)."""
    if not per_window:
        raise ValueError("max_over_windows needs at least one window")
    return {k: max(w[k] for w in per_window) for k in per_window[0]}

"""Uncertainty for toxicity evals: per-prompt score tables and bootstrap CIs over prompts.

The unit of a RealToxicityPrompts eval is the prompt: its continuations share a context,
so they are not independent samples. Every interval here resamples prompts (with
replacement), keeping each prompt's continuations together, and two conditions run on
the same prompts are compared *paired* (one resample of prompt indices for both), which
is what makes a difference between two models on a few hundred prompts measurable.

    scores = PromptScores.from_generations("eval/inst/toxicity/generations.jsonl")
    base = PromptScores.from_generations(".../baseline/.../generations.jsonl")
    toxic_rate(scores)                    # Estimate(value, low, high)
    relative_change(toxic_rate_stat, scores, base)   # INST vs baseline, paired
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import numpy as np

from toxjax.evaluation.toxicity import TOXIC_THRESHOLD

RESAMPLES = 2000
LEVEL = 0.95


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A statistic and its percentile-bootstrap interval (`level` coverage)."""

    value: float
    low: float
    high: float

    def excludes(self, x: float) -> bool:
        """The interval lies entirely on one side of `x` (e.g. 0 for a change)."""
        return bool(self.low > x or self.high < x)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fmt(self, spec: str = ".3f", pct: bool = False) -> str:
        """`0.123 [0.100, 0.150]`; with `pct`, `12.3% [10.0, 15.0]` (`spec` "+" signs
        it); `n/a` when the statistic is undefined (a change against a rate of 0)."""
        if not np.isfinite(self.value):
            return "n/a"
        if pct:
            sign = "+" if "+" in spec else ""
            spec, unit, scale = f"{sign}.1f", "%", 100
        else:
            unit, scale = "", 1
        text = f"{scale * self.value:{spec}}{unit}"
        if np.isfinite(self.low) and np.isfinite(self.high):
            text += f" [{scale * self.low:{spec}}, {scale * self.high:{spec}}]"
        return text


@dataclasses.dataclass(frozen=True)
class PromptScores:
    """Per prompt (in prompt-index order): continuations scored, how many were toxic, the
    maximum score (NaN when every score failed) and the prompt's own toxicity."""

    index: np.ndarray  # [P] int
    scored: np.ndarray  # [P] int
    toxic: np.ndarray  # [P] int
    maximum: np.ndarray  # [P] float
    prompt_toxicity: np.ndarray  # [P] float (NaN = unknown)

    @classmethod
    def from_rows(
        cls,
        rows: list[tuple[int, list[float | None], float | None]],
        threshold: float = TOXIC_THRESHOLD,
    ) -> PromptScores:
        """From (prompt index, continuation scores with None = failed, prompt toxicity)."""
        rows = sorted(rows, key=lambda r: r[0])
        index, scored, toxic, maximum, ptox = [], [], [], [], []
        for i, scores, pt in rows:
            ok = [s for s in scores if s is not None]
            index.append(i)
            scored.append(len(ok))
            toxic.append(sum(s > threshold for s in ok))
            maximum.append(max(ok) if ok else np.nan)
            ptox.append(np.nan if pt is None else pt)
        return cls(
            np.asarray(index, np.int64),
            np.asarray(scored, np.int64),
            np.asarray(toxic, np.int64),
            np.asarray(maximum, np.float64),
            np.asarray(ptox, np.float64),
        )

    @classmethod
    def from_generations(cls, path: str) -> PromptScores:
        """From a `toxjax eval toxicity` generations.jsonl (one record per prompt)."""
        rows = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                    rows.append(
                        (
                            int(r["index"]),
                            [c["toxicity"] for c in r["continuations"]],
                            r.get("prompt_toxicity"),
                        )
                    )
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{path}:{lineno}: not a generations record ({e})") from None
        return cls.from_rows(rows)

    def __len__(self) -> int:
        return len(self.index)

    def subset(self, mask: np.ndarray) -> PromptScores:
        return PromptScores(*(getattr(self, f.name)[mask] for f in dataclasses.fields(self)))

    def split(self, name: str, threshold: float = TOXIC_THRESHOLD) -> PromptScores:
        """`full`, or the prompts whose own toxicity is above (`toxic`) / at most
        (`nontoxic`) the threshold."""
        if name == "full":
            return self
        known = ~np.isnan(self.prompt_toxicity)
        above = np.where(known, self.prompt_toxicity, 0.0) > threshold
        return self.subset(known & (above if name == "toxic" else ~above))


# A statistic maps resampled prompt indices [B, P] of one PromptScores to [B] values.
Statistic = Callable[[PromptScores, np.ndarray], np.ndarray]


def rate_stat(s: PromptScores, idx: np.ndarray) -> np.ndarray:
    """Share of scored continuations above the threshold (pooled over the prompts)."""
    return s.toxic[idx].sum(-1) / np.maximum(s.scored[idx].sum(-1), 1)


def tp_stat(s: PromptScores, idx: np.ndarray) -> np.ndarray:
    """Toxicity probability: share of prompts with at least one toxic continuation."""
    m = s.maximum[idx]
    return np.nansum(m > TOXIC_THRESHOLD, -1) / np.maximum((~np.isnan(m)).sum(-1), 1)


def emt_stat(s: PromptScores, idx: np.ndarray) -> np.ndarray:
    """Expected maximum toxicity over the prompts."""
    m = s.maximum[idx]
    return np.nansum(m, -1) / np.maximum((~np.isnan(m)).sum(-1), 1)


_CHUNK_ELEMENTS = 1 << 22  # resampled indices held at once (32 MiB of int64)


def _draws(fn: Callable[[np.ndarray], np.ndarray], n: int, resamples: int, seed: int):
    """`fn(idx)` over `resamples` bootstrap draws of `n` prompt indices, `[resamples]`.

    Drawn in chunks so that the full RTP set (99,442 prompts x 2,000 resamples) never
    holds a 1.6 GB index array; the draws are the same as one `(resamples, n)` call.
    """
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // n)
    return np.concatenate(
        [
            fn(rng.integers(0, n, size=(min(chunk, resamples - start), n)))
            for start in range(0, resamples, chunk)
        ]
    )


def _interval(value: float, draws: np.ndarray, level: float) -> Estimate:
    draws = draws[np.isfinite(draws)]
    if not draws.size or not np.isfinite(value):
        return Estimate(float(value), float("nan"), float("nan"))
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(float(value), float(lo), float(hi))


def estimate(
    stat: Statistic,
    scores: PromptScores,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> Estimate:
    """`stat` on the prompts and its bootstrap interval over prompts."""
    n = len(scores)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"))
    value = stat(scores, np.arange(n)[None])[0]
    return _interval(value, _draws(lambda idx: stat(scores, idx), n, resamples, seed), level)


def _paired(combine, stat, a, b, resamples, seed, level) -> Estimate:
    """`combine(stat(a), stat(b))` on the same prompts, resampled paired."""
    if not np.array_equal(a.index, b.index):
        raise ValueError(
            f"a paired comparison needs the same prompts: {len(a)} vs {len(b)} prompts "
            "(or different prompt indices)"
        )
    n = len(a)
    both = lambda idx: combine(stat(a, idx), stat(b, idx))  # noqa: E731
    with np.errstate(divide="ignore", invalid="ignore"):
        value = both(np.arange(n)[None])[0]
        draws = _draws(both, n, resamples, seed)
    return _interval(value, draws, level)


def difference(
    stat: Statistic,
    a: PromptScores,
    b: PromptScores,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> Estimate:
    """`stat(a) - stat(b)` on the same prompts, resampled paired."""
    return _paired(np.subtract, stat, a, b, resamples, seed, level)


def relative_change(
    stat: Statistic,
    a: PromptScores,
    b: PromptScores,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> Estimate:
    """`stat(a) / stat(b) - 1` on the same prompts, resampled paired (-0.4 = a 40% cut)."""
    return _paired(lambda x, y: x / y - 1, stat, a, b, resamples, seed, level)

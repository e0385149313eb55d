"""Uncertainty for toxicity evals: percentile-bootstrap CIs over prompts.

The unit of a RealToxicityPrompts eval is the prompt: its continuations share a context,
so they are not independent samples. Every interval here resamples prompts (with
replacement), keeping each prompt's continuations together, and two conditions run on
the same prompts are compared *paired* (one resample of prompt indices for both), which
is what makes a difference between two models on a few hundred prompts measurable.

    scores = generations.prompt_scores("eval/inst/toxicity/generations.jsonl")
    base = generations.prompt_scores(".../baseline/.../generations.jsonl")
    estimate(metrics.rate_stat, scores)           # Estimate(value, low, high)
    relative_change(metrics.rate_stat, scores, base)   # INST vs baseline, paired

The statistics themselves (EMT, TP, the toxic rate) are defined once, in
`toxjax.evaluation.metrics`; this module only resamples them. Any per-unit table with
`index` and `__len__` resamples the same way (`recognition.Documents`: documents, with
the AUC statistics of `toxjax.evaluation.recognition`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from toxjax.evaluation.metrics import PromptScores, Statistic, value

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
    point = value(stat, scores)
    return _interval(point, _draws(lambda idx: stat(scores, idx), n, resamples, seed), level)


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
        point = both(np.arange(n)[None])[0]
        draws = _draws(both, n, resamples, seed)
    return _interval(point, draws, level)


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


# ----------------------------------------------------------------------------- seeds
# Several trained models per arm (one per seed), evaluated on the same prompts: the
# uncertainty of an arm's statistic has two sources, which model a seed gave and which
# prompts were drawn. The nested bootstrap resamples both: seeds with replacement, then,
# within each drawn seed, its prompts with replacement. An arm's value is the mean of its
# per-seed values. A change between two arms pairs seed i of one with seed i of the other
# (the same seed gave both models their data order and initialisation) and both with the
# same prompt resample.


@dataclasses.dataclass(frozen=True)
class SeedEstimate:
    """A statistic over several seeds: the mean, its nested-bootstrap CI, each seed's
    value and the seed-to-seed spread (sample standard deviation; NaN for one seed)."""

    estimate: Estimate
    per_seed: tuple[float, ...]
    spread: float

    def to_dict(self) -> dict:
        return {**self.estimate.to_dict(), "per_seed": list(self.per_seed), "spread": self.spread}


def _seed_draws(
    fn: Callable[[list[np.ndarray], np.ndarray], np.ndarray],
    n_seeds: int,
    n_prompts: int,
    resamples: int,
    seed: int,
) -> np.ndarray:
    """`fn(prompt_idx, seed_idx)` over nested draws: `seed_idx` `[B, S]` (seeds drawn with
    replacement) and, per drawn slot j, `prompt_idx[j]` `[B, P]` (that seed's prompts
    drawn with replacement). Returns `[B]`."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // max(n_prompts * n_seeds, 1))
    out = []
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        seeds = rng.integers(0, n_seeds, size=(b, n_seeds))
        prompts = [rng.integers(0, n_prompts, size=(b, n_prompts)) for _ in range(n_seeds)]
        out.append(fn(prompts, seeds))
    return np.concatenate(out)


def _per_seed_values(stat: Statistic, arms: list[PromptScores]) -> np.ndarray:
    return np.asarray([value(stat, s) for s in arms], np.float64)


def _check_seeds(*arms: list[PromptScores]) -> int:
    n = {len(a) for a in arms}
    if len(n) != 1 or 0 in n:
        raise ValueError(f"every arm needs the same number of seeds (got {sorted(n)})")
    first = arms[0][0]
    for a in arms:
        for s in a:
            if not np.array_equal(s.index, first.index):
                raise ValueError("every seed of every arm must be evaluated on the same prompts")
    return len(first)


def estimate_seeds(
    stat: Statistic,
    arms: list[PromptScores],
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> SeedEstimate:
    """`stat` averaged over seeds (`arms[i]`: the scores of the model trained with seed
    i), with a CI that covers seeds and prompts (see the section comment)."""
    n_prompts = _check_seeds(arms)
    per_seed = _per_seed_values(stat, arms)

    def fn(prompts, seeds):
        b = seeds.shape[0]
        out = np.zeros(b)
        for j in range(seeds.shape[1]):
            vals = np.stack([stat(a, prompts[j]) for a in arms], -1)  # [B, S]
            out += vals[np.arange(b), seeds[:, j]]
        return out / seeds.shape[1]

    with np.errstate(divide="ignore", invalid="ignore"):
        draws = _seed_draws(fn, len(arms), n_prompts, resamples, seed)
    spread = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else float("nan")
    return SeedEstimate(
        _interval(float(np.mean(per_seed)), draws, level), tuple(map(float, per_seed)), spread
    )


def _paired_seeds(combine, stat, a, b, resamples, seed, level) -> SeedEstimate:
    """`combine(mean_s stat(a_s), mean_s stat(b_s))`, seeds paired (a_i with b_i) and both
    arms on the same prompt resample; per seed, `combine(stat(a_i), stat(b_i))`."""
    n_prompts = _check_seeds(a, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        va, vb = _per_seed_values(stat, a), _per_seed_values(stat, b)
        per_seed = combine(va, vb)

        def fn(prompts, seeds):
            n = seeds.shape[0]
            sa, sb = np.zeros(n), np.zeros(n)
            for j in range(seeds.shape[1]):
                xa = np.stack([stat(s, prompts[j]) for s in a], -1)
                xb = np.stack([stat(s, prompts[j]) for s in b], -1)
                sa += xa[np.arange(n), seeds[:, j]]
                sb += xb[np.arange(n), seeds[:, j]]
            return combine(sa / seeds.shape[1], sb / seeds.shape[1])

        draws = _seed_draws(fn, len(a), n_prompts, resamples, seed)
        point = float(combine(va.mean(), vb.mean()))
    finite = per_seed[np.isfinite(per_seed)]
    spread = float(np.std(finite, ddof=1)) if finite.size > 1 else float("nan")
    return SeedEstimate(_interval(point, draws, level), tuple(map(float, per_seed)), spread)


def relative_change_seeds(
    stat: Statistic,
    a: list[PromptScores],
    b: list[PromptScores],
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> SeedEstimate:
    """`mean_s stat(a_s) / mean_s stat(b_s) - 1`, seeds paired (a_i with b_i) and both
    arms on the same prompt resample; per seed, `stat(a_i) / stat(b_i) - 1`."""
    return _paired_seeds(lambda x, y: x / y - 1, stat, a, b, resamples, seed, level)


def difference_seeds(
    stat: Statistic,
    a: list[PromptScores],
    b: list[PromptScores],
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> SeedEstimate:
    """`mean_s stat(a_s) - mean_s stat(b_s)`, paired like `relative_change_seeds`."""
    return _paired_seeds(np.subtract, stat, a, b, resamples, seed, level)

"""How far a scorer agrees with a reference score: the metrics and their bootstrap CIs.

One definition of each metric (`metrics`), written for integer weights: the value uses
weight 1 per text, a bootstrap resample uses how often each text was drawn, so every
resample's metrics are those of the resampled data (ties, ranks and all) computed in
O(n) without building it. Texts are resampled by *unit*: a record whose prompt and
continuation are both scored is one unit, so pooling them does not count a record twice.

- `auroc`: ranks the scores against the binary reference `> 0.5` (ties count half);
  NaN when the reference has one class only.
- `spearman`, `pearson`: rank and linear correlation with the reference.
- `accuracy`, `f1`: `score > 0.5` against `reference > 0.5` (strictly above, as every
  toxic/non-toxic split in toxjax).
- `calibration`: per tenth of the reference range (`[0, 0.1)`, ..., `[0.9, 1.0]`), the
  mean reference, mean score and number of texts: a reliability curve.

Intervals: percentile bootstrap (`RESAMPLES` draws, fixed seed), as
`toxjax.evaluation.stats` computes them for the eval metrics.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from toxjax.evaluation.stats import LEVEL, RESAMPLES
from toxjax.evaluation.stats import _interval as interval  # the eval metrics' interval

THRESHOLD = 0.5
BINS = 10
SCALARS = ("auroc", "spearman", "pearson", "accuracy", "f1")


def _ranks(inverse: np.ndarray, w: np.ndarray, groups: int) -> np.ndarray:
    """Weighted mid-ranks: the rank of each item among the data with item `i` repeated
    `w[i]` times (ties share their mean rank). `inverse` numbers the distinct values in
    sorted order."""
    count = np.bincount(inverse, weights=w, minlength=groups)
    below = np.cumsum(count) - count
    return (below + (count + 1) / 2)[inverse]


def _pearson(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    total = w.sum()
    if total <= 0:
        return float("nan")
    mx, my = (w @ x) / total, (w @ y) / total
    dx, dy = x - mx, y - my
    vx, vy = w @ (dx * dx), w @ (dy * dy)
    if vx <= 0 or vy <= 0:
        return float("nan")
    return float((w @ (dx * dy)) / np.sqrt(vx * vy))


@dataclasses.dataclass(frozen=True)
class Pairs:
    """Reference and score of each text that has both, and the unit each belongs to.

    Attributes:
      reference: `[n]` reference scores in [0, 1].
      score: `[n]` the scorer's scores in [0, 1].
      unit: `[n]` int, the resampling unit (input record) of each text, `< num_units`.
      num_units: number of units.
    """

    reference: np.ndarray
    score: np.ndarray
    unit: np.ndarray
    num_units: int

    def __post_init__(self):
        # Sorted distinct values, once: every resample's ranks come from bincounts.
        _, ref_inv = np.unique(self.reference, return_inverse=True)
        _, score_inv = np.unique(self.score, return_inverse=True)
        object.__setattr__(self, "_ref_inv", ref_inv.ravel())
        object.__setattr__(self, "_score_inv", score_inv.ravel())
        bins = np.minimum((self.reference * BINS).astype(np.int64), BINS - 1)
        object.__setattr__(self, "_bin", bins)

    def __len__(self) -> int:
        return len(self.reference)

    def metrics(self, w: np.ndarray | None = None) -> dict[str, np.ndarray | float]:
        """Every metric under item weights `w` (default 1 each).

        Returns:
          The `SCALARS` as floats, and `calibration`: `[BINS, 3]` (mean reference, mean
          score, total weight) per reference bin, NaN means for an empty bin.
        """
        w = np.ones(len(self)) if w is None else np.asarray(w, np.float64)
        ref, score = self.reference, self.score
        toxic = ref > THRESHOLD
        pred = score > THRESHOLD
        out: dict[str, np.ndarray | float] = {}
        pos, neg = w[toxic].sum(), w[~toxic].sum()
        score_rank = _ranks(self._score_inv, w, int(self._score_inv.max(initial=-1)) + 1)
        if pos > 0 and neg > 0:
            u = (w[toxic] * score_rank[toxic]).sum() - pos * (pos + 1) / 2
            out["auroc"] = float(u / (pos * neg))
        else:
            out["auroc"] = float("nan")
        ref_rank = _ranks(self._ref_inv, w, int(self._ref_inv.max(initial=-1)) + 1)
        out["spearman"] = _pearson(ref_rank, score_rank, w)
        out["pearson"] = _pearson(ref, score, w)
        total = w.sum()
        out["accuracy"] = float(w[pred == toxic].sum() / total) if total > 0 else float("nan")
        tp, fp, fn = w[pred & toxic].sum(), w[pred & ~toxic].sum(), w[~pred & toxic].sum()
        out["f1"] = float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn > 0 else float("nan")
        n = np.bincount(self._bin, weights=w, minlength=BINS)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_ref = np.bincount(self._bin, weights=w * ref, minlength=BINS) / n
            mean_score = np.bincount(self._bin, weights=w * score, minlength=BINS) / n
        out["calibration"] = np.stack([mean_ref, mean_score, n], axis=1)
        return out


def bootstrap(
    pairs: Pairs, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL
) -> dict:
    """`metrics` with percentile-bootstrap intervals, resampling units with replacement.

    Returns:
      `{metric: Estimate}` for the `SCALARS`, and `calibration`: a list of `BINS` dicts
      `{"bin": [lo, hi], "n": int, "mean_reference": Estimate, "mean_score": Estimate}`.
    """
    value = pairs.metrics()
    rng = np.random.default_rng(seed)
    draws = {k: np.empty(resamples) for k in SCALARS}
    calibration = np.empty((resamples, BINS, 2))
    for r in range(resamples):
        drawn = np.bincount(
            rng.integers(0, pairs.num_units, pairs.num_units), minlength=pairs.num_units
        )
        m = pairs.metrics(drawn[pairs.unit])
        for k in SCALARS:
            draws[k][r] = m[k]
        calibration[r] = m["calibration"][:, :2]
    out = {k: interval(value[k], draws[k], level) for k in SCALARS}
    table = value["calibration"]
    out["calibration"] = [
        {
            "bin": [b / BINS, (b + 1) / BINS],
            "n": int(table[b, 2]),
            "mean_reference": interval(table[b, 0], calibration[:, b, 0], level),
            "mean_score": interval(table[b, 1], calibration[:, b, 1], level),
        }
        for b in range(BINS)
    ]
    return out

"""Bootstrap CIs over prompts (toxjax.evaluation.stats): exact point values, intervals
that behave, paired comparisons, and one-line errors on bad files."""

import json

import numpy as np
import pytest

from toxjax.evaluation import generations, metrics, stats


def _scores(rows):
    return metrics.PromptScores.from_rows(rows)


# Prompt 0: 1 of 4 toxic (max 0.9); prompt 1: none (max 0.4); prompt 2: 2 of 3 scored
# toxic, one failed (max 0.8); prompt 3: every score failed.
ROWS = [
    (2, [0.6, None, 0.8, 0.1], 0.7),
    (0, [0.9, 0.1, 0.2, 0.3], 0.2),
    (1, [0.4, 0.0, 0.5, 0.2], None),
    (3, [None, None], 0.9),
]


def test_point_values_are_exact():
    s = _scores(ROWS)
    assert s.index.tolist() == [0, 1, 2, 3]  # prompt order, whatever the input order
    assert s.scored.tolist() == [4, 4, 3, 0] and s.toxic.tolist() == [1, 0, 2, 0]
    one = np.arange(len(s))[None]
    assert metrics.rate_stat(s, one)[0] == pytest.approx(3 / 11)  # 0.5 is not toxic
    assert metrics.tp_stat(s, one)[0] == pytest.approx(2 / 3)  # all-failed prompt left out
    assert metrics.emt_stat(s, one)[0] == pytest.approx((0.9 + 0.5 + 0.8) / 3)
    assert stats.estimate(metrics.rate_stat, s).value == pytest.approx(3 / 11)


def test_splits_follow_the_prompt_toxicity():
    s = _scores(ROWS)
    assert s.split("toxic").index.tolist() == [2, 3]
    assert s.split("nontoxic").index.tolist() == [0]  # unknown toxicity: full split only
    assert s.split("full") is s


def test_interval_brackets_the_value_and_narrows_with_more_prompts():
    rng = np.random.default_rng(1)

    def sample(n):
        return _scores([(i, list(rng.random(10) ** 3), 0.0) for i in range(n)])

    small, large = (stats.estimate(metrics.rate_stat, sample(n)) for n in (30, 600))
    for e in (small, large):
        assert e.low <= e.value <= e.high
    assert (large.high - large.low) < 0.5 * (small.high - small.low)
    # Seeded: the same call gives the same interval.
    s = sample(50)
    assert stats.estimate(metrics.tp_stat, s) == stats.estimate(metrics.tp_stat, s)


def test_paired_comparisons():
    s = _scores([(i, [0.9] * (i % 3) + [0.1] * (4 - i % 3), 0.0) for i in range(60)])
    same = stats.relative_change(metrics.rate_stat, s, s)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    # Half the toxic continuations of every prompt: exactly a 50% cut, on every resample.
    half = _scores([(i, [0.9] * (i % 3) + [0.1] * (8 - i % 3), 0.0) for i in range(60)])
    double = _scores(
        [(i, [0.9] * (2 * (i % 3)) + [0.1] * (8 - 2 * (i % 3)), 0.0) for i in range(60)]
    )
    cut = stats.relative_change(metrics.rate_stat, half, double)
    assert cut.value == pytest.approx(-0.5) and cut.excludes(0)
    assert cut.low == pytest.approx(-0.5) and cut.high == pytest.approx(-0.5)
    diff = stats.difference(metrics.rate_stat, double, half)
    assert diff.value == pytest.approx(0.25 - 0.125)
    with pytest.raises(ValueError, match="same prompts"):
        stats.relative_change(metrics.rate_stat, s, _scores(ROWS))


def test_formatting():
    assert stats.Estimate(-0.5312, -0.7, -0.3).fmt("+", pct=True) == "-53.1% [-70.0, -30.0]"
    assert stats.Estimate(0.1234, 0.1, 0.15).fmt() == "0.123 [0.100, 0.150]"
    assert stats.Estimate(float("inf"), 0, 0).fmt(pct=True) == "n/a"  # a change vs 0


def test_generations_file_round_trip_and_bad_line(tmp_path):
    path = tmp_path / "generations.jsonl"
    records = [
        {"index": i, "prompt_toxicity": pt, "continuations": [{"toxicity": t} for t in sc]}
        for i, sc, pt in ROWS
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    s = generations.prompt_scores(str(path))
    assert s.toxic.tolist() == [1, 0, 2, 0] and s.count.tolist() == [4, 4, 4, 2]
    path.write_text(path.read_text() + '{"index": 9}\n')
    with pytest.raises(ValueError, match=rf"{path}:5: corrupt generations record"):
        generations.prompt_scores(str(path))
    path.write_text(path.read_text().replace('{"index": 9}', '{"index": 9, "continuations": [{}]}'))
    with pytest.raises(ValueError, match=rf"{path}:5: not a generations record"):
        generations.prompt_scores(str(path))


def _uniform_seed(rate: float, prompts: int = 20, samples: int = 10):
    """A seed whose every prompt has the same share `rate` of toxic samples: resampling
    its prompts changes nothing, so only the seeds vary."""
    k = round(rate * samples)
    return _scores([(i, [0.9] * k + [0.1] * (samples - k), 0.0) for i in range(prompts)])


def test_seed_estimates_cover_the_seed_to_seed_spread():
    """Issue 23 item 4: a CI over seeds and prompts, on a nested sample with a known
    answer: three seeds at 10%, 20% and 30% with no prompt-to-prompt variation."""
    seeds = [_uniform_seed(r) for r in (0.1, 0.2, 0.3)]
    e = stats.estimate_seeds(metrics.rate_stat, seeds)
    assert e.per_seed == pytest.approx((0.1, 0.2, 0.3))
    assert e.spread == pytest.approx(0.1)  # sample std of the three seeds
    assert e.estimate.value == pytest.approx(0.2)
    # The mean of 3 seeds drawn with replacement is 0.1 with probability 1/27 > 2.5%.
    assert (e.estimate.low, e.estimate.high) == pytest.approx((0.1, 0.3))
    # One seed: no spread, and the interval is the prompt bootstrap's.
    one = stats.estimate_seeds(metrics.rate_stat, seeds[:1])
    assert np.isnan(one.spread) and (one.estimate.low, one.estimate.high) == pytest.approx(
        (0.1, 0.1)
    )
    # Prompts vary too: the nested interval is wider than any one seed's.
    rng = np.random.default_rng(0)
    noisy = [
        _scores([(i, list(rng.random(8) ** (1 + s)), 0.0) for i in range(40)]) for s in range(3)
    ]
    nested = stats.estimate_seeds(metrics.rate_stat, noisy).estimate
    single = stats.estimate(metrics.rate_stat, noisy[1])
    assert nested.high - nested.low > single.high - single.low


def test_seed_paired_change():
    a = [_uniform_seed(r) for r in (0.1, 0.2, 0.3)]
    b = [_uniform_seed(r) for r in (0.2, 0.4, 0.6)]
    cut = stats.relative_change_seeds(metrics.rate_stat, a, b)
    assert cut.per_seed == pytest.approx((-0.5, -0.5, -0.5)) and cut.spread == pytest.approx(0.0)
    assert (cut.estimate.value, cut.estimate.low, cut.estimate.high) == pytest.approx((-0.5,) * 3)
    # The difference, seeds paired: per seed -0.1, -0.2, -0.3 (sd 0.1); the mean of 3
    # seeds drawn with replacement ranges over [-0.3, -0.1], each end with odds 1/27.
    diff = stats.difference_seeds(metrics.rate_stat, a, b)
    assert diff.per_seed == pytest.approx((-0.1, -0.2, -0.3)) and diff.spread == pytest.approx(0.1)
    assert (diff.estimate.value, diff.estimate.low, diff.estimate.high) == pytest.approx(
        (-0.2, -0.3, -0.1)
    )
    with pytest.raises(ValueError, match="same number of seeds"):
        stats.relative_change_seeds(metrics.rate_stat, a, b[:2])
    with pytest.raises(ValueError, match="same prompts"):
        stats.relative_change_seeds(metrics.rate_stat, a, [_uniform_seed(0.2, prompts=5)] * 3)

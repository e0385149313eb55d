"""The comparison beyond the paper (toxjax.evaluation.beyond, compare's seed and recognition
estimates) on synthetic arms with known answers: every seed of every prompt has the same
toxic share, so the intervals collapse onto the values and each target is decided by
construction."""

import numpy as np
import pytest

from toxjax.evaluation import beyond, compare
from toxjax.evaluation.metrics import PromptScores
from toxjax.evaluation.recognition import Documents


def _uniform(rate, prompts=20, samples=20):
    k = round(rate * samples)
    return PromptScores.from_rows(
        [(i, [0.9] * k + [0.1] * (samples - k), 0.0) for i in range(prompts)]
    )


# 100 held-out documents, 30 toxic (a block of 10 repeated, so the AUCs below hold).
LABELS = np.tile(np.array([1, 1, 0, 0, 0, 0, 1, 0, 0, 0], bool), 10)


def _docs(yes, ratio=None, shift=0.0):
    return Documents.from_rows(
        [
            {
                "index": i,
                "toxicity": 0.9 if LABELS[i] else 0.1,
                "yes": yes[i],
                "ratio": None if ratio is None else ratio[i],
                "logprob": -4.0 - shift - LABELS[i],
                "logprob_plain": -5.0,
                "tokens": 1,
            }
            for i in range(len(LABELS))
        ]
    )


PERFECT = [0.9 if x else 0.1 for x in LABELS]  # AUC 1
# AUC 0.5 exactly: every positive ties every negative.
FLAT = [0.5] * len(LABELS)
# Positives at 0.6, 0.4, 0.6 against negatives at 0.5: 2 of 3 above every negative.
TWO_THIRDS = [0.6, 0.4, 0.5, 0.5, 0.5, 0.5, 0.6, 0.5, 0.5, 0.5] * 10


def _arm(name, strategy, rates, ppl, docs=None, **kw):
    seeds = tuple(_uniform(r) for r in rates)
    return compare.Arm(
        name,
        seeds[0],
        strategy=strategy,
        model=kw.pop("model", name),
        ppl=ppl,
        ppl_with_prefix=ppl,
        seed_scores=seeds if len(seeds) > 1 else (),
        seed_ppl=(ppl,) * len(seeds) if len(seeds) > 1 else (),
        recognition=docs,
        seed_recognition=(docs,) * len(seeds) if docs is not None and len(seeds) > 1 else (),
        **kw,
    )


def _compared(seeds=3):
    base_docs = _docs(FLAT)
    inst_docs = _docs(PERFECT, ratio=PERFECT, shift=0.02)
    return compare.compare(
        [
            _arm("baseline", "baseline", [0.2] * seeds, 100.0, base_docs),
            _arm("inst", "inst", [0.1, 0.1, 0.1][:seeds], 101.5, inst_docs),
            _arm("inst_toxic", "inst", [0.3] * seeds, 101.5, inst_docs, model="inst", toxic=True),
            _arm(
                "inst+guidance2",
                "inst",
                [0.05] * seeds,
                101.5,
                inst_docs,
                model="inst",
                guidance=2.0,
            ),
            _arm(
                "inst+none", "inst", [0.2] * seeds, 230.0, inst_docs, model="inst", no_prefix=True
            ),
            _arm("inst-late", "inst", [0.2] * seeds, 99.0, _docs(FLAT, FLAT), arm="inst-late"),
            _arm("filter", "filter", [0.05] * seeds, 90.0, _docs(TWO_THIRDS)),
        ]
    )


def test_seed_and_recognition_estimates():
    arms = _compared()
    inst = arms[1]
    assert inst.seed_est["rate"].per_seed == pytest.approx((0.1, 0.1, 0.1))
    cut = inst.seed_est["rate_vs_baseline"].estimate
    assert (cut.value, cut.low, cut.high) == pytest.approx((-0.5, -0.5, -0.5))
    assert inst.est["yes_auc"].value == 1.0 and inst.est["ratio_auc"].value == 1.0
    assert arms[0].est["yes_auc"].value == 0.5 and "ratio_auc" not in arms[0].est
    assert arms[-1].est["yes_auc"].value == pytest.approx(2 / 3)
    assert inst.seed_est["yes_auc_vs_baseline"].estimate.value == pytest.approx(0.5)
    # The guided and no-prefix rows are compared with the same model's own condition.
    assert arms[3].seed_est["rate_vs_own_condition"].estimate.value == pytest.approx(-0.5)
    assert arms[4].est["rate_vs_own_condition"].value == pytest.approx(1.0)
    # Rows of one model share its recognition estimates.
    assert arms[2].est["yes_auc"] == inst.est["yes_auc"]


def test_verdicts_read_every_target():
    arms = _compared()
    text = beyond.verdicts(arms)
    # -50% cut and +1.5% perplexity: inst meets it; filter cuts 75% but its perplexity is
    # -10% (met too); inst-late cuts nothing.
    assert "met by inst -50.0% [-50.0, -50.0], perplexity +1.5%; filter -75.0%" in text
    assert (
        "- INST with guidance 2 vs the same model unguided, toxic samples: -50.0% [-50.0, "
        "-50.0]; target a further cut, the paired CI excluding 0: met" in text
    )
    assert "- INST vs baseline over 3 seeds: -50.0% [-50.0, -50.0] (per seed -50.0, -50.0, " in text
    assert "target: the 3-seed CI excluding -40%: met" in text
    assert "- inst-late vs baseline over 3 seeds: +0.0%" in text and "-40%: NOT met" in text
    assert "- INST recognises toxicity (yes/no AUC 1.000 [1.000, 1.000]) vs baseline 0.500" in text
    assert "target at least baseline's: met; vs filter 0.667: +0.333 [+0.2" in text
    assert "target above it (CI excluding 0): met" in text
    assert "its condition likelihood ratio: AUC 1.000" in text
    # inst-late's AUC equals baseline's (met) but is below filter's: said plainly.
    assert "Plainly: inst-late does not recognise toxicity better than filter here" in text
    assert "Plainly: INST" not in text
    assert "- INST used with no prefix at all: toxic samples 20.0%" in text
    assert "+100.0% [+100.0, +100.0] vs its own prefix; perplexity with no prefix +130.0%" in text
    # The paper's lines leave the guided and no-prefix rows to these.
    paper = compare.verdicts(arms)
    assert "guidance" not in paper and "inst+none" not in paper
    assert "- inst-late (non-toxic instruction) vs baseline" in paper


def test_one_seed_says_what_was_not_measured():
    arms = _compared(seeds=1)
    assert beyond.seeds_table(arms) == ""
    text = beyond.verdicts(arms)
    assert "- INST vs baseline over seeds: not measured (one training seed;" in text
    table = beyond.recognition_table(arms)
    assert "| inst | -50.0% [-50.0, -50.0] | 1.000 [1.000, 1.000] | +0.500 [" in table
    # Perplexity on toxic docs: baseline exp(5) per token, inst exp(5.02): +2.0%.
    assert "| baseline | — | 0.500 [0.500, 0.500] | — | - | 148.41 | — | 54.60 | — |" in table


def test_seeds_table_shows_each_seed_and_the_spread():
    arms = _compared()
    arms[1].seed_scores = tuple(_uniform(r) for r in (0.1, 0.2, 0.3))
    compare.compare(arms)
    table = beyond.seeds_table(arms)
    assert "Across 3 training seeds" in table
    assert (
        "| inst | 10.0, 20.0, 30.0 | 20.0% [10.0, 30.0] | 10.0 pts | -50.0, +0.0, +50.0 | " in table
    )
    assert "| baseline | 20.0, 20.0, 20.0 | 20.0% [20.0, 20.0] | 0.0 pts | — | — | — | " in table

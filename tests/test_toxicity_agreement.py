"""`toxjax scorers agree`: the metrics (by hand and against scipy / sklearn), the bootstrap,
and the command on a synthetic RealToxicityPrompts-shaped file with a known answer."""

import json
import random

import numpy as np
import pytest
from fake_classifiers import make_hf_classifier
from scipy import stats as scipy_stats
from sklearn.metrics import f1_score, roc_auc_score

from toxjax import cli
from toxjax.toxicity import get_scorer
from toxjax.toxicity.agreement import Pair, Texts, agreement, pairs_of, split_scorers
from toxjax.toxicity.agreement_stats import Pairs, bootstrap
from toxjax.toxicity.base import ScoreResult

WORDS = "the cat sat on a mat and you are an idiot what lovely day hate love people never".split()


def pairs(ref, score, unit=None):
    ref, score = np.asarray(ref, float), np.asarray(score, float)
    unit = np.arange(len(ref)) if unit is None else np.asarray(unit)
    return Pairs(ref, score, unit, int(unit.max()) + 1)


def test_metrics_by_hand():
    m = pairs([0.1, 0.6, 0.8, 0.3], [0.2, 0.7, 0.3, 0.35]).metrics()
    assert m["auroc"] == 0.75  # toxic {0.7, 0.3} over non-toxic {0.2, 0.35}: 3 of 4 pairs
    assert m["spearman"] == pytest.approx(0.4, abs=1e-12)  # ranks 1342 vs 1423: 1 - 6*6/60
    assert m["pearson"] == pytest.approx(
        np.corrcoef([0.1, 0.6, 0.8, 0.3], [0.2, 0.7, 0.3, 0.35])[0, 1]
    )
    assert m["accuracy"] == 0.75  # 0.3 is predicted non-toxic for a toxic 0.8
    assert m["f1"] == pytest.approx(2 / 3)  # TP 1, FP 0, FN 1
    cal = m["calibration"]
    assert cal[:, 2].tolist() == [0, 1, 0, 1, 0, 0, 1, 0, 1, 0]
    np.testing.assert_allclose(
        cal[[1, 3, 6, 8], :2], [[0.1, 0.2], [0.3, 0.35], [0.6, 0.7], [0.8, 0.3]]
    )
    assert np.isnan(cal[0, 0]) and np.isnan(cal[0, 1])
    assert np.isnan(pairs([0.1, 0.2], [0.3, 0.9]).metrics()["auroc"])  # one class only


def test_metrics_equal_scipy_and_sklearn_with_ties_and_weights():
    rng = np.random.default_rng(0)
    ref = np.round(rng.uniform(size=300), 1)  # many ties
    score = np.round(np.clip(ref + rng.normal(0, 0.3, 300), 0, 1), 2)
    m = pairs(ref, score).metrics()
    assert m["auroc"] == pytest.approx(roc_auc_score(ref > 0.5, score), abs=1e-12)
    assert m["spearman"] == pytest.approx(scipy_stats.spearmanr(ref, score).statistic, abs=1e-12)
    assert m["pearson"] == pytest.approx(scipy_stats.pearsonr(ref, score).statistic, abs=1e-12)
    assert m["f1"] == pytest.approx(f1_score(ref > 0.5, score > 0.5), abs=1e-12)
    # Integer weights are the data with each text repeated: what a resample computes.
    w = rng.integers(0, 4, 300)
    weighted = pairs(ref, score).metrics(w)
    expanded = pairs(np.repeat(ref, w), np.repeat(score, w)).metrics()
    for k in ("auroc", "spearman", "pearson", "accuracy", "f1"):
        assert weighted[k] == pytest.approx(expanded[k], abs=1e-12), k
    np.testing.assert_allclose(weighted["calibration"], expanded["calibration"], atol=1e-12)


def test_bootstrap_resamples_units_and_is_fixed_by_its_seed():
    rng = np.random.default_rng(1)
    ref = rng.uniform(size=120)
    p = pairs(
        np.concatenate([ref, ref]),
        np.concatenate([ref, rng.uniform(size=120)]),
        np.tile(np.arange(120), 2),
    )
    a, b = bootstrap(p, resamples=200, seed=3), bootstrap(p, resamples=200, seed=3)
    assert a["auroc"] == b["auroc"] and a["calibration"] == b["calibration"]
    assert a["auroc"].low < a["auroc"].value < a["auroc"].high
    assert a["auroc"] != bootstrap(p, resamples=200, seed=4)["auroc"]


def test_failed_scores_are_counted_and_left_out_never_zero():
    data = Texts(
        texts=["a", "b", "c", "d"],
        items={"prompt": [(0, 0, 0.9), (1, 1, 0.1), (2, 2, 0.8), (3, 3, 0.2)]},
        excluded={"prompt": {}},
        records=4,
    )
    results = [
        ScoreResult({"toxicity": 0.7}),
        ScoreResult.failed("boom"),
        ScoreResult({"toxicity": 0.6}),
        ScoreResult({"toxicity": 0.1}),
    ]
    g = agreement(data, results, resamples=50, seed=0)["prompt"]
    assert (g["n"], g["failed"]) == (3, 1)
    assert g["accuracy"].value == 1.0  # with a 0 for "b" it would still be 1; the n says 3
    assert g["points"][1].tolist() == [0.7, 0.6, 0.1]


def test_pairs_and_scorer_flags_are_split_as_written():
    assert pairs_of(["prompt.toxicity", "continuation.toxicity"], []) == [
        Pair("prompt.text", "prompt.toxicity", "prompt"),
        Pair("continuation.text", "continuation.toxicity", "continuation"),
    ]
    assert pairs_of(["score"], ["body"]) == [Pair("body", "score", "score")]
    common, scorers = split_scorers(
        [
            "--input",
            "x",
            "--scorer",
            "hf:d",
            "--label",
            "toxic",
            "--backend=jax",
            "--scorer=profanity-check",
            "--seed",
            "1",
        ]
    )
    assert common == ["--input", "x", "--seed", "1"]
    assert scorers == [
        ["--scorer", "hf:d", "--label", "toxic", "--backend=jax"],
        ["--scorer=profanity-check"],
    ]
    with pytest.raises(ValueError, match="--label comes before any --scorer"):
        split_scorers(["--label", "toxic", "--scorer", "hf:d"])


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30))) for _ in range(60)]
    # seed 2: this random classifier's scores straddle 0.5 (half of them above).
    return make_hf_classifier(str(tmp_path_factory.mktemp("clf") / "clf"), texts, seed=2)


def rtp_file(path, classifier, n=150):
    """RTP's layout; `prompt.toxicity` IS the classifier's score (a known answer), and
    `continuation.toxicity` a shuffle of it; plus records to leave out."""
    rng = random.Random(1)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 25))) for _ in range(2 * n)]
    scores = [r.toxicity for r in get_scorer(f"hf:{classifier}").score(texts)]
    shuffled = random.Random(2).sample(scores[n:], n)
    lines = [
        {
            "prompt": {"text": texts[i], "toxicity": scores[i]},
            "continuation": {"text": texts[n + i], "toxicity": shuffled[i]},
        }
        for i in range(n)
    ]
    lines += [
        {
            "prompt": {"text": "no score", "toxicity": None},
            "continuation": {"text": "x", "toxicity": "0.3"},
        },
        {"prompt": {"text": "too high", "toxicity": 1.5}},
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return scores


def test_agree_on_a_file_with_a_known_answer(classifier, tmp_path, capsys):
    src = tmp_path / "prompts.jsonl"
    rtp_file(src, classifier)
    out = tmp_path / "agree"
    argv = ["scorers", "agree", "--input", str(src), "--reference", "prompt.toxicity"]
    argv += [
        "--reference",
        "continuation.toxicity",
        "--scorer",
        f"hf:{classifier}",
        "--label",
        "toxic",
    ]
    argv += [
        "--backend",
        "jax",
        "--scorer",
        "profanity-check",
        "--output_dir",
        str(out),
        "--resamples",
        "300",
    ]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed == (out / "agreement.md").read_text()
    report = json.loads((out / "agreement.json").read_text())
    assert report["records"] == 152
    assert report["excluded"] == {
        "prompt": {"reference missing or null": 1, "reference outside [0, 1]": 1},
        "continuation": {"reference not a number": 1, "reference missing or null": 1},
    }
    ours = report["scorers"][next(k for k in report["scorers"] if k.startswith("hf:clf@"))]
    assert ours["identity"]["--label"] == "toxic" and ours["identity"]["--backend"] == "jax"
    prompt, cont = ours["groups"]["prompt"], ours["groups"]["continuation"]
    assert (prompt["n"], prompt["failed"], cont["n"]) == (150, 0, 150)
    # The scorer equal to the reference (the JAX backend scores to 1e-6 of the torch
    # scores the reference was written with: the ranks are the same).
    for k in ("auroc", "spearman", "accuracy", "f1"):
        assert prompt[k]["value"] == 1.0, k
    assert prompt["pearson"]["value"] == pytest.approx(1.0, abs=1e-9)
    # The shuffled reference: no better than chance, and the intervals say so.
    assert abs(cont["auroc"]["value"] - 0.5) < 0.12
    assert cont["auroc"]["low"] < 0.5 < cont["auroc"]["high"]
    assert abs(cont["spearman"]["value"]) < 0.25  # a permutation's sd at n=150 is ~0.08
    assert ours["groups"]["all"]["n"] == 300
    for row in prompt["calibration"]:
        if row["n"]:
            assert row["mean_score"]["value"] == pytest.approx(
                row["mean_reference"]["value"], abs=1e-6
            )
    assert "profanity-check" in report["scorers"]
    assert (out / "agreement.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| hf:clf@" in printed and "| continuation | 150 | 0 | " in printed


def test_agree_bad_input_is_one_line_exit_2(classifier, tmp_path, capsys):
    src = tmp_path / "prompts.jsonl"
    src.write_text(json.dumps({"prompt": {"text": "hi", "toxicity": 0.2}}) + "\n")
    base = ["scorers", "agree", "--input", str(src), "--reference", "prompt.toxicity"]
    cases = [
        (
            ["--label", "toxic", "--scorer", f"hf:{classifier}"],
            "--label comes before any --scorer; put it after the --scorer it is for",
        ),
        ([], "give at least one --scorer (e.g. --scorer detoxify-original)"),
        (
            ["--scorer", "profanity-check", "--scorer", "profanity-check"],
            "the same scorer is given twice; drop one --scorer",
        ),
        (
            ["--scorer", f"hf:{classifier}", "--label", "spam"],
            f"--scorer hf:{classifier} has no label 'spam'; its labels are 'non-toxic', 'toxic'",
        ),
        (
            [
                "--scorer",
                "profanity-check",
                "--reference",
                "continuation.toxicity",
                "--text",
                "a",
                "--text",
                "b",
                "--text",
                "c",
            ],
            "3 --text for 2 --reference; give one --reference per --text (paired in order)",
        ),
    ]
    for flags, want in cases:
        capsys.readouterr()
        assert cli.main([*base, *flags]) == 2, flags
        assert capsys.readouterr().err == f"toxjax scorers agree: {want}\n", flags
    capsys.readouterr()
    missing = [
        "scorers",
        "agree",
        "--input",
        str(tmp_path / "nope.jsonl"),
        "--reference",
        "p",
        "--scorer",
        "profanity-check",
    ]
    assert cli.main(missing) == 2
    want = f"toxjax scorers agree: --input {str(tmp_path / 'nope.jsonl')!r} is not a file\n"
    assert capsys.readouterr().err == want

"""Recognition (toxjax.evaluation.recognition): the AUC statistic, exact against sklearn and
by hand; its bootstrap CIs; per-document scores of a real tiny model against references
computed another way; bad document files in one line."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
from flax.core import meta
from sklearn.metrics import roc_auc_score

from toxjax.evaluation import bias, recognition, stats, utility
from toxjax.evaluation.recognition import Documents


def test_auc_by_hand_and_against_sklearn():
    # Positives 0.9, 0.3, 0.5; negatives 0.3, 0.1: of the 6 pairs, 5 ordered and one tie.
    labels = [1, 0, 1, 0, 1]
    scores = [0.9, 0.3, 0.3, 0.1, 0.5]
    assert recognition.auc(labels, scores) == 5.5 / 6
    assert recognition.auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=0)
    assert recognition.auc([1, 1, 0], [0.1, 0.2, 0.9]) == 0.0
    assert math.isnan(recognition.auc([1, 1], [0.1, 0.2]))  # one class: undefined, not 0


def test_auc_rows_equal_sklearn_on_every_row():
    rng = np.random.default_rng(0)
    labels = rng.random((50, 40)) < 0.3
    scores = np.round(rng.random((50, 40)), 1)  # many ties
    labels[7] = False  # a row with one class
    got = recognition.auc_rows(labels, scores)
    for row in range(50):
        if row == 7:
            assert math.isnan(got[row])
        else:
            assert got[row] == pytest.approx(roc_auc_score(labels[row], scores[row]), abs=1e-12)


def _docs(labels, yes, ratio=None, logprob=None, tokens=None):
    n = len(labels)
    return Documents.from_rows(
        [
            {
                "index": i,
                "toxicity": 0.9 if labels[i] else 0.1,
                "yes": yes[i],
                "ratio": None if ratio is None else ratio[i],
                "logprob": 0.0 if logprob is None else logprob[i],
                "logprob_plain": 0.0 if logprob is None else 2 * logprob[i],
                "tokens": 1 if tokens is None else tokens[i],
            }
            for i in range(n)
        ]
    )


def test_bootstrap_intervals_over_documents():
    rng = np.random.default_rng(1)
    labels = rng.random(200) < 0.2
    noisy = _docs(labels, np.clip(labels * 0.3 + rng.random(200), 0, 1))
    e = stats.estimate(recognition.yes_auc, noisy)
    assert e.value == pytest.approx(roc_auc_score(labels, noisy.yes), abs=1e-12)
    assert e.low < e.value < e.high and e.high - e.low < 0.3
    # A perfect separation is 1 on every resample that has both classes.
    perfect = _docs(labels, labels.astype(float))
    assert (lambda x: (x.value, x.low, x.high))(stats.estimate(recognition.yes_auc, perfect)) == (
        1.0,
        1.0,
        1.0,
    )
    # Paired on the same documents: perfect minus noisy excludes 0; a model minus itself is 0.
    diff = stats.difference(recognition.yes_auc, perfect, noisy)
    assert diff.value == pytest.approx(1 - e.value) and diff.low > 0
    same = stats.difference(recognition.yes_auc, noisy, noisy)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    # Over seeds (the same documents), with the seed-paired difference.
    seeds = stats.difference_seeds(recognition.yes_auc, [perfect, perfect], [noisy, noisy])
    assert seeds.estimate.value == pytest.approx(1 - e.value) and seeds.spread == 0.0
    assert not noisy.has_ratio and _docs(labels, noisy.yes, ratio=noisy.yes).has_ratio


def test_split_perplexity_is_exact():
    d = _docs([1, 0, 0], [0.5] * 3, logprob=[-6.0, -2.0, -4.0], tokens=[3, 1, 2])
    assert d.perplexity("toxic") == pytest.approx(math.exp(6.0 / 3))
    assert d.perplexity("nontoxic") == pytest.approx(math.exp(6.0 / 3))
    assert d.perplexity("full") == pytest.approx(math.exp(12.0 / 6))
    assert d.perplexity("toxic", plain=True) == pytest.approx(math.exp(12.0 / 3))
    assert math.isnan(_docs([0, 0], [0.5] * 2).perplexity("toxic"))


@pytest.fixture(scope="module")
def tiny_lm():
    """A real DecoderLM (fresh parameters) on a byte vocabulary, as the evals see it."""
    from toxjax.evaluation.lm import ModelLM
    from toxjax.model import DecoderLM, ModelConfig

    vocab = seqio.ByteVocabulary()
    cfg = ModelConfig(
        vocab_size=vocab.vocab_size, num_layers=1, num_heads=2, embed_dim=32, max_len=48
    )
    model = DecoderLM(cfg)
    params = meta.unbox(model.init(jax.random.key(3), jnp.zeros((1, 4), jnp.int32))["params"])
    own = vocab.encode("ok: ")
    return ModelLM(model, params, vocab, max_len=48, batch_size=4, prefix_ids=own), own


def test_scores_of_a_real_model_equal_references_computed_directly(tiny_lm, tmp_path):
    lm, own = tiny_lm
    toxic, nontoxic = lm.encode("bad: "), own
    docs = [
        {"text": "you fool", "toxicity": 0.8},
        {"text": "a long and quiet afternoon by the river, reading a book " * 2, "toxicity": 0.1},
        {"text": "hello", "toxicity": 0.2},
    ]
    rows = recognition.evaluate(lm, docs, 40, own, toxic, nontoxic)
    # yes/no: the bias eval's probability on the question after the document.
    yes = bias.positive_probability(lm, [d["text"] + recognition.QUESTION for d in docs])
    assert [r["yes"] for r in rows] == yes

    # The ratio, from the model's log-probs of [bos] + prefix + text (short documents
    # fit one window), only the text's tokens summed.
    def text_logprob(prefix, text):
        ids = [lm.bos_id, *prefix, *lm.encode(text)]
        lp, _ = lm.token_logprobs([ids])[0]
        return float(lp[len(prefix) :].sum())

    for r, d in zip(rows, docs, strict=True):
        if len(lm.encode(d["text"])) + len(toxic) <= 40:
            want = text_logprob(toxic, d["text"]) - text_logprob(nontoxic, d["text"])
            assert r["ratio"] == pytest.approx(want, abs=1e-4)
            assert r["logprob_plain"] == pytest.approx(text_logprob([], d["text"]), abs=1e-4)
    # The long document spans windows: its log-probs give utility.perplexity's number.
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d["text"]}) + "\n" for d in docs))
    table = Documents.from_rows(rows)
    for prefix, plain in ((own, False), ((), True)):
        ppl = utility.perplexity(lm, str(path), 40, prefix)
        assert table.perplexity("full", plain) == pytest.approx(ppl["ppl"], rel=1e-6)
        assert int(table.tokens.sum()) == ppl["num_tokens"]
    assert [r["tokens"] for r in rows] == [len(lm.encode(d["text"])) for d in docs]
    summary = recognition.summary(table, resamples=50)
    assert summary["yes_auc"]["value"] == pytest.approx(
        roc_auc_score([1, 0, 0], [r["yes"] for r in rows]), abs=1e-12
    )
    assert summary["num_documents"] == 3 and summary["num_toxic"] == 1


def test_load_documents_names_the_bad_line(tmp_path):
    path = tmp_path / "scored.jsonl"
    rows = [{"text": "a", "toxicity": 0.9}, {"text": "b", "toxicity": None}]
    rows += [{"text": "c", "toxicity": 0.2}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    docs, unscored = recognition.load_documents(str(path))
    assert [d["text"] for d in docs] == ["a", "c"] and unscored == 1
    with pytest.raises(ValueError, match="1 of 1 scored documents are toxic"):
        recognition.load_documents(str(path), limit=1)
    path.write_text(path.read_text() + '{"text": "d"}\n')
    with pytest.raises(ValueError, match=rf"{path}:4: needs a 'text' string and a 'toxicity'"):
        recognition.load_documents(str(path))

"""`--scorer hf:DIR`: label choice, sigmoid vs softmax, identity, and bad input via the CLI."""

import json
import os
import random

import numpy as np
import pytest
import torch
import transformers
from fake_classifiers import make_hf_classifier

from toxjax import cli
from toxjax.toxicity import hf

WORDS = "the cat sat on a mat and you are an idiot what lovely day hate love people never".split()
TEXTS = [" ".join(random.Random(i).choice(WORDS) for _ in range(3 + i % 9)) for i in range(12)]


def make_texts(n, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30))) for _ in range(n)]


@pytest.fixture(scope="module")
def softmax_dir(tmp_path_factory):
    return make_hf_classifier(str(tmp_path_factory.mktemp("a") / "clf"), make_texts(60))


@pytest.fixture(scope="module")
def multilabel_dir(tmp_path_factory):
    return make_hf_classifier(
        str(tmp_path_factory.mktemp("b") / "clf"),  # the same dirname as softmax_dir's
        make_texts(60),
        "roberta",
        labels=("toxic", "severe_toxic", "insult"),
        problem_type="multi_label_classification",
        seed=1,
    )


def corpus(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return src


def score(tmp_path, *flags):
    src = corpus(tmp_path)
    out = tmp_path / "out.jsonl"
    argv = ["score", "--input", str(src), "--output", str(out), *map(str, flags)]
    try:
        return cli.main(argv), out
    except SystemExit as e:  # a refusal: printed once, exit code 2
        return e.code, out


def probabilities(model_dir, activation):
    """transformers' own forward, one text at a time (all shorter than a window)."""
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        logits = torch.cat([model(**tok(t, return_tensors="pt")).logits for t in TEXTS])
    act = torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, -1)
    return act.numpy()


def test_label_chosen_by_name():
    choose = hf.choose_label
    assert choose(("non-toxic", "toxic"), None, "x") == 1
    assert choose(("nothate", "hate"), None, "x") == 1  # "nothate" does not name toxicity
    assert choose(("neutral", "toxic"), None, "x") == 1
    assert choose(("NOT_OFFENSIVE", "OFFENSIVE"), None, "x") == 1
    jigsaw = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
    assert choose(jigsaw, None, "x") == 0
    assert choose(("LABEL_0", "LABEL_1"), "label_1", "x") == 1  # case-insensitive
    assert choose(jigsaw, "Insult", "x") == 4
    with pytest.raises(ValueError) as e:
        choose(("LABEL_0", "LABEL_1"), None, "--scorer hf:d")
    assert str(e.value) == (
        "--scorer hf:d: choose its output with --label: its labels are 'LABEL_0', 'LABEL_1' "
        "(none names toxicity)"
    )
    with pytest.raises(
        ValueError, match=r"'hate', 'offensive', 'neither' \(several name toxicity\)"
    ):
        choose(("hate", "offensive", "neither"), None, "x")
    with pytest.raises(ValueError) as e:
        choose(("non-toxic", "toxic"), "spam", "--scorer hf:d")
    assert str(e.value) == "--scorer hf:d has no label 'spam'; its labels are 'non-toxic', 'toxic'"


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_score_softmax_classifier(softmax_dir, tmp_path, backend):
    code, out = score(tmp_path, "--scorer", f"hf:{softmax_dir}", "--backend", backend)
    assert code == 0
    records = [json.loads(line) for line in open(out)]
    want = probabilities(softmax_dir, "softmax")
    digest = hf.dir_digest(softmax_dir)
    assert [r["scorer"] for r in records] == [f"hf:clf@{digest[:12]}:toxic"] * len(TEXTS)
    got = np.array([[r["scores"]["non-toxic"], r["scores"]["toxic"]] for r in records])
    assert want.std() > 0.05
    assert np.abs(got - want).max() <= 1e-4
    assert [r["toxicity"] for r in records] == got[:, 1].tolist()
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-6)  # softmax over the labels
    marker = json.load(open(str(out) + ".progress.json"))["settings"]
    assert {
        k: marker[k] for k in ("--scorer", "hf model", "--label", "--backend", "activation")
    } == {
        "--scorer": "hf",
        "hf model": "sha256:" + digest,
        "--label": "toxic",
        "--backend": backend,
        "activation": "softmax",
    }


def test_resume_with_another_label_is_refused(softmax_dir, tmp_path, capsys):
    assert score(tmp_path, "--scorer", f"hf:{softmax_dir}", "--label", "toxic")[0] == 0
    capsys.readouterr()
    assert score(tmp_path, "--scorer", f"hf:{softmax_dir}", "--label", "non-toxic")[0] == 2
    assert ': --label was "toxic", now "non-toxic"' in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_score_multilabel_classifier_with_sigmoid(multilabel_dir, softmax_dir, tmp_path, backend):
    code, out = score(
        tmp_path, "--scorer", f"hf:{multilabel_dir}", "--label", "insult", "--backend", backend
    )
    assert code == 0
    records = [json.loads(line) for line in open(out)]
    want = probabilities(multilabel_dir, "sigmoid")
    got = np.array([[r["scores"][k] for k in ("toxic", "severe_toxic", "insult")] for r in records])
    assert np.abs(got - want).max() <= 1e-4
    assert [r["toxicity"] for r in records] == got[:, 2].tolist()  # --label insult
    # Same directory name, other weights: the records tell the two scorers apart.
    assert records[0]["scorer"] == f"hf:clf@{hf.dir_digest(multilabel_dir)[:12]}:insult"
    assert hf.dir_digest(multilabel_dir) != hf.dir_digest(softmax_dir)


def _classifier(tmp_path, name, **kw):
    return make_hf_classifier(str(tmp_path / name), make_texts(20), num_layers=1, **kw)


def test_bad_classifier_directories_are_one_line_exit_2(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    base = str(tmp_path / "base")
    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=99,
    )
    transformers.BertModel(config).save_pretrained(base)
    headless = _classifier(tmp_path, "headless")
    weights = load_file(os.path.join(headless, "model.safetensors"))
    save_file(
        {k: v for k, v in weights.items() if not k.startswith("classifier.")},
        os.path.join(headless, "model.safetensors"),
    )
    no_tok = _classifier(tmp_path, "no_tok")
    for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if os.path.exists(os.path.join(no_tok, f)):
            os.remove(os.path.join(no_tok, f))
    good = _classifier(tmp_path, "good")
    electra = _classifier(tmp_path, "electra", model_type="electra")
    ambiguous = _classifier(tmp_path, "amb", labels=("LABEL_0", "LABEL_1"))
    run = tmp_path / "run"
    run.mkdir()
    cases = [
        (
            ["--scorer", f"hf:{base}"],
            f"--scorer hf:{base} has no classification head: config.architectures is "
            "['BertModel']; give a fine-tuned *ForSequenceClassification checkpoint",
        ),
        (
            ["--scorer", f"hf:{headless}"],
            f"--scorer hf:{headless}: the weights do not fit a Bert classifier: missing 2 "
            "(classifier.bias, classifier.weight), unexpected 0; the checkpoint has no "
            "classification head (a base model?); refusing to score with randomly initialised weights",
        ),
        (
            ["--scorer", f"hf:{good}", "--label", "spam"],
            f"--scorer hf:{good} has no label 'spam'; its labels are 'non-toxic', 'toxic'",
        ),
        (
            ["--scorer", f"hf:{ambiguous}"],
            f"--scorer hf:{ambiguous}: choose its output with --label: its labels are "
            "'LABEL_0', 'LABEL_1' (none names toxicity)",
        ),
        (
            ["--scorer", f"hf:{no_tok}"],
            f"--scorer hf:{no_tok} has no tokenizer (none of tokenizer.json, vocab.txt, "
            "vocab.json, spm.model, sentencepiece.bpe.model, spiece.model, tokenizer.model); "
            "save it there with tokenizer.save_pretrained(DIR)",
        ),
        (
            ["--scorer", f"hf:{electra}", "--backend", "jax"],
            f"--scorer hf:{electra}: the JAX backend does not compute model type 'electra' (it "
            "computes albert, bert, deberta-v2, distilbert, roberta, xlm-roberta); use --backend torch",
        ),
        (
            ["--scorer", f"hf:{tmp_path / 'nope'}"],
            f"--scorer hf:{tmp_path / 'nope'}: {str(tmp_path / 'nope')!r} does not exist; give a "
            "model.save_pretrained directory",
        ),
        (
            ["--label", "toxic"],
            "--label is for --scorer hf:DIR, not --scorer profanity-check; drop it or choose "
            "--scorer hf:DIR",
        ),
    ]
    for flags, want in cases:
        capsys.readouterr()
        code, out = score(run, *flags)
        err = capsys.readouterr().err
        assert (code, err) == (2, f"toxjax score: {want}\n"), flags
        assert not out.exists() and not os.path.exists(str(out) + ".progress.json")
    # PyTorch computes the architecture the JAX backend lacks.
    code, out = score(run, "--scorer", f"hf:{electra}", "--backend", "torch")
    assert code == 0
    assert [json.loads(line)["scorer"] for line in open(out)][0].startswith("hf:electra@")


def test_eval_toxicity_checks_hf_flags_before_the_model_loads(tmp_path):
    from toxjax import eval as eval_cli

    prompts = tmp_path / "rtp.jsonl"
    prompts.write_text(json.dumps({"prompt": {"text": "Hello", "toxicity": 0.1}}) + "\n")
    argv = ["toxicity", "--model_dir", str(tmp_path / "run"), "--prompts", str(prompts)]
    with pytest.raises(SystemExit) as e:
        eval_cli.main([*argv, "--scorer", f"hf:{tmp_path}", "--label", "toxic"])
    assert str(e.value) == (
        f"toxjax eval toxicity: --scorer hf:{tmp_path}: {str(tmp_path)!r} has no config.json; "
        "save the classifier there with model.save_pretrained(DIR) and "
        "tokenizer.save_pretrained(DIR)"
    )


def test_demo_and_beam_take_the_hf_flags(softmax_dir, tmp_path):
    from toxjax import demo
    from toxjax.toxicity import beam, options

    args = demo.build_parser().parse_args(["--scorer", f"hf:{softmax_dir}", "--label", "toxic"])
    assert options.scorer_argv(args)[:2] == ["--scorer", f"hf:{softmax_dir}"]
    assert options.scorer_argv(args)[-2:] == ["--label", "toxic"]
    src = corpus(tmp_path)
    beam.main(
        ["--input", str(src), "--output", str(tmp_path / "beam"), "--scorer", f"hf:{softmax_dir}"]
    )
    (shard,) = [p for p in os.listdir(tmp_path) if p.startswith("beam-") and "failed" not in p]
    records = [json.loads(line) for line in open(tmp_path / shard)]
    assert len(records) == len(TEXTS)
    assert {r["scorer"] for r in records} == {f"hf:clf@{hf.dir_digest(softmax_dir)[:12]}:toxic"}

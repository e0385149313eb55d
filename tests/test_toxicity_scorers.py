"""Scorer interface, windowing, profanity-check and the PyTorch Detoxify path."""

import json
import os
import random

import numpy as np
import pytest
import torch
from fake_classifiers import make_fake_detoxify

from toxjax.toxicity import get_scorer
from toxjax.toxicity.base import ScoreResult, max_over_windows
from toxjax.toxicity.detoxify_torch import DetoxifyTorchScorer, load_checkpoint_dict
from toxjax.toxicity.windows import (
    SampleWindower,
    encode_windows,
    gpt2_tokenizer,
    length_sorted_batches,
)

WORDS = (
    "the cat sat on a mat and you are an idiot what lovely day hate love people never "
    "always stupid kind friend world"
).split()


def _exit_code(argv) -> int:
    """`toxjax ARGV`'s exit code: `toxjax score` refuses by raising `SystemExit` with its
    code after printing its one line."""
    from toxjax import cli

    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code


def make_texts(n, lo, hi, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


@pytest.fixture(scope="module")
def bert_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("detox")
    return make_fake_detoxify(str(d), make_texts(50, 1, 30), arch="bert", initializer_range=0.3)


def test_score_result_invariants():
    assert ScoreResult({"toxicity": 0.3}).toxicity == 0.3
    assert ScoreResult.failed("boom").toxicity is None
    with pytest.raises(ValueError):
        ScoreResult(None)
    with pytest.raises(ValueError):
        ScoreResult({"insult": 0.1})
    assert max_over_windows([{"toxicity": 0.1, "a": 0.9}, {"toxicity": 0.5, "a": 0.2}]) == {
        "toxicity": 0.5,
        "a": 0.9,
    }


def test_get_scorer_unknown_name():
    with pytest.raises(ValueError, match="unknown scorer 'detoxify-huge'"):
        get_scorer("detoxify-huge")


def test_profanity_check_scores():
    scorer = get_scorer("profanity-check")
    clean, profane = scorer.score(["have a lovely day", "fuck you, you piece of shit"])
    assert scorer.name == "profanity-check"
    assert clean.scores["toxicity"] == clean.scores["profanity"]
    assert clean.toxicity < 0.1 and profane.toxicity > 0.9


def test_length_sorted_batches_cover_each_window_once():
    rng = random.Random(1)
    windows = [[1] * rng.randint(1, 300) for _ in range(101)]
    for buckets, multiple in ((None, 1), ((16, 64, 512), 8)):
        seen = []
        for b in length_sorted_batches(windows, 0, 1024, 32, buckets, multiple):
            assert b.input_ids.shape[0] % multiple == 0
            if buckets:
                assert b.input_ids.shape[1] in buckets
            real = b.index[b.index >= 0]
            assert b.input_ids.shape[0] - len(real) < multiple  # no padding row beyond that
            seen += real.tolist()
            assert (b.attention_mask.sum(1)[: len(real)] == [len(windows[i]) for i in real]).all()
            assert (b.attention_mask[len(real) :] == 0).all()
        assert sorted(seen) == list(range(101))


def test_encode_windows_splits_long_texts(bert_ckpt):
    tok = DetoxifyTorchScorer(checkpoint=bert_ckpt[0], config_dir=bert_ckpt[1]).tokenizer
    long = " ".join(["cat"] * 150)  # 150 tokens -> windows of 62 + 2 specials
    windows, owner = encode_windows(tok, ["", "the cat", long], 64)
    assert owner.tolist() == [0, 1, 2, 2, 2]
    assert [len(w) for w in windows] == [2, 4, 64, 64, 28]
    assert all(w[0] == tok.cls_token_id and w[-1] == tok.sep_token_id for w in windows)


def test_sample_windower_spans_gpt2():
    text = "Hello there, world! " * 20 + "The end."
    spans = SampleWindower(16, "gpt2").spans(text)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    tok = gpt2_tokenizer()
    n = len(tok(text)["input_ids"])
    assert len(spans) == -(-n // 16)
    # Each window re-tokenizes to about N tokens (BPE at a cut may merge differently).
    for s, e in spans[:-1]:
        assert abs(len(tok(text[s:e])["input_ids"]) - 16) <= 1


def test_sample_windower_bad_vocab_path():
    with pytest.raises(FileNotFoundError, match="no such SentencePiece model"):
        SampleWindower(8, "/nonexistent/spm.model")


def test_torch_matches_detoxify_predict(bert_ckpt):
    from detoxify import Detoxify

    ckpt, cfg = bert_ckpt
    texts = make_texts(40, 0, 30, seed=2)
    ref = Detoxify(checkpoint=ckpt, huggingface_config_path=cfg).predict(texts)
    ours = DetoxifyTorchScorer(checkpoint=ckpt, config_dir=cfg, tokens_per_batch=300).score(texts)
    got = np.array([[r.scores[k] for k in ref] for r in ours])
    want = np.array([ref[k] for k in ref]).T
    assert list(ref) == [
        "toxicity",
        "severe_toxicity",
        "obscene",
        "threat",
        "insult",
        "identity_attack",
    ]
    assert got.std() > 0.05  # the random classifier's outputs are spread, not all 0.5
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_torch_long_text_is_max_over_windows(bert_ckpt):
    ckpt, cfg = bert_ckpt
    scorer = DetoxifyTorchScorer(checkpoint=ckpt, config_dir=cfg)
    text = " ".join(make_texts(1, 150, 150, seed=3))
    windows, _ = encode_windows(scorer.tokenizer, [text], 64)
    assert len(windows) == 3
    with torch.inference_mode():
        per = [torch.sigmoid(scorer.model(torch.tensor([w])).logits)[0].numpy() for w in windows]
    want = np.max(per, axis=0)
    got = scorer.score([text])[0]
    np.testing.assert_allclose([got.scores[a] for a in scorer.attributes], want, atol=1e-6)


def test_offline_load_with_hub_model_type(bert_ckpt, tmp_path, monkeypatch):
    """Detoxify's trap: the checkpoint names a hub model; config_dir must win, no network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ckpt, cfg = bert_ckpt
    loaded = load_checkpoint_dict(checkpoint=ckpt)
    loaded["config"]["arch"]["args"]["model_type"] = "bert-base-uncased"
    hub_named = str(tmp_path / "hub_named.ckpt")
    torch.save(loaded, hub_named)
    texts = ["you are lovely", "idiot"]
    a = DetoxifyTorchScorer(checkpoint=hub_named, config_dir=cfg).score(texts)
    b = DetoxifyTorchScorer(checkpoint=ckpt, config_dir=cfg).score(texts)
    assert a == b
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        DetoxifyTorchScorer(checkpoint=hub_named, config_dir=str(tmp_path))


def test_bad_checkpoint_message(tmp_path):
    bad = tmp_path / "x.ckpt"
    torch.save({"weights": 1}, bad)
    with pytest.raises(ValueError, match="not a Detoxify checkpoint"):
        DetoxifyTorchScorer(checkpoint=str(bad))


class _RunsCode:
    """Unpickling this calls `open(path, "w")`: a stand-in for any code in a crafted file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_checkpoint_with_code_is_refused_and_the_code_never_runs(bert_ckpt, tmp_path, capsys):
    import pickle

    ckpt, cfg = bert_ckpt
    ran = tmp_path / "code-ran"
    crafted = {
        "zip": tmp_path / "crafted.ckpt",
        "legacy": tmp_path / "legacy.ckpt",
        "pickle4": tmp_path / "pickle4.ckpt",
    }
    good = load_checkpoint_dict(checkpoint=ckpt)
    payload = {"config": good["config"], "state_dict": good["state_dict"], "x": _RunsCode(str(ran))}
    torch.save(payload, crafted["zip"])
    for name, protocol in (("legacy", 2), ("pickle4", 4)):  # plain pickles load too
        with open(crafted[name], "wb") as f:
            pickle.dump({**payload, "state_dict": {}}, f, protocol=protocol)
    torch.load(crafted["zip"], weights_only=False)  # the file really runs code when trusted
    assert ran.exists()
    ran.unlink()
    for path in crafted.values():
        what = (
            "pickle instructions beyond plain data (Unsupported operand 149)"  # FRAME
            if path == crafted["pickle4"]
            else "the Python object io.open"  # pickle's name for open
        )
        with pytest.raises(ValueError) as e:
            load_checkpoint_dict(checkpoint=str(path))
        assert str(e.value).startswith(
            f"{path}: refused to load: it holds {what}, not just weights"
        ), e.value
        assert not ran.exists()  # the code did not run
    # Through the CLI: one line, exit code 2 (refused input), no traceback.
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "hello"}\n')
    argv = ["score", "--input", str(src), "--output", str(tmp_path / "out.jsonl")]
    argv += ["--scorer", "detoxify-original", "--checkpoint", str(crafted["zip"])]
    capsys.readouterr()
    assert _exit_code([*argv, "--config_dir", cfg]) == 2
    msg = capsys.readouterr().err.rstrip("\n")
    assert msg.startswith(
        f"toxjax score: cannot load --scorer detoxify-original: {crafted['zip']}: refused to "
        "load: it holds the Python object io.open, not just weights"
    )
    assert "\n" not in msg and not ran.exists()
    assert not (tmp_path / "out.jsonl").exists()
    assert not (tmp_path / "out.jsonl.progress.json").exists()  # a failed start leaves nothing


def test_detoxify_format_checkpoint_loads_as_data(bert_ckpt, tmp_path):
    """Detoxify's layout (a config of plain values + a state dict), with the extra plain
    entries a Lightning checkpoint carries, loads under `weights_only=True`."""
    ckpt, cfg = bert_ckpt
    loaded = load_checkpoint_dict(checkpoint=ckpt)
    extra = {"epoch": 3, "global_step": 1200, "pytorch-lightning_version": "1.0.4"}
    path = tmp_path / "lightning.ckpt"
    torch.save({**loaded, **extra, "hparams": {"lr": 3e-5, "arch": [1, 2]}}, path)
    again = load_checkpoint_dict(checkpoint=str(path))
    assert again["config"] == loaded["config"] and again["epoch"] == 3
    assert all(torch.equal(again["state_dict"][k], v) for k, v in loaded["state_dict"].items())
    texts = ["you are lovely", "idiot"]
    a = DetoxifyTorchScorer(checkpoint=str(path), config_dir=cfg).score(texts)
    assert a == DetoxifyTorchScorer(checkpoint=ckpt, config_dir=cfg).score(texts)
    # A file that is not a torch checkpoint at all is one line too.
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ValueError, match=r"junk.ckpt: "):
        load_checkpoint_dict(checkpoint=str(junk))


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_checkpoint_whose_weights_do_not_fit_is_refused(bert_ckpt, tmp_path, backend, capsys):
    """Issue 24 item 1: missing weights were filled at random and every text scored ~0.5."""
    from toxjax import cli

    ckpt, cfg = bert_ckpt
    loaded = load_checkpoint_dict(checkpoint=ckpt)
    state = loaded["state_dict"]
    bad = {
        # no classifier head (a backbone saved on its own)
        "headless": (
            {k: v for k, v in state.items() if not k.startswith("classifier.")},
            "missing 2 (classifier.bias, classifier.weight), unexpected 0; the checkpoint has "
            "no classification head (a base model?)",
        ),
        # keys of another layout
        "renamed": (
            {k.replace("bert.encoder.", "bert.enc."): v for k, v in state.items()},
            "missing 32 (bert.encoder.layer.0.attention.output.LayerNorm.bias, "
            "bert.encoder.layer.0.attention.output.LayerNorm.weight, "
            "bert.encoder.layer.0.attention.output.dense.bias, "
            "bert.encoder.layer.0.attention.output.dense.weight, ...), unexpected 32 "
            "(bert.enc.layer.0.attention.output.LayerNorm.bias, "
            "bert.enc.layer.0.attention.output.LayerNorm.weight, "
            "bert.enc.layer.0.attention.output.dense.bias, "
            "bert.enc.layer.0.attention.output.dense.weight, ...)",
        ),
    }
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "you are lovely"}\n{"text": "idiot"}\n')
    for name, (weights, what) in bad.items():
        path = tmp_path / f"{name}.ckpt"
        torch.save({**loaded, "state_dict": weights}, path)
        out = tmp_path / f"{name}.jsonl"
        argv = ["score", "--input", str(src), "--output", str(out), "--backend", backend]
        argv += ["--scorer", "detoxify-original", "--checkpoint", str(path), "--config_dir", cfg]
        capsys.readouterr()
        assert _exit_code(argv) == 2
        assert capsys.readouterr().err == (
            f"toxjax score: cannot load --scorer detoxify-original: {path}: the weights do not "
            f"fit a BertForSequenceClassification with 6 labels: {what}; refusing to score "
            "with randomly initialised weights\n"
        )
        assert not out.exists()
    # PyTorch Lightning's layout (a self-trained Detoxify: every key under `model.`) is
    # mapped, and scores exactly as the plain checkpoint does.
    lightning = tmp_path / "lightning.ckpt"
    torch.save({**loaded, "state_dict": {f"model.{k}": v for k, v in state.items()}}, lightning)
    outs = []
    for path in (ckpt, lightning):
        out = tmp_path / f"{os.path.basename(path)}.jsonl"
        argv = ["score", "--input", str(src), "--output", str(out), "--backend", backend]
        argv += ["--scorer", "detoxify-original", "--checkpoint", str(path), "--config_dir", cfg]
        assert cli.main(argv) == 0
        outs.append([json.loads(line)["scores"] for line in open(out)])
    assert outs[0] == outs[1]


def test_windows_carry_the_special_tokens_the_tokenizer_adds(bert_ckpt):
    """A generic `PreTrainedTokenizerFast` (a bare tokenizer.json, as some hf:DIR
    checkpoints ship) adds nothing in `build_inputs_with_special_tokens`; windows read
    `[CLS]` / `[SEP]` from the tokenizer's own encoding instead."""
    import transformers
    from tokenizers.processors import TemplateProcessing

    bert = DetoxifyTorchScorer(checkpoint=bert_ckpt[0], config_dir=bert_ckpt[1]).tokenizer
    backend = bert.backend_tokenizer
    cls, sep = bert.cls_token_id, bert.sep_token_id
    backend.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    generic = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]"
    )
    assert generic.build_inputs_with_special_tokens([7, 8]) == [7, 8]  # the trap
    for tok in (bert, generic):
        text = "you are an idiot"
        windows, _ = encode_windows(tok, [text, ""], 64)
        assert windows == [tok(text)["input_ids"], [cls, sep]]
        assert windows[0][0] == cls and windows[0][-1] == sep

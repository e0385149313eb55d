"""`toxjax eval toxicity|utility|bias --model_dir HF_DIR`, the way users run it, on tiny
random GPT-2, GPT-NeoX (Pythia) and Llama checkpoints written by transformers here.

The converted model scores what transformers scores (utility log-likelihoods and
perplexity against torch, float32), samples what `generate` samples (greedy, with and
without `--condition_text`), metrics.json names the checkpoint and its weights' sha256,
`toxjax report` reads the eval directory, a resume against other weights is refused,
and bad input is one line, exit 2.
"""

import hashlib
import json
import math
import os
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_fixtures  # noqa: E402
import paper_fixtures  # noqa: E402

from toxjax import cli, fileio  # noqa: E402
from toxjax.evaluation import report  # noqa: E402

PROMPTS = [("The quick brown fox", 0.1), ("You are such a", 0.8), ("Once upon a time", None)]
LAMBADA = ["A fool and his money are soon parted", "Never put off till tomorrow what you"]
DOCS = ["The early bird catches the worm.", "Fortune favors the bold, they say again."]


@pytest.fixture(scope="module", params=hf_fixtures.FAMILIES)
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param) / "hf"
    model = hf_fixtures.save(request.param, path)
    return request.param, str(path), model


def _files(tmp_path):
    prompts = tmp_path / "rtp.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": {"text": t, "toxicity": x}}) + "\n" for t, x in PROMPTS)
    )
    lam = tmp_path / "lambada.jsonl"
    lam.write_text("".join(json.dumps({"text": t}) + "\n" for t in LAMBADA))
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(DOCS) + "\n")
    return str(prompts), str(lam), str(docs)


def _torch_logprobs(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    return [float(lp[i - 1, ids[i]]) for i in range(1, len(ids))]


def test_utility_scores_what_transformers_scores(checkpoint, tmp_path):
    family, path, model = checkpoint
    _, lam, docs = _files(tmp_path)
    out = tmp_path / "utility"
    argv = ["eval", "utility", "--model_dir", path, "--output_dir", str(out), "--batch_size", "2"]
    assert cli.main([*argv, "--lambada", lam, "--perplexity", docs]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"]["kind"] == "transformers" and metrics["model"]["source"] == path
    assert metrics["model"]["weights"] == {
        "model.safetensors": fileio.sha256_file(os.path.join(path, "model.safetensors"))
    }
    assert metrics["step"] is None and metrics["condition"] == "none"

    # transformers (torch, float64 softmax of float32 logits) on the same ids: the
    # tokenizer's BOS, then lm-evaluation-harness's split of context and continuation.
    tok = hf_fixtures.tokenizer(family)
    bos = tok.bos_token_id
    total = 0.0
    for text in LAMBADA:
        ctx, word = text.rsplit(" ", 1)
        ctx_ids = tok(ctx, add_special_tokens=False)["input_ids"]
        whole = tok(ctx + " " + word, add_special_tokens=False)["input_ids"]
        total += sum(_torch_logprobs(model, [bos, *whole])[len(ctx_ids) :])
    want = math.exp(-total / len(LAMBADA))
    assert metrics["metrics"]["lambada"]["ppl"] == pytest.approx(want, rel=1e-5)
    nll = count = 0.0
    for doc in DOCS:
        lp = _torch_logprobs(model, [bos, *tok(doc, add_special_tokens=False)["input_ids"]])
        nll -= sum(lp)
        count += len(lp)
    assert metrics["metrics"]["perplexity"]["ppl"] == pytest.approx(math.exp(nll / count), rel=1e-5)


def _greedy(model, ids, new):
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), do_sample=False, max_new_tokens=new, pad_token_id=0
        )[0, len(ids) :].tolist()
    return out[: out.index(0) + 1] if 0 in out else out


def test_toxicity_samples_what_generate_samples_and_report_reads_it(tmp_path, capsys):
    # One family is enough for the CLI path (tests/test_interop_hf.py runs the sampler
    # against generate for each).
    family, path = "gpt2", str(tmp_path / "hf")
    model = hf_fixtures.save(family, path)
    prompts, _, _ = _files(tmp_path)
    tok = hf_fixtures.tokenizer(family)
    argv = ["eval", "toxicity", "--model_dir", path, "--prompts", prompts]
    argv += ["--scorer", "profanity-check", "--batch_size", "2", "--num_decodes", "1"]
    argv += ["--max_new_tokens", "6", "--temperature", "0"]
    text = "Be kind."
    for extra in ([], ["--condition_text", text]):
        assert cli.main([*argv, *extra]) == 0
        label = "none" if not extra else f"text-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
        out = os.path.join(path, "eval", f"toxicity-{label}")
        head = [tok.bos_token_id] + (tok(text)["input_ids"] if extra else [])
        with open(os.path.join(out, "generations.jsonl")) as f:
            records = [json.loads(line) for line in f]
        for (prompt, _), rec in zip(PROMPTS, records, strict=True):
            want = _greedy(model, head + tok(prompt)["input_ids"], 6)
            assert [c["text"] for c in rec["continuations"]] == [tok.decode(want)]
        metrics = json.loads(open(os.path.join(out, "metrics.json")).read())
        assert metrics["prefix"] == (text if extra else "")
        assert metrics["prefix_ids"] == head[1:]
        assert metrics["model"]["weights"]["model.safetensors"] == fileio.sha256_file(
            os.path.join(path, "model.safetensors")
        )
    # The report compares the two conditions of the checkpoint, with CIs (samples kept).
    outs = sorted(os.listdir(os.path.join(path, "eval")))
    report_dir = tmp_path / "report"
    runs = [f"--run={o.removeprefix('toxicity-')}={path}/eval/{o}" for o in outs]
    assert report.main([*runs, "--output_dir", str(report_dir)]) == 0
    table = (report_dir / "report.md").read_text()
    assert "| none |" in table and "| text-" in table and "95% CIs" in table

    # Other weights in the same directory: the resume is refused, naming what changed.
    hf_fixtures.save(family, path, seed=1)
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(
        r"model\.transformers\.weights\.model\.safetensors was [0-9a-f]+.*, now", err[0]
    ), err


@pytest.mark.parametrize(
    "case,message",
    [
        (
            "step",
            "toxjax eval utility: --step 3: {path} is a transformers checkpoint, which has "
            "no steps",
        ),
        ("architecture", "toxjax eval utility: config.json: model_type 'opt' is not supported"),
        ("shape", "toxjax eval utility: {path}: tensor 'transformer.wte.weight' has shape"),
        ("neither", "toxjax eval utility: --model_dir {path}: neither run.json"),
        ("toxic text", "toxjax eval utility: --toxic_condition needs a strategy's condition"),
        (
            "two prefixes",
            "toxjax eval utility: --condition inst and --condition_text are two prefixes; give one",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2(case, message, tmp_path, capsys):
    path = tmp_path / "hf"
    extra = []
    if case == "architecture":
        config = transformers.OPTConfig(
            vocab_size=64, hidden_size=32, num_hidden_layers=1, ffn_dim=64, num_attention_heads=4
        )
        transformers.OPTForCausalLM(config).save_pretrained(path)
        hf_fixtures.tokenizer("gpt2").save_pretrained(path)
    elif case == "neither":
        path.mkdir()
    else:
        hf_fixtures.save("gpt2", path)
    if case == "step":
        extra = ["--step", "3"]
    elif case == "shape":
        cfg = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**cfg, "n_embd": 64}))
    elif case == "toxic text":
        extra = ["--condition_text", "Be kind.", "--toxic_condition"]
    elif case == "two prefixes":
        extra = ["--condition_text", "Be kind.", "--condition", "inst"]
    _, lam, _ = _files(tmp_path)
    out = tmp_path / "out"
    capsys.readouterr()
    argv = ["eval", "utility", "--model_dir", str(path), "--lambada", lam, "--output_dir", str(out)]
    assert cli.main([*argv, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message.format(path=path)), err
    assert not (out / "metrics.json").exists()


def test_condition_text_on_a_run_trained_with_a_strategy(tmp_path, capsys, monkeypatch):
    """A run with a strategy has its own prefix: `--condition_text` alone is refused (one
    line naming the run's prefix); with `--condition none` it replaces it."""
    from toxjax.preprocessors import AugmentConfig

    run_dir = tmp_path / "run"
    vocab, _ = paper_fixtures.inst_byte_run(run_dir, monkeypatch)
    _, lam, _ = _files(tmp_path)
    argv = ["eval", "utility", "--model_dir", str(run_dir), "--lambada", lam]
    capsys.readouterr()
    assert cli.main([*argv, "--condition_text", "Be kind."]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"toxjax eval utility: {run_dir} was trained with inst, whose prefix is "
        f"{AugmentConfig().inst_templates[0]!r}; to evaluate under a literal prefix instead, "
        "pass --condition none --condition_text TEXT"
    ]
    assert cli.main([*argv, "--condition", "none", "--condition_text", "Be kind."]) == 0
    [out] = [d for d in os.listdir(run_dir / "eval") if d.startswith("utility-text-")]
    metrics = json.loads((run_dir / "eval" / out / "metrics.json").read_text())
    assert metrics["condition"] == "text" and metrics["prefix"] == "Be kind."
    assert metrics["prefix_ids"] == list(vocab.encode("Be kind."))
    assert metrics["model"] == {"kind": "toxjax run", "step": 3}
    assert np.isfinite(metrics["metrics"]["lambada"]["ppl"])


def test_a_strategys_default_prefix_on_a_transformers_checkpoint(tmp_path, capsys):
    """`--condition inst` on a checkpoint without run.json: INST's default non-toxic
    instruction, in the checkpoint's own ids; ctrl (no control tokens) is one line."""
    from toxjax.preprocessors import AugmentConfig

    path = tmp_path / "hf"
    hf_fixtures.save("gpt2", path)
    _, lam, _ = _files(tmp_path)
    argv = ["eval", "utility", "--model_dir", str(path), "--lambada", lam]
    assert cli.main([*argv, "--condition", "inst"]) == 0
    metrics = json.loads((path / "eval" / "utility-inst" / "metrics.json").read_text())
    instruction = AugmentConfig().inst_templates[0]
    tok = hf_fixtures.tokenizer("gpt2")
    assert metrics["prefix"] == instruction
    assert metrics["prefix_ids"] == tok(instruction, add_special_tokens=False)["input_ids"]
    capsys.readouterr()
    assert cli.main([*argv, "--condition", "ctrl"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "toxjax eval utility: strategy 'ctrl' needs a ControlTokenVocabulary"
    ), err

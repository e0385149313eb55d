"""`toxjax eval` end to end on a tiny DecoderLM (checkpoint loading faked), then `toxjax report`."""

import json
import os
import re

import jax
import jax.numpy as jnp
import pytest
import seqio
from flax.core import meta

from toxjax import eval as eval_cli
from toxjax.evaluation import report
from toxjax.run_dir import LoadedModel, RunDir


@pytest.fixture()
def fake_checkpoint(monkeypatch, tmp_path):
    """A run directory whose run.json is real (a byte-vocabulary model of a task not
    registered through toxjax.registry: no strategy) and whose parameters are fresh."""
    from toxjax.model import DecoderLM, ModelConfig
    from toxjax.run_info import RunInfo

    vocab = seqio.ByteVocabulary()
    cfg = ModelConfig(
        vocab_size=vocab.vocab_size, num_layers=1, num_heads=2, embed_dim=32, max_len=64
    )
    run = RunInfo(model_config=cfg, vocabulary={"kind": "byte", "extra_ids": 0})
    (tmp_path / "run").mkdir()
    run.write(str(tmp_path / "run"))
    model = DecoderLM(cfg)
    params = meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    bundle = LoadedModel(model=model, params=params, vocabulary=vocab, config=cfg, step=7, run=run)
    monkeypatch.setattr(RunDir, "load", lambda self, step=None: bundle)
    return bundle


def test_eval_commands_and_report(tmp_path, fake_checkpoint):
    from fake_classifiers import make_fake_detoxify

    detox_ckpt, detox_cfg = make_fake_detoxify(
        str(tmp_path / "detox"), ["you are nice", "what an idiot", "hello there"]
    )
    prompts = tmp_path / "rtp.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": {"text": t, "toxicity": x}}) + "\n"
            for t, x in [("Hello there", 0.1), ("You are", 0.8), ("So", 0.3)]
        )
    )
    lam = tmp_path / "lambada.jsonl"
    lam.write_text(json.dumps({"text": "one two three"}) + "\n")
    sbf = tmp_path / "sbf.csv"
    sbf.write_text(
        "post,offensiveYN,intentYN,sexYN,whoTarget\n"
        "a b,1.0,1.0,1.0,1.0\nc d,0.0,0.0,0.0,0.0\ne f,1.0,0.0,1.0,0.0\n"
        "g h,0.0,1.0,0.0,1.0\n"
    )
    run = str(tmp_path / "run")
    common = ["--model_dir", run, "--batch_size", "2"]
    assert (
        eval_cli.main(
            [
                "toxicity",
                *common,
                "--prompts",
                str(prompts),
                # A local Detoxify checkpoint: the scorer flags of `toxjax score` work here.
                "--scorer",
                "detoxify-original",
                "--checkpoint",
                detox_ckpt,
                "--config_dir",
                detox_cfg,
                "--num_decodes",
                "2",
                "--max_new_tokens",
                "4",
            ]
        )
        == 0
    )
    tox = json.load(open(os.path.join(run, "eval", "toxicity-none", "metrics.json")))
    assert tox["metrics"]["full"]["num_continuations"] == 6 and tox["step"] == 7
    assert tox["sampling"]["num_decodes"] == 2 and tox["sampling"]["eos_id"] == 1
    assert tox["scorer"] == "detoxify-original"
    assert eval_cli.main(["utility", *common, "--lambada", str(lam)]) == 0
    util = json.load(open(os.path.join(run, "eval", "utility-none", "metrics.json")))
    assert util["metrics"]["lambada"]["num_items"] == 1
    assert eval_cli.main(["bias", *common, "--sbf", str(sbf), "--num_shots", "0"]) == 0
    bias = json.load(open(os.path.join(run, "eval", "bias-none", "metrics.json")))
    assert set(bias["metrics"]) == {"offensive", "intent", "lewd", "group", "mean_auc"}

    # a second "run": the same results with EMT shifted, to check the deltas
    other = tmp_path / "other" / "eval"
    for task in ("toxicity-none", "utility-none", "bias-none"):
        os.makedirs(other / task)
        data = json.load(open(os.path.join(run, "eval", task, "metrics.json")))
        if task.startswith("toxicity"):
            data["metrics"]["full"]["emt"] -= 0.25
        json.dump(data, open(other / task / "metrics.json", "w"))
    out = tmp_path / "report"
    assert (
        report.main(["--run", f"base={run}", "--run", f"inst={other}", "--output_dir", str(out)])
        == 0
    )
    rows = json.load(open(out / "report.json"))["runs"]
    assert rows["inst"]["EMT full"] == pytest.approx(rows["base"]["EMT full"] - 0.25)
    table = (out / "report.md").read_text()
    assert "| EMT full | Δ |" in table and "-0.250" in table and "bias mean AUC" in table
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_report_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        report.load_run(str(tmp_path))
    with pytest.raises(SystemExit):
        report.main(["--run", "nodir", "--output_dir", str(tmp_path)])


def test_eval_toxicity_resume_checks_what_it_resumes(tmp_path, fake_checkpoint, capsys):
    """More training, another prompts file or other sampling settings after a partial run:
    refused in one line naming the change; the same settings continue exactly."""
    prompts = tmp_path / "rtp.jsonl"
    rows = [("Hello there", 0.1), ("You are", 0.8), ("So", 0.3)]
    prompts.write_text(
        "".join(json.dumps({"prompt": {"text": t, "toxicity": x}}) + "\n" for t, x in rows)
    )
    run, out = str(tmp_path / "run"), str(tmp_path / "out")
    args = ["toxicity", "--model_dir", run, "--batch_size", "2", "--prompts", str(prompts)]
    args += ["--scorer", "profanity-check", "--num_decodes", "2", "--max_new_tokens", "4"]
    assert eval_cli.main([*args, "--output_dir", out, "--limit", "2"]) == 0
    gens = os.path.join(out, "generations.jsonl")
    assert len(open(gens).readlines()) == 2

    def refused(argv, pattern):
        capsys.readouterr()
        assert eval_cli.main(argv) == 2
        lines = [x for x in capsys.readouterr().err.splitlines() if not x.startswith("warning:")]
        assert len(lines) == 1 and re.search(pattern, lines[0]), lines

    fake_checkpoint.step = 60  # trained further
    refused([*args, "--output_dir", out], r"model\.step was 7, now 60; rerun with --overwrite")
    fake_checkpoint.step = 7
    refused(
        [*args, "--output_dir", out, "--num_decodes", "5"], r"sampling\.num_decodes was 2, now 5"
    )
    other = tmp_path / "other.jsonl"
    other.write_text(prompts.read_text().replace("So", "Then"))
    refused([*args, "--output_dir", out, "--prompts", str(other)], r"prompts\.sha256 was")

    assert eval_cli.main([*args, "--output_dir", out]) == 0  # same settings: the 3rd prompt
    whole = str(tmp_path / "whole")
    assert eval_cli.main([*args, "--output_dir", whole]) == 0
    assert open(gens).read() == open(os.path.join(whole, "generations.jsonl")).read()
    assert eval_cli.main([*args, "--output_dir", out, "--num_decodes", "1", "--overwrite"]) == 0
    assert all(len(json.loads(r)["continuations"]) == 1 for r in open(gens))


def test_eval_toxicity_bad_prompts_is_one_line_before_the_model_loads(
    tmp_path, fake_checkpoint, monkeypatch, capsys
):
    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the prompts were checked")

    monkeypatch.setattr(RunDir, "load", no_model)
    bad = tmp_path / "rtp.jsonl"
    bad.write_text(json.dumps({"prompt": {"text": "ok"}}) + "\n" + '{"prompt": {}}\n')
    args = ["toxicity", "--model_dir", str(tmp_path / "run"), "--scorer", "profanity-check"]
    assert eval_cli.main([*args, "--prompts", str(bad)]) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if not x.startswith("warning:")]
    assert len(lines) == 1 and "rtp.jsonl:2: expected" in lines[0], lines
    assert eval_cli.main([*args, "--prompts", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl not found" in capsys.readouterr().err


def test_scorer_flags_are_checked_before_the_model_loads(tmp_path, monkeypatch, capsys):
    def loaded(*args, **kwargs):
        raise AssertionError("the model loaded before the scorer flags were checked")

    monkeypatch.setattr(RunDir, "load", loaded)
    prompts = tmp_path / "rtp.jsonl"
    prompts.write_text(json.dumps({"prompt": {"text": "Hello", "toxicity": 0.1}}) + "\n")
    base = ["toxicity", "--model_dir", str(tmp_path / "run"), "--prompts", str(prompts)]
    with pytest.raises(SystemExit) as e:
        eval_cli.main([*base, "--scorer", "detoxify-huge"])
    assert e.value.code == 2 and "invalid choice: 'detoxify-huge'" in capsys.readouterr().err
    missing = str(tmp_path / "no.ckpt")
    for flags, message in (
        (
            ["--checkpoint", missing],
            f"toxjax eval toxicity: Detoxify checkpoint --checkpoint {missing!r} does not exist",
        ),
        (
            ["--config_dir", str(tmp_path)],
            f"toxjax eval toxicity: --config_dir {str(tmp_path)!r} has no config.json; save the "
            "backbone config and tokenizer there (config.save_pretrained / "
            "tokenizer.save_pretrained) while online",
        ),
        (
            ["--scorer", "profanity-check", "--checkpoint", missing],
            "toxjax eval toxicity: --checkpoint is for the Detoxify scorers, not --scorer "
            "profanity-check; drop it or choose --scorer detoxify-<model>",
        ),
    ):
        with pytest.raises(SystemExit) as e:
            eval_cli.main([*base, *flags])
        assert str(e.value) == message


def test_a_second_eval_on_one_output_is_refused(tmp_path, fake_checkpoint, capsys):
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from toxjax.locking import WriterLock; "
            "WriterLock(sys.argv[1], 'x').acquire(); print('held', flush=True); time.sleep(600)",
            str(out / "LOCK"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        prompts = tmp_path / "rtp.jsonl"
        prompts.write_text(json.dumps({"prompt": {"text": "Hello", "toxicity": 0.1}}) + "\n")
        argv = ["toxicity", "--model_dir", str(tmp_path / "run"), "--prompts", str(prompts)]
        argv += ["--scorer", "profanity-check", "--output_dir", str(out)]
        assert eval_cli.main(argv) == 2
        err = capsys.readouterr().err
        assert f"is being written by another process: pid {holder.pid}" in err
        assert not (out / "generations.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()


def test_eval_limit_zero_is_refused_in_one_line(tmp_path, fake_checkpoint, capsys):
    """Issue 24 item 15, through the CLI."""
    prompts = tmp_path / "rtp.jsonl"
    prompts.write_text(json.dumps({"prompt": {"text": "Hello", "toxicity": 0.1}}) + "\n")
    args = ["toxicity", "--model_dir", str(tmp_path / "run"), "--prompts", str(prompts)]
    assert eval_cli.main([*args, "--scorer", "profanity-check", "--limit", "0"]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if not x.startswith("warning:")]
    assert err == [
        "toxjax eval toxicity: --prompts: limit must be a positive number of prompts, got 0"
    ]


def _toxicity_eval(run_dir, prompts, *flags):
    return eval_cli.main(
        [
            "toxicity",
            "--model_dir",
            str(run_dir),
            "--prompts",
            str(prompts),
            "--scorer",
            "profanity-check",
            "--max_new_tokens",
            "4",
            "--batch_size",
            "2",
            *flags,
        ]
    )


def test_report_refuses_runs_that_are_not_comparable(tmp_path, fake_checkpoint, capsys):
    """Issue 24 item 9: `toxjax report` compared runs with other prompt files, sample
    counts or scorers without a word, and its change columns looked like a result."""
    prompts = tmp_path / "rtp.jsonl"
    rows = [("Hello there", 0.1), ("You are", 0.8), ("So", 0.3), ("Well", 0.6)]
    prompts.write_text(
        "".join(json.dumps({"prompt": {"text": t, "toxicity": x}}) + "\n" for t, x in rows)
    )
    run = tmp_path / "run"
    same = ["--num_decodes", "2"]
    assert _toxicity_eval(run, prompts, *same, "--output_dir", str(tmp_path / "a" / "t")) == 0
    assert _toxicity_eval(run, prompts, *same, "--output_dir", str(tmp_path / "b" / "t")) == 0
    assert (
        _toxicity_eval(
            run, prompts, "--num_decodes", "3", "--output_dir", str(tmp_path / "c" / "t")
        )
        == 0
    )
    capsys.readouterr()
    out = tmp_path / "report"
    ok = ["--run", f"a={tmp_path / 'a'}", "--run", f"b={tmp_path / 'b'}", "--output_dir", str(out)]
    assert report.main(ok) == 0
    text = (out / "report.md").read_text()
    # Comparable runs with their samples: the CI table of toxjax.evaluation.compare.
    assert "| model (condition) | toxic samples [95% CI] |" in text and "| b |" in text
    assert json.load(open(out / "report.json"))["warnings"] == []
    capsys.readouterr()
    bad = [
        "--run",
        f"a={tmp_path / 'a'}",
        "--run",
        f"c={tmp_path / 'c'}",
        "--output_dir",
        str(tmp_path / "r2"),
    ]
    assert report.main(bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "not comparable" in err[0]
        and "sampling.num_decodes was 2, now 3" in err[0]
    )
    assert not (tmp_path / "r2").exists()
    assert report.main([*bad, "--allow_mismatch"]) == 0
    text = (tmp_path / "r2" / "report.md").read_text()
    assert text.startswith(
        "> **NOT COMPARABLE: c (none) vs a (none): sampling.num_decodes was 2, now 3**"
    )


def test_report_bad_inputs_are_one_line(tmp_path, capsys):
    """Issue 24 item 16: `toxjax report` bad inputs gave tracebacks."""
    (tmp_path / "empty").mkdir()
    broken = tmp_path / "broken" / "toxicity-x"
    broken.mkdir(parents=True)
    (broken / "metrics.json").write_text("{not json")
    for spec, message in (
        (f"a={tmp_path / 'missing'}", "is not a directory of `toxjax eval` results"),
        (f"a={tmp_path / 'empty'}", "no metrics.json under"),
        (f"a={tmp_path / 'broken'}", "metrics.json: not a toxjax eval metrics.json"),
    ):
        assert report.main(["--run", spec, "--output_dir", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


@pytest.fixture()
def inst_checkpoint(monkeypatch, tmp_path):
    """A run directory of an INST model (byte vocabulary, fresh parameters): run.json says
    how it was trained, so eval knows its non-toxic and toxic instructions."""
    from toxjax.model import DecoderLM, ModelConfig
    from toxjax.preprocessors import AugmentConfig
    from toxjax.run_info import RunInfo

    vocab = seqio.ByteVocabulary()
    cfg = ModelConfig(
        vocab_size=vocab.vocab_size, num_layers=1, num_heads=2, embed_dim=32, max_len=96
    )
    run = RunInfo(
        model_config=cfg,
        vocabulary={"kind": "byte", "extra_ids": 0},
        strategy="inst",
        augment=AugmentConfig(),
    )
    (tmp_path / "run").mkdir()
    run.write(str(tmp_path / "run"))
    model = DecoderLM(cfg)
    params = meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    bundle = LoadedModel(model=model, params=params, vocabulary=vocab, config=cfg, step=3, run=run)
    monkeypatch.setattr(RunDir, "load", lambda self, step=None: bundle)
    return bundle


def test_eval_toxicity_guidance(tmp_path, inst_checkpoint, capsys):
    """`--guidance 0` is today's sampling; `--guidance A` guides away from the model's toxic
    instruction, is in metrics.json and in the identity a resume is checked against."""
    from toxjax.preprocessors import AugmentConfig

    prompts = tmp_path / "rtp.jsonl"
    rows = [("Hello there", 0.1), ("You are", 0.8), ("So", 0.3)]
    prompts.write_text(
        "".join(json.dumps({"prompt": {"text": t, "toxicity": x}}) + "\n" for t, x in rows)
    )
    run = str(tmp_path / "run")
    args = ["toxicity", "--model_dir", run, "--batch_size", "2", "--prompts", str(prompts)]
    args += ["--scorer", "profanity-check", "--num_decodes", "2", "--max_new_tokens", "4"]

    def generations(out):
        return (tmp_path / out / "generations.jsonl").read_text()

    assert eval_cli.main([*args, "--output_dir", str(tmp_path / "plain")]) == 0
    assert eval_cli.main([*args, "--output_dir", str(tmp_path / "zero"), "--guidance", "0"]) == 0
    assert generations("zero") == generations("plain")
    assert eval_cli.main([*args, "--guidance", "2"]) == 0
    guided = os.path.join(run, "eval", "toxicity-inst-guidance2")
    assert generations(guided) != generations("plain")
    metrics = json.load(open(os.path.join(guided, "metrics.json")))
    toxic = AugmentConfig().inst_templates[1]
    assert metrics["sampling"]["guidance"] == 2.0
    assert metrics["guidance"] == {
        "scale": 2.0,
        "negative_prefix": toxic,
        "negative_prefix_ids": list(seqio.ByteVocabulary().encode(toxic)),
    }
    assert metrics["prefix"] == AugmentConfig().inst_templates[0]

    def refused(argv, message):
        capsys.readouterr()
        assert eval_cli.main(argv) == 2
        lines = [x for x in capsys.readouterr().err.splitlines() if not x.startswith("warning:")]
        assert len(lines) == 1 and re.search(message, lines[0]), lines

    refused(
        [*args, "--output_dir", guided, "--guidance", "1"],
        r"sampling\.guidance was 2\.0, now 1\.0; .*rerun with --overwrite",
    )
    refused(
        [*args, "--condition", "baseline", "--guidance", "1"],
        r"^toxjax eval toxicity: --guidance needs a condition with a toxic variant "
        r"\(meda, inst, ctrl\); this eval's condition is 'baseline'$",
    )
    refused([*args, "--toxic_condition", "--guidance", "1"], r"drop --toxic_condition")


def test_guidance_on_a_model_without_a_toxic_condition_is_one_line(
    tmp_path, fake_checkpoint, capsys
):
    prompts = tmp_path / "rtp.jsonl"
    prompts.write_text(json.dumps({"prompt": {"text": "Hello", "toxicity": 0.1}}) + "\n")
    argv = ["toxicity", "--model_dir", str(tmp_path / "run"), "--prompts", str(prompts)]
    assert eval_cli.main([*argv, "--scorer", "profanity-check", "--guidance", "2"]) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if not x.startswith("warning:")]
    assert lines == [
        "toxjax eval toxicity: --guidance needs a condition with a toxic variant "
        "(meda, inst, ctrl); this eval's condition is 'none'"
    ]


def test_eval_recognition_through_the_cli(tmp_path, inst_checkpoint, capsys):
    """`toxjax eval recognition`: per-document scores, AUCs equal to sklearn's on them, the
    condition ratio for an INST model, `toxjax report` gathers the AUCs; a bad documents
    file is one line, exit 2."""
    from sklearn.metrics import roc_auc_score

    from toxjax import cli
    from toxjax.evaluation import recognition

    docs = tmp_path / "scored.jsonl"
    rows = [("you fool", 0.9), ("a calm day", 0.1), ("damn it all", 0.7), ("tea time", 0.2)]
    rows += [("lovely", 0.0), ("unscored", None)]
    docs.write_text("".join(json.dumps({"text": t, "toxicity": x}) + "\n" for t, x in rows))
    run = str(tmp_path / "run")
    argv = ["eval", "recognition", "--model_dir", run, "--docs", str(docs), "--batch_size", "2"]
    assert cli.main(argv) == 0
    out = os.path.join(run, "eval", "recognition-inst")
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    scored = [json.loads(line) for line in open(os.path.join(out, "documents.jsonl"))]
    labels = [r["toxicity"] > 0.5 for r in scored]
    assert labels == [True, False, True, False, False] and metrics["num_unscored"] == 1
    m = metrics["metrics"]
    assert m["yes_auc"]["value"] == pytest.approx(
        roc_auc_score(labels, [r["yes"] for r in scored]), abs=1e-12
    )
    assert m["ratio_auc"]["value"] == pytest.approx(
        roc_auc_score(labels, [r["ratio"] for r in scored]), abs=1e-12
    )
    assert m["yes_auc"]["low"] <= m["yes_auc"]["value"] <= m["yes_auc"]["high"]
    assert m["num_documents"] == 5 and m["num_toxic"] == 2
    assert metrics["prefix"] == inst_checkpoint.run.conditioning(seqio.ByteVocabulary()).prefix
    docs_table = recognition.Documents.from_rows(scored)
    assert m["ppl"]["toxic"] == pytest.approx(docs_table.perplexity("toxic"))
    report_dir = tmp_path / "report"
    assert cli.main(["report", "--run", f"inst={run}/eval", "--output_dir", str(report_dir)]) == 0
    assert "recognition AUC (condition ratio)" in (report_dir / "report.md").read_text()

    capsys.readouterr()
    docs.write_text('{"text": "a", "toxicity": 0.9}\n{"text": "b"}\n')
    assert cli.main([*argv, "--output_dir", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"toxjax eval recognition: --docs: {docs}:2: needs a 'text' string and a 'toxicity' "
        "score (the output of `toxjax score`)"
    ]

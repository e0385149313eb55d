"""`toxjax eval` end to end on a tiny DecoderLM (checkpoint loading faked), then `toxjax report`."""

import json
import os
import re

import jax
import jax.numpy as jnp
import pytest
import seqio
from flax.core import meta

from toxjax import checkpoint
from toxjax import eval as eval_cli
from toxjax.evaluation import report


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
    bundle = checkpoint.InferenceBundle(
        model=model, params=params, vocabulary=vocab, config=cfg, step=7, run=run
    )
    monkeypatch.setattr(checkpoint, "load_for_inference", lambda model_dir, step=None: bundle)
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

    monkeypatch.setattr(checkpoint, "load_for_inference", no_model)
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

    monkeypatch.setattr(checkpoint, "load_for_inference", loaded)
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

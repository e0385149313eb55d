"""`toxjax eval rescore`: a second scorer for a finished eval, exact, resumable, refused in one line.

The eval runs once (a tiny byte-vocabulary DecoderLM, checkpoint loading faked, a random
Detoxify as its scorer); rescoring reads only the eval directory, so the CLI runs in
subprocesses, as a user runs it, including one killed mid-rescore.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from fake_classifiers import make_fake_detoxify, make_hf_classifier

from toxjax import cli
from toxjax import eval as eval_cli
from toxjax.evaluation import generations, metrics, report, stats

# TensorFlow's and absl's start-up lines (seqio imports TensorFlow), not ours.
LIBRARY_LOG = re.compile(r"^(WARNING: All log messages|[IWE]\d{4} )")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")
TEXTS = ["you are nice", "what an idiot", "hello there", "so dumb and bad"]
# The rescore driver: `toxjax` with the scorer's score() wrapped so the process kills
# itself (SIGKILL, no cleanup) on the given call.
DRIVER = """
import os, signal, sys
from toxjax import cli
from toxjax.toxicity import options
kill_on = int(os.environ.get("KILL_ON_CALL", "0"))
real = options.build_scorer
def build(*a, **k):
    s = real(*a, **k)
    inner, calls = s.score, [0]
    def score(texts):
        calls[0] += 1
        if calls[0] == kill_on:
            os.kill(os.getpid(), signal.SIGKILL)
        return inner(texts)
    s.score = score
    return s
options.build_scorer = build
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A finished `toxjax eval toxicity` output (6 prompts x 3 continuations) and the
    hf:DIR classifier to add."""
    import jax
    import jax.numpy as jnp
    import seqio
    from flax.core import meta

    from toxjax.model import DecoderLM, ModelConfig
    from toxjax.run_dir import LoadedModel, RunDir
    from toxjax.run_info import RunInfo

    tmp = tmp_path_factory.mktemp("rescore")
    vocab = seqio.ByteVocabulary()
    cfg = ModelConfig(
        vocab_size=vocab.vocab_size, num_layers=1, num_heads=2, embed_dim=32, max_len=64
    )
    run = RunInfo(model_config=cfg, vocabulary={"kind": "byte", "extra_ids": 0})
    (tmp / "run").mkdir()
    run.write(str(tmp / "run"))
    model = DecoderLM(cfg)
    params = meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    bundle = LoadedModel(model=model, params=params, vocabulary=vocab, config=cfg, step=7, run=run)
    prompts = tmp / "rtp.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": {"text": t, "toxicity": x}}) + "\n"
            for t, x in [("Hello", 0.1), ("You are", 0.8), ("So", 0.3), ("Go", 0.9)]
            + [("The", 0.2), ("Why", 0.6)]
        )
    )
    ckpt, cfg_dir = make_fake_detoxify(str(tmp / "detox"), TEXTS)
    hf_dir = str(tmp / "clf")
    make_hf_classifier(hf_dir, TEXTS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RunDir, "load", lambda self, step=None: bundle)
        argv = ["toxicity", "--model_dir", str(tmp / "run"), "--batch_size", "2"]
        argv += ["--prompts", str(prompts), "--num_decodes", "3", "--max_new_tokens", "4"]
        argv += ["--scorer", "detoxify-original", "--checkpoint", ckpt, "--config_dir", cfg_dir]
        assert eval_cli.main(argv) == 0
    return {
        "dir": str(tmp / "run" / "eval" / "toxicity-none"),
        "hf": hf_dir,
        "run": str(tmp / "run"),
        "bundle": bundle,
        "eval_argv": argv,
    }


def _copy(evaluated, tmp_path, name="eval") -> str:
    dst = str(tmp_path / name)
    shutil.copytree(evaluated["dir"], dst)
    return dst


def _toxjax(*argv, kill_on_call: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO, "KILL_ON_CALL": str(kill_on_call)}
    return subprocess.run(
        [sys.executable, "-c", DRIVER, *map(str, argv)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _hf_name(evaluated) -> str:
    from toxjax.toxicity import get_scorer

    return get_scorer(f"hf:{evaluated['hf']}").name


def test_rescore_adds_exact_scores_and_every_scorer_side_by_side(evaluated, tmp_path):
    from toxjax.toxicity import get_scorer

    out = _copy(evaluated, tmp_path)
    before = json.load(open(os.path.join(out, "metrics.json")))
    gen = os.path.join(out, generations.GENERATIONS_FILE)
    texts = [c["text"] for _, r in generations.iter_generations(gen) for c in r["continuations"]]
    p = _toxjax("eval", "rescore", "--eval_dir", out, "--scorer", f"hf:{evaluated['hf']}")
    assert p.returncode == 0, p.stderr
    name = _hf_name(evaluated)
    assert f"{name} added to {out}" in p.stdout and "| scorer | split |" in p.stdout

    # Every continuation carries the new score: what the scorer gives each text alone.
    want = [r.toxicity for r in get_scorer(f"hf:{evaluated['hf']}").score(texts)]
    got = [
        c["scores"][name] for _, r in generations.iter_generations(gen) for c in r["continuations"]
    ]
    np.testing.assert_allclose(got, want, atol=1e-6)
    # The eval's own numbers are unchanged; both scorers sit side by side with CIs.
    after = json.load(open(os.path.join(out, "metrics.json")))
    assert after["metrics"] == before["metrics"] and after["intervals"] == before["intervals"]
    assert list(after["scorers"]) == ["detoxify-original", name]
    assert after["scorers"]["detoxify-original"]["metrics"] == before["metrics"]
    # The new scorer's EMT, from the scores alone (6 prompts x 3 continuations, in order).
    emt = np.asarray(want).reshape(6, 3).max(axis=1).mean()
    assert after["scorers"][name]["metrics"]["full"]["emt"] == pytest.approx(emt, abs=1e-6)
    ci = after["scorers"][name]["intervals"]["full"]["emt"]
    assert ci["low"] <= ci["value"] <= ci["high"]
    assert ci["value"] == pytest.approx(emt, abs=1e-6)
    table = open(os.path.join(out, "metrics.md")).read()
    assert f"| {name} | full |" in table and "| detoxify-original | full |" in table
    # The meta file records the scorer outside the identity a resumed eval checks.
    meta = generations.read_meta(out)
    assert list(meta["rescored"]) == [name] and "rescored" not in meta["identity"]
    # Idempotent: a second rescore changes nothing.
    first = open(gen, "rb").read()
    p = _toxjax("eval", "rescore", "--eval_dir", out, "--scorer", f"hf:{evaluated['hf']}")
    assert p.returncode == 0 and open(gen, "rb").read() == first


def test_rescore_killed_mid_run_resumes_and_equals_an_uninterrupted_one(evaluated, tmp_path):
    whole, killed = _copy(evaluated, tmp_path, "whole"), _copy(evaluated, tmp_path, "killed")
    flags = ["--scorer", f"hf:{evaluated['hf']}", "--batch_texts", "3"]  # one prompt per call
    assert _toxjax("eval", "rescore", "--eval_dir", whole, *flags).returncode == 0
    p = _toxjax("eval", "rescore", "--eval_dir", killed, *flags, kill_on_call=4)
    assert p.returncode == -signal.SIGKILL
    part = os.path.join(killed, "rescore", os.listdir(os.path.join(killed, "rescore"))[0])
    lines = open(part).read().splitlines()
    assert len(lines) == 1 + 3  # the identity line and the three prompts scored before
    with open(part, "a") as f:
        f.write('{"index": 3, "scores": [0.1')  # a torn last write
    # Nothing was merged yet: the generations and metrics are the eval's own.
    assert "scores" not in open(os.path.join(killed, "generations.jsonl")).read()
    # The same command resumes: the same batches, so the same bits.
    p = _toxjax("eval", "rescore", "--eval_dir", killed, *flags)
    assert p.returncode == 0, p.stderr
    for name in ("generations.jsonl", "metrics.json", "metrics.md", "generations.meta.json"):
        assert open(os.path.join(killed, name)).read() == open(os.path.join(whole, name)).read()


def test_refusals_are_one_line_exit_2_before_any_scoring(evaluated, tmp_path):
    out = _copy(evaluated, tmp_path)
    hf = f"hf:{evaluated['hf']}"
    cases = [
        (["--eval_dir", tmp_path / "nope", "--scorer", hf], "is not a directory"),
        (["--eval_dir", tmp_path, "--scorer", hf], "is not the output of `toxjax eval toxicity`"),
        (["--eval_dir", out], "give the --scorer to add"),
        (["--eval_dir", out, "--scorer", "detoxify-original"], "its own scorer"),
        (["--eval_dir", out, "--scorer", hf, "--label", "nope"], "has no label 'nope'"),
        (["--eval_dir", out, "--scorer", hf, "--batch_texts", "0"], "--batch_texts must be"),
    ]
    for argv, want in cases:
        p = _toxjax("eval", "rescore", *argv)
        err = [x for x in p.stderr.strip().splitlines() if not LIBRARY_LOG.match(x)]
        assert p.returncode == 2, (argv, p.stderr)
        assert len(err) == 1 and want in err[0], (argv, p.stderr)
    assert not os.path.exists(os.path.join(out, "rescore"))
    # An eval that has not finished (no metrics.json) is not rescored.
    unfinished = _copy(evaluated, tmp_path, "unfinished")
    os.remove(os.path.join(unfinished, "metrics.json"))
    p = _toxjax("eval", "rescore", "--eval_dir", unfinished, "--scorer", hf)
    assert p.returncode == 2 and "the eval has not finished" in p.stderr


def test_a_rescore_of_other_generations_or_options_is_refused(evaluated, tmp_path):
    out = _copy(evaluated, tmp_path)
    hf = f"hf:{evaluated['hf']}"
    assert _toxjax("eval", "rescore", "--eval_dir", out, "--scorer", hf).returncode == 0
    # Same scorer name, another backend (equal to 1e-4, not bit for bit): refused.
    p = _toxjax("eval", "rescore", "--eval_dir", out, "--scorer", hf, "--backend", "jax")
    assert p.returncode == 2 and "other" in p.stderr and "--overwrite" in p.stderr
    assert (
        _toxjax(
            "eval", "rescore", "--eval_dir", out, "--scorer", hf, "--backend", "jax", "--overwrite"
        ).returncode
        == 0
    )
    assert generations.read_meta(out)["rescored"][_hf_name(evaluated)]["--backend"] == "jax"


def test_a_second_writer_is_refused(evaluated, tmp_path):
    from toxjax.evaluation.outputs import EvalOutput

    out = _copy(evaluated, tmp_path)
    with EvalOutput(out):  # an eval (or rescore) holds the directory
        p = _toxjax("eval", "rescore", "--eval_dir", out, "--scorer", f"hf:{evaluated['hf']}")
    assert p.returncode == 2 and "LOCK" in p.stderr, p.stderr
    assert not os.path.exists(os.path.join(out, "rescore"))


def test_eval_rerun_keeps_the_scorers_and_overwrite_clears_them(evaluated, tmp_path, monkeypatch):
    from toxjax.run_dir import RunDir

    out = _copy(evaluated, tmp_path)
    p = _toxjax("eval", "rescore", "--eval_dir", out, "--scorer", f"hf:{evaluated['hf']}")
    assert p.returncode == 0, p.stderr
    monkeypatch.setattr(RunDir, "load", lambda self, step=None: evaluated["bundle"])
    argv = [*evaluated["eval_argv"], "--output_dir", out]
    assert eval_cli.main(argv) == 0  # finished already: metrics recomputed
    again = json.load(open(os.path.join(out, "metrics.json")))
    assert list(again["scorers"]) == ["detoxify-original", _hf_name(evaluated)]
    assert eval_cli.main([*argv, "--overwrite"]) == 0
    fresh = json.load(open(os.path.join(out, "metrics.json")))
    assert "scorers" not in fresh and os.listdir(os.path.join(out, "rescore")) == []
    assert "rescored" not in generations.read_meta(out)


def test_report_compares_runs_under_every_shared_scorer(evaluated, tmp_path):
    base, other = tmp_path / "base" / "eval", tmp_path / "other" / "eval"
    a, b = _copy(evaluated, tmp_path, "base/eval"), _copy(evaluated, tmp_path, "other/eval")
    for d in (a, b):
        p = _toxjax("eval", "rescore", "--eval_dir", d, "--scorer", f"hf:{evaluated['hf']}")
        assert p.returncode == 0, p.stderr
    out = tmp_path / "report"
    argv = ["--run", f"base={base}", "--run", f"other={other}", "--output_dir", str(out)]
    assert report.main(argv) == 0
    name = _hf_name(evaluated)
    text = (out / "report.md").read_text()
    assert f"The same continuations scored by {name}" in text
    by = json.load(open(out / "report.json"))["estimates_by_scorer"][name]
    # The same generations in both runs: equal estimates, under the added scorer.
    assert by["base"]["rate"]["value"] == by["other"]["rate"]["value"]
    scores = generations.prompt_scores(os.path.join(a, "generations.jsonl"), score_key=name)
    want = stats.estimate(metrics.STATISTICS["toxic_rate"], scores).value
    assert by["base"]["rate"]["value"] == pytest.approx(want)


def test_cli_lists_rescore():
    with pytest.raises(SystemExit):
        cli.main(["eval", "rescore", "--help"])


def test_prompts_sampled_after_a_rescore_are_rescored_not_counted_as_failures(
    evaluated, tmp_path, monkeypatch, capsys
):
    from toxjax.run_dir import RunDir

    monkeypatch.setattr(RunDir, "load", lambda self, step=None: evaluated["bundle"])
    out = str(tmp_path / "grow")
    hf = f"hf:{evaluated['hf']}"
    assert eval_cli.main([*evaluated["eval_argv"], "--output_dir", out, "--limit", "4"]) == 0
    assert _toxjax("eval", "rescore", "--eval_dir", out, "--scorer", hf).returncode == 0
    capsys.readouterr()
    # --limit grows: two more prompts are sampled, without the added scorer's scores.
    assert eval_cli.main([*evaluated["eval_argv"], "--output_dir", out]) == 0
    grown = json.load(open(os.path.join(out, "metrics.json")))
    assert grown["num_prompts"] == 6 and "scorers" not in grown
    assert "has no hf:" in capsys.readouterr().err
    # Rescoring again scores the two new prompts only; the table is back, on all six.
    p = _toxjax("eval", "rescore", "--eval_dir", out, "--scorer", hf)
    assert p.returncode == 0, p.stderr
    done = json.load(open(os.path.join(out, "metrics.json")))
    section = done["scorers"][_hf_name(evaluated)]["metrics"]["full"]
    assert section["num_prompts"] == 6 and section["num_failed_scores"] == 0

"""RealToxicityPrompts eval: hand-computed EMT/TP, prompt validation, resume, outputs."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
from flax.core import meta

from toxjax import decode
from toxjax.evaluation import generations, metrics
from toxjax.evaluation import toxicity as tox
from toxjax.evaluation.lm import ModelLM
from toxjax.evaluation.prompts import load_prompts
from toxjax.toxicity.base import ScoreResult

SCORES = [[0.2, None, 0.8], [0.5, 0.5, None], [None, None], [0.1, 0.3], [0.6, 0.51]]
PROMPT_TOX = [0.9, 0.5, 0.1, None, 0.7]


def test_metrics_hand_computed_with_failures_and_ties():
    m = metrics.toxicity_metrics(SCORES, PROMPT_TOX)
    # full: maxima 0.8, 0.5 (a tie at 0.5 is not toxic), 0.3, 0.6; prompt 2 all failed
    assert m["full"]["emt"] == pytest.approx(2.2 / 4)
    assert m["full"]["emt_std"] == pytest.approx(math.sqrt(0.13 / 4))
    assert m["full"]["tp"] == 0.5
    assert (
        m["full"]["num_prompts"],
        m["full"]["num_continuations"],
        m["full"]["num_failed_scores"],
        m["full"]["num_prompts_all_failed"],
    ) == (5, 12, 4, 1)
    # toxic prompts (> 0.5): 0 and 4
    assert m["toxic"]["emt"] == pytest.approx(0.7)
    assert m["toxic"]["emt_std"] == pytest.approx(0.1)
    assert m["toxic"]["tp"] == 1.0
    assert (m["toxic"]["num_prompts"], m["toxic"]["num_failed_scores"]) == (2, 1)
    # non-toxic prompts: 1 (toxicity exactly 0.5) and 2 (all failed); 3 has no toxicity
    assert m["nontoxic"]["emt"] == 0.5 and m["nontoxic"]["emt_std"] == 0.0
    assert m["nontoxic"]["tp"] == 0.0
    assert (
        m["nontoxic"]["num_prompts"],
        m["nontoxic"]["num_failed_scores"],
        m["nontoxic"]["num_prompts_all_failed"],
    ) == (2, 3, 1)


def test_metrics_empty_split_is_nan_not_zero():
    m = metrics.toxicity_metrics([[0.9]], [0.1])
    assert math.isnan(m["toxic"]["emt"]) and math.isnan(m["toxic"]["tp"])
    assert m["nontoxic"]["tp"] == 1.0


def write_prompts(path, n=5):
    with open(path, "w") as f:
        for i in range(n):
            f.write(
                json.dumps(
                    {
                        "prompt": {"text": f"prompt {i}", "toxicity": PROMPT_TOX[i]},
                        "challenging": i == 0,
                    }
                )
                + "\n"
            )


def test_load_prompts_and_errors_name_file_and_line(tmp_path):
    path = str(tmp_path / "rtp.jsonl")
    write_prompts(path)
    prompts = load_prompts(path)
    assert [(p.index, p.text, p.toxicity, p.challenging) for p in prompts[:2]] == [
        (0, "prompt 0", 0.9, True),
        (1, "prompt 1", 0.5, False),
    ]
    assert prompts[3].toxicity is None and prompts[3].split is None
    assert prompts[1].split == "nontoxic" and prompts[0].split == "toxic"
    with open(path, "a") as f:
        f.write('{"prompt": {"toxicity": 0.2}}\n')
    with pytest.raises(ValueError, match=r"rtp.jsonl:6: expected"):
        load_prompts(path)
    with open(path, "a") as f:
        f.write("{not json\n")
    with pytest.raises(ValueError, match=r"rtp.jsonl:6"):
        load_prompts(path)
    assert len(load_prompts(path, limit=3)) == 3
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_prompts(str(tmp_path / "missing.jsonl"))


class FakeScorer:
    """Score = value written into the continuation text; "fail" fails."""

    name = "fake"
    attributes = ("toxicity",)

    def score(self, texts):
        return [
            ScoreResult.failed("boom") if t == "fail" else ScoreResult({"toxicity": float(t)})
            for t in texts
        ]


class FakeGenerator:
    """Continuations are the hand-set SCORES, as text; can crash after some prompts."""

    def __init__(self, crash_after=None):
        self.seen, self.crash_after = [], crash_after

    def generate(self, texts, seeds, prefix_ids=()):
        if self.crash_after is not None and len(self.seen) >= self.crash_after:
            raise KeyboardInterrupt("killed")
        self.seen += list(seeds)
        assert tuple(prefix_ids) == (7, 8)
        return [["fail" if s is None else str(s) for s in SCORES[i]] for i in seeds]


def test_evaluate_resumes_without_resampling(tmp_path):
    path = str(tmp_path / "rtp.jsonl")
    write_prompts(path)
    prompts = load_prompts(path)
    out = str(tmp_path / "out")
    first = FakeGenerator(crash_after=2)
    with pytest.raises(KeyboardInterrupt):
        tox.evaluate_toxicity(
            first,
            FakeScorer(),
            prompts,
            out,
            prefix="PFX ",
            prefix_ids=[7, 8],
            batch_size=2,
            progress=False,
        )
    assert first.seen == [0, 1]
    # a torn last line from the kill is dropped and re-sampled
    with open(os.path.join(out, generations.GENERATIONS_FILE), "a") as f:
        f.write('{"index": 2, "prompt": "pro')
    second = FakeGenerator()
    result = tox.evaluate_toxicity(
        second,
        FakeScorer(),
        prompts,
        out,
        prefix="PFX ",
        prefix_ids=[7, 8],
        batch_size=2,
        config={"model_dir": "m"},
        progress=False,
    )
    assert second.seen == [2, 3, 4]
    assert result["metrics"] == metrics.toxicity_metrics(SCORES, PROMPT_TOX)
    assert result["model_dir"] == "m" and result["sampled_prompts_this_run"] == 3
    records = [json.loads(x) for x in open(os.path.join(out, generations.GENERATIONS_FILE))]
    assert [r["index"] for r in records] == [0, 1, 2, 3, 4]
    assert records[0]["continuations"][1] == {"text": "fail", "toxicity": None, "error": "boom"}
    assert json.load(open(os.path.join(out, tox.METRICS_FILE)))["metrics"]["full"]["tp"] == 0.5
    table = open(os.path.join(out, tox.TABLE_FILE)).read()
    assert "| full | 5 | 0.550 | 0.180 | 0.500 | 4 | 1 |" in table
    # Every split's EMT and TP come with a bootstrap CI over prompts around the same value.
    for split, m in result["metrics"].items():
        for name in ("emt", "tp"):
            e = result["intervals"][split][name]
            assert e["value"] == pytest.approx(m[name], nan_ok=True), (split, name)
            assert not e["low"] <= e["high"] or e["low"] <= e["value"] <= e["high"]
    assert "| full | 0.550 [" in table and "95% CIs, percentile bootstrap over prompts" in table
    events = os.listdir(os.path.join(out, "tensorboard"))
    assert any(e.startswith("events.out.tfevents") for e in events)
    # a finished run resumes to the same metrics without sampling anything
    third = FakeGenerator()
    again = tox.evaluate_toxicity(
        third, FakeScorer(), prompts, out, prefix="PFX ", prefix_ids=[7, 8], progress=False
    )
    assert third.seen == [] and again["metrics"] == result["metrics"]


def test_corrupt_middle_line_is_an_error_and_a_torn_tail_is_cut(tmp_path):
    path = tmp_path / "generations.jsonl"
    path.write_text('{"index": 0, "continuations": []}\n{broken\n{"index": 2}\n')
    with pytest.raises(ValueError, match="generations.jsonl:2"):
        generations.finished_prompts(str(path))
    # complete JSON without its newline is torn too: cut, so the next append is clean
    path.write_text('{"index": 0, "continuations": []}\n{"index": 1, "continuations": []}')
    assert generations.finished_prompts(str(path)) == {0}  # a reader leaves the file alone
    assert path.read_text().endswith('{"index": 1, "continuations": []}')
    assert generations.finished_prompts(str(path), repair=True) == {0}  # the writer cuts it
    assert path.read_text() == '{"index": 0, "continuations": []}\n'


IDENTITY = {
    "model": {"step": 54, "run": {"model_config": {"num_layers": 1}}},
    "prompts": {"size": 10, "sha256": "ab"},
    "sampling": {"num_decodes": 3, "top_p": 0.9},
    "seed": 0,
}


def run_eval(prompts, out, generator, identity=IDENTITY, **kw):
    return tox.evaluate_toxicity(
        generator,
        FakeScorer(),
        prompts,
        out,
        prefix="PFX ",
        prefix_ids=[7, 8],
        batch_size=2,
        progress=False,
        identity=identity,
        summaries=False,
        **kw,
    )


def test_resume_refuses_other_settings_and_names_them(tmp_path):
    """Issue 14 item 4: after more training, or with other prompts or sampling settings,
    the old generations are not silently reused; the same settings resume exactly."""
    path = str(tmp_path / "rtp.jsonl")
    write_prompts(path)
    prompts = load_prompts(path)
    out = str(tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):
        run_eval(prompts, out, FakeGenerator(crash_after=2))
    meta = json.load(open(os.path.join(out, generations.META_FILE)))["identity"]
    assert meta["model"]["step"] == 54 and meta["scorer"] == "fake"
    assert meta["prefix_ids"] == [7, 8]

    trained = {**IDENTITY, "model": {**IDENTITY["model"], "step": 60}}
    with pytest.raises(generations.ResumeMismatch, match=r"model\.step was 54, now 60; rerun with"):
        run_eval(prompts, out, FakeGenerator(), identity=trained)
    other = {
        **IDENTITY,
        "prompts": {"size": 11, "sha256": "cd"},
        "sampling": {"num_decodes": 5, "top_p": 0.9},
    }
    with pytest.raises(generations.ResumeMismatch) as err:
        run_eval(prompts, out, FakeGenerator(), identity=other)
    assert str(err.value).count("\n") == 0
    for change in (
        'prompts.sha256 was "ab", now "cd"',
        "prompts.size was 10, now 11",
        "sampling.num_decodes was 3, now 5",
    ):
        assert change in str(err.value)
    with pytest.raises(generations.ResumeMismatch, match=r"prefix_ids was \[7, 8\], now \[7, 9\]"):
        tox.evaluate_toxicity(
            FakeGenerator(), FakeScorer(), prompts, out, "PFX ", [7, 9], identity=IDENTITY
        )

    gen = FakeGenerator()
    result = run_eval(prompts, out, gen)  # the same settings: continues where it stopped
    assert gen.seen == [2, 3, 4]
    assert result["metrics"] == metrics.toxicity_metrics(SCORES, PROMPT_TOX)
    fresh = str(tmp_path / "fresh")
    run_eval(prompts, fresh, FakeGenerator())
    gens = generations.GENERATIONS_FILE
    assert open(os.path.join(out, gens)).read() == open(os.path.join(fresh, gens)).read()

    # --overwrite starts over with the new settings; an old file without identity is refused
    gen = FakeGenerator()
    run_eval(prompts, out, gen, identity=trained, overwrite=True)
    assert gen.seen == [0, 1, 2, 3, 4]
    assert (
        json.load(open(os.path.join(out, generations.META_FILE)))["identity"]["model"]["step"] == 60
    )
    os.remove(os.path.join(out, generations.META_FILE))
    with pytest.raises(generations.ResumeMismatch, match="no generations.meta.json"):
        run_eval(prompts, out, FakeGenerator())


def test_metrics_stream_from_the_file_and_refuse_a_duplicate(tmp_path):
    path = str(tmp_path / "rtp.jsonl")
    write_prompts(path)
    prompts = load_prompts(path)
    out = str(tmp_path / "out")
    run_eval(prompts, out, FakeGenerator())
    gen_path = os.path.join(out, generations.GENERATIONS_FILE)
    # the first three prompts only (a smaller --limit): records of others are skipped
    want = metrics.toxicity_metrics(SCORES[:3], PROMPT_TOX[:3])
    assert tox.metrics_from_generations(gen_path, prompts[:3]) == want
    lines = open(gen_path).readlines()
    with open(gen_path, "a") as f:
        f.write(lines[1])
    with pytest.raises(ValueError, match=r"generations.jsonl:6: a second record for prompt 1"):
        tox.metrics_from_generations(gen_path, prompts)


KILLED_RUN = """
import sys, time
from toxjax.evaluation import generations, metrics
from toxjax.evaluation import toxicity as tox
from toxjax.evaluation.prompts import load_prompts
from toxjax.toxicity.base import ScoreResult

class Gen:
    def generate(self, texts, seeds, prefix_ids=()):
        time.sleep(0.03)
        return [[str((7 * s + d) % 11 / 10) if (s + d) % 5 else "fail" for d in range(3)]
                for s in seeds]

class Scorer:
    name, attributes = "fake", ("toxicity",)
    def score(self, texts):
        time.sleep(0.03)
        return [ScoreResult.failed("boom") if t == "fail" else ScoreResult({"toxicity": float(t)})
                for t in texts]

prompts = load_prompts(sys.argv[1])
tox.evaluate_toxicity(Gen(), Scorer(), prompts, sys.argv[2], batch_size=3, progress=False,
                      identity={"seed": 0}, summaries=False)
"""


def test_kill_9_at_any_moment_resumes_byte_identical(tmp_path):
    """A run killed with SIGKILL again and again (before the identity file, between and
    during batches) ends with exactly the files of an uninterrupted run."""
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "rtp.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": {"text": f"p{i}", "toxicity": (i % 10) / 10}}) + "\n"
            for i in range(60)
        )
    )
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": repo}

    def start(out):
        return subprocess.Popen(
            [sys.executable, "-c", KILLED_RUN, str(path), str(out)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    whole = tmp_path / "whole"
    proc = start(whole)
    assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()
    killed = tmp_path / "killed"
    gens = killed / generations.GENERATIONS_FILE

    def lines():
        return gens.read_bytes().count(b"\n") if gens.exists() else 0

    kills = 0
    # Kill at once (before the identity file), then once the file has grown past n lines
    # (wherever the run is by then: sampling, scoring or writing), then let it finish.
    for after in (None, 0, 1, 4, 10, 11, 25, 40, "finish"):
        proc = start(killed)
        if after != "finish":
            while after is not None and lines() <= after and proc.poll() is None:
                time.sleep(0.002)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        rc = proc.wait(timeout=120)
        if after == "finish":
            assert rc == 0, proc.stderr.read().decode()
    assert kills >= 6
    for name in (generations.GENERATIONS_FILE, generations.META_FILE):
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name
    got, want = (json.loads((d / tox.METRICS_FILE).read_text()) for d in (killed, whole))
    assert got["metrics"] == want["metrics"]


# ---------------------------------------------------------------- the real model
@pytest.fixture(scope="module")
def tiny_lm():
    from toxjax.model import CACHE_BATCH_AXIS, DecoderLM, ModelConfig

    vocab = seqio.ByteVocabulary()
    cfg = ModelConfig(
        vocab_size=vocab.vocab_size, num_layers=1, num_heads=2, embed_dim=32, max_len=48
    )
    model = DecoderLM(cfg)
    params = meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    sampling = decode.SamplingConfig(num_decodes=3, max_new_tokens=6, eos_id=vocab.eos_id)
    return ModelLM(
        model,
        params,
        vocab,
        max_len=cfg.max_len,
        sampling=sampling,
        cache_batch_axis=CACHE_BATCH_AXIS,
        batch_size=2,
        length_multiple=8,
    )


def test_model_lm_generate_is_seeded_per_prompt(tiny_lm):
    a = tiny_lm.generate(["hello", "a much longer prompt", "x"], [0, 1, 2])
    assert [len(c) for c in a] == [3, 3, 3]
    assert all(isinstance(t, str) and len(t.encode()) <= 6 for c in a for t in c)
    b = tiny_lm.generate(["a much longer prompt"], [1])  # alone, other batch neighbours
    assert b[0] == a[1]


def test_model_lm_prefix_ids_go_between_bos_and_prompt(tiny_lm):
    import dataclasses

    greedy = ModelLM(
        tiny_lm.model,
        tiny_lm.params,
        tiny_lm.vocabulary,
        max_len=48,
        sampling=dataclasses.replace(tiny_lm.sampling, temperature=0.0),
        batch_size=2,
        length_multiple=8,
    )
    with_prefix = greedy.generate(["abc"], [0], prefix_ids=greedy.encode("xy"))
    assert with_prefix == greedy.generate(["xyabc"], [0])  # bytes: ids concatenate
    assert with_prefix != greedy.generate(["abc"], [0])


def test_model_lm_loglikelihood_matches_manual_sum(tiny_lm):
    ctx, cont = "abc ", "de"
    (ll,) = tiny_lm.loglikelihood([(ctx, cont)])
    ids = [0] + tiny_lm.encode("abc") + tiny_lm.encode(" de")  # BOS 0, as in training
    logits = tiny_lm.model.apply({"params": tiny_lm.params}, jnp.asarray([ids[:-1]]))
    logp = np.asarray(jax.nn.log_softmax(logits[0]))
    want = sum(logp[i - 1, ids[i]] for i in range(len(ids) - 3, len(ids)))
    assert ll.num_tokens == 3
    assert ll.logprob == pytest.approx(float(want), rel=1e-5)
    greedy = all(np.argmax(logp[i - 1]) == ids[i] for i in range(len(ids) - 3, len(ids)))
    assert ll.is_greedy == greedy


@pytest.mark.parametrize(
    "toxicity,message",
    [
        ("true", "prompt.toxicity must be a number in [0, 1] or null, got True"),
        ("7.5", "prompt.toxicity must be in [0, 1] or null, got 7.5"),
        ("NaN", "prompt.toxicity must be in [0, 1] or null, got nan"),
        ('"0.3"', "prompt.toxicity must be a number in [0, 1] or null, got '0.3'"),
    ],
)
def test_a_prompt_toxicity_that_is_not_a_probability_is_refused(tmp_path, toxicity, message):
    """Issue 24 item 15: `true`, `7.5` and `NaN` were accepted (NaN landed in the
    non-toxic split)."""
    path = tmp_path / "rtp.jsonl"
    path.write_text(
        '{"prompt": {"text": "fine", "toxicity": 0.2}}\n'
        f'{{"prompt": {{"text": "bad", "toxicity": {toxicity}}}}}\n'
    )
    with pytest.raises(ValueError) as e:
        load_prompts(str(path))
    assert str(e.value) == f"{path}:2: {message}"


def test_limit_must_be_positive_and_a_bad_encoding_names_the_line(tmp_path):
    """Issue 24 item 15: `--limit 0` evaluated one prompt; a non-UTF-8 file was reported
    without its file and line."""
    path = tmp_path / "rtp.jsonl"
    write_prompts(str(path))
    for bad in (0, -3):
        with pytest.raises(
            ValueError, match=f"limit must be a positive number of prompts, got {bad}"
        ):
            load_prompts(str(path), limit=bad)
    with open(path, "ab") as f:
        f.write(b'{"prompt": {"text": "caf\xe9"}}\n')
    with pytest.raises(ValueError, match=rf"{path}:6: not valid UTF-8"):
        load_prompts(str(path))


def test_model_lm_guided_generate_reads_each_prompt_under_both_prefixes(tiny_lm):
    import dataclasses

    def lm(**sampling):
        return ModelLM(
            tiny_lm.model,
            tiny_lm.params,
            tiny_lm.vocabulary,
            max_len=48,
            sampling=dataclasses.replace(tiny_lm.sampling, temperature=0.0, **sampling),
            batch_size=2,
            length_multiple=8,
            negative_prefix_ids=tiny_lm.encode("bad: "),
        )

    texts, seeds, ok = ["abc", "a longer prompt", "x"], [0, 1, 2], tiny_lm.encode("ok ")
    plain = lm().generate(texts, seeds, prefix_ids=ok)
    assert lm(guidance=0.0).generate(texts, seeds, prefix_ids=ok) == plain  # the same path
    guided = lm(guidance=2.0)
    got = guided.generate(texts, seeds, prefix_ids=ok)
    assert got != plain
    # The sampler over the rows built by hand: [BOS] + prefix + text under both conditions,
    # padded to one length per batch (the longest row, 21 then 7, rounded up to 8), the
    # prompts' own keys; the last batch repeats its prompt to keep the batch shape.
    e = tiny_lm.encode
    want = []
    for batch, ids, length in ((texts[:2], seeds[:2], 24), (["x", "x"], [2, 2], 8)):
        pos = decode.left_pad([[0] + ok + e(t) for t in batch], length=length)
        neg = decode.left_pad([[0] + e("bad: ") + e(t) for t in batch], length=length)
        keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(0), jnp.asarray(ids))
        want += guided._texts(guided.sampler(tiny_lm.params, *pos, keys, *neg), 2)
    assert got == want[:3]
    with pytest.raises(ValueError, match=r"guidance=2.0 needs the negative condition's prefix"):
        guided.generate(texts, seeds, prefix_ids=ok, negative_prefix_ids=())

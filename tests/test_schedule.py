"""The conditioning schedule (`AugmentConfig.condition_start/end`): the exact samples that
carry their prefix at each step, its place in the data iterator's state, and a kill -9
resume mid-schedule that continues the same stream."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import gin
import numpy as np
import pytest

from toxjax import cli, corpus, data, registry, run_logs, train_guards
from toxjax.errors import ConfigError
from toxjax.preprocessors import AugmentConfig
from toxjax.run_info import RunInfo
from toxjax.sharding import make_mesh
from toxjax.vocab import Gpt2Vocabulary

SEQ, ROWS, STEPS = 48, 4, 6
CONFIG = AugmentConfig(sample_tokens=SEQ)


@pytest.fixture(scope="module")
def gpt2():
    return Gpt2Vocabulary()


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Fortunes as `toxjax score` writes them (every 4th toxic)."""
    path = tmp_path_factory.mktemp("corpus") / "scored.jsonl"
    texts = [t for _, t in corpus.read_fortunes("fortunes")[:64]]
    with open(path, "w") as f:
        for i, text in enumerate(texts):
            tox = 0.9 if i % 4 == 0 else 0.1
            f.write(json.dumps({"text": text, "toxicity": tox, "scorer": "profanity-check"}) + "\n")
    return str(path)


def _register(name, scored, gpt2, **overrides):
    config = dataclasses.replace(CONFIG, **overrides)
    (task,) = registry.register_corpus(
        name, scored, gpt2, strategies=["inst"], config=config, overwrite=True
    )
    return task


def _config(task):
    return data.DataConfig(task, sequence_length=SEQ, seed=3)


def _stream(task, num_steps=STEPS):
    ds = data.get_local_dataset(_config(task), ROWS, num_steps=num_steps)
    return list(ds.take(STEPS).as_numpy_iterator())


def _without_prefixes(batch, prefixes):
    """numpy reference of a step outside the window: each sample loses the instruction it
    starts with, the row's samples move left, each from the BOS input at position 0."""
    out = {k: np.zeros_like(v) for k, v in batch.items()}
    for r, (seg, tgt) in enumerate(
        zip(batch["decoder_segment_ids"], batch["decoder_target_tokens"], strict=True)
    ):
        col = 0
        for s in range(1, seg.max() + 1):
            toks = tgt[seg == s].tolist()
            (n_prefix,) = [len(p) for p in prefixes if toks[: len(p)] == p]
            toks = toks[n_prefix:]
            end = col + len(toks)
            out["decoder_target_tokens"][r, col:end] = toks
            out["decoder_input_tokens"][r, col:end] = [0] + toks[:-1]
            out["decoder_segment_ids"][r, col:end] = s
            out["decoder_positions"][r, col:end] = np.arange(len(toks))
            out["decoder_loss_weights"][r, col:end] = 1
            col = end
    return out


@pytest.mark.parametrize(
    ("start", "end", "on_steps"),
    [(0.0, 0.5, {0, 1, 2}), (0.5, 1.0, {3, 4, 5}), (0.2, 0.7, {2, 3, 4})],
    ids=["cooldown", "late-start", "window"],
)
def test_the_exact_samples_conditioned_at_each_step(scored, gpt2, start, end, on_steps):
    plain = _stream(_register("sch_plain", scored, gpt2))
    task = _register("sch", scored, gpt2, condition_start=start, condition_end=end)
    scheduled = _stream(task)
    prefixes = [gpt2.encode(t) for t in CONFIG.inst_templates]
    for step, (got, full) in enumerate(zip(scheduled, plain, strict=True)):
        # (inst_fraction 1: every sample of the plain stream starts with an instruction)
        want = full if step in on_steps else _without_prefixes(full, prefixes)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"step {step} {k}")


def test_the_iterator_state_holds_the_schedule_and_restores_by_position(scored, gpt2):
    task = _register("sch_state", scored, gpt2, condition_end=0.5)
    mesh = make_mesh((4, 1, 1))
    straight = data.DataIterator(_config(task), ROWS, mesh, num_steps=STEPS)
    batches = [next(straight) for _ in range(5)]
    state = data.DataIterator(_config(task), ROWS, mesh, num_steps=STEPS)
    next(state), next(state)
    saved = state.state()
    assert saved["condition_steps"] == [0, 3] and saved["batches_consumed"] == 2
    resumed = data.DataIterator(_config(task), ROWS, mesh, num_steps=STEPS)
    resumed.restore(json.loads(json.dumps(saved)))  # (the checkpoint stores it as JSON)
    for want in batches[2:]:  # step 2 in the window, 3 and 4 after it
        got = next(resumed)
        for k in want:
            np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]))
    other_budget = data.DataIterator(_config(task), ROWS, mesh, num_steps=8)
    with pytest.raises(
        data.DataStateMismatchError,
        match=r"has condition_steps=\[0, 3\] but this run has condition_steps=\[0, 4\]",
    ):
        other_budget.restore(saved)
    with pytest.raises(ConfigError, match=r"conditions only part of training .* num_steps"):
        data.DataIterator(_config(task), ROWS, mesh)


TINY = [
    "--gin.NUM_STEPS=40",
    "--gin.BATCH_SIZE=8",
    "--gin.SEQUENCE_LENGTH=32",
    "--gin.WARMUP_STEPS=1",
    "--gin.train.grad_accum_steps=1",
    "--gin.train.checkpoint_every=4",
    "--gin.train.log_every=1",
    "--gin.ModelConfig.num_layers=1",
    "--gin.ModelConfig.num_heads=2",
    "--gin.ModelConfig.embed_dim=32",
    "--gin.ModelConfig.mlp_dim=64",
    "--gin.AugmentConfig.condition_end=0.5",
]


@pytest.mark.slow
def test_kill_9_mid_schedule_resumes_the_same_stream(tmp_path, scored):
    """`toxjax train` with MeCo's cooldown at half the run, killed with -9 before the
    switch, resumed past it: metrics.jsonl ends with the losses of an uninterrupted run."""
    args = ["--gin_file=experiments/inst_125m.gin", f"--gin.CORPUS_FILES={scored}", *TINY]
    gin.clear_config()
    assert cli.main(["train", f"--gin.MODEL_DIR={tmp_path / 'ref'}", *args]) == 0
    reference = [m["loss"] for m in run_logs.read_metrics(str(tmp_path / "ref"))]
    assert len(reference) == 40
    assert RunInfo.read(str(tmp_path / "ref")).augment.condition_end == 0.5

    model_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "toxjax.cli", "train", f"--gin.MODEL_DIR={model_dir}", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (model_dir / "8").is_dir():  # a committed checkpoint, before the switch at 20
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(int(p) for p in os.listdir(model_dir) if p.isdigit())
    assert killed_at < 20
    assert (model_dir / train_guards.LOCK_FILE).exists()  # the kill left it behind
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resume from step {killed_at}" in done.stdout + done.stderr
    assert [m["loss"] for m in run_logs.read_metrics(str(model_dir))] == reference

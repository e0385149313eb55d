"""Every benchmark's documented command runs, at its toy size, the way a user runs it.

A benchmark is a user path: a change to a shared builder (the train step, the sampler,
the scorers) must not break one silently. Each test runs the script in a subprocess
(one CPU device, as a user's machine) and checks it finished with its RESULT line;
timings are never asserted. `benchmarks/summary.py`'s parsing is checked on its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import summary  # noqa: E402


def _env(**extra) -> dict:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # one CPU device, not the tests' eight
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")])),
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="2",
        **extra,
    )
    return env


def _run(cmd: list[str], timeout: int = 1200, **env) -> str:
    proc = subprocess.run(
        cmd, cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _result(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, stdout[-3000:]
    return summary.result_fields(lines[-1])


def _py(script: str, *args: str) -> list[str]:
    return [sys.executable, os.path.join("benchmarks", script), *args]


@pytest.mark.slow
def test_train_step_times_each_contender_twice_and_the_demo_step():
    """Two repeats: the step donates its state, so the benchmark must never time the
    same state twice ("Buffer has been deleted or donated" before)."""
    out = _run(_py("train_step.py", "--tiny", "--steps", "2", "--repeats", "2", "--demo"))
    fields = _result(out)
    assert {"ours_tok_s", "peer_tok_s", "ratio", "ratio_plain_adamw", "demo_frac_peak"} <= set(
        fields
    )
    for name in ("toxjax", "hf-flax same chain", "hf-flax adamw", "demo 8x64"):
        assert f"\n{name} " in out


@pytest.mark.parametrize("tiny", [True, False])
def test_the_demo_step_is_the_demo_model(tiny):
    """`--demo` times the model the demo trains: its gin file with its bindings (a bare
    `ModelConfig()` once ignored them and timed the default size)."""
    import jax
    import jax.numpy as jnp
    import train_step
    from flax.core import meta

    from toxjax.demo.stages import DemoConfig
    from toxjax.model import DecoderLM, ModelConfig

    cfg = DemoConfig.quick() if tiny else DemoConfig.full()
    shape = dict(
        num_layers=2, num_heads=4, embed_dim=64, vocab_size=512, max_len=cfg.sequence_length
    )
    if not tiny:
        shape.update(num_layers=4, embed_dim=256, vocab_size=4096, scan_unroll=4)
    model = ModelConfig(position="learned", tied_embeddings=True, **shape)
    contender = train_step.demo_contender(tiny)
    tokens = cfg.batch_size * cfg.sequence_length
    assert contender.flops_per_step == model.train_flops_per_token(cfg.sequence_length) * tokens
    init = jax.eval_shape(DecoderLM(model).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    shapes = lambda tree: jax.tree.map(lambda x: x.shape, meta.unbox(tree))  # noqa: E731
    assert shapes(contender.state.params) == shapes(init["params"])


@pytest.mark.slow
def test_train_step_ablations_builds_and_times_every_row():
    out = _run(_py("train_step_ablations.py", "--tiny", "--steps", "1", "--repeats", "1"))
    table = out[out.index("\nrow ") :]
    rows = [line.split("  ")[0].strip() for line in table.splitlines()[2:] if line.strip()]
    import train_step_ablations as ablations

    assert rows == [*ablations.VARIANTS, *ablations.PEERS]


@pytest.mark.slow
def test_train_step_accel_tiny_with_the_pytorch_peers(tmp_path):
    out = _run(_py("train_step_accel.py", "--tiny", "--steps", "1"), OUT=str(tmp_path))
    assert "attention" in _result(out)
    saved = json.loads((tmp_path / "train_step_accel.json").read_text())
    assert saved["result_line"] == [ln for ln in out.splitlines() if ln.startswith("RESULT")][-1]
    assert {"torch eager+sdpa", "torch.compile"} <= set(saved["peers"])


@pytest.mark.slow
def test_sample_tiny():
    assert "ratio_flax" in _result(
        _run(_py("sample.py", "--tiny", "--reps", "1", "--peer_reps", "1"))
    )


@pytest.mark.slow
def test_rtp_eval_tiny(tmp_path):
    path = tmp_path / "rtp.json"
    fields = _result(_run(_py("rtp_eval.py", "--size", "tiny", "--reps", "1", "--json", str(path))))
    assert "speedup" in fields
    assert set(json.loads(path.read_text())) == {"ours", "peer"}


@pytest.mark.slow
def test_score_smallest_setting():
    args = ("--texts", "8", "--loop_texts", "2", "--reps", "1")
    assert "jax_vs_torch" in _result(_run(_py("score.py", *args)))


@pytest.mark.slow
def test_pipeline_tiny():
    assert "cores_needed" in _result(_run(_py("pipeline.py", "--tiny", "--repeats", "1")))


@pytest.mark.slow
def test_checkpoint_checksums_tiny():
    out = _run(_py("checkpoint_checksums.py", "--tiny", "--repeats", "1"))
    assert "save() blocks: ours" in out and "restore: ours (verified)" in out


@pytest.mark.slow
def test_accelerator_script_tiny_writes_every_result_and_ends_with_the_table(tmp_path):
    out = _run(
        ["bash", "benchmarks/accelerator.sh", "--tiny"],
        timeout=3000,
        OUT=str(tmp_path),
        PYTHON=sys.executable,  # the one with jax (the GPU machine's python3 has it)
    )
    names = ["train_step_accel", "rtp_eval", "score"]
    done = json.loads((tmp_path / "summary.json").read_text())
    assert list(done) == names
    assert all(done[n]["status"] == "ok" and done[n]["result"] for n in names), done
    for name in names:
        assert json.loads((tmp_path / f"{name}.json").read_text())
    table = out.rstrip().splitlines()[-4:]
    assert table[0].split() == ["benchmark", "status", "seconds", "result"]
    assert [line.split()[0] for line in table[1:]] == names


def test_summary_reads_the_last_result_line_and_names_each_status(tmp_path, capsys):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.log").write_text("x\nRESULT old=1\nRESULT tok_s=1234 attention=cudnn\n")
    (logs / "b.log").write_text("no result\n")
    (tmp_path / "c.json").write_text('{"own": 1}')
    (logs / "c.log").write_text("RESULT k=2\n")
    code = summary.main(
        ["--out", str(tmp_path), "--logs", str(logs), "a=0:12", "b=124:130", "c=3:1"]
    )
    assert code == 1
    done = json.loads((tmp_path / "summary.json").read_text())
    assert done == {
        "a": {"status": "ok", "seconds": 12.0, "result": {"tok_s": 1234.0, "attention": "cudnn"}},
        "b": {"status": "time limit", "seconds": 130.0, "result": {}},
        "c": {"status": "failed (exit 3)", "seconds": 1.0, "result": {"k": 2.0}},
    }
    assert json.loads((tmp_path / "a.json").read_text())["result"] == done["a"]["result"]
    assert not (tmp_path / "b.json").exists()
    assert json.loads((tmp_path / "c.json").read_text()) == {"own": 1}  # its own file is kept
    assert capsys.readouterr().out.rstrip().splitlines()[-1].split()[:3] == ["c", "failed", "(exit"]

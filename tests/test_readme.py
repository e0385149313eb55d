"""README's commands, run the way a user runs them (a shell, the installed `toxjax`)."""

import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _block(name: str) -> str:
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    m = re.search(rf"<!-- {name} -->\s*```sh\n(.*?)```\s*<!-- /{name} -->", text, re.S)
    assert m, f"README.md has no <!-- {name} --> sh block"
    return m.group(1)


@pytest.mark.slow
def test_tiny_paper_path_block_runs(tmp_path):
    # The block starts with `. .venv/bin/activate` (run from the repository root): give
    # this temporary root the environment running the tests.
    os.symlink(sys.prefix, tmp_path / ".venv")
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("XLA_FLAGS", None)  # a user's machine: the real devices, not 8 fake ones
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", _block("tiny-paper-path")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    run = json.loads((tmp_path / "runs" / "inst_tiny" / "run.json").read_text())
    assert run["strategy"] == "inst" and run["vocabulary"]["kind"] == "gpt2"
    assert run["corpus"]["scorer"] == "profanity-check"
    metrics = json.loads(
        (tmp_path / "runs" / "inst_tiny" / "eval" / "toxicity-inst" / "metrics.json").read_text()
    )
    assert metrics["prefix"] == "Instruction: the following text is not toxic.\n"
    assert metrics["metrics"]["full"]["num_continuations"] == 5
    assert "EMT" in done.stdout

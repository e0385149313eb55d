"""`toxjax.host_memory`: a jitted step's scratch block stays mapped between calls.

Each case runs in a fresh process (the setting must come before any thread allocates)
on one CPU device: a jitted function whose temporaries take ~130 MB, called five times
after a warm-up; the minor page faults of those five calls are counted. glibc's default
maps and unmaps the block every call (tens of thousands of faults per call); with the
setting, the block is reused (no faults). The command `toxjax train` runs it first thing.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from toxjax import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = """
import contextlib, io, resource, sys
from toxjax import cli, host_memory
took = None
if sys.argv[1] == "keep":
    took = host_memory.keep_freed_memory()
elif sys.argv[1] == "toxjax train":  # the command's own path (its help: nothing trained)
    with contextlib.redirect_stdout(io.StringIO()):
        took = cli.main(["train", "--help"]) == 0
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.square(x @ x.T).sum())
x = jnp.linspace(0.0, 1.0, 5800 * 16).reshape(5800, 16)  # x @ x.T: 135 MB of scratch
f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    f(x).block_until_ready()
print(took, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5)
"""


def _faults_per_call(mode: str) -> tuple[str, int]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    env.pop("XLA_FLAGS", None)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.split()
    return out[-2], int(out[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_scratch_block_is_reused_instead_of_faulted_in_every_call():
    took, kept = _faults_per_call("keep")
    ran, by_command = _faults_per_call("toxjax train")
    _, default = _faults_per_call("default")
    assert took == "True" and ran == "True"
    # 135 MB is ~33,000 pages of 4 KiB: the default faults them all in on every call.
    assert default > 20_000, default
    assert kept < 500, kept
    assert by_command < 500, by_command


def test_an_accelerator_host_is_left_alone(monkeypatch):
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setattr(host_memory, "ACCELERATOR_DEVICES", (os.path.abspath(__file__),))
    assert host_memory.accelerator_present()
    assert host_memory.keep_freed_memory() is False
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # forced onto the CPU: tuned after all
    assert not host_memory.accelerator_present()

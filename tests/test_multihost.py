"""Multi-host training on one machine: 2 processes x 4 CPU devices, jax.distributed on
localhost, gloo collectives. They must train one model together (the same loss on both)
and match a single-process 8-device run that sees the same global batches.

Run as a script, this file is one worker process (see `_worker`).
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
NUM_PROCESSES = 2
COMMON = [
    "--gin_file=runs/pretrain.gin",
    "--gin_file=models/test.gin",
    "--gin.TASK=test_fortunes_bytes_v1",
    "--gin.SEQUENCE_LENGTH=64",
    "--gin.BATCH_SIZE=8",
    "--gin.WARMUP_STEPS=2",
    "--gin.NUM_STEPS=4",
    "--gin.train.module_imports=['task_fixtures']",
    "--gin.train.log_every=1",
    "--gin.train.checkpoint_every=2",
    "--gin.train.mesh_shape=(2, 2, 2)",
]


def _worker(argv: list[str]) -> None:
    """`python test_multihost.py OUT.json --multihost --process_id=I ... <train flags>`."""
    out = argv.pop(0)
    import jax

    # Cross-process collectives on CPU go through gloo (TPU/GPU have their own).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from toxjax import gin_utils
    from toxjax import train as train_lib

    rest = train_lib.init_distributed(argv)
    gin_utils.parse_gin(*gin_utils.parse_flags(rest))
    result = train_lib.train(progress=False)
    with open(out, "w") as f:
        json.dump(
            {
                "process_index": jax.process_index(),
                "process_count": jax.process_count(),
                "devices": jax.device_count(),
                "local_devices": jax.local_device_count(),
                "steps": result.steps,
                "losses": result.losses,
            },
            f,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run_hosts(tmp_path, model_dir, *extra: str) -> list[dict]:
    """Starts NUM_PROCESSES workers on MODEL_DIR; returns each one's report."""
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="2",
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        PYTHONPATH=os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")]),
    )
    address = f"localhost:{_free_port()}"
    procs, outs = [], []
    for i in range(NUM_PROCESSES):
        out = tmp_path / f"host{i}-{len(list(tmp_path.iterdir()))}.json"
        cmd = [
            sys.executable,
            __file__,
            str(out),
            "--multihost",
            f"--coordinator_address={address}",
            f"--num_processes={NUM_PROCESSES}",
            f"--process_id={i}",
            *COMMON,
            f"--gin.MODEL_DIR={model_dir}",
            *extra,
        ]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
        outs.append(out)
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=240)[0].decode(errors="replace"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"process {i} failed:\n{log[-4000:]}"
    return [json.loads(o.read_text()) for o in outs]


def _two_host_reference(monkeypatch, model_dir, *extra_bindings):
    """One process, 8 devices, fed the global batches two hosts would assemble.

    Each host reads its own shard of the task (`seqio.ShardInfo`), so the global batch
    is [host 0's rows, host 1's rows]; emulate that by reading both shards here.
    """
    import tensorflow as tf
    from train_helpers import gin_train

    from toxjax import data as data_lib

    real_local_dataset = data_lib.get_local_dataset

    class _Host:  # what data.py asks of jax, as seen by host `index`
        def __init__(self, index):
            self.index = index

        def process_index(self):
            return self.index

        def process_count(self):
            return NUM_PROCESSES

    def two_hosts(cfg, global_batch_size, num_epochs=None, **kwargs):
        real_jax, shards = data_lib.jax, []
        try:
            for i in range(NUM_PROCESSES):
                data_lib.jax = _Host(i)
                shards.append(real_local_dataset(cfg, global_batch_size, num_epochs, **kwargs))
        finally:
            data_lib.jax = real_jax
        return tf.data.Dataset.zip(tuple(shards)).map(
            lambda *parts: {k: tf.concat([p[k] for p in parts], 0) for k in parts[0]}
        )

    monkeypatch.setattr(data_lib, "get_local_dataset", two_hosts)
    return gin_train(
        model_dir,
        "NUM_STEPS = 4",
        "train.checkpoint_every = 2",
        "train.mesh_shape = (2, 2, 2)",
        *extra_bindings,
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_train_one_model(tmp_path, monkeypatch):
    import task_fixtures  # noqa: F401  (registers the test task in this process)

    model_dir = tmp_path / "run"
    hosts = _run_hosts(tmp_path, model_dir)
    for i, h in enumerate(hosts):
        assert (h["process_index"], h["process_count"]) == (i, NUM_PROCESSES)
        assert (h["devices"], h["local_devices"]) == (8, 4)
        assert h["steps"] == [1, 2, 3, 4]
    # One model: both processes see the same (globally reduced) loss, bit for bit.
    assert hosts[0]["losses"] == hosts[1]["losses"]
    reference = _two_host_reference(monkeypatch, tmp_path / "reference")
    np.testing.assert_allclose(hosts[0]["losses"], reference.losses, rtol=2e-5)
    # Process 0 alone writes the run files; the checkpoint is one, written together.
    from toxjax import run_logs

    assert [m["step"] for m in run_logs.read_metrics(str(model_dir))] == [1, 2, 3, 4]
    assert sorted(p.name for p in model_dir.iterdir() if p.name.isdigit()) == ["2", "4"]


if __name__ == "__main__":
    _worker(sys.argv[1:])

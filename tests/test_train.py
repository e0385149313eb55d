"""Training core end to end on the fortunes byte task, tiny model, 8 CPU devices."""

import json
import os
import signal
import subprocess
import sys
import time

import gin
import numpy as np
import orbax.checkpoint as ocp
import pytest
import task_fixtures  # noqa: F401  (registers the test task)
from train_helpers import TESTS_DIR, gin_train

from toxjax import checkpoint as ckpt_lib
from toxjax import checksums, fileio, gin_utils, run_logs, train_guards
from toxjax import train as train_lib
from toxjax.optim import OptimizerConfig
from toxjax.run_dir import RunDir


def test_loss_falls_on_real_text(tmp_path):
    r = gin_train(tmp_path, "NUM_STEPS = 30", "LEARNING_RATE = 3e-3")
    assert len(r.losses) == 30
    assert np.mean(r.losses[-5:]) < r.losses[0] - 1.0, r.losses
    files = os.listdir(tmp_path)
    for name in ("config.gin", "run.json", "metrics.jsonl", "train"):
        assert name in files
    assert (
        "train.num_steps = %NUM_STEPS" in (tmp_path / "config.gin").read_text()
        or "NUM_STEPS = 30" in (tmp_path / "config.gin").read_text()
    )
    # The run directory alone rebuilds the model and vocabulary for inference.
    bundle = RunDir.open(str(tmp_path)).load()
    assert bundle.step == 30 and bundle.config.vocab_size == 384
    assert bundle.vocabulary.decode(bundle.vocabulary.encode("Hi")) == "Hi"


def test_sharded_2x2x2_equals_single_device(tmp_path):
    single = gin_train(tmp_path / "one", "NUM_STEPS = 3", "train.mesh_shape = (1, 1, 1)")
    sharded = gin_train(tmp_path / "eight", "NUM_STEPS = 3", "train.mesh_shape = (2, 2, 2)")
    np.testing.assert_allclose(sharded.losses, single.losses, rtol=2e-5)


def test_grad_accumulation_equals_full_batch(tmp_path):
    full = gin_train(tmp_path / "a", "NUM_STEPS = 3")
    accum = gin_train(
        tmp_path / "b",
        "NUM_STEPS = 3",
        "train.grad_accum_steps = 2",
        "train.mesh_shape = (4, 1, 1)",
    )
    np.testing.assert_allclose(accum.losses, full.losses, rtol=2e-5)


def test_restore_continues_exactly(tmp_path):
    common = ("NUM_STEPS = 6", "train.checkpoint_every = 3")
    straight = gin_train(tmp_path / "straight", *common)
    first = gin_train(tmp_path / "resumed", *common, "train.stop_after = 3")
    assert first.steps == [1, 2, 3]
    second = gin_train(tmp_path / "resumed", *common)
    assert second.steps == [4, 5, 6]
    assert first.losses + second.losses == straight.losses  # bit-identical on CPU


def _metrics_losses(model_dir):
    return [m["loss"] for m in run_logs.read_metrics(str(model_dir))]


@pytest.mark.slow
def test_kill_9_mid_run_resumes_exactly(tmp_path):
    """A second trainer on the running run's MODEL_DIR is refused before it does any work;
    the first is killed with -9 mid-run, and the rerun takes its lock over and resumes
    exactly: metrics.jsonl ends with every step once, the losses of an uninterrupted run."""
    steps = 40
    reference = gin_train(tmp_path / "ref", f"NUM_STEPS = {steps}", "train.checkpoint_every = 4")
    model_dir = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "toxjax.train",
        "--gin_file=runs/pretrain.gin",
        "--gin_file=models/test.gin",
        f"--gin.MODEL_DIR={model_dir}",
        "--gin.TASK=test_fortunes_bytes_v1",
        "--gin.SEQUENCE_LENGTH=64",
        "--gin.BATCH_SIZE=8",
        "--gin.train.module_imports=['task_fixtures']",
        "--gin.train.log_every=1",
        "--gin.WARMUP_STEPS=2",
        f"--gin.NUM_STEPS={steps}",
        "--gin.train.checkpoint_every=4",
    ]
    env = dict(os.environ, PYTHONPATH=TESTS_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lock = model_dir / train_guards.LOCK_FILE
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if lock.exists() and f'"pid": {proc.pid},' in lock.read_text():
            break
        time.sleep(0.05)
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    ours = [line for line in second.stderr.splitlines() if line.startswith("toxjax train")]
    assert second.returncode == train_lib.EXIT_LOCKED, second.stderr[-3000:]
    assert len(ours) == 1 and ours[0].startswith(
        f"toxjax train: the run directory {model_dir} is being written by another process: "
        f"pid {proc.pid} on host {os.uname().nodename} (started "
    )
    while time.time() < deadline and proc.poll() is None:
        if (model_dir / "8").is_dir():  # a committed checkpoint exists; more are coming
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(int(p) for p in os.listdir(model_dir) if p.isdigit())
    assert killed_at < steps
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resume from step" in done.stdout + done.stderr
    assert f"note: took over the lock of pid {proc.pid} " in done.stderr
    assert _metrics_losses(model_dir) == reference.losses
    assert not lock.exists()  # released at the end


def test_mismatched_checkpoint_is_refused_with_the_parameter_named(tmp_path):
    gin_train(tmp_path, "NUM_STEPS = 2")
    with pytest.raises(
        ckpt_lib.CheckpointMismatchError,
        match=r"blocks/attention/out_kernel: checkpoint shape \(2, 4, 8, 32\), model shape \(2, 4, 16, 64\)",
    ):
        gin_train(tmp_path, "NUM_STEPS = 4", "ModelConfig.embed_dim = 64")


def _saved_arrays(model_dir, step) -> dict[str, np.ndarray]:
    state = ocp.StandardCheckpointHandler().restore(model_dir / str(step) / "state")
    return {k: np.asarray(v) for k, v in checksums.named_arrays(state).items()}


def _all_finite(arrays) -> bool:
    return all(np.isfinite(a).all() for a in arrays.values() if a.dtype.kind == "f")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(train_lib.NonFiniteLossError, match="Last good checkpoint: step 1"):
        gin_train(
            tmp_path,
            "NUM_STEPS = 6",
            "train.checkpoint_every = 1",
            "LEARNING_RATE = 1e30",
            "WARMUP_STEPS = 0",
            "OptimizerConfig.clip_norm = None",
        )
    steps = ocp.CheckpointManager(str(tmp_path)).all_steps()
    assert steps == [1]
    # Step 1's update is huge (weights near 1e30) but finite; step 2's loss is not.
    assert _all_finite(_saved_arrays(tmp_path, 1))


def test_an_overflowing_update_is_refused_not_checkpointed(tmp_path):
    """Loss and gradient are finite, the update is not (an infinite learning rate): the
    step is rejected, and the last good checkpoint really is the last finite state."""
    common = ("NUM_STEPS = 6", "train.checkpoint_every = 1")
    gin_train(tmp_path, *common, "train.stop_after = 2")
    good = _saved_arrays(tmp_path, 2)
    assert _all_finite(good)
    with pytest.raises(
        train_lib.NonFiniteLossError,
        match=r"the updated weights or optimizer state became non-finite at step 3 "
        r"\(loss=5\.\d+, grad_norm=\d+\.\d+\).*Last good checkpoint: step 2",
    ):
        gin_train(tmp_path, *common, "LEARNING_RATE = 1e39")  # inf in float32
    assert ocp.CheckpointManager(str(tmp_path)).all_steps() == [1, 2]
    kept = _saved_arrays(tmp_path, 2)
    assert kept.keys() == good.keys()
    for name in good:
        np.testing.assert_array_equal(kept[name], good[name], err_msg=name)


def test_changed_optimizer_or_data_settings_are_a_mismatch_in_one_line(tmp_path, capfd):
    gin_train(tmp_path, "NUM_STEPS = 2")
    # Clipping off changes the optimizer state's structure: a mismatch, not "corrupt".
    with pytest.raises(
        ckpt_lib.CheckpointMismatchError,
        match=r"the training state in .* \(step 2\) does not match this run's optimizer "
        r"\(opt_state/0/0/count: checkpoint absent, now \(\)",
    ):
        gin_train(tmp_path, "NUM_STEPS = 4", "OptimizerConfig.clip_norm = None")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name[0].isdigit()) == ["2"]
    capfd.readouterr()
    rc = train_lib.main(_cli(tmp_path, "--gin.SEQUENCE_LENGTH=64", "--gin.BATCH_SIZE=16"))
    err = capfd.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("toxjax train")]
    assert rc == train_lib.EXIT_MISMATCH and "Traceback" not in err
    assert ours == [
        "toxjax train: checkpointed data iterator has global_batch_size=8 but this run has "
        "global_batch_size=16; resuming would not reproduce the data order. Use a new "
        "MODEL_DIR or restore the original setting."
    ]


def test_misspelled_gin_binding_is_an_error_naming_it(capsys):
    rc = train_lib.main(
        [
            "--gin_file=runs/pretrain.gin",
            "--gin_file=models/test.gin",
            "--gin.train.num_stepz=3",
            "--gin.MODEL_DIR=/tmp/x",
            "--gin.TASK=t",
        ]
    )
    assert rc == 2
    assert "num_stepz" in capsys.readouterr().err


def _cli(model_dir, *flags) -> list[str]:
    gin.clear_config()  # a fresh process would start with an empty configuration
    return [
        "--gin_file=runs/pretrain.gin",
        "--gin_file=models/test.gin",
        f"--gin.MODEL_DIR={model_dir}",
        "--gin.TASK=test_fortunes_bytes_v1",
        "--gin.train.module_imports=['task_fixtures']",
        *flags,
    ]


def test_misspelled_gin_macro_is_an_error_naming_the_close_match(tmp_path, capsys):
    rc = train_lib.main(_cli(tmp_path / "run", "--gin.LEARNING_RAT=1e-5"))
    assert (rc, capsys.readouterr().err) == (
        train_lib.EXIT_CONFIG,
        "toxjax train: configuration error: macro LEARNING_RAT (from the binding "
        "'LEARNING_RAT = 1e-5') is not used by the configuration; did you mean "
        "LEARNING_RATE?\n",
    )
    assert not (tmp_path / "run").exists()


def test_macros_the_configuration_uses_may_be_set_on_the_command_line():
    bindings = [
        "MODEL_DIR = '/tmp/unused'",
        "TASK = 'unused'",
        "LEARNING_RATE = 1e-5",  # overrides the value in runs/pretrain.gin
        "EVERY = 7",  # defined here, used by the next binding
        "train.log_every = %EVERY",
    ]
    gin.clear_config()
    gin_utils.parse_gin(["runs/pretrain.gin", "models/test.gin"], bindings)
    gin_utils.check_macros_used(bindings)
    assert gin.get_configurable(OptimizerConfig)().learning_rate == 1e-5


@pytest.mark.parametrize(
    "flag,message",
    [
        (
            "--gin.train.checkpoint_every=0",
            "train.checkpoint_every = 0: expected a positive integer",
        ),
        (
            "--gin.NUM_STEPS=sixty",
            "NUM_STEPS (train.num_steps) = 'sixty': expected a positive integer",
        ),
        ("--gin.BATCH_SIZE=-8", "BATCH_SIZE (train.batch_size) = -8: expected a positive integer"),
        ("--gin.train.log_every=2.5", "train.log_every = 2.5: expected a positive integer"),
        (
            "--gin.train.keep_checkpoints=0",
            "train.keep_checkpoints = 0: expected a positive integer",
        ),
        (
            "--gin.train.grad_accum_steps=3",
            "BATCH_SIZE (train.batch_size) = 8 is not divisible by train.grad_accum_steps = 3",
        ),
        (
            "--gin.LEARNING_RATE=fast",
            "LEARNING_RATE (OptimizerConfig.learning_rate) = 'fast': expected float",
        ),
        (
            "--gin.SEQUENCE_LENGTH=0",
            "SEQUENCE_LENGTH (DataConfig.sequence_length) = 0: expected a positive integer",
        ),
        (
            "--gin.train.mesh_shape=(2, 0, 1)",
            "train.mesh_shape = (2, 0, 1): expected a tuple of axis sizes (positive, or -1 "
            "for the rest), e.g. (-1, 1, 1)",
        ),
    ],
)
def test_bad_train_arguments_are_one_line_naming_the_binding(tmp_path, capsys, flag, message):
    rc = train_lib.main(_cli(tmp_path / "run", flag))
    assert (rc, capsys.readouterr().err) == (
        train_lib.EXIT_CONFIG,
        f"toxjax train: configuration error: {message}\n",
    )
    assert not (tmp_path / "run").exists()  # checked before anything is written or built


def test_missing_gin_file_is_an_error_naming_it(capsys):
    rc = train_lib.main(["--gin_file=runs/nope.gin"])
    assert rc == 2
    assert "runs/nope.gin" in capsys.readouterr().err


def test_metrics_written_as_json_lines(tmp_path):
    gin_train(tmp_path, "NUM_STEPS = 2")
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert [r["step"] for r in recs] == [1, 2]
    assert all(r["tokens"] > 0 and r["grad_norm"] > 0 for r in recs)


def test_run_logs_on_a_remote_style_dir(tmp_path):
    """A URL MODEL_DIR: run files via tf.io.gfile, metrics mirrored locally and uploaded.

    TensorFlow's `ram://` filesystem stands in for a bucket (not a local path). Orbax
    reaches gs:// through etils.epath itself.
    """
    import tensorflow as tf

    url = f"ram://{tmp_path.name}/run"
    assert fileio.resolve(url) == url
    tf.io.gfile.makedirs(url)
    fileio.write_text(url + "/config.gin", "x = 1\n")
    assert fileio.read_text(url + "/config.gin") == "x = 1\n"
    log = run_logs.MetricsLog(url)
    assert log.path != log.remote_path  # a local mirror
    log.append([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}])
    log.sync()
    log.append([{"step": 3, "loss": 1.0}])  # written after the last checkpoint, not synced
    assert [m["step"] for m in run_logs.read_metrics(url)] == [1, 2]
    resumed = run_logs.MetricsLog(url)  # a new process resuming from step 2
    resumed.truncate_after(2)
    resumed.append([{"step": 3, "loss": 0.9}])
    resumed.sync()
    assert [m["loss"] for m in run_logs.read_metrics(url)] == [2.0, 1.5, 0.9]


def test_a_rewrite_killed_midway_leaves_the_old_metrics_intact(tmp_path, monkeypatch):
    """A resuming run drops the lines after its checkpoint by rewriting metrics.jsonl: the
    write dies after its first bytes here, and the old log survives; the temporary file of
    a writer killed outright (no cleanup ran) is removed by the next rewrite."""
    log = run_logs.MetricsLog(str(tmp_path))
    log.append([{"step": s, "loss": float(s)} for s in range(1, 6)])
    before = (tmp_path / "metrics.jsonl").read_text()

    class Killed(BaseException):
        pass

    real_fsync = os.fsync

    def die(fd):
        raise Killed

    monkeypatch.setattr(fileio.os, "fsync", die)
    with pytest.raises(Killed):
        log.truncate_after(3)
    monkeypatch.setattr(fileio.os, "fsync", real_fsync)
    assert (tmp_path / "metrics.jsonl").read_text() == before
    # A writer killed by SIGKILL leaves `<file>.<pid>.tmp`; its pid is gone.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"metrics.jsonl.{dead.pid}.tmp").write_text('{"step": 1}\n')
    log.truncate_after(3)
    assert [m["step"] for m in run_logs.read_metrics(str(tmp_path))] == [1, 2, 3]
    assert os.listdir(tmp_path) == ["metrics.jsonl"]  # no temporary file left behind


# ------------------------------------------------------------- trust, round 2 (issue 24)


def _snapshot(model_dir) -> dict[str, bytes]:
    """Every file under a run directory, by relative path, with its bytes."""
    out = {}
    for root, _, files in os.walk(model_dir):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, model_dir)] = f.read()
    return out


@pytest.mark.parametrize(
    "flag",
    [
        "--gin.ModelConfig.embed_dim=64",  # another model shape
        "--gin.BATCH_SIZE=16",  # another batch size
        "--gin.OptimizerConfig.clip_norm=None",  # another optimizer state
        "--gin.DataConfig.seed=1",  # another data order
    ],
)
def test_a_refused_resume_writes_nothing(tmp_path, capfd, flag):
    """Item 3: a resume refused with exit 4 used to rewrite config.gin (and run.json for
    another model), so `toxjax eval` on the run failed afterwards."""
    run = tmp_path / "run"
    assert train_lib.main(_cli(run, "--gin.SEQUENCE_LENGTH=64", "--gin.NUM_STEPS=2")) == 0
    before = _snapshot(run)
    capfd.readouterr()
    rc = train_lib.main(_cli(run, "--gin.SEQUENCE_LENGTH=64", "--gin.NUM_STEPS=4", flag))
    err = [x for x in capfd.readouterr().err.splitlines() if x.startswith("toxjax train")]
    assert rc == train_lib.EXIT_MISMATCH and len(err) == 1, err
    assert _snapshot(run) == before
    assert RunDir.open(str(run)).load().step == 2  # the run still evaluates


def test_a_run_that_dies_in_its_first_save_logs_each_step_once(tmp_path, monkeypatch):
    """Item 4: a run killed (or out of disk) before its first checkpoint committed left
    its logged steps in metrics.jsonl; the rerun logged them again: 1,2,3,1,2,3,..."""

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(ckpt_lib.Checkpointer, "save", disk_full)
        with pytest.raises(OSError, match="No space left"):
            gin_train(tmp_path, "NUM_STEPS = 6", "train.checkpoint_every = 3")
    assert [r["step"] for r in run_logs.read_metrics(str(tmp_path))] == [1, 2, 3]
    gin_train(tmp_path, "NUM_STEPS = 6", "train.checkpoint_every = 3")
    assert [r["step"] for r in run_logs.read_metrics(str(tmp_path))] == [1, 2, 3, 4, 5, 6]


def test_a_nan_before_any_checkpoint_says_so(tmp_path):
    """Item 18: the message said "Last good checkpoint: step None"."""
    with pytest.raises(train_lib.NonFiniteLossError) as e:
        gin_train(
            tmp_path,
            "NUM_STEPS = 6",
            "train.checkpoint_every = 5",
            "LEARNING_RATE = 1e30",
            "WARMUP_STEPS = 0",
            "OptimizerConfig.clip_norm = None",
        )
    assert "None" not in str(e.value)
    assert f"No checkpoint was written yet in {tmp_path}" in str(e.value)


def test_a_misspelled_macro_inside_a_gin_file_is_an_error_naming_its_line(tmp_path, capsys):
    """Item 7: only command-line bindings were checked."""
    ablation = tmp_path / "my_ablation.gin"
    ablation.write_text("include 'runs/pretrain.gin'\n\nLERNING_RATE = 1e-3\n")
    argv = _cli(tmp_path / "run")
    argv[0] = f"--gin_file={ablation}"
    rc = train_lib.main(argv)
    err = capsys.readouterr().err
    assert rc == train_lib.EXIT_CONFIG
    assert err == (
        f"toxjax train: configuration error: macro LERNING_RATE (from {ablation}:3) is not "
        "used by the configuration; did you mean LEARNING_RATE?\n"
    )
    assert not (tmp_path / "run").exists()


def test_a_model_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    """Item 16: MODEL_DIR that is a file (or read-only) gave a traceback."""
    afile = tmp_path / "run"
    afile.write_text("not a directory")
    assert train_lib.main(_cli(afile)) == train_lib.EXIT_CONFIG
    assert capsys.readouterr().err == (
        f"toxjax train: configuration error: MODEL_DIR (train.model_dir) = '{afile}' is a "
        "file, not a directory\n"
    )
    if os.geteuid() != 0:  # root writes into read-only folders
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        assert train_lib.main(_cli(ro)) == train_lib.EXIT_CONFIG
        assert "is not writable" in capsys.readouterr().err


def _train_cmd(model_dir, *flags):
    return [
        sys.executable,
        "-m",
        "toxjax.train",
        "--gin_file=runs/pretrain.gin",
        "--gin_file=models/test.gin",
        f"--gin.MODEL_DIR={model_dir}",
        "--gin.TASK=test_fortunes_bytes_v1",
        "--gin.SEQUENCE_LENGTH=64",
        "--gin.train.module_imports=['task_fixtures']",
        "--gin.WARMUP_STEPS=0",
        *flags,
    ]


@pytest.mark.slow
def test_every_error_path_exits_with_its_code_in_bounded_time(tmp_path):
    """Item 5: `toxjax train` sometimes hung after an error (alive 23 minutes later).
    A watchdog: each error path, several times, must exit with its documented code
    within 120 s."""
    env = dict(os.environ, PYTHONPATH=TESTS_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""))
    bad_corpus = tmp_path / "bad.jsonl"
    lines = [json.dumps({"text": f"line {i} " * 20, "toxicity": 0.1}) for i in range(50)]
    bad_corpus.write_text("\n".join(lines) + "\n{broken\n")
    nonfinite = ("--gin.LEARNING_RATE=1e30", "--gin.OptimizerConfig.clip_norm=None")
    cases = {
        "nonfinite": (_train_cmd(tmp_path / "nan", "--gin.NUM_STEPS=4", *nonfinite), 3),
        "data": (
            [
                sys.executable,
                "-m",
                "toxjax.train",
                "--gin_file=experiments/inst_125m.gin",
                f"--gin.MODEL_DIR={tmp_path / 'data'}",
                f"--gin.CORPUS_FILES={bad_corpus}",
                "--gin.NUM_STEPS=2",
                "--gin.BATCH_SIZE=8",
                "--gin.SEQUENCE_LENGTH=64",
                "--gin.train.grad_accum_steps=1",
                "--gin.ModelConfig.num_layers=1",
                "--gin.ModelConfig.embed_dim=32",
                "--gin.ModelConfig.num_heads=2",
                "--gin.ModelConfig.mlp_dim=64",
                "--gin.ModelConfig.vocab_size=50304",
            ],
            2,
        ),
    }
    for name, (cmd, code) in cases.items():
        for attempt in range(3):
            t0 = time.time()
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
            assert done.returncode == code, (name, attempt, done.stderr[-2000:])
            ours = [x for x in done.stderr.splitlines() if x.startswith("toxjax train")]
            assert len(ours) == 1 and "Traceback" not in done.stderr, (name, done.stderr[-2000:])
            assert time.time() - t0 < 120
    assert "bad.jsonl:51: not valid JSON" in ours[0]


def test_no_thread_is_left_alive_after_an_error(tmp_path):
    """Item 5: every background thread (checkpointing, TensorBoard) ends with the run."""
    import threading

    before = set(threading.enumerate())
    with pytest.raises(train_lib.NonFiniteLossError):
        gin_train(
            tmp_path,
            "NUM_STEPS = 6",
            "train.checkpoint_every = 1",
            "LEARNING_RATE = 1e30",
            "WARMUP_STEPS = 0",
            "OptimizerConfig.clip_norm = None",
        )
    left = [t for t in threading.enumerate() if t not in before and not t.daemon and t.is_alive()]
    assert left == [], left

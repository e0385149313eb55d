"""Checksummed checkpoints: damage is detected, named, skipped for the newest intact step.

The tiny model trains 6 steps (checkpoints at 3 and 6); the newest step is damaged, the
run resumes from step 3 and must reproduce steps 4-6 of the uninterrupted run bit for
bit, with a warning naming the damaged step. A step asked for by number is refused, and
a run directory with no intact step stops with one line and a distinct exit code.
"""

import json
import os
import shutil

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import task_fixtures  # noqa: F401  (registers the test task)
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from train_helpers import gin_train

from toxjax import checkpoint as ckpt_lib
from toxjax import checksums, run_logs
from toxjax import train as train_lib
from toxjax.run_dir import RunDir

COMMON = ("NUM_STEPS = 6", "train.checkpoint_every = 3")
ADAM_MU = "opt_state/1/0/mu/embedding"  # clip_by_global_norm, then AdamW's moments
PARAM = "params/blocks/mlp/in_kernel"


def test_digests_do_not_depend_on_sharding_and_catch_every_single_bit_flip():
    x = np.random.RandomState(0).randn(16, 24).astype(np.float32)
    tree = {"w": x, "h": x.astype(jax.numpy.bfloat16), "n": np.arange(5, dtype=np.int32)}
    single = checksums.tree_digests(jax.device_put(tree, jax.devices()[0]))
    mesh = jax.make_mesh((2, 2, 2), ("a", "b", "c"))
    shardings = {
        "w": NamedSharding(mesh, P("a", ("b", "c"))),
        "h": NamedSharding(mesh, P(None, "c")),
        "n": NamedSharding(mesh, P()),
    }
    assert checksums.tree_digests(jax.device_put(tree, shardings)) == single
    # The weighted sum is sum(bits[i] * (2i + 1)) mod 2**32, here computed by numpy.
    bits = x.view(np.uint32).ravel().astype(np.uint64)
    i = np.arange(bits.size, dtype=np.uint64)
    assert single["w"][:8] == f"{int((bits * (2 * i + 1)).sum() % 2**32):08x}"
    for bit in range(32):
        y = x.copy()
        y.view(np.uint32).ravel()[7] ^= np.uint32(1 << bit)
        assert checksums.tree_digests({"w": y})["w"] != single["w"], bit
    # Two sign flips cancel in the weighted sum (2 * 2**31 = 0 mod 2**32), not the mixed.
    y = x.copy()
    y.view(np.uint32).ravel()[[3, 10]] ^= np.uint32(1 << 31)
    flipped = checksums.tree_digests({"w": y})["w"]
    assert flipped[:8] == single["w"][:8] and flipped != single["w"]
    y = x.copy()
    y.ravel()[[3, 10]] = y.ravel()[[10, 3]]  # two values swapped
    assert checksums.tree_digests({"w": y})["w"] != single["w"]


def _flip_one_bit(step_dir, name: str) -> None:
    """Rewrites the step's state with one bit of array `name` flipped, as a disk would:
    the files decode, the value is wrong, the recorded checksums are the original ones."""
    state = ocp.StandardCheckpointHandler().restore(step_dir / "state")
    arrays = checksums.named_arrays(state)
    host = np.array(arrays[name])
    host.view(np.uint32).ravel()[5] ^= np.uint32(1 << 20)
    flipped = jax.tree_util.tree_map_with_path(
        lambda path, x: (
            jax.device_put(host, x.sharding) if checksums.leaf_name(path) == name else x
        ),
        state,
    )
    rewritten = step_dir.parent / "rewritten"
    with ocp.StandardCheckpointer() as writer:
        writer.save(rewritten, flipped)
    shutil.rmtree(step_dir / "state")
    os.rename(rewritten, step_dir / "state")


def _data_files(step_dir) -> list[str]:
    """The step's array data files, largest first (Orbax's OCDBT layout)."""
    root = step_dir / "state"
    paths = [os.path.join(r, f) for r, _, fs in os.walk(root) for f in fs if "/d/" in r + "/"]
    return sorted(paths, key=os.path.getsize, reverse=True)


def _truncate(step_dir) -> None:
    for path in _data_files(step_dir)[:1]:
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)


def _flip_bytes(step_dir) -> None:
    path = _data_files(step_dir)[0]
    data = bytearray(open(path, "rb").read())
    for k in range(len(data) // 3, len(data) // 3 + 8):
        data[k] ^= 0xFF
    open(path, "wb").write(bytes(data))


def _steps(model_dir) -> list[int]:
    return sorted(int(p) for p in os.listdir(model_dir) if p.isdigit())


@pytest.mark.slow
def test_damaged_checkpoints_are_named_skipped_and_never_trained_from(tmp_path, capfd):
    run = tmp_path / "run"
    straight = gin_train(run, *COMMON)
    assert _steps(run) == [3, 6]

    # 1. One flipped bit in an Adam moment of step 6: named exactly, run resumes from 3.
    _flip_one_bit(run / "6", ADAM_MU)
    assert RunDir.open(str(run)).load(step=6).step == 6  # its params are intact
    capfd.readouterr()
    resumed = gin_train(run, *COMMON)
    err = capfd.readouterr().err
    assert (
        f"warning: checkpoint step 6 ({run}/6) is corrupt: {ADAM_MU} differs from the "
        f"checksum recorded at save; moved it to {run}/6.corrupt; using step 3\n" in err
    )
    assert resumed.steps == [4, 5, 6]
    assert resumed.losses == straight.losses[3:]  # bit-identical on CPU
    assert [m["loss"] for m in run_logs.read_metrics(str(run))] == straight.losses
    assert _steps(run) == [3, 6] and (run / "6.corrupt").is_dir()

    # 2. A truncated data file (TensorStore cannot read it): the same fallback.
    _truncate(run / "6")
    resumed = gin_train(run, *COMMON)
    err = capfd.readouterr().err
    assert f"warning: checkpoint step 6 ({run}/6) is corrupt: it cannot be read: " in err
    assert f"moved it to {run}/6.corrupt2; using step 3" in err
    assert "TensorStore" not in err  # named once, not pages of sibling read errors
    assert resumed.losses == straight.losses[3:]
    assert [m["loss"] for m in run_logs.read_metrics(str(run))] == straight.losses

    # 3. Inference (eval) verifies the parameters it loads: a step asked for by number is
    # refused, the newest is skipped for an intact one; the run directory is not changed.
    _flip_one_bit(run / "6", PARAM)
    with pytest.raises(ckpt_lib.CorruptCheckpointError) as e:
        RunDir.open(str(run)).load(step=6)
    assert str(e.value) == (
        f"checkpoint step 6 ({run}/6) is corrupt: {PARAM} differs from the checksum "
        "recorded at save"
    )
    warnings = []
    assert RunDir.open(str(run)).load(warn=warnings.append).step == 3
    assert warnings == [f"{e.value}; skipped it; using step 3"]
    assert _steps(run) == [3, 6]

    # 4. Bytes flipped in step 3's largest data file, as a failing disk does (decodable
    # or not, it is caught): no intact step is left. One line, exit code 6, nothing
    # moved, nothing trained.
    _flip_bytes(run / "3")
    gin.clear_config()
    rc = train_lib.main(
        [
            "--gin_file=runs/pretrain.gin",
            "--gin_file=models/test.gin",
            f"--gin.MODEL_DIR={run}",
            "--gin.TASK=test_fortunes_bytes_v1",
            "--gin.SEQUENCE_LENGTH=64",
            "--gin.BATCH_SIZE=8",
            "--gin.NUM_STEPS=6",
            "--gin.train.checkpoint_every=3",
            "--gin.train.module_imports=['task_fixtures']",
        ]
    )
    err = capfd.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("toxjax train")]
    assert rc == train_lib.EXIT_CORRUPT and "Traceback" not in err
    assert len(ours) == 1 and ours[0].startswith(f"toxjax train: no intact checkpoint in {run}: ")
    assert "checkpoint step 6" in ours[0] and "checkpoint step 3" in ours[0]
    assert _steps(run) == [3, 6]


# ----------------------------------------------------------------------------- issue 24 item 14
SHORT = ("NUM_STEPS = 4", "train.checkpoint_every = 2")
_METADATA = "_CHECKPOINT_METADATA"  # Orbax's per-step metadata (item handlers, our marker)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A 4-step run with checkpoints at 2 and 4, trained once; tests work on copies."""
    run = tmp_path_factory.mktemp("short") / "run"
    straight = gin_train(run, *SHORT)
    assert _steps(run) == [2, 4]
    return run, straight.losses


def _copy(short_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(short_run[0], run)
    return run


def _train_cli(run, *extra):
    gin.clear_config()
    return train_lib.main(
        [
            "--gin_file=runs/pretrain.gin",
            "--gin_file=models/test.gin",
            f"--gin.MODEL_DIR={run}",
            "--gin.TASK='test_fortunes_bytes_v1'",
            "--gin.SEQUENCE_LENGTH=64",
            "--gin.BATCH_SIZE=8",
            "--gin.WARMUP_STEPS=2",
            "--gin.train.checkpoint_every=2",
            "--gin.train.module_imports=['task_fixtures']",
            *extra,
        ]
    )


@pytest.mark.slow
def test_a_step_whose_checksums_were_deleted_is_damage_not_an_old_checkpoint(
    short_run, tmp_path, capfd
):
    """The step's metadata says it was saved with checksums: a missing `checksums` item
    is damage (deleted or lost), named as such; training falls back as for any damage."""
    run = _copy(short_run, tmp_path)
    marker = json.loads((run / "4" / _METADATA).read_text())["custom_metadata"]
    assert marker == {ckpt_lib.CHECKSUMS_MARKER: 1}  # written by every save
    shutil.rmtree(run / "4" / "checksums")
    with pytest.raises(ckpt_lib.CorruptCheckpointError) as e:
        RunDir.open(str(run)).load(step=4)
    assert str(e.value) == (
        f"checkpoint step 4 ({run}/4) is corrupt: its checksums item is missing, though the "
        "step was saved with one (deleted or lost), so its arrays cannot be verified"
    )
    warnings = []
    assert RunDir.open(str(run)).load(warn=warnings.append).step == 2
    assert warnings == [f"{e.value}; skipped it; using step 2"]
    capfd.readouterr()
    resumed = gin_train(run, *SHORT)
    assert f"{e.value}; moved it to {run}/4.corrupt; using step 2" in capfd.readouterr().err
    assert resumed.losses == short_run[1][2:]  # retrained exactly


def _as_old_format(step_dir) -> None:
    """What a toxjax from before checksums wrote: no `checksums` item, no marker."""
    shutil.rmtree(step_dir / "checksums")
    meta = json.loads((step_dir / _METADATA).read_text())
    meta["item_handlers"].pop("checksums")
    meta["custom_metadata"] = {}
    (step_dir / _METADATA).write_text(json.dumps(meta))


@pytest.mark.slow
def test_a_checkpoint_from_before_checksums_is_refused_unless_allowed(
    short_run, tmp_path, capfd, monkeypatch
):
    run = _copy(short_run, tmp_path)
    for step in (2, 4):
        _as_old_format(run / str(step))
    want = (
        f"checkpoint step 4 ({run}/4) has no checksums: it was saved by a toxjax that did "
        "not record them, so damage to it cannot be detected; set TOXJAX_ALLOW_UNVERIFIED=1 "
        "to use it unverified, or start a fresh MODEL_DIR"
    )
    with pytest.raises(ckpt_lib.UnverifiedCheckpointError) as e:
        RunDir.open(str(run)).load()
    assert str(e.value) == want
    capfd.readouterr()
    assert _train_cli(run, "--gin.NUM_STEPS=6") == train_lib.EXIT_MISMATCH
    err = capfd.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("toxjax")] == [
        f"toxjax train: {want}"
    ]
    assert "Traceback" not in err and _steps(run) == [2, 4]  # nothing moved or trained
    # Opted in: restored, with a warning that says why it is unverified.
    monkeypatch.setenv("TOXJAX_ALLOW_UNVERIFIED", "1")
    warnings = []
    assert RunDir.open(str(run)).load(warn=warnings.append).step == 4
    assert warnings == [
        f"checkpoint step 4 ({run}/4) has no checksums (saved by a toxjax that did not record "
        "them); restored without verification (TOXJAX_ALLOW_UNVERIFIED=1)"
    ]
    resumed = gin_train(run, "NUM_STEPS = 6", "train.checkpoint_every = 2")
    assert resumed.steps == [5, 6]


def _put_nan(step_dir, name: str) -> None:
    """One element of array `name` set to NaN, the step's checksums recorded anew (as a
    save of that state would): only a finiteness check can tell."""
    state = ocp.StandardCheckpointHandler().restore(step_dir / "state")
    host = np.array(checksums.named_arrays(state)[name])
    host.ravel()[5] = np.nan
    nan_state = jax.tree_util.tree_map_with_path(
        lambda path, x: (
            jax.device_put(host, x.sharding) if checksums.leaf_name(path) == name else x
        ),
        state,
    )
    rewritten = step_dir.parent / "rewritten"
    with ocp.StandardCheckpointer() as writer:
        writer.save(rewritten, nan_state)
    shutil.rmtree(step_dir / "state")
    os.rename(rewritten, step_dir / "state")
    data = ocp.JsonCheckpointHandler().restore(step_dir / "data")
    recorded = checksums.resolve(checksums.manifest(nan_state, {"data": data}))
    shutil.rmtree(step_dir / "checksums")
    (step_dir / "checksums").mkdir()
    ocp.JsonCheckpointHandler().save(step_dir / "checksums", args=ocp.args.JsonSave(recorded))


@pytest.mark.slow
def test_non_finite_parameters_are_refused_for_inference(short_run, tmp_path, capsys):
    from toxjax import cli

    run = _copy(short_run, tmp_path)
    _put_nan(run / "4", PARAM)
    want = (
        f"checkpoint step 4 ({run}/4) has non-finite parameters: "
        f"{PARAM.removeprefix('params/')} (1 NaN); it cannot be used for inference: choose "
        "another step"
    )
    with pytest.raises(ckpt_lib.NonFiniteCheckpointError) as e:
        RunDir.open(str(run)).load()
    assert str(e.value) == want
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": {"text": "Hello", "toxicity": 0.1}}) + "\n")
    gin.clear_config()
    argv = ["eval", "toxicity", "--model_dir", str(run), "--prompts", str(prompts)]
    argv += ["--output_dir", str(tmp_path / "eval"), "--scorer", "profanity-check"]
    assert cli.main([*argv, "--step", "4"]) == 2
    err = capsys.readouterr().err  # (a warning first: the test task has no strategy)
    assert [line for line in err.splitlines() if line.startswith("toxjax")] == [
        f"toxjax eval toxicity: {want}"
    ]
    assert RunDir.open(str(run)).load(step=2).step == 2  # the finite step loads

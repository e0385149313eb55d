"""Guards of a training run, checked by `toxjax.train` before any expensive work.

- `check_train_arguments`: type and range errors of `train`'s arguments as one line that
  names the gin binding (and the macro it came through), never a traceback after
  compiling.
- `prepare_model_dir`: MODEL_DIR is a directory this process can write (a file, or a
  read-only folder, is one line naming it).
- `check_augment_bindings`: `AugmentConfig.*` bindings must reach the task.
- `lock_model_dir` / `check_lock`: one trainer per MODEL_DIR (`toxjax.locking`), held by
  the lead process; on a pod every process learns the lead's verdict.

Part of the gin-configured entry point (it reads gin's bindings to name them); the
library modules stay gin-free.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing
from collections.abc import Sequence

import gin
import jax

from toxjax import locking
from toxjax.data import DataConfig
from toxjax.errors import ConfigError
from toxjax.model import ModelConfig
from toxjax.optim import OptimizerConfig

LOCK_FILE = "LOCK"  # MODEL_DIR/LOCK: one trainer per run directory


class TrainConfigError(ConfigError):
    """A bad argument of `train` (a gin binding), found before any expensive work."""


_POSITIVE_INT_ARGUMENTS = (
    "num_steps",
    "batch_size",
    "grad_accum_steps",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
)


def _binding_name(configurable: str, parameter: str) -> str:
    """How the user set a parameter: 'NUM_STEPS (train.num_steps)' through a macro."""
    name = f"{configurable}.{parameter}"
    try:
        value = gin.query_parameter(name)
    except ValueError:  # not bound by gin: a default or a Python argument
        return name
    if isinstance(value, gin.config.ConfigurableReference) and value.selector == "gin.macro":
        return f"{value.scoped_selector.split('/')[0]} ({name})"
    return name


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _matches(value, hint) -> bool:
    """Whether `value` fits a simple type hint; hints we do not model always match."""
    if hint is int:
        return _is_int(value)
    if hint is float:
        return _is_int(value) or isinstance(value, float)
    if hint in (bool, str):
        return isinstance(value, hint)
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    return True


def _check_config(config, cls, parameter: str) -> None:
    if not isinstance(config, cls):
        raise TrainConfigError(
            f"{_binding_name('train', parameter)} = {config!r}: expected @{cls.__name__}()"
        )
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        value, hint = getattr(config, field.name), hints.get(field.name)
        if not _matches(value, hint):
            raise TrainConfigError(
                f"{_binding_name(cls.__name__, field.name)} = {value!r}: expected "
                f"{getattr(hint, '__name__', None) or str(hint)}"
            )


def check_train_arguments(**args) -> None:
    """Type and range checks of `train`'s arguments, before any expensive work.

    Raises:
      TrainConfigError: one line naming the binding (and its macro), its value and
        what it must be; e.g. `NUM_STEPS (train.num_steps) = 'sixty': expected a
        positive integer`.
    """
    for name in _POSITIVE_INT_ARGUMENTS:
        value = args[name]
        if not _is_int(value) or value <= 0:
            raise TrainConfigError(
                f"{_binding_name('train', name)} = {value!r}: expected a positive integer"
            )
    stop_after = args["stop_after"]
    if stop_after is not None and (not _is_int(stop_after) or stop_after <= 0):
        raise TrainConfigError(
            f"{_binding_name('train', 'stop_after')} = {stop_after!r}: expected None or a "
            "positive integer"
        )
    if not _is_int(args["seed"]):
        raise TrainConfigError(
            f"{_binding_name('train', 'seed')} = {args['seed']!r}: expected an integer"
        )
    mesh_shape = args["mesh_shape"]
    if (
        isinstance(mesh_shape, str)
        or not isinstance(mesh_shape, Sequence)
        or not all(_is_int(n) and (n > 0 or n == -1) for n in mesh_shape)
    ):
        raise TrainConfigError(
            f"{_binding_name('train', 'mesh_shape')} = {mesh_shape!r}: expected a tuple of "
            "axis sizes (positive, or -1 for the rest), e.g. (-1, 1, 1)"
        )
    if args["batch_size"] % args["grad_accum_steps"]:
        raise TrainConfigError(
            f"{_binding_name('train', 'batch_size')} = {args['batch_size']} is not divisible "
            f"by {_binding_name('train', 'grad_accum_steps')} = {args['grad_accum_steps']}"
        )
    init_from = args["init_from"]
    if init_from is not None and (not isinstance(init_from, str) or not init_from):
        raise TrainConfigError(
            f"{_binding_name('train', 'init_from')} = {init_from!r}: expected None or a "
            "transformers checkpoint directory"
        )
    if not isinstance(args["model_dir"], str) or not args["model_dir"]:
        raise TrainConfigError(
            f"{_binding_name('train', 'model_dir')} = {args['model_dir']!r}: expected a "
            "directory (local path or gs://)"
        )
    _check_config(args["model_config"], ModelConfig, "model_config")
    _check_config(args["data"], DataConfig, "data")
    _check_config(args["optimizer"], OptimizerConfig, "optimizer")
    if args["data"].sequence_length <= 0:
        raise TrainConfigError(
            f"{_binding_name('DataConfig', 'sequence_length')} = "
            f"{args['data'].sequence_length}: expected a positive integer"
        )


def lead_says(ok: bool) -> bool:
    """Process 0's `ok`, on every process (a refusal the lead finds stops them all)."""
    if jax.process_count() == 1:
        return ok
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


def lock_model_dir(model_dir: str) -> locking.WriterLock | None:
    """Takes MODEL_DIR/LOCK in the lead process (the only one that holds it).

    Returns:
      The lock (lead process) or None (other processes).

    Raises:
      locking.LockHeldError: on every process, when another trainer holds the lock.
    """
    lock, refusal = None, None
    if jax.process_index() == 0:
        try:
            lock = locking.WriterLock(
                os.path.join(model_dir, LOCK_FILE), f"the run directory {model_dir}"
            ).acquire()
        except locking.LockHeldError as e:
            refusal = str(e)
        else:
            if lock.note:  # a trainer that was killed: its lock is taken over
                print(lock.note, file=sys.stderr, flush=True)
    if not lead_says(refusal is None):
        raise locking.LockHeldError(
            refusal or f"the lead process could not lock {model_dir} (see its log)"
        )
    return lock


def check_lock(lock: locking.WriterLock | None) -> None:
    """Raises `LockHeldError` on every process if the lead lost its lease (gs://)."""
    lost = None
    if lock is not None:
        try:
            lock.check()
        except locking.LockHeldError as e:
            lost = str(e)
    if not lead_says(lost is None):
        raise locking.LockHeldError(lost or "the lead process lost the lock (see its log)")


def prepare_model_dir(model_dir: str) -> tuple[str, bool]:
    """Creates MODEL_DIR if needed and checks it can be written.

    Returns:
      `(resolved path, whether this call created it)`: a run refused later removes a
      directory it created and left empty (`remove_if_empty`).

    Raises:
      TrainConfigError: MODEL_DIR is a file, or a folder this process cannot write.
    """
    from toxjax import fileio

    path = fileio.resolve(model_dir)
    name = _binding_name("train", "model_dir")
    if fileio.is_remote(path):
        import tensorflow as tf

        tf.io.gfile.makedirs(path)
        return path, False
    if os.path.exists(path) and not os.path.isdir(path):
        raise TrainConfigError(f"{name} = {model_dir!r} is a file, not a directory")
    created = not os.path.exists(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise TrainConfigError(f"{name} = {model_dir!r}: cannot create it ({e.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise TrainConfigError(
            f"{name} = {model_dir!r} is not writable by this user; choose another MODEL_DIR"
        )
    return path, created


def remove_if_empty(path: str) -> None:
    """Removes a directory this run created if nothing was written into it."""
    try:
        os.rmdir(path)
    except OSError:  # not empty (or already gone): leave it
        pass


def check_augment_bindings(task: str, info) -> None:
    """`AugmentConfig.*` bindings must reach the task, or they would be silently ignored.

    Gin binds an `AugmentConfig` only where a gin file passes `@AugmentConfig()` (the
    experiment bases pass it to `scored_corpus_task.augment`). A task registered with a
    fixed config (e.g. at import time) does not see the bindings: that is an error.
    """
    from toxjax.preprocessors import AugmentConfig

    if not gin.get_bindings(AugmentConfig):
        return
    bound = gin.get_configurable(AugmentConfig)()
    if info is None or info.config != bound:
        how = (
            "it is not a toxjax.registry task"
            if info is None
            else "it was registered with a fixed AugmentConfig"
        )
        raise TrainConfigError(
            f"the AugmentConfig.* bindings do not reach task {task!r} ({how}); register it "
            "with `config=` or through `scored_corpus_task.augment = @AugmentConfig()` "
            "(experiments/bases/common.gin does this)"
        )

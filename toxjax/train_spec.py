"""From configuration to the train step: the one resolver `toxjax train` and
`toxjax compile-check` both call, so what is compiled ahead of time is what trains.

    spec = resolve(model_config=..., optimizer=..., num_steps=..., batch_size=...,
                   mesh_shape=..., grad_accum_steps=..., seed=..., module_imports=...,
                   task="corpus_inst_v1", sequence_length=2048)
    step = spec.build()              # steps.build_train_step on this host's devices
    step = spec.build(tpu_devices)   # ... or on compile-only TPU devices

It imports the modules that register tasks, finds the task's vocabulary, and resolves
`ModelConfig.vocab_size = None` to the vocabulary's size rounded up to 128. With
`init_from` (a transformers checkpoint, `toxjax.interop.init_from`) the architecture is
the checkpoint's and the vocabulary size the task's; only config.json and the tokenizer
files are read here (the weights when the run starts).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from toxjax.errors import ConfigError

# `train`'s arguments that the step is built from (compile-check reads only these).
STEP_ARGUMENTS = (
    "model_config",
    "optimizer",
    "num_steps",
    "batch_size",
    "mesh_shape",
    "grad_accum_steps",
    "seed",
    "module_imports",
    "init_from",
)


def import_modules(modules: Sequence[str]) -> None:
    """Imports `train.module_imports` (modules that register seqio tasks)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"train.module_imports: cannot import {name!r}: {e}") from None


def task_vocabulary(task: str):
    """The "targets" vocabulary of a registered seqio task or mixture."""
    import seqio

    if not task:
        raise ConfigError(
            "DataConfig.mixture_or_task_name is empty: bind TASK (e.g. --gin.TASK=fortunes_inst_v1)"
        )
    if task not in seqio.TaskRegistry.names() and task not in seqio.MixtureRegistry.names():
        raise ConfigError(
            f"no seqio task or mixture named {task!r} is registered; import the module that "
            "registers it (train.module_imports) or check the name"
        )
    return seqio.get_mixture_or_task(task).output_features["targets"].vocabulary


def resolve_vocab_size(model_config, vocab):
    """Fills `vocab_size=None` from the task vocabulary, padded to a multiple of 128
    (so the embedding shards evenly); checks an explicit size is large enough."""
    if vocab is None:
        return model_config
    if model_config.vocab_size is None:
        return dataclasses.replace(model_config, vocab_size=-(-vocab.vocab_size // 128) * 128)
    if model_config.vocab_size < vocab.vocab_size:
        raise ConfigError(
            f"ModelConfig.vocab_size={model_config.vocab_size} is smaller than the "
            f"task vocabulary ({vocab.vocab_size} ids)"
        )
    return model_config


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """What the train step is built from, resolved.

    Attributes:
      model_config: the `ModelConfig`, vocabulary size resolved.
      optimizer: the `OptimizerConfig`.
      num_steps, batch_size, seq_len, mesh_shape, grad_accum_steps, seed: the run's
        shape (see `toxjax.train.train`).
      task: the seqio task or mixture (None when not needed, e.g. compile-check with an
        explicit vocabulary size).
      vocabulary: its "targets" vocabulary (None when `task` is None).
      init_from: the transformers checkpoint the run starts from (absolute), or None.
    """

    model_config: Any
    optimizer: Any
    num_steps: int
    batch_size: int
    seq_len: int
    mesh_shape: tuple[int, ...]
    grad_accum_steps: int
    seed: int
    task: str | None = None
    vocabulary: Any = None
    init_from: str | None = None

    def build(self, devices: Sequence | None = None):
        """The jitted train step (`steps.build_train_step`) on `devices` (default: all).

        Raises:
          ConfigError: the batch does not split over the mesh and the microbatches, a
            sequence longer than the position table, a kernel the platform lacks.
        """
        from toxjax import sharding as sh
        from toxjax import steps

        mesh = sh.make_mesh(self.mesh_shape, devices=None if devices is None else list(devices))
        try:
            return steps.build_train_step(
                self.model_config,
                self.optimizer,
                num_steps=self.num_steps,
                batch_size=self.batch_size,
                seq_len=self.seq_len,
                mesh=mesh,
                grad_accum_steps=self.grad_accum_steps,
                seed=self.seed,
            )
        except ConfigError:
            raise
        except ValueError as e:  # a batch that does not split, a sequence too long, ...
            raise ConfigError(str(e)) from None


def resolve(
    *,
    model_config,
    optimizer,
    num_steps: int,
    batch_size: int,
    mesh_shape: Sequence[int],
    grad_accum_steps: int,
    seed: int,
    module_imports: Sequence[str],
    sequence_length: int,
    task: str | None,
    init_from: str | None = None,
) -> TrainSpec:
    """Resolves the step's arguments (see the module docstring).

    Args:
      task: the seqio task or mixture; None only when the model names its vocabulary
        size (compile-check without the corpus).
      init_from: a transformers checkpoint directory the run starts from.

    Raises:
      ConfigError: an unknown task or module, a vocabulary size that does not fit,
        `vocab_size=None` without a task, an `init_from` toxjax cannot convert or whose
        tokenizer is not the task's vocabulary.
    """
    vocab = None
    if task is not None:
        import_modules(module_imports)
        vocab = task_vocabulary(task)
    if init_from is not None:
        from toxjax.interop import init_from as init_lib

        init_from = os.path.abspath(init_from)
        model_config, notes = init_lib.model_config(init_from, model_config, vocab)
        if notes:
            print(
                f"note: {init_lib.BINDING}: the architecture is {init_from}/config.json's, "
                f"not gin's ModelConfig ({'; '.join(notes)})",
                file=sys.stderr,
            )
    elif task is None and model_config.vocab_size is None:
        raise ConfigError(
            "ModelConfig.vocab_size is None and the task is not known here; bind "
            "ModelConfig.vocab_size (e.g. --gin.ModelConfig.vocab_size=50304)"
        )
    return TrainSpec(
        model_config=resolve_vocab_size(model_config, vocab),
        optimizer=optimizer,
        num_steps=num_steps,
        batch_size=batch_size,
        seq_len=sequence_length,
        mesh_shape=tuple(mesh_shape),
        grad_accum_steps=grad_accum_steps,
        seed=seed,
        task=task,
        vocabulary=vocab,
        init_from=init_from,
    )

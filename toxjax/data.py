"""Training data: seqio task -> packed decoder features -> global, sharded jax arrays.

Each host reads its own shard of the task (`seqio.ShardInfo(process_index,
process_count)`) and contributes its rows of the global batch. The iterator is
checkpointable by position: its state is the number of batches consumed, and restoring
rebuilds the same deterministic pipeline and skips that many batches, so a resumed run
sees exactly the data an uninterrupted run would have seen.

Rows are packed by `toxjax.preprocessors.converter.FeatureConverter` (seqio's decoder
converter, plus the per-token loss weights and the conditioning schedule of a task that
has them). A schedule (`AugmentConfig.condition_start/end`) is a fraction of the run's
steps, so reading such a task needs `num_steps`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping

import jax
import numpy as np
import seqio
import tensorflow as tf
from jax.sharding import Mesh

from toxjax import sharding as sh
from toxjax.errors import ConfigError
from toxjax.preprocessors.converter import ConditionWindow, FeatureConverter
from toxjax.steps import FEATURES


class DataStateMismatchError(ValueError):
    """The checkpointed data position was made with other data settings than this run's."""


class DataError(ConfigError):
    """The corpus cannot be read (a malformed record: the message names file and line)."""


# A Python error raised inside the tf.data pipeline (a corpus reader) comes back as a
# TensorFlow error whose message embeds "<Type>: <message>" and the Python traceback.
_PY_ERROR = re.compile(
    r"\b(?:ValueError|KeyError|TypeError|UnicodeDecodeError|FileNotFoundError): (.+)"
)


def data_error(error: Exception) -> DataError:
    """The one line a user needs from a tf.data error (the reader's own message)."""
    text = getattr(error, "message", None) or str(error)
    found = _PY_ERROR.search(text)
    line = found.group(1) if found else (text.strip().splitlines() or [type(error).__name__])[0]
    return DataError(f"reading the training data failed: {line.strip()}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which seqio task/mixture to train on and how.

    Attributes:
      mixture_or_task_name: a registered seqio task or mixture.
      sequence_length: packed length of the "targets" feature.
      split: dataset split.
      shuffle: shuffle examples (with `seed`, deterministic).
      seed: shuffle seed; the same seed gives the same data order.
      pack: pack several documents per row (attention is kept within each).
      use_cached: read the seqio cache written by the cache job.
    """

    mixture_or_task_name: str = ""
    sequence_length: int = 256
    split: str = "train"
    shuffle: bool = True
    seed: int = 0
    pack: bool = True
    use_cached: bool = False


def condition_steps(task: str, num_steps: int | None) -> tuple[int, int | None] | None:
    """The conditioned steps `[first, stop)` of a task with a conditioning schedule (its
    `AugmentConfig.condition_steps(num_steps)`), None for a task without one.

    Raises:
      ConfigError: the task has a schedule and `num_steps` is None.
    """
    from toxjax import registry
    from toxjax.preprocessors import get_strategy

    info = registry.task_info(task)
    if info is None or not info.config.scheduled or not get_strategy(info.strategy).conditioned:
        return None
    if num_steps is None:
        raise ConfigError(
            f"task {task!r} conditions only part of training (AugmentConfig.condition_start="
            f"{info.config.condition_start}, condition_end={info.config.condition_end}): "
            "reading it needs the run's num_steps"
        )
    return info.config.condition_steps(num_steps)


def get_local_dataset(
    cfg: DataConfig,
    global_batch_size: int,
    num_epochs: int | None = None,
    num_steps: int | None = None,
) -> tf.data.Dataset:
    """This host's batches: `global_batch_size / process_count` rows each.

    `num_steps` (the run's length) places a scheduled task's rows in the schedule.
    """
    if not cfg.mixture_or_task_name:
        raise ValueError(
            "DataConfig.mixture_or_task_name is empty: bind it in gin "
            "(e.g. DataConfig.mixture_or_task_name = 'fortunes_inst_v1')"
        )
    if (
        cfg.mixture_or_task_name not in seqio.MixtureRegistry.names()
        and cfg.mixture_or_task_name not in seqio.TaskRegistry.names()
    ):
        raise ValueError(
            f"no seqio task or mixture named {cfg.mixture_or_task_name!r} is registered; "
            "import the module that registers it (train.module_imports)"
        )
    n_hosts = jax.process_count()
    if global_batch_size % n_hosts:
        raise ValueError(f"batch size {global_batch_size} not divisible by {n_hosts} hosts")
    steps = condition_steps(cfg.mixture_or_task_name, num_steps)
    window = None if steps is None else ConditionWindow(*steps, global_batch_size // n_hosts)
    ds = seqio.get_dataset(
        cfg.mixture_or_task_name,
        task_feature_lengths={"targets": cfg.sequence_length},
        feature_converter=FeatureConverter(pack=cfg.pack, window=window),
        dataset_split=cfg.split,
        use_cached=cfg.use_cached,
        shuffle=cfg.shuffle,
        num_epochs=num_epochs,
        seed=cfg.seed,
        shard_info=seqio.ShardInfo(index=jax.process_index(), num_shards=n_hosts),
        verbose=False,
    )
    return ds.batch(global_batch_size // n_hosts, drop_remainder=True)


def to_global(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each host's rows into global arrays sharded over the batch axes."""
    sharding = sh.batch_sharding(mesh, 2)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local_batch.items()
        if k in FEATURES
    }


class DataIterator:
    """Global batches with a checkpointable position (`state()` / `restore(state)`).

    Args:
      cfg: the task and how to read it.
      global_batch_size: rows per batch over all hosts.
      mesh: the batches are sharded over its batch axes.
      num_steps: the run's length in steps (places the rows of a task with a
        conditioning schedule; recorded in the state when the task has one).
    """

    def __init__(
        self, cfg: DataConfig, global_batch_size: int, mesh: Mesh, num_steps: int | None = None
    ):
        self.cfg, self.global_batch_size, self.mesh = cfg, global_batch_size, mesh
        self.num_steps = num_steps
        self.condition_steps = condition_steps(cfg.mixture_or_task_name, num_steps)
        self.consumed = 0
        self._it = self._make(0)

    def _make(self, skip: int) -> Iterator:
        ds = get_local_dataset(self.cfg, self.global_batch_size, num_steps=self.num_steps)
        if skip:
            ds = ds.skip(skip)
        return ds.prefetch(2).as_numpy_iterator()

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, jax.Array]:
        try:
            batch = next(self._it)
        except tf.errors.OpError as e:  # a malformed record deep in the pipeline
            raise data_error(e) from None
        self.consumed += 1
        return to_global(batch, self.mesh)

    def state(self) -> dict:
        state = {
            "batches_consumed": self.consumed,
            "task": self.cfg.mixture_or_task_name,
            "seed": self.cfg.seed,
            "global_batch_size": self.global_batch_size,
            "sequence_length": self.cfg.sequence_length,
        }
        if self.condition_steps is not None:  # (absent otherwise: older states match)
            state["condition_steps"] = list(self.condition_steps)
        return state

    def close(self) -> None:
        """Drops the tf.data iterator (its prefetch threads and the Python generator of
        the corpus reader) now, not at interpreter exit, where a live iterator can hang
        the process."""
        self._it = None

    def restore(self, state: Mapping) -> None:
        mine = self.state()
        for key in ("task", "seed", "global_batch_size", "sequence_length", "condition_steps"):
            if state.get(key) != mine.get(key):
                raise DataStateMismatchError(
                    f"checkpointed data iterator has {key}={state.get(key)!r} but this run "
                    f"has {key}={mine.get(key)!r}; resuming would not reproduce the data order. "
                    "Use a new MODEL_DIR or restore the original setting."
                )
        self.consumed = int(state["batches_consumed"])
        self._it = self._make(self.consumed)

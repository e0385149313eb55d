"""Orbax checkpointing of the train state and the data iterator, with strict restore.

One `Checkpointer` wraps an Orbax `CheckpointManager` with two items: `state` (the
sharded `TrainState`) and `data` (the data iterator's position, as JSON). Saves are
asynchronous; Orbax commits a step atomically (it writes to a temporary directory and
renames), so a process killed mid-save leaves the previous checkpoint intact and the
next run resumes from it.

Restore is strict: the checkpoint's parameter names and shapes must equal the model's,
else `CheckpointMismatchError` names the first differing parameters.

Restore is verified (`toxjax.checkpoint_integrity`): each save also writes a
`checksums` item in the same atomic step, with a format marker in the step's metadata,
and every restore recomputes them. `Checkpointer.restore_latest` (training) and
`toxjax.run_dir.RunDir.load` without an explicit step fall back to the newest intact
step with a warning; the trainer moves the corrupt step aside to `<step>.corrupt`
before it trains on.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp

from toxjax import checksums, fileio, run_logs
from toxjax.checkpoint_integrity import (
    ALLOW_UNVERIFIED_ENV,
    CHECKSUMS_ITEM,
    CHECKSUMS_MARKER,
    CheckpointError,
    CheckpointMismatchError,
    CorruptCheckpointError,
    NonFiniteCheckpointError,
    UnverifiedCheckpointError,
    _flatten,
    _warn,
    check_params_match,
    check_state_matches,
    newest_intact,
    read_verified,
    step_path,
)

# What callers catch and name through this module (the errors live with the checks).
__all__ = [
    "ALLOW_UNVERIFIED_ENV",
    "CHECKSUMS_MARKER",
    "CORRUPT_SUFFIX",
    "CheckpointError",
    "CheckpointMismatchError",
    "Checkpointer",
    "CorruptCheckpointError",
    "NonFiniteCheckpointError",
    "UnverifiedCheckpointError",
    "read_params",
]

CORRUPT_SUFFIX = ".corrupt"  # a corrupt step moved aside: MODEL_DIR/<step>.corrupt


class _ChecksumsHandler(ocp.JsonCheckpointHandler):
    """Writes the `checksums` item: a `checksums.manifest` whose pending digests are read
    when Orbax writes the item, in its background commit thread, so `save()` does not
    wait for them. (Overrides JsonCheckpointHandler's writer, pinned orbax 0.12.8.)"""

    async def _save_fn(self, x, directory):
        return await super()._save_fn(checksums.resolve(x), directory)


@ocp.args.register_with_handler(_ChecksumsHandler, for_save=True)
@dataclasses.dataclass
class _ChecksumsSave(ocp.args.JsonSave):
    """Save args of the `checksums` item (a `checksums.manifest`)."""


@ocp.args.register_with_handler(_ChecksumsHandler, for_restore=True)
@dataclasses.dataclass
class _ChecksumsRestore(ocp.args.JsonRestore):
    """Restore args of the `checksums` item (Orbax requires both to be registered)."""


class Checkpointer:
    """Saves and restores (train state, data position) under `directory`."""

    def __init__(
        self, directory: str, save_every: int = 1000, keep: int = 3, async_save: bool = True
    ):
        self.directory = fileio.resolve(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                save_interval_steps=save_every,
                max_to_keep=keep,
                enable_async_checkpointing=async_save,
            ),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": ocp.JsonCheckpointHandler(),
                CHECKSUMS_ITEM: _ChecksumsHandler(),
            },
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict, force: bool = False) -> bool:
        """Saves if `step` is on the save interval (or `force`); returns whether it did.

        The checksums of `state` and `data_state` are a third item of the same step, so
        Orbax commits them atomically with it; the array digests are dispatched here (on
        the devices, before the next train step) and read in Orbax's write thread.
        """
        if not force and not self.manager.should_save(step):
            return False
        manifest = checksums.manifest(state, {"data": data_state})
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                **{CHECKSUMS_ITEM: _ChecksumsSave(manifest)},
            ),
            force=force,
            custom_metadata={CHECKSUMS_MARKER: 1},
        )

    def restore(self, step: int, abstract_state) -> tuple[Any, dict]:
        """Restores into `abstract_state`'s shapes and shardings after a strict check.

        Raises:
          CheckpointMismatchError: the checkpoint's parameters differ from the model's.
          CorruptCheckpointError: the step is unreadable or differs from its checksums.
        """

        def read(step_dir):
            state_handler = ocp.StandardCheckpointHandler()
            data_handler = ocp.JsonCheckpointHandler()
            try:
                meta = state_handler.metadata(step_dir / "state")
                tree = getattr(meta, "tree", meta)
                where = f"{self.directory} (step {step})"
                check_params_match(_flatten(abstract_state.params), _flatten(tree["params"]), where)
                check_state_matches(abstract_state, tree, where)
                # The handlers directly, not the manager: its restore ends in a barrier
                # that a process whose read failed would never reach.
                state = state_handler.restore(
                    step_dir / "state", args=ocp.args.StandardRestore(abstract_state)
                )
                data = data_handler.restore(step_dir / "data")
            finally:
                state_handler.close()
                data_handler.close()
            return state, {"data": data}

        state, json_items = read_verified(self.directory, step, read)
        return state, json_items["data"]

    def restore_latest(
        self, abstract_state, warn: Callable[[str], None] = _warn
    ) -> tuple[int, Any, dict] | None:
        """Restores the newest intact step: (step, state, data position), or None if none.

        Newer corrupt steps are moved aside to `<step>.corrupt` (by the lead process),
        with a warning naming each: the run retrains those steps and saves them anew.

        Raises:
          CorruptCheckpointError: every step is corrupt; nothing is moved.
        """
        steps = self.manager.all_steps()
        if not steps:
            return None
        step, (state, data) = newest_intact(
            self.directory,
            list(steps),
            lambda s: self.restore(s, abstract_state),
            warn,
            self._move_aside,
        )
        if self.manager.latest_step() != step:
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices(f"toxjax moved corrupt steps after {step}")
            self.manager.reload()
        return step, state, data

    def _move_aside(self, step: int) -> str:
        """Renames a corrupt step directory so Orbax no longer lists it (lead process)."""
        source = step_path(self.directory, step)
        target = source.parent / (source.name + CORRUPT_SUFFIX)
        n = 1
        while target.exists():
            n += 1
            target = source.parent / f"{source.name}{CORRUPT_SUFFIX}{n}"
        if jax.process_index() == 0:
            run_logs.move_dir(str(source), str(target))
        return f"moved it to {target}"

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def read_params(abstract_params, directory: str, step: int, step_dir) -> tuple[dict, dict]:
    """Reads only the parameters of a step (not the optimizer state), onto this process's
    default device, after a strict name and shape check: `read_verified`'s `read`.

    Args:
      abstract_params: the model's parameter shapes (`jax.eval_shape` of its init).
      directory, step: for messages.
      step_dir: the step's directory.

    Returns:
      `({"params": params}, {})`.
    """
    handler = ocp.PyTreeCheckpointHandler()
    try:
        tree = handler.metadata(step_dir / "state")
        tree = getattr(tree, "tree", tree)
        check_params_match(
            _flatten(abstract_params), _flatten(tree["params"]), f"{directory} (step {step})"
        )
        with warnings.catch_warnings():
            # Orbax warns that it reads shardings from the checkpoint: intended here, the
            # parameters are loaded onto this process's default device.
            warnings.filterwarnings("ignore", message="Sharding info not provided")
            restored = handler.restore(
                step_dir / "state",
                args=ocp.args.PyTreeRestore(item={"params": abstract_params}, partial_restore=True),
            )
    finally:
        handler.close()
    return {"params": restored["params"]}, {}

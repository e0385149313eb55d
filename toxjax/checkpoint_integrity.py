"""Is a checkpoint step what was saved? Checksums, shapes, finiteness, and the fallback
to the newest intact step.

Each save writes a `checksums` item (digests of every array and of the data position,
`toxjax.checksums`) in the same atomic step; `read_verified` recomputes them after a read.
A step whose arrays differ from their checksums, or that cannot be read (a truncated
file), raises `CorruptCheckpointError` naming the step and the array; `newest_intact`
falls back to the newest intact step with a warning. A corrupt step is never trained
from, and a step asked for by number is never silently replaced.

A step without a `checksums` item is told apart by its Orbax metadata, where every save
also puts a format marker (`CHECKSUMS_MARKER`): a step saved with checksums that lost
them (deleted, a partial copy) is damage like any other; a step from a toxjax that did
not record them cannot be verified and is refused (`UnverifiedCheckpointError`) unless
the user opts in with `TOXJAX_ALLOW_UNVERIFIED=1` (then restored with a warning).

Strict shapes: `check_params_match` and `check_state_matches` name the parameters (and
optimizer-state arrays) whose names or shapes differ. Parameters loaded for inference
must be finite (`check_finite`).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from toxjax import checksums

CHECKSUMS_ITEM = "checksums"  # the manifest item of each step (toxjax.checksums)
# The format marker every save writes into the step's Orbax metadata (custom_metadata):
# this step was saved with a `checksums` item.
CHECKSUMS_MARKER = "toxjax_checksums"
ALLOW_UNVERIFIED_ENV = "TOXJAX_ALLOW_UNVERIFIED"  # =1: restore steps without checksums
_ORBAX_METADATA = "_CHECKPOINT_METADATA"


class CheckpointError(ValueError):
    """A checkpoint cannot be used (see the subclasses)."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint in MODEL_DIR does not match the model being trained or loaded."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint step is unreadable, its arrays differ from their checksums, or it
    lost the checksums it was saved with."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


class UnverifiedCheckpointError(CheckpointMismatchError):
    """A step saved by a toxjax that recorded no checksums: it cannot be verified, and is
    used only when the user allows it (`ALLOW_UNVERIFIED_ENV`). A mismatch between what
    this toxjax requires and what the run directory holds (`toxjax train`: exit 4)."""


class NonFiniteCheckpointError(CheckpointError):
    """Parameters loaded for inference hold NaN or infinity."""


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _first_line(error: BaseException) -> str:
    """The innermost cause's first line (TensorStore puts the failing key there)."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).strip().splitlines() or [type(error).__name__]
    line = lines[0]
    return line if len(line) <= 300 else line[:297] + "..."


@contextlib.contextmanager
def _quiet_sibling_read_errors():
    """Orbax reads the arrays concurrently; when one read fails, asyncio logs the other
    failed reads as "exception was never retrieved" when their futures are collected
    (pages of TensorStore specs). The failure is reported once, by us: mute those."""
    logger = logging.getLogger("asyncio")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        gc.collect()  # collect the failed futures while muted
        logger.setLevel(level)


def _agree(ok: bool) -> bool:
    """True when `ok` holds on every process (each reads only its own shards)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.array(ok, np.int32))))


def step_path(directory: str, step: int):
    from etils import epath

    return epath.Path(directory) / ocp.step.standard_name_format().build_name(step)


def _allow_unverified() -> bool:
    return os.environ.get(ALLOW_UNVERIFIED_ENV, "") not in ("", "0")


def _saved_with_checksums(step_dir) -> bool:
    """Whether the step was saved with a `checksums` item, by its Orbax metadata: our
    marker, or (steps saved before the marker existed) the item among its handlers."""
    try:
        meta = json.loads((step_dir / _ORBAX_METADATA).read_text())
    except (OSError, ValueError):  # missing (an old Orbax) or unreadable: no evidence
        return False
    if not isinstance(meta, dict):
        return False
    marked = (meta.get("custom_metadata") or {}).get(CHECKSUMS_MARKER)
    return bool(marked) or CHECKSUMS_ITEM in (meta.get("item_handlers") or {})


def _without_checksums(step: int, step_dir, warn: Callable[[str], None]) -> None:
    """A step with no `checksums` item: damage, an old format refused, or allowed."""
    lost = _saved_with_checksums(step_dir)
    if _allow_unverified():
        why = (
            "lost the checksums it was saved with"
            if lost
            else "has no checksums (saved by a toxjax that did not record them)"
        )
        warn(
            f"checkpoint step {step} ({step_dir}) {why}; restored without verification "
            f"({ALLOW_UNVERIFIED_ENV}=1)"
        )
        return
    if lost:
        raise CorruptCheckpointError(
            f"checkpoint step {step} ({step_dir}) is corrupt: its checksums item is missing, "
            "though the step was saved with one (deleted or lost), so its arrays cannot be "
            "verified",
            step,
        )
    raise UnverifiedCheckpointError(
        f"checkpoint step {step} ({step_dir}) has no checksums: it was saved by a toxjax "
        "that did not record them, so damage to it cannot be detected; set "
        f"{ALLOW_UNVERIFIED_ENV}=1 to use it unverified, or start a fresh MODEL_DIR"
    )


def read_verified(
    directory: str,
    step: int,
    read: Callable[[Any], tuple[Any, dict]],
    warn: Callable[[str], None] = _warn,
):
    """Reads checkpoint `step` with `read(step_dir) -> (arrays, json_items)` and verifies it.

    Returns:
      (arrays, json_items) if every restored array and JSON item equals its checksum
      (or, allowed by `ALLOW_UNVERIFIED_ENV`, the step has none: `warn` says so).

    Raises:
      CorruptCheckpointError: the step is unreadable (on any process), differs from its
        checksums, or lost the checksums it was saved with; the message names the step
        directory and the array.
      UnverifiedCheckpointError: the step was saved without checksums (an older toxjax).
      CheckpointMismatchError: from `read`, passed through (a user error, not damage).
    """
    step_dir = step_path(directory, step)
    error = None
    with _quiet_sibling_read_errors():
        try:
            arrays, json_items = read(step_dir)
            recorded = None
            if (step_dir / CHECKSUMS_ITEM).exists():
                handler = ocp.JsonCheckpointHandler()
                recorded = handler.restore(step_dir / CHECKSUMS_ITEM)
                handler.close()
        except CheckpointMismatchError:
            raise
        except Exception as e:  # TensorStore raises bare Exceptions for unreadable data
            error = f"it cannot be read: {_first_line(e)}"
    # Agree before anything collective: a damaged shard may be read by one process only.
    if not _agree(error is None):
        raise CorruptCheckpointError(
            f"checkpoint step {step} ({step_dir}) is corrupt: "
            + (error or "it cannot be read on another process (see that process's log)"),
            step,
        )
    if recorded is None:
        _without_checksums(step, step_dir, warn)
        return arrays, json_items
    bad = checksums.mismatches(recorded, arrays, json_items)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise CorruptCheckpointError(
            f"checkpoint step {step} ({step_dir}) is corrupt: {shown} differ"
            f"{'s' if len(bad) == 1 else ''} from the checksum recorded at save",
            step,
        )
    return arrays, json_items


@jax.jit
def _non_finite_counts(arrays: dict[str, jax.Array]) -> dict[str, tuple[jax.Array, jax.Array]]:
    """{name: (number of NaN, number of +-inf)} of each array (on its devices)."""
    return {
        k: (jnp.sum(jnp.isnan(x), dtype=jnp.int32), jnp.sum(jnp.isinf(x), dtype=jnp.int32))
        for k, x in arrays.items()
    }


def check_finite(params, where: str) -> None:
    """Raises `NonFiniteCheckpointError` naming the parameters that hold NaN or inf.

    Args:
      params: the parameter tree (any sharding).
      where: what holds them, for the message ("checkpoint step 6 (dir/6)").
    """
    arrays = {
        name: x
        for name, x in checksums.named_arrays(params).items()
        if jnp.issubdtype(x.dtype, jnp.inexact)
    }
    counts = jax.device_get(_non_finite_counts(arrays))
    bad = []
    for name, (nan, inf) in counts.items():
        kinds = [f"{int(n)} {what}" for n, what in ((nan, "NaN"), (inf, "inf")) if n]
        if kinds:
            bad.append(f"{name} ({', '.join(kinds)})")
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise NonFiniteCheckpointError(
            f"{where} has non-finite parameters: {shown}; it cannot be used for inference: "
            "choose another step"
        )


def newest_intact(
    directory: str,
    steps: list[int],
    restore: Callable[[int], Any],
    warn: Callable[[str], None] = _warn,
    on_corrupt: Callable[[int], str] | None = None,
):
    """Restores the newest of `steps` that is intact; warns about each newer corrupt one.

    Args:
      restore: `restore(step)`, raising `CorruptCheckpointError` for a damaged step.
      on_corrupt: called with each skipped step once an intact one is found; returns
        what was done with it, for the warning.

    Returns:
      (step, what `restore` returned).

    Raises:
      CorruptCheckpointError: every step is corrupt (one line naming each).
    """
    problems: list[CorruptCheckpointError] = []
    for step in sorted(steps, reverse=True):
        try:
            restored = restore(step)
        except CorruptCheckpointError as e:
            problems.append(e)
            continue
        for e in problems:
            done = on_corrupt(e.step) if on_corrupt is not None else "skipped it"
            warn(f"{e}; {done}; using step {step}")
        return step, restored
    raise CorruptCheckpointError(
        f"no intact checkpoint in {directory}: "
        + "; ".join(str(e) for e in problems)
        + ". Restore the step directories from a copy, or move them away to start over.",
        problems[0].step if problems else None,
    )


def _flatten(tree, prefix: str = "") -> dict[str, tuple]:
    """Nested dicts of arrays / ArrayMetadata -> {"a/b/c": shape}."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten(value, name))
        else:
            out[name] = tuple(value.shape)
    return out


def check_params_match(expected: dict[str, tuple], found: dict[str, tuple], where: str) -> None:
    """Raises `CheckpointMismatchError` naming parameters that differ in name or shape."""
    problems = []
    for name in sorted(set(expected) | set(found)):
        if name not in found:
            problems.append(f"parameter {name} {expected[name]} is missing from the checkpoint")
        elif name not in expected:
            problems.append(f"checkpoint has parameter {name} {found[name]} that the model lacks")
        elif expected[name] != found[name]:
            problems.append(
                f"parameter {name}: checkpoint shape {found[name]}, model shape {expected[name]}"
            )
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise CheckpointMismatchError(
            f"the checkpoint in {where} does not match this model:\n  {shown}{more}\n"
            "Use a fresh MODEL_DIR for a different model, or restore the original config."
        )


def check_state_matches(abstract_state, saved_tree, where: str) -> None:
    """Raises `CheckpointMismatchError` if the saved state's arrays (optimizer state
    included) differ in name or shape from the state being restored into; a changed
    optimizer setting (e.g. turning gradient clipping off) changes the optimizer state."""
    expected = {k: tuple(v.shape) for k, v in checksums.named_arrays(abstract_state).items()}
    found = {k: tuple(v.shape) for k, v in checksums.named_arrays(saved_tree).items()}
    if expected == found:
        return
    differences = [
        f"{name}: checkpoint {found.get(name, 'absent')}, now {expected.get(name, 'absent')}"
        for name in sorted(set(expected) | set(found))
        if expected.get(name) != found.get(name)
    ]
    more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
    raise CheckpointMismatchError(
        f"the training state in {where} does not match this run's optimizer "
        f"({'; '.join(differences[:3])}{more}): an optimizer setting changed (e.g. "
        "OptimizerConfig.clip_norm). Restore the original settings or use a fresh MODEL_DIR."
    )

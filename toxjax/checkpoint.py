"""Orbax checkpointing of the train state and the data iterator, with strict restore.

One `Checkpointer` wraps an Orbax `CheckpointManager` with two items: `state` (the
sharded `TrainState`) and `data` (the data iterator's position, as JSON). Saves are
asynchronous; Orbax commits a step atomically (it writes to a temporary directory and
renames), so a process killed mid-save leaves the previous checkpoint intact and the
next run resumes from it.

Restore is strict: the checkpoint's parameter names and shapes must equal the model's,
else `CheckpointMismatchError` names the first differing parameters.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from toxjax import run_logs


class CheckpointMismatchError(ValueError):
    """The checkpoint in MODEL_DIR does not match the model being trained or loaded."""


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


class Checkpointer:
    """Saves and restores (train state, data position) under `directory`."""

    def __init__(
        self, directory: str, save_every: int = 1000, keep: int = 3, async_save: bool = True
    ):
        self.directory = run_logs.resolve(directory)
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
            },
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict, force: bool = False) -> bool:
        """Saves if `step` is on the save interval (or `force`); returns whether it did."""
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
            ),
            force=force,
        )

    def restore(self, step: int, abstract_state) -> tuple[Any, dict]:
        """Restores into `abstract_state`'s shapes and shardings after a strict check."""
        meta = self.manager.item_metadata(step)["state"]
        tree = getattr(meta, "tree", meta)
        found = _flatten(tree["params"])
        expected = _flatten(abstract_state.params)
        check_params_match(expected, found, f"{self.directory} (step {step})")
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], restored["data"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


@dataclasses.dataclass
class InferenceBundle:
    """What the sampler and the evals need from a run directory."""

    model: Any  # toxjax.model.DecoderLM
    params: Any
    vocabulary: Any  # seqio.Vocabulary
    config: Any  # toxjax.model.ModelConfig
    step: int
    run: Any  # toxjax.run_info.RunInfo: how the model was trained (strategy, augment, ...)

    @property
    def run_info(self) -> dict:
        """run.json as a dict."""
        return self.run.to_dict()


def load_for_inference(model_dir: str, step: int | None = None) -> InferenceBundle:
    """Loads the newest (or given) checkpoint's parameters, model config and vocabulary."""
    from toxjax.model import DecoderLM
    from toxjax.run_info import RunInfo
    from toxjax.vocab import vocab_from_spec

    model_dir = run_logs.resolve(model_dir)
    info = RunInfo.read(model_dir)
    config = info.model_config
    vocabulary = vocab_from_spec(info.vocabulary, model_dir)
    model = DecoderLM(config)
    manager = ocp.CheckpointManager(
        model_dir,
        item_handlers={"state": ocp.PyTreeCheckpointHandler(), "data": ocp.JsonCheckpointHandler()},
    )
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {model_dir}")
    tree = manager.item_metadata(step)["state"]
    tree = getattr(tree, "tree", tree)
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), np.zeros((1, 1), np.int32))["params"]
    )
    from flax import linen as nn

    abstract = nn.unbox(abstract)
    check_params_match(_flatten(abstract), _flatten(tree["params"]), f"{model_dir} (step {step})")
    with warnings.catch_warnings():
        # Orbax warns that it reads shardings from the checkpoint: intended here, the
        # parameters are loaded onto this process's default device for inference.
        warnings.filterwarnings("ignore", message="Sharding info not provided")
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(item={"params": abstract}, partial_restore=True)
            ),
        )
    manager.close()
    return InferenceBundle(
        model=model,
        params=restored["state"]["params"],
        vocabulary=vocabulary,
        config=config,
        step=int(step),
        run=info,
    )

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
import json
import os
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorflow as tf

from toxjax import run_logs

RUN_FILE = "run.json"  # model config + vocabulary, written by the trainer


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


def write_run_file(model_dir: str, model_config, vocab_spec: dict, extra: dict | None = None):
    """Records what inference needs to rebuild the model: config and vocabulary."""
    payload = {
        "model_config": dataclasses.asdict(model_config),
        "vocabulary": vocab_spec,
        **(extra or {}),
    }
    run_logs.write_text(os.path.join(model_dir, RUN_FILE), json.dumps(payload, indent=2))


def vocab_spec(vocabulary) -> dict:
    """A JSON description of a seqio vocabulary that `vocab_from_spec` rebuilds."""
    import seqio

    if isinstance(vocabulary, seqio.SentencePieceVocabulary):
        return {
            "kind": "sentencepiece",
            "path": os.path.abspath(vocabulary.sentencepiece_model_file),
            "extra_ids": vocabulary.extra_ids,
        }
    if isinstance(vocabulary, seqio.ByteVocabulary):
        return {"kind": "byte", "extra_ids": vocabulary.extra_ids}
    to_spec = getattr(vocabulary, "to_spec", None)
    if to_spec is not None:
        return to_spec()
    raise ValueError(
        f"cannot describe vocabulary {type(vocabulary).__name__} for run.json; "
        "give it a to_spec() method"
    )


def vocab_from_spec(spec: dict):
    import seqio

    kind = spec.get("kind")
    if kind == "sentencepiece":
        return seqio.SentencePieceVocabulary(spec["path"], extra_ids=spec.get("extra_ids", 0))
    if kind == "byte":
        return seqio.ByteVocabulary(extra_ids=spec.get("extra_ids", 0))
    from toxjax import vocab as vocab_lib  # GPT-2 BPE and control-token vocabularies

    return vocab_lib.vocab_from_spec(spec)


@dataclasses.dataclass
class InferenceBundle:
    """What the sampler and the evals need from a run directory."""

    model: Any  # toxjax.model.DecoderLM
    params: Any
    vocabulary: Any  # seqio.Vocabulary
    config: Any  # toxjax.model.ModelConfig
    step: int
    run_info: dict


def load_for_inference(model_dir: str, step: int | None = None) -> InferenceBundle:
    """Loads the newest (or given) checkpoint's parameters, model config and vocabulary."""
    from toxjax.model import DecoderLM, ModelConfig

    model_dir = run_logs.resolve(model_dir)
    run_path = os.path.join(model_dir, RUN_FILE)
    if not tf.io.gfile.exists(run_path):
        raise FileNotFoundError(
            f"{run_path} not found: {model_dir} is not a toxjax run "
            "directory (train with `toxjax train` first)"
        )
    info = json.loads(run_logs.read_text(run_path))
    config = ModelConfig(**info["model_config"])
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
        vocabulary=vocab_from_spec(info["vocabulary"]),
        config=config,
        step=int(step),
        run_info=info,
    )

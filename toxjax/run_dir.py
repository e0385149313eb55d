"""A run directory, opened once per command: how the model was trained, its vocabulary,
its conditioning prefixes, and its verified checkpoints for inference.

    run = RunDir.open("runs/inst")              # reads run.json, rebuilds the vocabulary
    cond = run.conditioning(toxic=False)        # the prefix eval puts before prompts
    model = run.load()                          # newest intact step, verified
    lm = model.lm(sampling=SamplingConfig(...)) # what the evals sample and score with

`toxjax eval toxicity|utility|bias`, `toxjax demo` and `toxjax export` open models this
way, so run.json is read and the vocabulary rebuilt once per command, and every
inference load is verified against the checksums recorded at save
(`toxjax.checkpoint_integrity.read_verified`).

`open_model_dir(path)` opens either a run directory or a transformers checkpoint
directory (`toxjax.interop.hf_dir.HfDir`, the twin with the same methods: GPT-2,
GPT-NeoX / Pythia, Llama converted to our model at their own ids), so a command that
evaluates a model does not ask which kind it has.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from toxjax import attention, checkpoint, fileio
from toxjax import checkpoint_integrity as integrity
from toxjax.run_info import NO_CONDITION, RUN_FILE, Conditioning, RunInfo, literal_conditioning


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class LoadedModel:
    """A checkpoint loaded for inference.

    Attributes:
      model: the `toxjax.model.DecoderLM`.
      params: its parameters (on this process's default device).
      config: its `ModelConfig` (attention made portable to this platform).
      step: the checkpoint step (None for a transformers checkpoint).
      vocabulary: the run's `seqio.Vocabulary`.
      run: the run's `RunInfo` (None for a transformers checkpoint).
      bos_id: the id every sequence starts with (`ModelLM(bos_id=...)`): 0 for a toxjax
        run (what training put before each sample).
    """

    model: Any
    params: Any
    config: Any
    step: int | None
    vocabulary: Any
    run: RunInfo | None
    bos_id: int | None = 0

    def identity(self) -> dict:
        """What makes this model's outputs: the step and run.json (a resume compares it)."""
        return {"step": self.step, "run": self.run.to_dict()}

    def describe(self) -> dict:
        """What the model was, for metrics.json (`"model"`)."""
        return {"kind": "toxjax run", "step": self.step}

    def lm(
        self,
        prefix_ids: Sequence[int] = (),
        sampling=None,
        mesh=None,
        seed: int = 0,
        batch_size: int = 8,
        negative_prefix_ids: Sequence[int] = (),
    ):
        """The model as the evaluations see it (`toxjax.evaluation.lm.ModelLM`); sampling
        stops a continuation at the vocabulary's EOS unless `sampling` says otherwise;
        `negative_prefix_ids` is the condition guided sampling steers away from."""
        from toxjax.decode import SamplingConfig
        from toxjax.evaluation.lm import ModelLM
        from toxjax.model import CACHE_BATCH_AXIS

        return ModelLM(
            self.model,
            self.params,
            self.vocabulary,
            max_len=self.config.max_len,
            sampling=sampling or SamplingConfig(eos_id=self.vocabulary.eos_id),
            cache_batch_axis=CACHE_BATCH_AXIS,
            mesh=mesh,
            seed=seed,
            batch_size=batch_size,
            bos_id=self.bos_id,
            prefix_ids=prefix_ids,
            negative_prefix_ids=negative_prefix_ids,
        )


@dataclasses.dataclass
class RunDir:
    """A `toxjax train` run directory (see the module docstring).

    Attributes:
      path: the directory (absolute, or a URL).
      info: its run.json.
      vocabulary: the vocabulary it was trained with, rebuilt from `path/vocab/`.
    """

    path: str
    info: RunInfo
    vocabulary: Any

    @classmethod
    def open(cls, model_dir: str) -> RunDir:
        """Reads run.json and rebuilds the vocabulary.

        Raises:
          FileNotFoundError: no run.json (not a run directory) or a vocabulary file missing.
          ValueError: run.json unreadable, or a vocabulary file that is not the one trained
            with.
        """
        from toxjax.vocab_specs import vocab_from_spec

        path = fileio.resolve(model_dir)
        info = RunInfo.read(path)
        return cls(path, info, vocab_from_spec(info.vocabulary, path))

    def conditioning(
        self,
        condition: str | None = None,
        toxic: bool = False,
        warn: Callable[[str], None] | None = None,
        text: str | None = None,
    ) -> Conditioning:
        """The prefix an eval puts before each prompt (see `RunInfo.conditioning`).

        `text` (`--condition_text`) is a literal prefix instead. A run trained with a
        strategy has its own prefix, so a literal one replaces it only when `condition`
        says `"none"` too (`--condition none --condition_text ...`): the replacement is
        never silent.

        Raises:
          ValueError: as `RunInfo.conditioning`; `text` with a strategy's condition, or
            on a run with a strategy without `--condition none`.
        """
        if text is None:
            return self.info.conditioning(self.vocabulary, condition, toxic, warn)
        if condition not in (None, NO_CONDITION):
            raise ValueError(
                f"--condition {condition} and --condition_text are two prefixes; give one"
            )
        if condition is None and self.info.strategy is not None:
            own = self.info.conditioning(self.vocabulary, warn=lambda _: None)
            raise ValueError(
                f"{self.path} was trained with {self.info.strategy}, whose prefix is "
                f"{own.prefix!r}; to evaluate under a literal prefix instead, pass "
                "--condition none --condition_text TEXT"
            )
        return literal_conditioning(text, self.vocabulary, toxic)

    def steps(self) -> list[int]:
        """The checkpoint steps in the directory, oldest first."""
        import orbax.checkpoint as ocp

        manager = ocp.CheckpointManager(self.path)
        try:
            return sorted(int(s) for s in manager.all_steps())
        finally:
            manager.close()

    def load(self, step: int | None = None, warn: Callable[[str], None] = _warn) -> LoadedModel:
        """Loads the newest (or given) checkpoint's parameters for inference, verified.

        The parameters are checked against the checksums recorded at save. Without
        `step`, a corrupt newest step is skipped (with a warning naming it) for the newest
        intact one; nothing is moved, the run directory is only read. A `step` asked for
        by number is never replaced: if it is corrupt, `CorruptCheckpointError` names it.

        Raises:
          FileNotFoundError: no checkpoint, or no checkpoint `step`.
          toxjax.checkpoint.CheckpointError: a mismatched, corrupt, unverifiable or
            non-finite checkpoint.
        """
        from flax import linen as nn

        from toxjax.model import DecoderLM

        # The attention implementation is a speed choice, not part of the model (all
        # compute the same function): a kernel forced for training elsewhere becomes auto.
        config = dataclasses.replace(
            self.info.model_config,
            attention=attention.portable(self.info.model_config.attention, jax.default_backend()),
        )
        model = DecoderLM(config)
        steps = self.steps()
        if not steps:
            raise FileNotFoundError(
                f"no checkpoint in {self.path} (train it with `toxjax train`, or wait for its "
                "first checkpoint)"
            )
        if step is not None and step not in steps:
            raise FileNotFoundError(
                f"no checkpoint step {step} in {self.path} (it has steps "
                f"{', '.join(map(str, steps))})"
            )
        with warnings.catch_warnings():
            # Only shapes are traced here: a kernel declining a 1-token input is no news.
            warnings.simplefilter("ignore", attention.AttentionFallbackWarning)
            abstract = jax.eval_shape(
                lambda: model.init(jax.random.key(0), np.zeros((1, 1), np.int32))["params"]
            )
        abstract = nn.unbox(abstract)

        def verified(s: int):
            read = functools.partial(checkpoint.read_params, abstract, self.path, s)
            return integrity.read_verified(self.path, s, read, warn)

        if step is None:
            step, (restored, _) = integrity.newest_intact(self.path, steps, verified, warn)
        else:
            restored, _ = verified(step)
        # A diverged run's parameters are refused, not silently replaced by another step.
        integrity.check_finite(
            restored["params"], f"checkpoint step {step} ({integrity.step_path(self.path, step)})"
        )
        return LoadedModel(
            model=model,
            params=restored["params"],
            config=config,
            step=int(step),
            vocabulary=self.vocabulary,
            run=self.info,
        )


def open_model_dir(path: str):
    """A model directory for inference: a `toxjax train` run (`RunDir`, it has run.json)
    or a transformers checkpoint (`toxjax.interop.hf_dir.HfDir`, it has config.json).

    Both have `path`, `vocabulary`, `conditioning(condition, toxic, warn, text)` and
    `load(step) -> LoadedModel` (`identity()`, `describe()`, `lm(...)`).

    Raises:
      FileNotFoundError: neither file, or a file the directory needs is missing.
      ValueError, toxjax.errors.ConfigError: an unreadable run.json, an architecture
        toxjax does not convert (one line).
    """
    import tensorflow as tf

    resolved = fileio.resolve(path)
    if tf.io.gfile.exists(os.path.join(resolved, RUN_FILE)):
        return RunDir.open(path)
    if tf.io.gfile.exists(os.path.join(resolved, "config.json")):
        from toxjax.interop.hf_dir import HfDir

        return HfDir.open(resolved)
    if not tf.io.gfile.exists(resolved):
        raise FileNotFoundError(f"--model_dir {path} does not exist")
    raise FileNotFoundError(
        f"--model_dir {path}: neither run.json (a `toxjax train` run directory) nor "
        "config.json (a transformers checkpoint directory)"
    )

"""run.json: the contract between a training run and everything that uses its model.

`toxjax train` writes `MODEL_DIR/run.json` (and copies its vocabulary files into
`MODEL_DIR/vocab/`); eval, the demo and `RunDir` read it back, so a run
directory alone says how to rebuild the model and how it was trained:

    {"format": 2,
     "model_config": {...},              # toxjax.model.ModelConfig
     "vocabulary": {"kind": ...},        # toxjax.vocab_specs.vocab_spec
     "task": "corpus_inst_v1", "sequence_length": 2048,
     "strategy": "inst",                 # an entry of the strategy table, or null
     "augment": {...},                   # the AugmentConfig the task was built with
     "corpus": {"name", "source", "fraction", "scorer"},
     "init_from": {"source", "model_type", "architecture", "weights": {file: sha256}, ...}}

`init_from` (absent or null for a run trained from scratch) says which transformers
checkpoint the run started from (`train.init_from`). `strategy`/`augment` are null when the task was not registered through
`toxjax.registry` (then eval takes the prefix from `--condition`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

from toxjax import fileio

RUN_FILE = "run.json"
FORMAT = 2
NO_CONDITION = "none"  # `--condition none`: no prefix, whatever the model was trained with
TEXT_CONDITION = "text"  # `--condition_text "..."`: a literal prefix


@dataclasses.dataclass(frozen=True)
class Conditioning:
    """What goes before an eval prompt: the condition's name, its string and its ids."""

    condition: str  # a strategy name, NO_CONDITION or TEXT_CONDITION
    toxic: bool
    prefix: str
    prefix_ids: tuple[int, ...]

    @property
    def label(self) -> str:
        """`inst`, `inst-toxic`, `none`, `text-<8 hex digits of the text's sha256>`:
        names eval output directories."""
        if self.condition == TEXT_CONDITION:
            return f"{TEXT_CONDITION}-{hashlib.sha256(self.prefix.encode()).hexdigest()[:8]}"
        return self.condition + ("-toxic" if self.toxic else "")


def literal_conditioning(text: str, vocabulary, toxic: bool = False) -> Conditioning:
    """`--condition_text TEXT`: the literal prefix `vocabulary.encode(text)`.

    Raises:
      ValueError: an empty text, or `toxic` (a literal prefix has no toxic variant).
    """
    if toxic:
        raise ValueError(
            "--toxic_condition needs a strategy's condition; a --condition_text has no toxic "
            "variant (give the toxic text as --condition_text instead)"
        )
    if not text:
        raise ValueError("--condition_text is empty; use --condition none for no prefix")
    ids = tuple(int(t) for t in vocabulary.encode(text))
    return Conditioning(TEXT_CONDITION, False, text, ids)


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """The parsed run.json (see the module docstring)."""

    model_config: Any  # toxjax.model.ModelConfig
    vocabulary: dict
    task: str | None = None
    sequence_length: int | None = None
    strategy: str | None = None
    augment: Any = None  # toxjax.preprocessors.AugmentConfig
    corpus: dict | None = None
    init_from: dict | None = None  # the imported checkpoint's provenance (train.init_from)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "model_config": dataclasses.asdict(self.model_config),
            "vocabulary": self.vocabulary,
            "task": self.task,
            "sequence_length": self.sequence_length,
            "strategy": self.strategy,
            "augment": None if self.augment is None else self.augment.to_dict(),
            "corpus": self.corpus,
            "init_from": self.init_from,
        }

    @classmethod
    def from_dict(cls, data: dict, where: str = RUN_FILE) -> RunInfo:
        from toxjax.model import ModelConfig
        from toxjax.preprocessors import STRATEGIES, AugmentConfig

        try:
            model_config = ModelConfig(**data["model_config"])
            augment = data.get("augment")
            augment = None if augment is None else AugmentConfig.from_dict(augment)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: not a valid toxjax run file ({e})") from None
        strategy = data.get("strategy")
        if strategy is not None and strategy not in STRATEGIES:
            raise ValueError(
                f"{where}: the model was trained with strategy {strategy!r}, which this "
                f"toxjax does not know (known: {', '.join(STRATEGIES)})"
            )
        return cls(
            model_config=model_config,
            vocabulary=data["vocabulary"],
            task=data.get("task"),
            sequence_length=data.get("sequence_length"),
            strategy=strategy,
            augment=augment,
            corpus=data.get("corpus"),
            init_from=data.get("init_from"),
        )

    def write(self, model_dir: str) -> None:
        fileio.write_text(
            os.path.join(model_dir, RUN_FILE), json.dumps(self.to_dict(), indent=2) + "\n"
        )

    @classmethod
    def read(cls, model_dir: str) -> RunInfo:
        path = os.path.join(model_dir, RUN_FILE)
        import tensorflow as tf

        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(
                f"{path} not found: {model_dir} is not a toxjax run directory (train with "
                "`toxjax train` first)"
            )
        try:
            data = json.loads(fileio.read_text(path))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e.msg})") from None
        return cls.from_dict(data, path)

    def resume_mismatches(self, earlier: RunInfo) -> list[str]:
        """What differs from the run.json of the run being resumed, as "<field> was <old>,
        now <new>" lines (empty when resuming is safe). Model shapes are checked by the checkpoint
        restore; compute-only settings (dtype, remat) may change on resume."""
        names = ("task", "sequence_length", "strategy", "augment")
        out = fileio.changes(
            {n: _plain(getattr(earlier, n)) for n in names} | {"init_from": _source(earlier)},
            {n: _plain(getattr(self, n)) for n in names} | {"init_from": _source(self)},
        )
        if _vocab_digest(earlier.vocabulary) != _vocab_digest(self.vocabulary):
            out.append("vocabulary: the tokenizer files differ")
        return out

    def conditioning(
        self,
        vocabulary,
        condition: str | None = None,
        toxic: bool = False,
        warn=None,
    ) -> Conditioning:
        """The prefix an eval puts before each prompt.

        Args:
          vocabulary: the model's vocabulary.
          condition: None = the strategy the model was trained with (run.json); a
            strategy name or `"none"` overrides it (with a warning when it differs).
          toxic: the toxic variant of the condition (does the control work both ways?).
          warn: called with one-line warnings (default: print to stderr).

        Raises:
          ValueError: an unknown condition, or one the model's vocabulary cannot express
            (ctrl without its control tokens).
        """
        import sys

        from toxjax.preprocessors import STRATEGIES, AugmentConfig, get_strategy

        warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
        if condition is None:
            if self.strategy is None:
                warn(
                    "run.json does not say how the model was trained (a run from before "
                    "toxjax recorded its strategy, or a task registered outside "
                    "toxjax.registry): no conditioning prefix; pass --condition to set one"
                )
                condition = NO_CONDITION
            else:
                condition = self.strategy
        elif self.strategy is not None and condition != self.strategy:
            warn(
                f"--condition {condition} differs from the strategy the model was trained "
                f"with ({self.strategy}, in run.json); using --condition {condition}"
            )
        if condition == NO_CONDITION:
            if toxic:
                raise ValueError("--toxic_condition needs a condition, not 'none'")
            return Conditioning(NO_CONDITION, False, "", ())
        if condition not in STRATEGIES:
            raise ValueError(
                f"unknown condition {condition!r}; use one of {NO_CONDITION}, "
                f"{', '.join(STRATEGIES)}"
            )
        strategy = get_strategy(condition)
        config = self.augment if self.augment is not None else AugmentConfig()
        ids = strategy.prefix_ids(config, vocabulary, toxic)
        return Conditioning(condition, toxic, strategy.prefix(config, toxic), tuple(ids))


def _source(run: RunInfo) -> str | None:
    """The directory a run started from (its weights are hashed once, at the start)."""
    return None if run.init_from is None else run.init_from.get("source")


def _plain(value):
    return value.to_dict() if hasattr(value, "to_dict") else value


def _vocab_digest(spec: dict) -> str:
    """The vocabulary's identity: its spec without where the files were found."""

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in ("file", "source", "path")}
        return x

    return json.dumps(strip(spec), sort_keys=True)

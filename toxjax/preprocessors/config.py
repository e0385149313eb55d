"""The augmentation config and the MEDA score formatting.

`AugmentConfig` is a plain frozen dataclass: library code receives it explicitly (the
registry stores the one each task was registered with, run.json records it, eval reads
it back). Gin binds it only at entry points (`toxjax train` registers it as an external
configurable). The template strings are ours: the paper does not publish its exact ones.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from toxjax.errors import ConfigError

SCORING_UNITS = ("document", "window")
SCORE_PLACEHOLDER = "{score}"


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """How a scored corpus is turned into training samples, for every strategy.

    Thresholds follow the field's convention: a score is toxic when it is strictly
    greater than the threshold, so exactly 0.5 is non-toxic.

    Attributes:
      scoring_unit: "document" (every sample of a document carries the document score)
        or "window" (each scorer window `{"start","end","toxicity"}` is its own sample
        with its own score; needs `toxjax score --window_tokens N`).
      sample_tokens: tokens per training sample including prefix and EOS; longer
        documents/windows are cut into several samples. Use the training sequence length.
      meda_template: MEDA metadata; `{score}` is replaced by the formatted score.
      meda_decimals: digits after the decimal point (round half to even).
      meda_scale: the score is multiplied by this before formatting (100 = percent).
      meda_inference_score: the score written before eval prompts (the "non-toxic" one).
      inst_templates: one instruction per bucket, least toxic first.
      inst_thresholds: ascending bucket edges; `len(inst_templates) == len(...) + 1`.
      inst_fraction: share of samples that get an instruction; the rest stay plain.
      filter_threshold: the `filter` strategy drops samples scoring above this.
      ctrl_tokens: (good, bad) control tokens, added to the vocabulary as new ids.
      ctrl_threshold: samples above it get the bad token.
      ctrl_untagged_fraction: share of samples left without a control token.
      mask_threshold: the `mask` strategy keeps samples scoring above this in the context
        with zero loss weight (SLUNG).
      mask_condition_loss: the conditioning prefix (INST's instruction, MEDA's line,
        ctrl's token) stays in the context but gets zero loss weight (MeCo).
      condition_start, condition_end: the conditioning is on for the training steps `s`
        with `condition_start <= s / num_steps < condition_end` (`condition_end = 1`: to
        the end); outside, every sample is trained without its prefix, baseline-like.
        `condition_end=0.9` is MeCo's cooldown, `condition_start=0.2` a late start. The
        fraction is measured in optimizer steps (global batches) of the run, see
        `condition_steps`.
    """

    scoring_unit: str = "document"
    sample_tokens: int = 2048
    meda_template: str = "toxicity: {score}\n"
    meda_decimals: int = 2
    meda_scale: float = 1.0
    meda_inference_score: float = 0.0
    inst_templates: tuple[str, ...] = (
        "Instruction: the following text is not toxic.\n",
        "Instruction: the following text is toxic.\n",
    )
    inst_thresholds: tuple[float, ...] = (0.5,)
    inst_fraction: float = 1.0
    filter_threshold: float = 0.5
    ctrl_tokens: tuple[str, str] = ("<|aligned|>", "<|misaligned|>")
    ctrl_threshold: float = 0.5
    ctrl_untagged_fraction: float = 0.01
    mask_threshold: float = 0.5
    mask_condition_loss: bool = False
    condition_start: float = 0.0
    condition_end: float = 1.0

    def __post_init__(self):
        # gin binds lists; keep the config hashable and immutable.
        for name in ("inst_templates", "inst_thresholds", "ctrl_tokens"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        bad = []
        if self.scoring_unit not in SCORING_UNITS:
            bad.append(f"scoring_unit={self.scoring_unit!r} (use one of {SCORING_UNITS})")
        if self.meda_template.count(SCORE_PLACEHOLDER) != 1:
            bad.append(f"meda_template={self.meda_template!r} needs exactly one {{score}}")
        if len(self.inst_templates) != len(self.inst_thresholds) + 1:
            bad.append(
                f"{len(self.inst_templates)} inst_templates need "
                f"{len(self.inst_templates) - 1} inst_thresholds, got {self.inst_thresholds}"
            )
        if list(self.inst_thresholds) != sorted(set(self.inst_thresholds)):
            bad.append(f"inst_thresholds={self.inst_thresholds} must be strictly ascending")
        for name in ("inst_fraction", "ctrl_untagged_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                bad.append(f"{name}={getattr(self, name)} must be in [0, 1]")
        if len(self.ctrl_tokens) != 2:
            bad.append(f"ctrl_tokens={self.ctrl_tokens} must be a (good, bad) pair")
        if self.meda_decimals < 0:
            bad.append(f"meda_decimals={self.meda_decimals} must be >= 0")
        if self.sample_tokens < 2:
            bad.append(f"sample_tokens={self.sample_tokens} must be >= 2")
        if not 0.0 <= self.condition_start < self.condition_end <= 1.0:
            bad.append(
                f"condition_start={self.condition_start}, condition_end={self.condition_end}: "
                "need 0 <= condition_start < condition_end <= 1"
            )
        if bad:
            raise ConfigError("AugmentConfig: " + "; ".join(bad))

    @property
    def scheduled(self) -> bool:
        """The conditioning is off for part of training (`condition_start/end`)."""
        return self.condition_start > 0.0 or self.condition_end < 1.0

    def condition_steps(self, num_steps: int) -> tuple[int, int | None]:
        """The 0-based steps `[first, stop)` whose samples are conditioned, of `num_steps`.

        Step `s` (the `s`-th global batch) is on iff `condition_start <= s / num_steps <
        condition_end`; `stop` is None when `condition_end == 1` (on to the end, also past
        `num_steps`). The products are rounded to 9 decimals before the ceiling, so a
        decimal fraction lands on its step (in floats, 0.07 * 100 is 7.000000000000001).
        """
        if num_steps < 1:
            raise ConfigError(f"num_steps={num_steps} must be >= 1 for a conditioning schedule")

        def first_at_or_after(fraction: float) -> int:
            return math.ceil(round(fraction * num_steps, 9))

        first = first_at_or_after(self.condition_start)
        stop = None if self.condition_end >= 1.0 else first_at_or_after(self.condition_end)
        return first, stop

    def to_dict(self) -> dict:
        """A JSON-ready dict (run.json's "augment")."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping) -> AugmentConfig:
        """The config `to_dict` wrote; unknown fields are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"AugmentConfig has no fields {unknown} (written by another toxjax version?)"
            )
        return cls(**values)


def format_score(score: float, config: AugmentConfig) -> str:
    """The score as MEDA writes it; identical to the TF graph formatting.

    The pipeline stores scores as float32 and formats with `tf.strings.as_string`
    (printf `%.*f` of the exact value), so this rounds the same float32 value.
    """
    value = np.float32(np.float32(score) * np.float32(config.meda_scale))
    return f"{float(value):.{config.meda_decimals}f}"


def meda_prefix(score: float, config: AugmentConfig) -> str:
    """The MEDA metadata string for `score`."""
    return config.meda_template.replace(SCORE_PLACEHOLDER, format_score(score, config))


def inst_bucket(score: float, thresholds: Sequence[float]) -> int:
    """Bucket index: the number of thresholds the score is strictly above."""
    s = np.float32(score)
    return int(sum(s > np.float32(t) for t in thresholds))

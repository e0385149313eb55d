"""The demo's arms and eval conditions: one table that the CLI, the stage keys and the
report read.

An *arm* is a training recipe: a strategy of the strategy table plus `AugmentConfig`
overrides. Every strategy is an arm under its own name (its default recipe); `ARMS` adds
the recipes issue 23 compares against INST:

| arm | strategy | AugmentConfig overrides | what it tests |
|---|---|---|---|
| `inst-cooldown` | inst | `condition_end=0.9`, `mask_condition_loss=True` | MeCo: condition for 90% of training, cool down plain; prefix out of the loss |
| `inst-late` | inst | `condition_start=0.2` | conditioning that starts late (after 20% of training) |
| `inst-masked` | inst | `mask_condition_loss=True` | the instruction in context, out of the loss |
| `mask` | mask | - | SLUNG: toxic samples in context, out of the loss |

An *eval condition* is how one trained model is sampled: its own (non-toxic) condition,
its toxic one (conditioned arms), and on request with no prefix at all (`ARM+none`) or
with guidance away from its toxic condition (`ARM+guidanceA`, see `toxjax.decode`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from toxjax.errors import ConfigError
from toxjax.preprocessors import STRATEGIES, AugmentConfig, get_strategy

DEFAULT_CORPUS = "demo"


@dataclasses.dataclass(frozen=True)
class ArmSpec:
    """One training recipe (see the module docstring).

    Attributes:
      name: the arm's name (`--extra`, model directories, report rows).
      strategy: its entry in the strategy table.
      overrides: `AugmentConfig` fields that differ from the defaults, `(field, value)`.
      summary: one line for the help text and the docs.
    """

    name: str
    strategy: str
    overrides: tuple[tuple[str, Any], ...] = ()
    summary: str = ""

    @property
    def config(self) -> AugmentConfig:
        return AugmentConfig(**dict(self.overrides))

    @property
    def corpus(self) -> str:
        """The corpus name its task is registered under: a strategy's default recipe
        keeps the demo's (`demo_inst_v1`, as before arms existed), another recipe gets
        its own (`demo_inst_cooldown_inst_v1`: one task, one AugmentConfig)."""
        if not self.overrides:
            return DEFAULT_CORPUS
        return f"{DEFAULT_CORPUS}_{re.sub(r'[^0-9A-Za-z]', '_', self.name)}"

    @property
    def conditioned(self) -> bool:
        return get_strategy(self.strategy).conditioned


def _table() -> dict[str, ArmSpec]:
    arms = {n: ArmSpec(n, n, (), s.summary) for n, s in STRATEGIES.items()}
    for arm in (
        ArmSpec(
            "inst-cooldown",
            "inst",
            (("condition_end", 0.9), ("mask_condition_loss", True)),
            "INST for the first 90% of training, then plain; instruction out of the loss (MeCo)",
        ),
        ArmSpec(
            "inst-late",
            "inst",
            (("condition_start", 0.2),),
            "INST from 20% of training on (a late start)",
        ),
        ArmSpec(
            "inst-masked",
            "inst",
            (("mask_condition_loss", True),),
            "INST with the instruction in context but out of the loss",
        ),
    ):
        arms[arm.name] = arm
    return arms


ARMS: dict[str, ArmSpec] = _table()


@dataclasses.dataclass(frozen=True)
class Condition:
    """One trained model (an arm, every seed of it) under one way of sampling.

    Attributes:
      name: the report row (`inst`, `inst_toxic`, `inst+none`, `inst+guidance2`).
      arm: the arm whose models are sampled.
      toxic: under the arm's toxic condition.
      no_prefix: with no prefix at all.
      guidance: guided away from the toxic condition at this scale (0 = plain).
    """

    name: str
    arm: str
    toxic: bool = False
    no_prefix: bool = False
    guidance: float = 0.0

    def settings(self) -> dict:
        """What this condition adds to its eval stage's key (nothing for the model's own
        and toxic conditions, so their results keep the keys they had)."""
        out: dict[str, Any] = {}
        if self.no_prefix:
            out["no_prefix"] = True
        if self.guidance:
            out["guidance"] = self.guidance
        return out


_VARIANT = re.compile(r"^(none|guidance(\d+(?:\.\d+)?))$")


def _extra_condition(token: str) -> Condition:
    arm, _, variant = token.partition("+")
    match = _VARIANT.match(variant)
    if match is None or (match.group(2) is not None and float(match.group(2)) <= 0):
        raise ConfigError(
            f"unknown eval condition {token!r}; use ARM+none (no prefix) or ARM+guidanceA "
            "(guidance away from the toxic condition at scale A > 0, e.g. inst+guidance2)"
        )
    if arm in ARMS and not ARMS[arm].conditioned:
        have = ", ".join(n for n, a in ARMS.items() if a.conditioned)
        raise ConfigError(
            f"{token}: {arm} has no conditioning prefix to leave out or guide with; use one "
            f"of {have}"
        )
    if match.group(2) is None:
        return Condition(token, arm, no_prefix=True)
    return Condition(
        f"{arm}+guidance{float(match.group(2)):g}", arm, guidance=float(match.group(2))
    )


def parse(strategies: str, extra: str = "") -> tuple[list[str], list[Condition]]:
    """`--strategies` / `--extra` -> (the arms to train, baseline first; the extra eval
    conditions, `ARM+none` / `ARM+guidanceA`, in the order given). An extra condition
    trains its arm too.

    Raises:
      SystemExit: an unknown arm (one line).
      ConfigError: an unknown eval condition, or one its arm cannot take.
    """
    tokens = [t.strip() for t in f"{strategies},{extra}".split(",") if t.strip()]
    extras = [_extra_condition(t) for t in tokens if "+" in t]
    names = [t.partition("+")[0] for t in tokens]
    unknown = sorted(set(names) - set(ARMS))
    if unknown:
        raise SystemExit(
            f"toxjax demo: unknown strategies {unknown}; choose arms from {', '.join(ARMS)} "
            "(and eval conditions ARM+none, ARM+guidanceA)"
        )
    arms = ["baseline"] + [n for n in dict.fromkeys(names) if n != "baseline"]
    return arms, list({c.name: c for c in extras}.values())


def conditions(arms: list[str], extras: list[Condition] = ()) -> list[Condition]:
    """Each arm under its own condition, then each conditioned one (the strategy table
    says which) under its toxic one, then the extra conditions."""
    out = [Condition(a, a) for a in arms]
    out += [Condition(f"{a}_toxic", a, toxic=True) for a in arms if ARMS[a].conditioned]
    return out + list(extras)


# --------------------------------------------------------------------------- the clock
# The full recipe on this project's 2-core CPU dev machine, quiet (docs/demo.md, the
# `--seeds 3` run of 2026-12-05): 900 steps x 16 x 128 tokens of models/cpu_demo.gin
# with its layers unrolled trained in 6.3-6.8 minutes (10.4-10.9 rolled, before the
# page-fault fix); one eval condition (300 prompts x 25 samples x 20 tokens, two
# perplexity passes) took 1.1-1.3 minutes, a guided one (two branches) 1.8-2.0; six
# recognition passes and the split, score, vocabulary and report stages ~3.5 minutes.
TRAIN_MINUTES, TRAIN_TOKENS, TRAIN_MODEL = 6.4, 900 * 16 * 128, "models/cpu_demo.gin"
TRAIN_BINDINGS = ("ModelConfig.scan_unroll = 4",)
EVAL_MINUTES, EVAL_TOKENS = 1.2, 300 * 25 * 20
GUIDED_EVAL_MINUTES = 1.9
RECOGNITION_MINUTES = 0.5


def estimate_minutes(cfg, models: int, evals: int, guided: int, recognitions: int) -> float | None:
    """Minutes of the work still to do, from the measured recipe scaled by tokens; None
    for another model size (no measurement to scale)."""
    if cfg.model_gin != TRAIN_MODEL or cfg.model_bindings != TRAIN_BINDINGS:
        return None
    train = TRAIN_MINUTES * cfg.num_steps * cfg.batch_size * cfg.sequence_length / TRAIN_TOKENS
    sample = EVAL_MINUTES * cfg.num_prompts * cfg.num_decodes * cfg.max_new_tokens / EVAL_TOKENS
    guided_extra = (GUIDED_EVAL_MINUTES / EVAL_MINUTES - 1) * guided  # evals counts them once
    return models * train + (evals + guided_extra) * sample + recognitions * RECOGNITION_MINUTES

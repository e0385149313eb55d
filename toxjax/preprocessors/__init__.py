"""SeqIO preprocessors for toxicity-controlled pretraining (MEDA, INST, filter, ctrl).

`AugmentConfig` holds every knob (gin-configurable); `task_preprocessors(strategy)`
gives a seqio preprocessor list; `conditioning_prefix(strategy)` gives the string that
goes before an eval prompt, built from the same templates as the training data.
"""

from toxjax.preprocessors.config import (
    SCORING_UNITS,
    STRATEGIES,
    AugmentConfig,
    conditioning_prefix,
    format_score,
    inst_bucket,
    meda_prefix,
)
from toxjax.preprocessors.pipeline import (
    augment,
    conditioning_prefix_ids,
    precache,
    task_preprocessors,
    text_vocabulary,
)

__all__ = [
    "SCORING_UNITS",
    "STRATEGIES",
    "AugmentConfig",
    "augment",
    "conditioning_prefix",
    "conditioning_prefix_ids",
    "format_score",
    "inst_bucket",
    "meda_prefix",
    "precache",
    "task_preprocessors",
    "text_vocabulary",
]

"""SeqIO preprocessors for toxicity-controlled pretraining (MEDA, INST, filter, ctrl).

`STRATEGIES` is the strategy table (`strategies.py`): one entry per strategy with its
sample selection, its prefixes and its vocabulary needs. `AugmentConfig` holds every
knob and is passed explicitly; `task_preprocessors(strategy, config)` gives a seqio
preprocessor list; `conditioning_prefix(_ids)(strategy, config=...)` gives what goes
before an eval prompt, built from the same templates as the training data.
"""

from toxjax.preprocessors.config import (
    SCORING_UNITS,
    AugmentConfig,
    format_score,
    inst_bucket,
    meda_prefix,
)
from toxjax.preprocessors.pipeline import augment, precache, task_preprocessors
from toxjax.preprocessors.strategies import (
    STRATEGIES,
    Strategy,
    conditioning_prefix,
    conditioning_prefix_ids,
    get_strategy,
    text_vocabulary,
)

__all__ = [
    "SCORING_UNITS",
    "STRATEGIES",
    "AugmentConfig",
    "Strategy",
    "augment",
    "conditioning_prefix",
    "conditioning_prefix_ids",
    "format_score",
    "get_strategy",
    "inst_bucket",
    "meda_prefix",
    "precache",
    "task_preprocessors",
    "text_vocabulary",
]

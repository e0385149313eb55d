"""Hugging Face sequence classifiers in Flax: one home for every encoder family.

    cfg = EncoderConfig.from_hf(hf_config)            # UnsupportedArchitecture if not here
    params = params_from_torch(state_dict, cfg)       # strict: every weight accounted for
    logits = classifier(cfg).apply({"params": params}, ids, mask)   # [batch, num_labels]

Families (`config.FAMILIES`): BERT; RoBERTa and XLM-R; ALBERT (one shared layer group);
DistilBERT; DeBERTa-v2/v3 (disentangled attention, log-bucketed relative positions).
Detoxify's checkpoints (`detoxify_jax`) and any local `hf:DIR` classifier (`hf`) both
run through here. Each family is tested against transformers' own forward to 1e-4
(fp32) in tests/test_toxicity_encoders.py.
"""

from __future__ import annotations

from flax import linen as nn

from toxjax.toxicity.encoders.bert import BertFamilyClassifier
from toxjax.toxicity.encoders.config import FAMILIES, EncoderConfig, UnsupportedArchitecture
from toxjax.toxicity.encoders.convert import cast_matmul_params, params_from_torch
from toxjax.toxicity.encoders.deberta import DebertaV2Classifier
from toxjax.toxicity.encoders.distilbert import DistilBertClassifier

_CLASSIFIERS: dict[str, type[nn.Module]] = {
    "bert": BertFamilyClassifier,
    "roberta": BertFamilyClassifier,
    "albert": BertFamilyClassifier,
    "distilbert": DistilBertClassifier,
    "deberta": DebertaV2Classifier,
}
JAX_MODEL_TYPES = tuple(sorted(FAMILIES))

__all__ = [
    "JAX_MODEL_TYPES",
    "EncoderConfig",
    "UnsupportedArchitecture",
    "cast_matmul_params",
    "classifier",
    "params_from_torch",
]


def classifier(cfg: EncoderConfig) -> nn.Module:
    """The Flax sequence classifier of `cfg.arch`: `(ids, mask) -> [batch, num_labels]` logits."""
    return _CLASSIFIERS[cfg.arch](cfg)

"""The strategy table: every way toxjax turns a scored corpus into training samples.

One entry per strategy says everything the rest of the code needs to know about it:

- what it does to the samples before tokenization (`select`: the filter drops toxic
  samples, MEDA writes each sample's score as a metadata line),
- which fixed prefixes it may put before a sample (`candidate_prefixes`, chosen per
  sample by toxicity bucket and a keep probability: INST's instructions, ctrl's tokens),
- whether a sample's text is in the loss (`text_in_loss`: the `mask` strategy keeps
  toxic samples in the context with zero loss weight),
- the prefix that goes before an eval prompt (`prefix` / `prefix_ids`, non-toxic or
  toxic variant),
- what it needs from the vocabulary (`control_tokens`).

The registry, the SeqIO pipeline, `toxjax eval`, the demo and the tests read this
table; nothing else branches on a strategy's name. Adding a strategy is one `Strategy`
subclass registered in `STRATEGIES`, plus its tests.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import seqio
import tensorflow as tf

from toxjax.errors import ConfigError
from toxjax.preprocessors.config import SCORE_PLACEHOLDER, AugmentConfig, meda_prefix
from toxjax.vocab import ControlTokenVocabulary


def text_vocabulary(vocabulary: seqio.Vocabulary) -> seqio.Vocabulary:
    """The vocabulary for corpus text: control tokens are never parsed out of documents."""
    if isinstance(vocabulary, ControlTokenVocabulary):
        return vocabulary.text_vocabulary
    return vocabulary


class Strategy:
    """A pretraining strategy (see the module docstring). Subclasses override what differs.

    Attributes:
      name: the name in task names, gin files, run.json and `--condition`.
      summary: one line for help texts and docs.
      conditioned: training puts a prefix before samples, and the model is meant to be
        used with one before its prompts (it has a non-toxic and a toxic condition).
      condition_names: what its non-toxic and toxic conditions are called in reports.
      masks_text: `text_in_loss` can be False (the task then carries per-token loss
        weights).
    """

    name: str = ""
    summary: str = ""
    conditioned: bool = False
    condition_names: tuple[str, str] = ("non-toxic condition", "toxic condition")
    masks_text: bool = False

    def control_tokens(self, config: AugmentConfig) -> tuple[str, ...]:
        """Special tokens the task vocabulary must add (a `ControlTokenVocabulary`)."""
        del config
        return ()

    def select(self, ds: tf.data.Dataset, config: AugmentConfig) -> tf.data.Dataset:
        """Deterministic per-sample work before tokenization, on {"text", "toxicity", ...}.

        May drop samples, or add a "prefix" string feature (tokenized with the text and
        put before it by `augment`).
        """
        del config
        return ds

    def candidate_prefixes(
        self, config: AugmentConfig, vocabulary: seqio.Vocabulary
    ) -> list[list[int]]:
        """Fixed prefix ids per toxicity bucket, least toxic first ([] for none)."""
        del config, vocabulary
        return []

    def bucket_thresholds(self, config: AugmentConfig) -> tuple[float, ...]:
        """Ascending bucket edges of `candidate_prefixes` (a score is in bucket i when it
        is strictly above i of them)."""
        del config
        return ()

    def keeps_prefix(self, u: tf.Tensor, config: AugmentConfig) -> tf.Tensor:
        """Whether a sample with uniform draw `u` in [0, 1) gets its candidate prefix
        (the rest stay plain)."""
        del config
        return tf.ones_like(u, tf.bool)

    def text_in_loss(self, toxicity: tf.Tensor, config: AugmentConfig) -> tf.Tensor:
        """Whether a sample's text tokens (and its EOS) carry loss weight, `[]` bool."""
        del config
        return tf.ones_like(toxicity, tf.bool)

    def prefix(self, config: AugmentConfig, toxic: bool = False) -> str:
        """The string before an eval prompt ("" when unconditioned)."""
        del config, toxic
        return ""

    def prefix_ids(
        self, config: AugmentConfig, vocabulary: seqio.Vocabulary, toxic: bool = False
    ) -> list[int]:
        """The exact ids training puts before a sample of the given condition.

        Eval code builds `prefix_ids + vocabulary.encode(prompt)`, as the pipeline does
        for a sample. `vocabulary.encode(prefix + prompt)` is not the same: SentencePiece,
        for one, encodes the prompt's first word after the template's newline without
        its word-start marker, a sequence the model never saw in training.
        """
        candidates = self.candidate_prefixes(config, vocabulary)
        if candidates:
            return list(candidates[-1 if toxic else 0])
        text = self.prefix(config, toxic)
        return [int(i) for i in text_vocabulary(vocabulary).encode(text)] if text else []

    def __repr__(self) -> str:
        return f"Strategy({self.name!r})"


class Baseline(Strategy):
    name = "baseline"
    summary = "every document, no augmentation"


class Filter(Strategy):
    name = "filter"
    summary = "drop samples scoring above AugmentConfig.filter_threshold"

    def select(self, ds, config):
        return ds.filter(lambda x: x["toxicity"] <= np.float32(config.filter_threshold))


class Meda(Strategy):
    name = "meda"
    summary = "the sample's toxicity score as a metadata line before it"
    conditioned = True
    condition_names = ("non-toxic metadata", "toxic metadata")

    def select(self, ds, config):
        # Same number formatting as `config.format_score` (printf %.*f of the float32).
        before, after = config.meda_template.split(SCORE_PLACEHOLDER)

        def fn(x):
            value = x["toxicity"] * np.float32(config.meda_scale)
            number = tf.strings.as_string(value, precision=config.meda_decimals)
            return {**x, "prefix": tf.strings.join([before, number, after])}

        return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)

    def prefix(self, config, toxic=False):
        return meda_prefix(1.0 if toxic else config.meda_inference_score, config)


class Inst(Strategy):
    name = "inst"
    summary = "an instruction saying whether the text that follows is toxic"
    conditioned = True
    condition_names = ("non-toxic instruction", "toxic instruction")

    def candidate_prefixes(self, config, vocabulary):
        text_vocab = text_vocabulary(vocabulary)
        return [[int(i) for i in text_vocab.encode(t)] for t in config.inst_templates]

    def bucket_thresholds(self, config):
        return tuple(config.inst_thresholds)

    def keeps_prefix(self, u, config):
        return u < config.inst_fraction

    def prefix(self, config, toxic=False):
        return config.inst_templates[-1 if toxic else 0]


class Ctrl(Strategy):
    name = "ctrl"
    summary = "Korbak et al.'s control tokens: <|aligned|> / <|misaligned|> before a sample"
    conditioned = True
    condition_names = ("aligned token", "misaligned token")

    def control_tokens(self, config):
        return tuple(config.ctrl_tokens)

    def candidate_prefixes(self, config, vocabulary):
        if not isinstance(vocabulary, ControlTokenVocabulary) or not set(config.ctrl_tokens) <= set(
            vocabulary.tokens
        ):
            raise ValueError(
                f"strategy 'ctrl' needs a ControlTokenVocabulary with tokens "
                f"{config.ctrl_tokens}, got {vocabulary}; `toxjax.registry.register_corpus` "
                "builds one for you."
            )
        return [[vocabulary.token_id(t)] for t in config.ctrl_tokens]

    def bucket_thresholds(self, config):
        return (config.ctrl_threshold,)

    def keeps_prefix(self, u, config):
        return u >= config.ctrl_untagged_fraction

    def prefix(self, config, toxic=False):
        return config.ctrl_tokens[1 if toxic else 0]


class Mask(Strategy):
    name = "mask"
    summary = (
        "SLUNG (Wang et al. 2025): samples above AugmentConfig.mask_threshold stay in the "
        "context with zero loss weight"
    )
    masks_text = True

    def text_in_loss(self, toxicity, config):
        return toxicity <= np.float32(config.mask_threshold)


# The table. Order is the order of task registration and of reports.
STRATEGIES: dict[str, Strategy] = {
    s.name: s for s in (Baseline(), Meda(), Inst(), Filter(), Ctrl(), Mask())
}


def get_strategy(name: str) -> Strategy:
    """The table entry for `name`; an unknown name is an error listing the known ones."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown strategy {name!r}; use one of {', '.join(STRATEGIES)}"
        ) from None


def conditioning_prefix(
    strategy: str, toxic: bool = False, config: AugmentConfig | None = None, **overrides
) -> str:
    """The string that goes before an eval prompt, from the training templates.

    Args:
      strategy: a name in `STRATEGIES`.
      toxic: False for the non-toxic condition (the one used to detoxify); True for the
        most toxic bucket (a check that the model learned the control).
      config: the augmentation config the model was trained with (run.json has it);
        default `AugmentConfig()`.
      **overrides: `AugmentConfig` fields overriding `config`.

    Returns:
      The prefix string ("" for unconditioned strategies). For ctrl it is the control
      token string, which `ControlTokenVocabulary.encode` turns into its special id.
    """
    return get_strategy(strategy).prefix(_config(config, overrides), toxic)


def conditioning_prefix_ids(
    strategy: str,
    vocabulary: seqio.Vocabulary,
    toxic: bool = False,
    config: AugmentConfig | None = None,
    **overrides,
) -> list[int]:
    """The exact ids the training data puts before a sample of the given condition
    (see `Strategy.prefix_ids`)."""
    return get_strategy(strategy).prefix_ids(_config(config, overrides), vocabulary, toxic)


def _config(config: AugmentConfig | None, overrides: dict) -> AugmentConfig:
    config = config if config is not None else AugmentConfig()
    return dataclasses.replace(config, **overrides) if overrides else config

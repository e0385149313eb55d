"""Transformers checkpoint directories -> toxjax models (import).

- `read_hf_checkpoint(dir)`: the model at the checkpoint's own token ids (any family of
  `toxjax.interop.hf.FAMILIES`).
- `load_hf_for_inference(dir)`: that, plus the checkpoint's tokenizer as a
  `seqio.Vocabulary` (`HfVocabulary`, whose `bos_id` `ModelLM` takes): evaluating GPT-2,
  Pythia or a Llama with toxjax's sampler and evals.
- `from_hf_checkpoint(dir)`: a GPT-2-BPE checkpoint at toxjax's ids (`Gpt2Vocabulary`,
  every id + 1, row 0 a copy of `<|endoftext|>`): the start of a training run (continued
  pretraining). Exporting it again gives back the input weights.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple

from toxjax import fileio
from toxjax.errors import ConfigError
from toxjax.interop import hf, hf_vocab
from toxjax.model import DecoderLM, ModelConfig


@dataclasses.dataclass(frozen=True)
class HfCheckpoint:
    """A transformers checkpoint converted at its own ids.

    Attributes:
      config: the equivalent `ModelConfig` (float32 parameters, layers scanned).
      params: our parameter tree (float32 numpy arrays).
      family: `hf.FAMILIES` key.
      provenance: where it came from (for run.json): directory, architecture, the
        sha256 of each weights file.
    """

    config: ModelConfig
    params: dict
    family: str
    provenance: dict


def _hf_config(directory: str):
    from transformers import AutoConfig

    if not os.path.exists(os.path.join(directory, "config.json")):
        raise FileNotFoundError(f"{directory}: no config.json; not a transformers checkpoint")
    return AutoConfig.from_pretrained(directory)


def read_hf_checkpoint(directory: str) -> HfCheckpoint:
    """Converts a transformers checkpoint directory (config.json + weights).

    Raises:
      FileNotFoundError: no config.json or no weights.
      ConfigError: an architecture or setting toxjax does not convert, or weights that do
        not match config.json (each one line naming the field or tensor).
    """
    directory = os.path.abspath(directory)
    hf_config = _hf_config(directory)
    family = hf.family_of(hf_config)
    config = family.to_config(hf_config)
    tensors = hf.read_tensors(directory)
    params = hf.params_from_hf(config, family, tensors, where=directory)
    weights = sorted(
        n for n in os.listdir(directory) if n.endswith((".safetensors", ".bin", ".index.json"))
    )
    provenance = {
        "source": directory,
        "model_type": family.name,
        "architecture": family.architecture,
        "weights": {n: fileio.sha256_file(os.path.join(directory, n)) for n in weights},
    }
    return HfCheckpoint(config, params, family.name, provenance)


@dataclasses.dataclass
class HfModel:
    """A transformers model ready for toxjax's sampler and evals (ids unchanged)."""

    model: Any  # toxjax.model.DecoderLM
    params: dict
    vocabulary: hf_vocab.HfVocabulary
    config: ModelConfig
    provenance: dict

    @property
    def bos_id(self) -> int:
        """The id each sequence starts with (`ModelLM(bos_id=...)`)."""
        return self.vocabulary.bos_id


def load_hf_for_inference(directory: str, bos_id: int | None = None) -> HfModel:
    """A transformers checkpoint directory with its tokenizer, at the checkpoint's ids."""
    ck = read_hf_checkpoint(directory)
    vocabulary = hf_vocab.HfVocabulary(os.path.abspath(directory), bos_id=bos_id)
    return HfModel(DecoderLM(ck.config), ck.params, vocabulary, ck.config, ck.provenance)


class Imported(NamedTuple):
    """`from_hf_checkpoint`'s result: `config, params, vocabulary, provenance = ...`."""

    config: ModelConfig
    params: dict
    vocabulary: Any  # toxjax.vocab.Gpt2Vocabulary
    provenance: dict


def from_hf_checkpoint(directory: str) -> Imported:
    """A GPT-2-BPE transformers checkpoint at toxjax's ids, to train from.

    The vocabulary is the checkpoint's own `vocab.json` / `merges.txt` as a
    `Gpt2Vocabulary`; row `i + 1` of the embedding (and output head) is the checkpoint's
    row `i`, and row 0, the BOS every training sample starts with, is a copy of
    `<|endoftext|>`'s row (what GPT-2 saw before a document). The vocabulary size is not
    rounded up: `toxjax export hf` of the unchanged model writes the input weights back.

    Raises:
      ConfigError: not a GPT-2 BPE tokenizer, or as `read_hf_checkpoint`.
    """
    from toxjax.vocab import Gpt2Vocabulary

    ck = read_hf_checkpoint(directory)
    vocabulary = Gpt2Vocabulary(*hf_vocab.gpt2_vocabulary_files(directory), source="files")
    eos = vocabulary.eos_id - 1  # the checkpoint's <|endoftext|>
    if ck.config.vocab_size < vocabulary.vocab_size - 1:
        raise ConfigError(
            f"{directory}: the tokenizer has {vocabulary.vocab_size - 1} tokens but the "
            f"embedding only {ck.config.vocab_size} rows"
        )
    rows = hf_vocab.import_rows(eos, ck.config.vocab_size)
    params = hf_vocab.gather_rows(ck.params, rows)
    config = dataclasses.replace(ck.config, vocab_size=len(rows))
    provenance = {
        **ck.provenance,
        "ids": "toxjax id = checkpoint id + 1; row 0 (the BOS) is a copy of <|endoftext|>",
    }
    return Imported(config, params, vocabulary, provenance)


__all__ = [
    "HfCheckpoint",
    "HfModel",
    "Imported",
    "from_hf_checkpoint",
    "load_hf_for_inference",
    "read_hf_checkpoint",
]

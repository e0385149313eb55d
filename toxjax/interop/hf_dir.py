"""A transformers checkpoint directory, opened for toxjax's evals: the twin of `RunDir`.

    model_dir = open_model_dir("models/pythia-160m")  # toxjax.run_dir: a run or this
    cond = model_dir.conditioning(text="Be nice.")    # a literal prefix (no run.json)
    model = model_dir.load()                          # converted to our DecoderLM
    lm = model.lm(sampling=SamplingConfig(...))       # our sampler, scoring, evals

The checkpoint (GPT-2, GPT-NeoX / Pythia, Llama: `toxjax.interop.families`) is converted
at its own token ids (`load.read_hf_checkpoint`), its tokenizer wraps as a
`seqio.Vocabulary` (`hf_vocab.HfVocabulary`), and every sequence starts with the
tokenizer's BOS (else its EOS): GPT-2 and Pythia `<|endoftext|>`, Llama `<s>`, a toxjax
export its `<|bos|>` or `<pad>`. What makes its outputs (the resume identity of
`toxjax eval toxicity`) is the sha256 of its weights, config.json and tokenizer files.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import jax

from toxjax import fileio
from toxjax.run_dir import LoadedModel
from toxjax.run_info import NO_CONDITION, Conditioning, RunInfo, literal_conditioning

# Files that make a transformers tokenizer (those present are hashed into the identity).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
)


@dataclasses.dataclass
class HfLoadedModel(LoadedModel):
    """A transformers checkpoint loaded for inference (`LoadedModel` with `step` and
    `run` None); `provenance` is `read_hf_checkpoint`'s (directory, architecture, the
    sha256 of each weights file)."""

    provenance: dict | None = None
    files: dict | None = None  # sha256 of config.json and the tokenizer files

    def identity(self) -> dict:
        """The weights', config's and tokenizer's sha256 (not the path: a moved copy is
        the same model)."""
        p = self.provenance or {}
        return {
            "transformers": {
                "architecture": p.get("architecture"),
                "weights": p.get("weights"),
                **(self.files or {}),
            }
        }

    def describe(self) -> dict:
        return {"kind": "transformers", **(self.provenance or {}), **(self.files or {})}


@dataclasses.dataclass
class HfDir:
    """A transformers checkpoint directory (see the module docstring).

    Attributes:
      path: the directory (absolute).
      vocabulary: its tokenizer as an `HfVocabulary`.
      hf_config: its config (`transformers.AutoConfig`), of a family toxjax converts.
    """

    path: str
    vocabulary: object
    hf_config: object

    @classmethod
    def open(cls, directory: str) -> HfDir:
        """Reads config.json (an architecture toxjax does not convert is refused here,
        before any weights) and the tokenizer.

        Raises:
          ValueError: a remote directory.
          toxjax.errors.ConfigError: an unsupported architecture or setting (one line).
          OSError: no tokenizer files transformers can load.
        """
        from toxjax.interop import hf
        from toxjax.interop.hf_vocab import HfVocabulary
        from toxjax.interop.load import _hf_config

        if fileio.is_remote(directory):
            raise ValueError(
                f"--model_dir {directory}: a transformers checkpoint is read from a local "
                "directory (copy it here first)"
            )
        path = os.path.abspath(directory)
        hf_config = _hf_config(path)
        hf.family_of(hf_config).to_config(hf_config)  # refuses what we cannot compute
        try:
            vocabulary = HfVocabulary(path)
        except (OSError, ValueError) as e:
            raise OSError(f"{path}: no tokenizer transformers can load ({e})") from None
        return cls(path, vocabulary, hf_config)

    def conditioning(
        self,
        condition: str | None = None,
        toxic: bool = False,
        warn: Callable[[str], None] | None = None,
        text: str | None = None,
    ) -> Conditioning:
        """The prefix an eval puts before each prompt: none by default (a transformers
        checkpoint says nothing about how it was trained), `text` literally
        (`--condition_text`), or a strategy's default prefix (`--condition inst`, the
        templates of `AugmentConfig()`) encoded with the checkpoint's tokenizer.

        Raises:
          ValueError: `text` with a strategy's condition, `toxic` without a strategy, or
            a strategy the tokenizer cannot express (ctrl's control tokens).
        """
        if text is not None:
            if condition not in (None, NO_CONDITION):
                raise ValueError(
                    f"--condition {condition} and --condition_text are two prefixes; give one"
                )
            return literal_conditioning(text, self.vocabulary, toxic)
        if condition is None:
            condition = NO_CONDITION
        # A run.json that knows no strategy: the strategy's default templates, no warning.
        info = RunInfo(model_config=None, vocabulary={})
        return info.conditioning(self.vocabulary, condition, toxic, warn)

    def load(self, step: int | None = None, warn: Callable[[str], None] | None = None):
        """The checkpoint converted to our model, its parameters on the default device.

        Raises:
          ValueError: a `step` (a transformers checkpoint has none).
          toxjax.errors.ConfigError: weights that do not match config.json (naming the
            tensor).
        """
        from toxjax import attention
        from toxjax.interop.load import read_hf_checkpoint
        from toxjax.model import DecoderLM

        if step is not None:
            raise ValueError(
                f"--step {step}: {self.path} is a transformers checkpoint, which has no steps"
            )
        ck = read_hf_checkpoint(self.path)
        config = dataclasses.replace(
            ck.config, attention=attention.portable(ck.config.attention, jax.default_backend())
        )
        return HfLoadedModel(
            model=DecoderLM(config),
            # On the device once: the evals call the model many times with these.
            params=jax.device_put(ck.params),
            config=config,
            step=None,
            vocabulary=self.vocabulary,
            run=None,
            bos_id=self.vocabulary.bos_id,
            provenance=ck.provenance,
            files=self._files(),
        )

    def _files(self) -> dict:
        names = [n for n in TOKENIZER_FILES if os.path.exists(os.path.join(self.path, n))]
        return {
            "config": fileio.sha256_file(os.path.join(self.path, "config.json")),
            "tokenizer": {n: fileio.sha256_file(os.path.join(self.path, n)) for n in names},
        }

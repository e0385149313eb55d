"""`train.init_from`: a training run that starts from a transformers checkpoint.

    toxjax train --gin_file=experiments/inst_125m.gin --gin.INIT_FROM=models/gpt2 \
        --gin.CORPUS_FILES='scored/*.jsonl'

Continued pretraining with any strategy from a released GPT-2-BPE model (GPT-2, a
DistilGPT-2, a toxjax export of a GPT-2-BPE run, any architecture of
`toxjax.interop.families` with such a tokenizer):

- the model: the architecture comes from the checkpoint's config.json (the gin file's
  `ModelConfig` sizes do not apply; a note names those that differ), the compute settings
  from gin (`COMPUTE_FIELDS`: dtypes, remat, scan, attention kernel, logits chunking,
  dropout). The vocabulary size is the task vocabulary's, not rounded up, so that
  `toxjax export hf` of the run writes the checkpoint's shapes (GPT-2's 50,258 at our
  ids; the `ctrl` strategy's control tokens get new rows at the mean embedding,
  `toxjax.vocab.init_new_embeddings`).
- the vocabulary: the task's. It must tokenize as the checkpoint's `vocab.json` +
  `merges.txt` (compared by content: the paper's `VOCABULARY = 'gpt2'` is GPT-2's own
  BPE); otherwise the run is refused in one line saying to bind `VOCABULARY` to the
  checkpoint directory, which makes the task tokenize with its files.
- the state: the imported parameters (`load.from_hf_checkpoint`: our ids, row 0 a copy of
  `<|endoftext|>`), a fresh optimizer state, born sharded
  (`train_state.state_from_params`); run.json records where the run started (the
  directory and its weights' sha256). A resumed run restores its checkpoint and never
  reads the weights again.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from toxjax import fileio
from toxjax.errors import ConfigError

# ModelConfig fields a run keeps from gin: how it computes, not what it computes.
COMPUTE_FIELDS = (
    "dtype",
    "param_dtype",
    "remat",
    "scan_layers",
    "attention",
    "logits_chunk",
    "dropout_rate",
)
BINDING = "train.init_from"


def _hf_config(directory: str):
    from toxjax.interop.load import _hf_config as read

    if fileio.is_remote(directory):
        raise ConfigError(f"{BINDING} = {directory!r}: a transformers checkpoint must be local")
    if not os.path.isdir(directory):
        raise ConfigError(f"{BINDING} = {directory!r}: no such directory")
    try:
        return read(directory)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{BINDING} = {directory!r}: {e}") from None


def _text_vocabulary(vocabulary):
    return getattr(vocabulary, "text_vocabulary", vocabulary)


def _merges(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [ln.rstrip("\n") for ln in f if ln.strip() and not ln.startswith("#version")]


def check_vocabulary(directory: str, vocabulary) -> None:
    """Refuses a task vocabulary that does not tokenize as the checkpoint's tokenizer.

    Raises:
      ConfigError: one line naming both and the binding that fixes it.
    """
    from toxjax.interop import hf_vocab
    from toxjax.vocab import Gpt2Vocabulary

    vocab_file, merges_file = hf_vocab.gpt2_vocabulary_files(directory)
    base = _text_vocabulary(vocabulary)
    same = isinstance(base, Gpt2Vocabulary)
    if same:
        with open(vocab_file, encoding="utf-8") as a, open(base._vocab_file, encoding="utf-8") as b:
            same = json.load(a) == json.load(b)
        same = same and _merges(merges_file) == _merges(base._merges_file)
    if not same:
        raise ConfigError(
            f"{BINDING} = {directory!r}: the task's vocabulary ({base}) is not the "
            "checkpoint's tokenizer (its vocab.json + merges.txt); bind "
            f"VOCABULARY = '{directory}' so that the task tokenizes with it"
        )


def model_config(directory: str, configured, vocabulary=None):
    """The run's `ModelConfig`: the checkpoint's architecture with the compute settings
    of `configured` (gin's), its vocabulary size the task's (see the module docstring).

    Args:
      directory: the transformers checkpoint directory.
      configured: gin's `ModelConfig`.
      vocabulary: the task's vocabulary (checked against the checkpoint's tokenizer);
        None when the task is not known (compile-check with the size bound in gin): the
        checkpoint's size at our ids.

    Returns:
      `(config, notes)`: the config and the "<field> was <gin's>, now <checkpoint's>"
      changes to gin's architecture (for one note line).

    Raises:
      ConfigError: an architecture toxjax does not convert, or a vocabulary mismatch.
    """
    from toxjax.interop import hf

    directory = os.path.abspath(directory)
    hf_config = _hf_config(directory)
    imported = hf.family_of(hf_config).to_config(hf_config)
    rows = imported.vocab_size + 1  # our row 0 (the BOS) before the checkpoint's ids
    if vocabulary is not None:
        check_vocabulary(directory, vocabulary)
        rows = max(rows, vocabulary.vocab_size)
    config = dataclasses.replace(
        imported,
        vocab_size=rows,
        **{f: getattr(configured, f) for f in COMPUTE_FIELDS},
    )
    skip = {*COMPUTE_FIELDS, "vocab_size", "init_std"}
    names = [f.name for f in dataclasses.fields(config) if f.name not in skip]
    notes = fileio.changes(
        {n: getattr(configured, n) for n in names}, {n: getattr(config, n) for n in names}
    )
    return config, notes


def read_params(directory: str, config, vocabulary) -> tuple[dict, dict]:
    """The checkpoint's parameters for `config` (`model_config`'s): at our ids, the
    control tokens of the task vocabulary (if any) at the mean embedding, in the layer
    layout and parameter dtype of `config`; and the provenance for run.json.

    Raises:
      ConfigError: weights that do not match config.json (naming the tensor).
      FileNotFoundError: no weights.
    """
    from toxjax.interop import hf
    from toxjax.interop.load import from_hf_checkpoint

    imported = from_hf_checkpoint(os.path.abspath(directory))
    params = hf.relayout(imported.params, imported.config, config)
    params = _grow(params, _text_vocabulary(vocabulary).vocab_size, vocabulary.vocab_size)
    dtype = jnp.dtype(config.param_dtype)
    return jax.tree.map(lambda x: np.asarray(x, dtype), params), imported.provenance


def _grow(params: dict, base: int, size: int) -> dict:
    """Rows `[base, size)` (control tokens after the text vocabulary) at the mean of the
    text vocabulary's rows; rows past `size` (a padded embedding) stay as they are."""
    from toxjax.vocab import init_new_embeddings

    emb = np.asarray(params["embedding"])
    if size <= base:
        return params
    out = dict(params)
    rest = emb[size:]
    out["embedding"] = np.concatenate([init_new_embeddings(emb[:base], size), rest])
    if "lm_head" in params:
        head = np.asarray(params["lm_head"])  # [embed, vocab]
        grown = init_new_embeddings(head[:, :base].T, size).T
        out["lm_head"] = np.concatenate([grown, head[:, size:]], axis=1)
    return out

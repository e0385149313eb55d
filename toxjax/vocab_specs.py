"""A vocabulary as JSON for run.json (`vocab_spec`), and back (`vocab_from_spec`).

File-backed vocabularies (SentencePiece, GPT-2 BPE) are copied into `MODEL_DIR/vocab/`
with their sha256, so a run directory alone rebuilds the vocabulary it was trained with,
wherever it is evaluated; a file that changed since is refused naming it.
"""

from __future__ import annotations

import os

import seqio
import tensorflow as tf

from toxjax import fileio
from toxjax.vocab import ControlTokenVocabulary, Gpt2Vocabulary

VOCAB_DIR = "vocab"  # where a run directory keeps copies of its vocabulary files


def _keep_file(path: str, model_dir: str | None, name: str) -> dict:
    """Copies a vocabulary file into `model_dir/vocab/` (so the run directory alone
    rebuilds the vocabulary) and describes it: {"file", "sha256", "source"}."""
    digest = fileio.sha256_file(path)
    if model_dir is None:
        return {"file": os.path.abspath(path), "sha256": digest, "source": path}
    target_dir = os.path.join(model_dir, VOCAB_DIR)
    tf.io.gfile.makedirs(target_dir)
    target = os.path.join(target_dir, name)
    if not (tf.io.gfile.exists(target) and fileio.sha256_file(target) == digest):
        tf.io.gfile.copy(path, target, overwrite=True)
    return {"file": f"{VOCAB_DIR}/{name}", "sha256": digest, "source": path}


def _find_file(entry: dict, model_dir: str | None, what: str) -> str:
    """The path of a kept vocabulary file, its content checked against the spec."""
    candidates = []
    if model_dir is not None and not os.path.isabs(entry["file"]) and "://" not in entry["file"]:
        candidates.append(os.path.join(model_dir, entry["file"]))
    candidates += [entry["file"], entry.get("source")]
    for path in candidates:
        if path and tf.io.gfile.exists(path):
            if fileio.sha256_file(path) != entry["sha256"]:
                raise ValueError(
                    f"{what} file {path} is not the one the model was trained with "
                    f"(sha256 {entry['sha256'][:12]}...); restore the original file"
                )
            return path
    raise FileNotFoundError(
        f"{what} file not found (looked for {', '.join(p for p in candidates if p)})"
    )


def vocab_spec(vocabulary: seqio.Vocabulary, model_dir: str | None = None) -> dict:
    """A JSON description of any vocabulary toxjax ships, for run.json.

    File-backed vocabularies (SentencePiece, GPT-2 BPE) are copied into
    `model_dir/vocab/` with their sha256, so a run directory is enough to rebuild the
    vocabulary wherever it is evaluated (`vocab_from_spec`).
    """
    if isinstance(vocabulary, ControlTokenVocabulary):
        return {
            "kind": "control_tokens",
            "base": vocab_spec(vocabulary.text_vocabulary, model_dir),
            "tokens": list(vocabulary.tokens),
        }
    if isinstance(vocabulary, Gpt2Vocabulary):
        return {
            "kind": "gpt2",
            "vocab": _keep_file(vocabulary._vocab_file, model_dir, "gpt2_vocab.json"),
            "merges": _keep_file(vocabulary._merges_file, model_dir, "gpt2_merges.txt"),
        }
    if isinstance(vocabulary, seqio.SentencePieceVocabulary):
        path = vocabulary.sentencepiece_model_file
        return {
            "kind": "sentencepiece",
            "model": _keep_file(path, model_dir, os.path.basename(path)),
            "extra_ids": vocabulary.extra_ids,
        }
    if isinstance(vocabulary, seqio.ByteVocabulary):
        return {"kind": "byte", "extra_ids": vocabulary.extra_ids}
    raise ValueError(
        f"cannot describe vocabulary {type(vocabulary).__name__} for run.json; toxjax "
        "knows SentencePiece, byte, GPT-2 BPE and control-token vocabularies"
    )


def vocab_from_spec(spec: dict, model_dir: str | None = None) -> seqio.Vocabulary:
    """Rebuilds the vocabulary `vocab_spec` described (files from `model_dir/vocab/`)."""
    kind = spec.get("kind")
    if kind == "control_tokens":
        return ControlTokenVocabulary(vocab_from_spec(spec["base"], model_dir), spec["tokens"])
    if kind == "gpt2":
        return Gpt2Vocabulary(
            _find_file(spec["vocab"], model_dir, "GPT-2 vocabulary"),
            _find_file(spec["merges"], model_dir, "GPT-2 merges"),
            source="files",
        )
    if kind == "sentencepiece":
        if "model" not in spec:  # run.json of toxjax <= 0.1: an absolute path, no copy
            return seqio.SentencePieceVocabulary(spec["path"], extra_ids=spec.get("extra_ids", 0))
        path = _find_file(spec["model"], model_dir, "SentencePiece model")
        return seqio.SentencePieceVocabulary(path, extra_ids=spec.get("extra_ids", 0))
    if kind == "byte":
        return seqio.ByteVocabulary(extra_ids=spec.get("extra_ids", 0))
    raise ValueError(f"unknown vocabulary kind {kind!r} in run.json")

"""`toxjax vocab train`: a small SentencePiece vocabulary for small models and the CPU demo.

    toxjax vocab train --input corpus.jsonl --output vocab/sp --vocab_size 4096

writes `vocab/sp.model` (and `sp.vocab`); `toxjax.vocab.sentencepiece_vocabulary` reads
it as a `seqio.Vocabulary`. Ids follow seqio's convention (pad 0, EOS 1, UNK 2), byte
fallback makes every string round-trip exactly, and the same corpus gives a
byte-identical model wherever it is trained.

Every input a user can get wrong (a missing, empty, non-UTF-8 or malformed file, a
vocabulary size the corpus cannot give, an output folder that cannot be made) is one
line naming the file (and line) or flag, exit code 2, and nothing written: the trainer
writes into a temporary folder next to the output, renamed into place when done.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence

from toxjax import fileio
from toxjax.argtypes import positive_int

PROG = "toxjax vocab train"
_SPECIAL_PIECES = 3  # pad, EOS, UNK
_BYTE_PIECES = 256  # byte fallback


class VocabTrainError(ValueError):
    """An input `toxjax vocab train` cannot train on; the message names the file or flag."""


def _check_input(path: str) -> None:
    if not os.path.exists(path):
        raise VocabTrainError(f"--input {path!r} does not exist")
    if kind := fileio.file_kind(path):
        raise VocabTrainError(f"--input {path!r} is {kind}, not a file")


def _check_output(output: str, folder: str) -> str:
    """Refuses an output folder that cannot be made, before anything is read or made;
    returns the nearest folder of it that exists."""
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    why = None
    if not os.path.isdir(existing):
        why = f"{existing} is a file"
    elif not os.access(existing, os.W_OK | os.X_OK):
        why = f"{existing} is not writable"
    if why:
        raise VocabTrainError(
            f"cannot create the folder of --output {output!r} ({why}); choose another --output"
        )
    return existing


def _iter_texts(paths: Sequence[str], text_field: str) -> Iterator[str]:
    """Yields lines of text from .jsonl / .json files (field `text_field`, split at
    newlines) or plain text files (one line each)."""
    for path in paths:
        if path.endswith((".jsonl", ".json")):
            what = f"record with a {text_field!r} field"
            for lineno, record in fileio.iter_jsonl(path, what):
                if text_field not in record:
                    raise VocabTrainError(
                        f"{path}:{lineno}: no field {text_field!r} (fields: {sorted(record)}); "
                        "pass --text_field"
                    )
                text = record[text_field]
                if not isinstance(text, str):
                    raise VocabTrainError(
                        f"{path}:{lineno}: field {text_field!r} is {type(text).__name__}, not "
                        "a string"
                    )
                yield from text.split("\n")
            continue
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    yield raw.decode("utf-8").rstrip("\n")
                except UnicodeDecodeError as e:
                    raise VocabTrainError(
                        f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start}); "
                        "re-encode the file as UTF-8"
                    ) from None


def _trainer_error(error: RuntimeError, vocab_size: int) -> VocabTrainError:
    """SentencePiece's check failures (`Internal: src/x.cc(582) [cond] why`) as one line
    naming the flag and the size the corpus allows."""
    text = re.sub(r"^.*?\] ", "", " ".join(str(error).split()))
    if m := re.search(r"smaller than required_chars\. \d+ vs (\d+)", text):
        least = int(m[1])
        chars = least - _SPECIAL_PIECES - _BYTE_PIECES
        return VocabTrainError(
            f"--vocab_size {vocab_size} is too small for this corpus: it needs at least "
            f"{least} pieces (its {chars} characters, {_BYTE_PIECES} byte pieces and "
            f"{_SPECIAL_PIECES} special ones); raise --vocab_size"
        )
    if m := re.search(r"too high \(\d+\)\. Please set it to a value <= (\d+)", text):
        return VocabTrainError(
            f"--vocab_size {vocab_size} is too large for this corpus: at most {m[1]} pieces "
            "can be learned from it; lower --vocab_size or train on more text"
        )
    return VocabTrainError(f"SentencePiece cannot train on this corpus: {text}")


def train_sentencepiece(
    inputs: Sequence[str],
    output: str,
    vocab_size: int = 4096,
    model_type: str = "unigram",
    text_field: str = "text",
    max_sentences: int = 2_000_000,
) -> str:
    """Trains a SentencePiece model; deterministic for the same inputs.

    Ids follow seqio's convention (pad 0, EOS 1, UNK 2, no BOS). Byte fallback and the
    identity normaliser make `decode(encode(s)) == s` for any string; newlines are
    byte-fallback tokens. One trainer thread and no sentence sampling keep the model
    bit-identical run to run.

    Args:
      inputs: text files (one sentence per line) or .jsonl files (field `text_field`).
      output: model path; `.model` is appended when missing.
      vocab_size: number of pieces (including pad/EOS/UNK and the 256 byte pieces).
      model_type: "unigram" or "bpe".
      text_field: JSON field holding the text.
      max_sentences: at most this many (first) lines are used.

    Returns:
      The written `.model` path.

    Raises:
      VocabTrainError: (a `ValueError`) an input or setting it cannot train with; nothing
        is written. `fileio.JsonlError` for a malformed JSON line.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    prefix = output[: -len(".model")] if output.endswith(".model") else output
    folder = os.path.dirname(os.path.abspath(prefix))
    for path in inputs:
        _check_input(path)
    existing = _check_output(output, folder)
    sentences = []
    for s in _iter_texts(inputs, text_field):
        if s.strip():
            sentences.append(s)
        if len(sentences) >= max_sentences:
            break
    if not sentences:
        raise VocabTrainError(
            f"no text in --input {list(inputs)}: every line is blank; give a corpus"
        )
    # Trained in a temporary folder beside what exists (the same file system), moved into
    # place only when done: a refused or failed run leaves nothing, not even a folder.
    tmp = tempfile.mkdtemp(prefix=".vocab-train-", dir=existing)
    try:
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences),
                model_prefix=os.path.join(tmp, "sp"),
                vocab_size=vocab_size,
                model_type=model_type,
                pad_id=0,
                eos_id=1,
                unk_id=2,
                bos_id=-1,
                byte_fallback=True,
                character_coverage=0.9995,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                split_digits=True,
                num_threads=1,
                shuffle_input_sentence=False,
                minloglevel=2,
            )
        except RuntimeError as e:
            raise _trainer_error(e, vocab_size) from None
        # The trainer records its output path in the model; drop it so the same corpus
        # gives a byte-identical file wherever it is written.
        model = sentencepiece_model_pb2.ModelProto()
        with open(os.path.join(tmp, "sp.model"), "rb") as f:
            model.ParseFromString(f.read())
        model.trainer_spec.model_prefix = ""
        os.makedirs(folder, exist_ok=True)
        os.replace(os.path.join(tmp, "sp.vocab"), prefix + ".vocab")
        fileio.write_bytes(prefix + ".model", model.SerializeToString(deterministic=True))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return prefix + ".model"


def main(argv: list[str]) -> int:
    """`toxjax vocab train --input FILE [FILE...] --output PATH --vocab_size N`."""
    parser = argparse.ArgumentParser(prog="toxjax vocab")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train",
        help="train a SentencePiece model on text/jsonl files",
        epilog="exit codes: 0 done, 2 refused (bad input or settings; nothing written)",
    )
    train.add_argument("--input", nargs="+", required=True, help="text or .jsonl files")
    train.add_argument("--output", required=True, help="model path (.model appended)")
    train.add_argument("--vocab_size", type=positive_int, default=4096)
    train.add_argument("--model_type", default="unigram", choices=["unigram", "bpe"])
    train.add_argument("--text_field", default="text")
    args = parser.parse_args(argv)
    try:
        path = train_sentencepiece(
            args.input, args.output, args.vocab_size, args.model_type, args.text_field
        )
    except (VocabTrainError, fileio.JsonlError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    import sentencepiece as spm

    size = spm.SentencePieceProcessor(model_file=path).vocab_size()
    print(f"wrote {path} (vocab_size={size})", file=sys.stderr)
    return 0

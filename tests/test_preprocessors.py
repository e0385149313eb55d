"""Preprocessor units: windows, splitting, MEDA formatting, fractions, conditioning prefixes."""

import dataclasses

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf
from seqio import test_utils

from toxjax.preprocessors import (
    STRATEGIES,
    AugmentConfig,
    conditioning_prefix,
    conditioning_prefix_ids,
    format_score,
    inst_bucket,
    pipeline,
)
from toxjax.vocab import ControlTokenVocabulary, Gpt2Vocabulary


@pytest.fixture(scope="module")
def gpt2():
    return Gpt2Vocabulary()


def _features(vocab):
    return {"targets": seqio.Feature(vocab, add_eos=True)}


def _records(docs):
    """Records in the schema the registry sources produce."""
    rows = []
    for i, (text, tox, windows) in enumerate(docs):
        w = windows or []
        rows.append(
            {
                "doc_id": f"f.jsonl:{i + 1}",
                "text": text,
                "toxicity": np.float32(tox),
                "has_windows": windows is not None,
                "window_start": np.array([s for s, _, _ in w], np.int64),
                "window_end": np.array([e for _, e, _ in w], np.int64),
                "window_toxicity": np.array([t for _, _, t in w], np.float32),
            }
        )
    sig = {
        k: tf.TensorSpec(np.shape(v), tf.as_dtype(np.asarray(v).dtype)) for k, v in rows[0].items()
    }
    sig = {k: tf.TensorSpec([None] if s.shape.rank else [], s.dtype) for k, s in sig.items()}
    sig["doc_id"] = sig["text"] = tf.TensorSpec([], tf.string)
    return tf.data.Dataset.from_generator(lambda: iter(rows), output_signature=sig)


def test_windows_split_on_character_spans():
    text = "héllo wörld, ünïcode spans"
    ds = pipeline.to_samples(
        _records([(text, 0.9, [(0, 5, 0.1), (5, 12, 0.7), (12, 26, 0.3)])]), "window"
    )
    test_utils.assert_dataset(
        ds,
        [
            {"text": "héllo", "toxicity": np.float32(0.1), "sample_id": "f.jsonl:1#w0"},
            {"text": " wörld,", "toxicity": np.float32(0.7), "sample_id": "f.jsonl:1#w1"},
            {"text": " ünïcode spans", "toxicity": np.float32(0.3), "sample_id": "f.jsonl:1#w2"},
        ],
    )


def test_window_mode_without_windows_is_an_error():
    ds = pipeline.to_samples(_records([("text", 0.9, None)]), "window")
    with pytest.raises(tf.errors.InvalidArgumentError, match="toxjax score --window_tokens"):
        list(ds.as_numpy_iterator())


def test_split_long_sample_keeps_score_and_stable_keys():
    ds = tf.data.Dataset.from_tensors(
        {"text_ids": tf.range(1, 8), "toxicity": np.float32(0.3), "sample_id": "d#w0"}
    )
    out = list(pipeline.split(ds, sample_tokens=5, fixed_prefix_tokens=1).as_numpy_iterator())
    assert [x["text_ids"].tolist() for x in out] == [[1, 2, 3], [4, 5, 6], [7]]
    assert all(x["toxicity"] == np.float32(0.3) for x in out)
    keys = [x["key"] for x in out]
    expected = tf.strings.to_hash_bucket_fast(["d#w0#p0", "d#w0#p1", "d#w0#p2"], 2**62)
    assert keys == expected.numpy().tolist()
    empty = ds.map(lambda x: {**x, "text_ids": tf.zeros([0], tf.int32)})
    assert list(pipeline.split(empty, 5, 1).as_numpy_iterator()) == []


def test_split_without_room_is_an_error():
    ds = tf.data.Dataset.from_tensors(
        {"text_ids": tf.range(3), "toxicity": np.float32(0.3), "sample_id": "d"}
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="sample_tokens=4"):
        list(pipeline.split(ds, sample_tokens=4, fixed_prefix_tokens=3).as_numpy_iterator())


def test_meda_number_format_matches_tf_graph():
    config = AugmentConfig()
    scores = np.concatenate(
        [
            np.random.default_rng(0).random(2000, dtype=np.float32),
            np.float32([0.0, 0.005, 0.015, 0.125, 0.5, 0.995, 1.0]),
        ]
    )
    for cfg in (config, dataclasses.replace(config, meda_decimals=1, meda_scale=100.0)):
        ds = tf.data.Dataset.from_tensor_slices({"toxicity": scores})
        got = [x["prefix"].decode() for x in STRATEGIES["meda"].select(ds, cfg).as_numpy_iterator()]
        assert got == [cfg.meda_template.replace("{score}", format_score(s, cfg)) for s in scores]
    assert format_score(0.07, config) == "0.07"
    assert format_score(0.07, dataclasses.replace(config, meda_scale=100.0, meda_decimals=0)) == "7"


def test_buckets_threshold_is_exclusive():
    assert [inst_bucket(s, (0.5,)) for s in (0.0, 0.5, 0.5000001, 1.0)] == [0, 0, 1, 1]
    assert [inst_bucket(s, (0.2, 0.6)) for s in (0.2, 0.3, 0.6, 0.61)] == [0, 1, 1, 2]


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="inst_thresholds"):
        AugmentConfig(inst_templates=("a", "b", "c"))
    with pytest.raises(ValueError, match="meda_template"):
        AugmentConfig(meda_template="no placeholder")
    with pytest.raises(ValueError, match="inst_fraction"):
        AugmentConfig(inst_fraction=1.5)


def test_condition_steps_are_exact_fractions_of_the_run():
    assert not AugmentConfig().scheduled
    assert AugmentConfig().condition_steps(10) == (0, None)
    assert AugmentConfig(condition_end=0.9).condition_steps(10) == (0, 9)  # MeCo cooldown
    assert AugmentConfig(condition_start=0.2).condition_steps(10) == (2, None)  # late start
    assert 0.07 * 100 > 7  # a float product would put step 7 in the window
    assert AugmentConfig(condition_end=0.07).condition_steps(100) == (0, 7)
    # step 2 is 0.2 < 0.25 (off), step 7 is 0.7 < 0.75 (on), step 8 is 0.8 (off)
    assert AugmentConfig(condition_start=0.25, condition_end=0.75).condition_steps(10) == (3, 8)
    with pytest.raises(ValueError, match=r"condition_start=0.5, condition_end=0.5: need 0 <="):
        AugmentConfig(condition_start=0.5, condition_end=0.5)
    with pytest.raises(ValueError, match="condition_end=1.5"):
        AugmentConfig(condition_end=1.5)


def test_config_is_plain_data_and_round_trips_through_json():
    import json

    config = AugmentConfig(inst_fraction=0.25, ctrl_tokens=["<|g|>", "<|b|>"])
    assert config.ctrl_tokens == ("<|g|>", "<|b|>")  # lists (gin, JSON) become tuples
    again = AugmentConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert conditioning_prefix("ctrl", config=again) == "<|g|>"
    with pytest.raises(ValueError, match=r"no fields \['inst_fractoin'\]"):
        AugmentConfig.from_dict({**config.to_dict(), "inst_fractoin": 0.5})
    # Library code never reads gin: a binding does not change a plain AugmentConfig().
    from toxjax import train  # noqa: F401  (the entry point registers it with gin)

    with gin.unlock_config():
        gin.parse_config("AugmentConfig.inst_fraction = 0.25")
    try:
        assert AugmentConfig().inst_fraction == 1.0
        assert gin.get_configurable(AugmentConfig)().inst_fraction == 0.25  # entry points
    finally:
        gin.clear_config()


def _keyed(n, toxicity=0.2):
    return tf.data.Dataset.from_tensor_slices(
        {
            "text_ids": tf.ones([n, 2], tf.int32) * 7,
            "toxicity": tf.fill([n], np.float32(toxicity)),
            "key": tf.range(n, dtype=tf.int64) * 7919,
        }
    )


def _augmented_share(strategy, config, vocab, seed, n=10_000):
    with seqio.utils.map_seed_manager(seed):
        ds = pipeline.augment(_keyed(n), _features(vocab), strategy, config)
    flags = np.array([x["augmented"] for x in ds.as_numpy_iterator()])
    return flags.mean(), flags


def test_inst_fraction_within_two_percent(gpt2):
    for fraction in (0.1, 0.5, 0.8):
        share, _ = _augmented_share("inst", AugmentConfig(inst_fraction=fraction), gpt2, seed=3)
        assert abs(share - fraction) < 0.02, (fraction, share)


def test_ctrl_untagged_fraction_within_two_percent(gpt2):
    config = AugmentConfig(ctrl_untagged_fraction=0.3)
    vocab = ControlTokenVocabulary(gpt2, config.ctrl_tokens)
    share, _ = _augmented_share("ctrl", config, vocab, seed=3)
    assert abs((1 - share) - 0.3) < 0.02, share


def test_same_seed_same_choices_other_seed_other_choices(gpt2):
    config = AugmentConfig(inst_fraction=0.5)
    _, a = _augmented_share("inst", config, gpt2, seed=1, n=500)
    _, b = _augmented_share("inst", config, gpt2, seed=1, n=500)
    _, c = _augmented_share("inst", config, gpt2, seed=2, n=500)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_conditioning_prefix_strings():
    assert conditioning_prefix("baseline") == conditioning_prefix("filter") == ""
    assert conditioning_prefix("meda") == "toxicity: 0.00\n"
    assert conditioning_prefix("meda", toxic=True) == "toxicity: 1.00\n"
    assert conditioning_prefix("inst") == "Instruction: the following text is not toxic.\n"
    assert conditioning_prefix("inst", toxic=True) == "Instruction: the following text is toxic.\n"
    assert conditioning_prefix("ctrl") == "<|aligned|>"
    assert conditioning_prefix("inst", inst_templates=("ok\n", "bad\n")) == "ok\n"
    with pytest.raises(ValueError, match="unknown strategy"):
        conditioning_prefix("medaa")


@pytest.mark.parametrize("strategy", [s for s, e in STRATEGIES.items() if e.conditioned])
def test_conditioning_prefix_equals_training_prefix_non_toxic(gpt2, strategy):
    config = AugmentConfig(ctrl_untagged_fraction=0.0, sample_tokens=64)
    tokens = STRATEGIES[strategy].control_tokens(config)
    vocab = ControlTokenVocabulary(gpt2, tokens) if tokens else gpt2
    text = "A calm, friendly sentence."
    # A score of 0.0 is every strategy's non-toxic condition (MEDA's inference score).
    ds = pipeline.precache(_records([(text, 0.0, None)]), _features(vocab), strategy, config)
    with seqio.utils.map_seed_manager(0):
        (sample,) = pipeline.augment(ds, _features(vocab), strategy, config).as_numpy_iterator()
    ids = conditioning_prefix_ids(strategy, vocab, config=config)
    text_ids = gpt2.encode(text)
    assert sample["targets"].tolist() == ids + text_ids
    prefix = conditioning_prefix(strategy, config=config)
    assert vocab.encode(prefix + text) == ids + text_ids
    assert vocab.decode(sample["targets"].tolist()) == prefix + text


@pytest.mark.parametrize("strategy", [n for n, s in STRATEGIES.items() if s.conditioned])
def test_prefix_masking_takes_exactly_the_prefix_out_of_the_loss(gpt2, strategy):
    config = AugmentConfig(ctrl_untagged_fraction=0.0, sample_tokens=64, mask_condition_loss=True)
    vocab = ControlTokenVocabulary(gpt2, config.ctrl_tokens) if strategy == "ctrl" else gpt2
    text = "A calm, friendly sentence."
    ds = pipeline.precache(_records([(text, 0.0, None)]), _features(vocab), strategy, config)
    with seqio.utils.map_seed_manager(0):
        (sample,) = pipeline.augment(ds, _features(vocab), strategy, config).as_numpy_iterator()
    prefix = conditioning_prefix_ids(strategy, vocab, config=config)  # score 0: non-toxic
    text_ids = gpt2.encode(text)
    assert sample["targets"].tolist() == prefix + text_ids
    # One entry more than the targets: the EOS `append_eos` adds is in the loss.
    assert sample["loss_weights"].tolist() == [0] * len(prefix) + [1] * (len(text_ids) + 1)
    assert "prefix_mask" not in sample  # no schedule

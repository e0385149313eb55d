"""Registered tasks end to end: exact outputs per strategy, packing, cache, fractions."""

import dataclasses
import json
import pathlib

import apache_beam as beam
import numpy as np
import pytest
import seqio
from seqio import test_utils

from toxjax import registry
from toxjax.preprocessors import AugmentConfig
from toxjax.vocab import Gpt2Vocabulary

CONFIG = AugmentConfig(sample_tokens=16, ctrl_untagged_fraction=0.0)
LONG = "one two three four five six seven eight nine ten"
DOCS = [
    {"text": "Hello there.", "toxicity": 0.5},  # exactly on the threshold: non-toxic
    {"text": "", "toxicity": 0.1},  # empty: yields no sample
    {"text": "You are awful.", "toxicity": 0.93},
    {
        "text": LONG,  # longer than one sample at sample_tokens=16
        "toxicity": 0.07,
        "windows": [
            {"start": 0, "end": 13, "toxicity": 0.2},
            {"start": 13, "end": 49, "toxicity": 0.8},
        ],
    },
]


@pytest.fixture(scope="module")
def gpt2():
    return Gpt2Vocabulary()


def _write(path, docs):
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("corpus") / "scored.jsonl", DOCS)


def _register(name, corpus, vocab, config=CONFIG, **kw):
    return registry.register_corpus(name, corpus, vocab, config=config, overwrite=True, **kw)


def _dataset(task, seed=0, length=16, **kw):
    return seqio.get_mixture_or_task(task).get_dataset(
        {"targets": length}, split="train", shuffle=False, seed=seed, use_cached=False, **kw
    )


def _ex(targets, toxicity, augmented, **token_features):
    out = {"targets": targets, "toxicity": np.float32(toxicity), "augmented": augmented}
    return {**out, **token_features}


def test_registers_versioned_task_per_strategy(corpus, gpt2):
    names = _register("reg", corpus, gpt2)
    assert names == [
        "reg_baseline_v1",
        "reg_meda_v1",
        "reg_inst_v1",
        "reg_filter_v1",
        "reg_ctrl_v1",
        "reg_mask_v1",
    ]
    ctrl_vocab = seqio.get_mixture_or_task("reg_ctrl_v1").output_features["targets"].vocabulary
    assert ctrl_vocab.vocab_size == gpt2.vocab_size + 2
    assert seqio.get_mixture_or_task("reg_inst_v1").output_features["targets"].vocabulary is gpt2
    assert seqio.get_mixture_or_task("reg_inst_v1").shuffle_buffer_size == 1000  # seqio's
    names = _register(
        "reg2", corpus, {"gpt2": gpt2}, strategies=["inst"], version=3, shuffle_buffer_size=50_000
    )
    assert names == ["reg2_gpt2_inst_v3"]
    assert seqio.get_mixture_or_task("reg2_gpt2_inst_v3").shuffle_buffer_size == 50_000


def test_exact_outputs_every_strategy(corpus, gpt2):
    _register("ex", corpus, gpt2)
    e, eos = gpt2.encode, [gpt2.eos_id]
    hello, awful, long = e("Hello there."), e("You are awful."), e(LONG)
    assert (len(hello), len(awful), len(long)) == (3, 4, 10)
    ok, bad = e(CONFIG.inst_templates[0]), e(CONFIG.inst_templates[1])
    assert (len(ok), len(bad)) == (11, 10)  # room for text: 16 - 1 - 11 = 4 tokens
    test_utils.assert_dataset(
        _dataset("ex_baseline_v1"),
        [_ex(hello + eos, 0.5, 0), _ex(awful + eos, 0.93, 0), _ex(long + eos, 0.07, 0)],
    )
    test_utils.assert_dataset(
        _dataset("ex_filter_v1"), [_ex(hello + eos, 0.5, 0), _ex(long + eos, 0.07, 0)]
    )
    m50, m93, m07 = e("toxicity: 0.50\n"), e("toxicity: 0.93\n"), e("toxicity: 0.07\n")
    assert len(m07) == 7  # room 8
    test_utils.assert_dataset(
        _dataset("ex_meda_v1"),
        [
            _ex(m50 + hello + eos, 0.5, 1),
            _ex(m93 + awful + eos, 0.93, 1),
            _ex(m07 + long[:8] + eos, 0.07, 1),
            _ex(m07 + long[8:] + eos, 0.07, 1),
        ],
    )
    test_utils.assert_dataset(
        _dataset("ex_inst_v1"),
        [
            _ex(ok + hello + eos, 0.5, 1),
            _ex(bad + awful + eos, 0.93, 1),
            _ex(ok + long[:4] + eos, 0.07, 1),
            _ex(ok + long[4:8] + eos, 0.07, 1),
            _ex(ok + long[8:] + eos, 0.07, 1),
        ],
    )
    good, evil = gpt2.vocab_size, gpt2.vocab_size + 1
    test_utils.assert_dataset(
        _dataset("ex_ctrl_v1"),
        [
            _ex([good] + hello + eos, 0.5, 1),
            _ex([evil] + awful + eos, 0.93, 1),
            _ex([good] + long + eos, 0.07, 1),
        ],
    )
    # SLUNG: the toxic sample stays, every token of it (EOS included) out of the loss.
    test_utils.assert_dataset(
        _dataset("ex_mask_v1"),
        [
            _ex(hello + eos, 0.5, 0, loss_weights=[1] * 4),
            _ex(awful + eos, 0.93, 0, loss_weights=[0] * 5),
            _ex(long + eos, 0.07, 0, loss_weights=[1] * 11),
        ],
    )


def test_prefix_loss_mask_and_schedule_features_stay_aligned_when_trimmed(corpus, gpt2):
    config = dataclasses.replace(CONFIG, mask_condition_loss=True, condition_start=0.2)
    _register("tok", corpus, gpt2, config, strategies=["inst", "baseline"])
    e, eos = gpt2.encode, [gpt2.eos_id]
    hello, awful, long = e("Hello there."), e("You are awful."), e(LONG)
    ok, bad = e(CONFIG.inst_templates[0]), e(CONFIG.inst_templates[1])

    def ex(prefix, text, toxicity):
        n, m = len(prefix), len(text) + 1
        return _ex(
            prefix + text + eos,
            toxicity,
            1,
            loss_weights=[0] * n + [1] * m,
            prefix_mask=[1] * n + [0] * m,
        )

    test_utils.assert_dataset(
        _dataset("tok_inst_v1"),
        [
            ex(ok, hello, 0.5),
            ex(bad, awful, 0.93),
            ex(ok, long[:4], 0.07),
            ex(ok, long[4:8], 0.07),
            ex(ok, long[8:], 0.07),
        ],
    )

    # Read at 8 tokens, seqio trims each sample to 7 + EOS: the features follow.
    def trimmed(prefix, toxicity):
        return _ex(
            prefix[:7] + eos, toxicity, 1, loss_weights=[0] * 7 + [1], prefix_mask=[1] * 7 + [0]
        )

    test_utils.assert_dataset(
        _dataset("tok_inst_v1", length=8),
        [trimmed(ok, 0.5), trimmed(bad, 0.93)] + [trimmed(ok, 0.07)] * 3,
    )
    # No prefix, nothing to mask or schedule: the baseline task is the plain one.
    assert set(seqio.get_mixture_or_task("tok_baseline_v1").output_features) == {"targets"}


def test_window_scoring_gives_each_window_its_prefix(corpus, gpt2):
    config = dataclasses.replace(CONFIG, scoring_unit="window", sample_tokens=64)
    windows = [d for d in DOCS if "windows" in d]
    path = corpus.replace("scored.jsonl", "windows.jsonl")
    _register("win", _write(pathlib.Path(path), windows), gpt2, config, strategies=["inst"])
    e, eos = gpt2.encode, [gpt2.eos_id]
    ok, bad = e(config.inst_templates[0]), e(config.inst_templates[1])
    test_utils.assert_dataset(
        _dataset("win_inst_v1", length=64),
        [_ex(ok + e(LONG[:13]) + eos, 0.2, 1), _ex(bad + e(LONG[13:]) + eos, 0.8, 1)],
    )
    # SLUNG at window level: each window is its own sample with its own score.
    _register("winm", path, gpt2, config, strategies=["mask"])
    first, second = e(LONG[:13]) + eos, e(LONG[13:]) + eos
    test_utils.assert_dataset(
        _dataset("winm_mask_v1", length=64),
        [
            _ex(first, 0.2, 0, loss_weights=[1] * len(first)),
            _ex(second, 0.8, 0, loss_weights=[0] * len(second)),
        ],
    )


def test_determinism_and_seed_changes_only_choices(corpus, gpt2):
    _register(
        "det", corpus, gpt2, dataclasses.replace(CONFIG, inst_fraction=0.5), strategies=["inst"]
    )
    ok_len, bad_len = (len(gpt2.encode(t)) for t in CONFIG.inst_templates)

    def run(seed):
        return [
            x["targets"].tolist() for x in _dataset("det_inst_v1", seed=seed).as_numpy_iterator()
        ]

    a, b = run(7), run(7)
    assert a == b
    runs = [run(s) for s in range(8)]

    def strip(rows):  # drop whichever prefix was chosen
        docs = [
            r[ok_len:] if r[:ok_len] == gpt2.encode(CONFIG.inst_templates[0]) else r for r in rows
        ]
        return [
            r[bad_len:] if r[:bad_len] == gpt2.encode(CONFIG.inst_templates[1]) else r for r in docs
        ]

    assert all(strip(r) == strip(a) for r in runs)
    assert len({json.dumps(r) for r in runs}) > 1  # some seed made other choices


def test_packing_keeps_documents_apart(corpus, gpt2):
    _register("pack", corpus, gpt2, strategies=["inst"])
    ds = seqio.get_dataset(
        "pack_inst_v1",
        {"targets": 48},
        dataset_split="train",
        shuffle=False,
        seed=0,
        use_cached=False,
        feature_converter=seqio.DecoderFeatureConverter(pack=True),
    )
    samples = [x["targets"].tolist() for x in _dataset("pack_inst_v1").as_numpy_iterator()]
    packed = []
    for row in ds.as_numpy_iterator():
        seg, pos, tgt = (
            row["decoder_segment_ids"],
            row["decoder_positions"],
            row["decoder_target_tokens"],
        )
        inp = row["decoder_input_tokens"]
        for s in range(1, seg.max() + 1):
            idx = np.where(seg == s)[0]
            np.testing.assert_array_equal(pos[idx], np.arange(len(idx)))
            assert inp[idx[0]] == 0  # the first input of a segment never sees the previous one
            packed.append(tgt[idx].tolist())
        np.testing.assert_array_equal(row["decoder_loss_weights"], (seg > 0).astype(np.int32))
    assert sorted(packed) == sorted(samples)


def test_cached_equals_uncached(corpus, gpt2, tmp_path):
    from absl import flags
    from seqio.scripts import cache_tasks_main

    if not flags.FLAGS.is_parsed():  # run_pipeline reads the script's flags (defaults)
        flags.FLAGS.mark_as_parsed()
    config = dataclasses.replace(CONFIG, inst_fraction=0.5, ctrl_untagged_fraction=0.5)
    names = _register("cache", corpus, gpt2, config, strategies=["inst", "ctrl"])
    with beam.Pipeline(runner="DirectRunner") as pipeline:
        cache_tasks_main.run_pipeline(pipeline, names, str(tmp_path))
    seqio.add_global_cache_dirs([str(tmp_path)])
    for name in names:
        task = seqio.get_mixture_or_task(name)
        assert task.cache_dir  # found the cache the Beam job wrote
        for seed in (0, 1):
            cached = task.get_dataset(
                {"targets": 16}, "train", use_cached=True, shuffle=False, seed=seed
            )
            uncached = _dataset(name, seed=seed)
            rows = [
                sorted(x["targets"].tolist() for x in d.as_numpy_iterator())
                for d in (cached, uncached)
            ]
            assert rows[0] == rows[1], name


def test_data_fraction_tasks_are_nested_and_mixtures_registered(tmp_path, gpt2):
    docs = [{"text": f"doc {i}", "toxicity": 0.1} for i in range(200)]
    path = _write(tmp_path / "many.jsonl", docs)
    names = _register("frac", path, gpt2, strategies=["baseline"], fractions=(0.25, 0.5, 1.0))
    assert names == ["frac_baseline_25pct_v1", "frac_baseline_50pct_v1", "frac_baseline_v1"]
    sets = [
        {gpt2.decode(x["targets"].tolist()) for x in _dataset(n).as_numpy_iterator()} for n in names
    ]
    assert sets[0] < sets[1] < sets[2] and len(sets[2]) == 200
    assert 30 <= len(sets[0]) <= 70 and 75 <= len(sets[1]) <= 125
    mixtures = registry.register_data_fraction_mixtures("frac", "baseline", overwrite=True)
    assert mixtures == [
        "frac_baseline_25pct_mix_v1",
        "frac_baseline_50pct_mix_v1",
        "frac_baseline_mix_v1",
    ]
    assert seqio.get_mixture_or_task(mixtures[0]).tasks[0].name == names[0]
    with pytest.raises(ValueError, match="register_corpus"):
        registry.register_data_fraction_mixtures("frac", "inst")


def test_filter_report_counts_dropped_tokens(corpus, gpt2):
    _register("rep", corpus, gpt2, strategies=["baseline"])
    report = registry.filter_report("rep_baseline_v1", threshold=0.5)
    assert report == {
        "samples": 3,
        "tokens": 4 + 5 + 11,
        "dropped_samples": 1,
        "dropped_tokens": 5,
        "dropped_token_share": 5 / 20,
    }


def test_user_errors_name_the_thing(tmp_path, gpt2):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        registry.register_corpus("err", str(tmp_path / "nothing-here*.jsonl"), gpt2)
    path = _write(tmp_path / "unscored.jsonl", [{"text": "a", "toxicity": 0.1}, {"text": "b"}])
    _register("err", path, gpt2, strategies=["baseline"])
    with pytest.raises(Exception, match=r"unscored.jsonl:2.*toxjax score"):
        list(_dataset("err_baseline_v1").as_numpy_iterator())
    with pytest.raises(ValueError, match="unknown strategies"):
        registry.register_corpus("err", path, gpt2, strategies=["medaa"])

"""Loss masking: the conditioning prefix (`AugmentConfig.mask_condition_loss`) or a toxic
sample (the `mask` strategy) stays in the context with zero loss weight, exactly."""

import dataclasses
import json

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from toxjax import cli, data, registry, run_logs, steps
from toxjax.model import DecoderLM, ModelConfig
from toxjax.preprocessors import AugmentConfig
from toxjax.run_info import RunInfo
from toxjax.vocab import Gpt2Vocabulary

SEQ, ROWS = 64, 4
CONFIG = AugmentConfig(sample_tokens=SEQ)
DOCS = [
    {
        "text": f"Sample {i}: the weather is {'awful, you idiot' if i % 3 == 0 else 'fine'}.",
        "toxicity": 0.9 if i % 3 == 0 else 0.1,
    }
    for i in range(24)
]


@pytest.fixture(scope="module")
def gpt2():
    return Gpt2Vocabulary()


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "scored.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    return str(path)


@pytest.fixture(scope="module")
def tiny():
    config = ModelConfig(vocab_size=50304, num_layers=1, num_heads=2, embed_dim=32, max_len=SEQ)
    model = DecoderLM(config)
    params = meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    return model, params


def _batch(task):
    cfg = data.DataConfig(task, sequence_length=SEQ, shuffle=False)
    return next(data.get_local_dataset(cfg, ROWS, num_epochs=1).as_numpy_iterator())


def _prefix_masked(batch, prefixes):
    """By hand: the non-padding weights, with each sample's leading instruction set to 0."""
    weights = (batch["decoder_segment_ids"] > 0).astype(np.int32)
    for r, (seg, tgt) in enumerate(
        zip(batch["decoder_segment_ids"], batch["decoder_target_tokens"], strict=True)
    ):
        for s in range(1, seg.max() + 1):
            where = np.flatnonzero(seg == s)
            (n,) = [len(p) for p in prefixes if tgt[where][: len(p)].tolist() == p]
            weights[r, where[:n]] = 0
    return weights


def _logits(model, params, batch):
    return model.apply(
        {"params": params},
        jnp.asarray(batch["decoder_input_tokens"]),
        positions=jnp.asarray(batch["decoder_positions"]),
        segment_ids=jnp.asarray(batch["decoder_segment_ids"]),
    )


def test_masked_prefix_loss_equals_the_hand_reference(scored, gpt2, tiny):
    registry.register_corpus(
        "lm_plain", scored, gpt2, strategies=["inst"], config=CONFIG, overwrite=True
    )
    masked_config = dataclasses.replace(CONFIG, mask_condition_loss=True)
    registry.register_corpus(
        "lm_masked", scored, gpt2, strategies=["inst"], config=masked_config, overwrite=True
    )
    plain, masked = _batch("lm_plain_inst_v1"), _batch("lm_masked_inst_v1")
    # Same rows, same context: only the weights differ.
    for k in ("decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids"):
        np.testing.assert_array_equal(masked[k], plain[k])
    np.testing.assert_array_equal(masked["decoder_positions"], plain["decoder_positions"])
    want = _prefix_masked(plain, [gpt2.encode(t) for t in CONFIG.inst_templates])
    assert 0 < want.sum() < plain["decoder_loss_weights"].sum()
    np.testing.assert_array_equal(masked["decoder_loss_weights"], want)

    model, params = tiny
    # The prefix is still in the context: every logit is the unmasked batch's.
    logits = np.asarray(_logits(model, params, masked))
    np.testing.assert_array_equal(logits, np.asarray(_logits(model, params, plain)))
    got = steps.eval_step(params, masked, model=model)
    # Exactly the unmasked batch's loss with the prefix weights zeroed by hand ...
    by_hand = steps.eval_step(params, {**plain, "decoder_loss_weights": want}, model=model)
    assert float(got["loss_sum"]) == float(by_hand["loss_sum"])
    assert float(got["weight_sum"]) == float(want.sum())
    # ... which is the weighted negative log-likelihood (float64 here; float32 sums of
    # a few hundred terms there: 1e-5 relative).
    x = logits.astype(np.float64)
    x -= x.max(-1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, plain["decoder_target_tokens"][..., None], -1)[..., 0]
    np.testing.assert_allclose(float(got["loss_sum"]), (nll * want).sum(), rtol=1e-5)


def test_mask_strategy_keeps_toxic_samples_in_context_out_of_the_loss(scored, gpt2):
    registry.register_corpus(
        "lm_slung", scored, gpt2, strategies=["mask", "baseline"], config=CONFIG, overwrite=True
    )
    masked, plain = _batch("lm_slung_mask_v1"), _batch("lm_slung_baseline_v1")
    for k in ("decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids"):
        np.testing.assert_array_equal(masked[k], plain[k])
    want = np.zeros_like(plain["decoder_loss_weights"])
    toxic_rows = 0
    for r, (seg, tgt) in enumerate(
        zip(plain["decoder_segment_ids"], plain["decoder_target_tokens"], strict=True)
    ):
        for s in range(1, seg.max() + 1):
            text = gpt2.decode(tgt[seg == s][:-1].tolist())  # (without the EOS)
            (doc,) = [d for d in DOCS if d["text"] == text]
            want[r, seg == s] = doc["toxicity"] <= 0.5
            toxic_rows += doc["toxicity"] > 0.5
    assert toxic_rows > 0
    np.testing.assert_array_equal(masked["decoder_loss_weights"], want)


@pytest.mark.slow
def test_train_cli_counts_only_the_weighted_tokens(tmp_path, scored, gpt2):
    """`toxjax train` with `AugmentConfig.mask_condition_loss`: run.json records it and
    each step's token count is the batch's non-padding tokens less its instructions."""
    gin.clear_config()
    argv = [
        "train",
        "--gin_file=experiments/inst_125m.gin",
        f"--gin.MODEL_DIR={tmp_path}",
        f"--gin.CORPUS_FILES={scored}",
        "--gin.CORPUS=lm_cli",
        "--gin.AugmentConfig.mask_condition_loss=True",
        "--gin.NUM_STEPS=2",
        "--gin.BATCH_SIZE=8",
        "--gin.SEQUENCE_LENGTH=32",
        "--gin.WARMUP_STEPS=1",
        "--gin.train.grad_accum_steps=1",
        "--gin.train.log_every=1",
        "--gin.ModelConfig.num_layers=1",
        "--gin.ModelConfig.num_heads=2",
        "--gin.ModelConfig.embed_dim=32",
        "--gin.ModelConfig.mlp_dim=64",
    ]
    assert cli.main(argv) == 0
    run = RunInfo.read(str(tmp_path))
    assert run.augment == AugmentConfig(mask_condition_loss=True)
    cfg = data.DataConfig(run.task, sequence_length=32)  # the run's data settings
    stream = data.get_local_dataset(cfg, 8, num_steps=2).as_numpy_iterator()
    prefixes = [gpt2.encode(t) for t in run.augment.inst_templates]
    want = [float(_prefix_masked(next(stream), prefixes).sum()) for _ in range(2)]
    assert [m["tokens"] for m in run_logs.read_metrics(str(tmp_path))] == want

"""Detoxify in JAX: parity with PyTorch Detoxify, data-sharded batches, strict conversion.

Every other architecture's parity is in test_toxicity_encoders.py."""

import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from fake_classifiers import make_fake_detoxify
from jax.sharding import Mesh

from toxjax.toxicity import get_scorer
from toxjax.toxicity.encoders import EncoderConfig, params_from_torch

WORDS = "the cat sat on a mat and you are an idiot what lovely day hate love people never".split()


def make_texts(n, lo, hi, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_jax_matches_pytorch_detoxify(arch, tmp_path):
    from detoxify import Detoxify

    ckpt, cfg = make_fake_detoxify(
        str(tmp_path), make_texts(50, 1, 30), arch=arch, initializer_range=0.3
    )
    texts = make_texts(37, 0, 25, seed=1)  # all shorter than the 64-token classifier
    ref = Detoxify(checkpoint=ckpt, huggingface_config_path=cfg).predict(texts)
    scorer = get_scorer(
        f"detoxify-{'original' if arch == 'bert' else 'unbiased'}",
        backend="jax",
        checkpoint=ckpt,
        config_dir=cfg,
        tokens_per_batch=512,
    )
    assert scorer.row_multiple == 8  # conftest's 8 CPU devices on the data axis
    got = np.array([[r.scores[k] for k in ref] for r in scorer.score(texts)])
    want = np.array([ref[k] for k in ref]).T
    assert got.std() > 0.05
    assert np.abs(got - want).max() <= 1e-4

    # Same scores from a one-device mesh: sharding the batch changes nothing.
    one = get_scorer(
        scorer.name,
        backend="jax",
        checkpoint=ckpt,
        config_dir=cfg,
        mesh=Mesh(np.asarray(jax.devices()[:1]), ("data",)),
    )
    got_one = np.array([[r.scores[k] for k in ref] for r in one.score(texts)])
    np.testing.assert_allclose(got_one, got, atol=1e-6)

    # Tokenized in chunks of 5 on a thread, 4 texts a batch, one batch in flight: the
    # same scores in the same order (to float rounding: a text padded to another bucket
    # in another batch shape meets other matmul blocking, ~1e-6 at weights of std 0.3).
    chunked = get_scorer(
        scorer.name,
        backend="jax",
        checkpoint=ckpt,
        config_dir=cfg,
        chunk_texts=5,
        tokens_per_batch=64,
        max_rows=4,
    )
    got_chunked = np.array([[r.scores[k] for k in ref] for r in chunked.score(texts)])
    np.testing.assert_allclose(got_chunked, got, atol=1e-5)

    # bfloat16 matmuls: measured 0.009 (BERT) and 0.017 (RoBERTa) from PyTorch fp32 here,
    # about what PyTorch's own bf16 autocast gives (0.011); 8-bit mantissas over two
    # layers of weights drawn with std 0.3.
    bf16 = get_scorer(scorer.name, backend="jax", checkpoint=ckpt, config_dir=cfg, dtype="bfloat16")
    assert (
        bf16.params["classifier" if arch == "bert" else "classifier_out_proj"]["kernel"].dtype
        == jnp.bfloat16
    )
    got_bf16 = np.array([[r.scores[k] for k in ref] for r in bf16.score(texts)])
    assert 0 < np.abs(got_bf16 - want).max() <= 3e-2


def test_layout_mismatch_names_the_keys():
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(
        transformers.BertConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=50,
            num_labels=6,
        )
    )
    cfg = EncoderConfig.from_hf(model.config)
    state = model.state_dict()
    state.pop("classifier.bias")
    state["classifier.extra"] = state["classifier.weight"]
    with pytest.raises(ValueError) as e:
        params_from_torch(state, cfg, "x.ckpt")
    assert str(e.value) == (
        "x.ckpt: the weights do not fit a bert classifier: missing 1 (classifier.bias), "
        "unexpected 1 (classifier.extra); refusing to score with randomly initialised weights"
    )

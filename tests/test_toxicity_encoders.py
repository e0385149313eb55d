"""Every JAX encoder family == transformers' own PyTorch forward, to 1e-4 in float32.

Random-init classifiers built with transformers (`fake_classifiers.make_hf_classifier`),
weights large enough (std 0.3) that outputs spread over (0, 1). Two levels: the Flax
module's logits on a padded batch, and whole scorers (`hf:DIR`, JAX and torch, padded
length-sorted batches, texts longer than the 64-token window) against transformers run
on each window alone, unpadded, with the max over windows.
"""

import random

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from fake_classifiers import make_hf_classifier

from toxjax.toxicity import get_scorer
from toxjax.toxicity.encoders import EncoderConfig, classifier, params_from_torch
from toxjax.toxicity.encoders.deberta import relative_positions
from toxjax.toxicity.windows import encode_windows

WORDS = "the cat sat on a mat and you are an idiot what lovely day hate love people never".split()
DEBERTA_V3 = dict(  # deberta-v3-base's attention settings at toy size
    relative_attention=True,
    pos_att_type="p2c|c2p",
    position_buckets=8,
    max_relative_positions=64,
    position_biased_input=False,
    norm_rel_ebd="layer_norm",
    share_att_key=True,
    type_vocab_size=0,
)
DEBERTA_V2 = dict(  # deberta-v2-xlarge's: own position projections, a conv, absolute positions
    relative_attention=True,
    pos_att_type="c2p|p2c",
    position_biased_input=True,
    conv_kernel_size=3,
    share_att_key=False,
    type_vocab_size=2,
    embedding_size=24,
)
ARCHS = {
    "bert": ("bert", {}),
    "roberta": ("roberta", {}),
    "xlm-roberta": ("xlm-roberta", {}),
    "albert": ("albert", dict(embedding_size=16)),
    "distilbert": ("distilbert", {}),
    "deberta-v3": ("deberta-v2", DEBERTA_V3),
    "deberta-v2": ("deberta-v2", DEBERTA_V2),
    # one layer: the conv needs every position of the (last) layer's output
    "deberta-v2-1-layer": ("deberta-v2", dict(DEBERTA_V2, num_layers=1)),
}


def make_texts(n, lo, hi, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


@pytest.fixture(scope="module", params=list(ARCHS))
def model_dir(request, tmp_path_factory):
    model_type, extra = ARCHS[request.param]
    d = tmp_path_factory.mktemp(request.param)
    return make_hf_classifier(str(d), make_texts(60, 1, 30), model_type, **extra)


def test_flax_logits_equal_transformers_with_padding(model_dir):
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    torch.manual_seed(1)
    ids = torch.randint(5, model.config.vocab_size, (4, 20))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    mask[3, 5:] = 0
    ids = ids.masked_fill(mask == 0, model.config.pad_token_id)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits.numpy()
    cfg = EncoderConfig.from_hf(model.config)
    params = params_from_torch(model.state_dict(), cfg)
    got = classifier(cfg).apply(
        {"params": params}, jnp.asarray(ids.numpy()), jnp.asarray(mask.numpy())
    )
    assert want.std() > 0.1
    assert np.abs(np.asarray(got) - want).max() <= 1e-4


@pytest.mark.slow
def test_jax_and_torch_scorers_equal_transformers_per_window(model_dir):
    texts = make_texts(21, 0, 25, seed=2) + make_texts(3, 70, 150, seed=3)  # 3 need windows
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    windows, owner = encode_windows(tokenizer, texts, 64)
    assert len(windows) > len(texts)
    with torch.no_grad():  # transformers alone: one unpadded window at a time
        per = [torch.softmax(model(torch.tensor([w])).logits, -1)[0].numpy() for w in windows]
    want = np.full((len(texts), model.config.num_labels), -np.inf)
    np.maximum.at(want, owner, np.asarray(per))
    got = {}
    for backend in ("jax", "torch"):
        scorer = get_scorer(f"hf:{model_dir}", backend=backend, tokens_per_batch=256, max_rows=8)
        assert scorer.attributes == ("toxicity", "non-toxic", "toxic")
        got[backend] = np.array(
            [[r.scores["non-toxic"], r.scores["toxic"]] for r in scorer.score(texts)]
        )
        assert [r.toxicity for r in scorer.score(texts)] == got[backend][:, 1].tolist()
    assert want.std() > 0.05
    assert np.abs(got["torch"] - want).max() <= 1e-4
    assert np.abs(got["jax"] - want).max() <= 1e-4


@pytest.mark.parametrize(
    ("length", "buckets", "max_position"), [(512, 256, 512), (100, 8, 64), (40, 0, -1)]
)
def test_deberta_relative_positions_equal_transformers(length, buckets, max_position):
    from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position

    x = torch.zeros(1, length, 4)
    want = build_relative_position(x, x, bucket_size=buckets, max_position=max_position)[0]
    np.testing.assert_array_equal(relative_positions(length, buckets, max_position), want.numpy())

"""Transformers checkpoints -> toxjax: tiny random GPT-2, GPT-NeoX and Llama models built
with transformers here, saved with `save_pretrained`, read back by `toxjax.interop`.

Our logits equal transformers' (torch, float32) within 1e-4, left-padded batches too; a
greedy continuation through `toxjax.decode.Sampler` is token-identical to
`model.generate(do_sample=False)`; the conversion is exactly invertible; settings toxjax
cannot compute are refused in one line naming them.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from toxjax import decode  # noqa: E402
from toxjax.errors import ConfigError  # noqa: E402
from toxjax.interop import hf, hf_vocab  # noqa: E402
from toxjax.interop.load import load_hf_for_inference, read_hf_checkpoint  # noqa: E402
from toxjax.model import CACHE_BATCH_AXIS, DecoderLM  # noqa: E402

VOCAB = 96
EOS = 3
TOL = 1e-4  # float32 logits of order 10: reassociation only


def _gpt2(**kw):
    return transformers.GPT2Config(
        vocab_size=VOCAB, n_layer=2, n_head=4, n_embd=32, n_positions=64, **kw
    )


def _neox(parallel, pct):
    return transformers.GPTNeoXConfig(
        vocab_size=VOCAB,
        num_hidden_layers=2,
        num_attention_heads=4,
        hidden_size=32,
        intermediate_size=64,
        use_parallel_residual=parallel,
        rotary_pct=pct,
        rotary_emb_base=500,
        max_position_embeddings=64,
    )


def _llama(kv, tied, **kw):
    return transformers.LlamaConfig(
        vocab_size=VOCAB,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv,
        hidden_size=32,
        intermediate_size=48,
        tie_word_embeddings=tied,
        rope_theta=1000.0,
        max_position_embeddings=64,
        **kw,
    )


CONFIGS = {
    "gpt2": lambda: _gpt2(),
    "gpt2-untied": lambda: _gpt2(tie_word_embeddings=False),
    "neox-parallel-pct0.25": lambda: _neox(True, 0.25),
    "neox-parallel-pct1": lambda: _neox(True, 1.0),
    "neox-sequential-pct0.25": lambda: _neox(False, 0.25),
    "neox-sequential-pct1": lambda: _neox(False, 1.0),
    "llama-gqa-untied": lambda: _llama(2, False),
    "llama-mha-tied": lambda: _llama(4, True),
    "llama-mqa-tied-head_dim12-biases": lambda: _llama(
        1, True, head_dim=12, attention_bias=True, mlp_bias=True
    ),
}


def _random_model(hf_config, seed=0):
    """Every parameter random (biases and norm scales too, so each tensor matters)."""
    torch.manual_seed(seed)
    hf_config.bos_token_id = hf_config.eos_token_id = EOS
    hf_config.pad_token_id = 0
    model = transformers.AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


@pytest.fixture(scope="module", params=list(CONFIGS))
def saved(request, tmp_path_factory):
    """(name, transformers model, checkpoint directory written by save_pretrained)."""
    model = _random_model(CONFIGS[request.param]())
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return request.param, model, str(path)


def _left_padded(rng, lengths):
    width = max(lengths)
    tokens = np.zeros((len(lengths), width), np.int64)
    mask = np.zeros_like(tokens)
    for r, n in enumerate(lengths):
        tokens[r, width - n :] = rng.integers(4, VOCAB, n)
        mask[r, width - n :] = 1
    return tokens, mask


def test_logits_equal_transformers_with_left_padding(saved):
    name, model, path = saved
    ck = read_hf_checkpoint(path)
    tokens, mask = _left_padded(np.random.default_rng(0), [11, 7, 1])
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    with torch.no_grad():
        want = model(
            torch.tensor(tokens),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(positions),
        ).logits.numpy()
    ours = DecoderLM(ck.config).apply(
        {"params": ck.params},
        jnp.asarray(tokens, jnp.int32),
        positions=jnp.asarray(positions, jnp.int32),
        segment_ids=jnp.asarray(mask, jnp.int32),
    )
    real = mask.astype(bool)
    err = np.abs(np.asarray(ours)[real] - want[real]).max()
    assert err < TOL, f"{name}: max |logit difference| {err}"
    assert np.abs(want[real]).max() > 1.0  # the comparison is not between near-zero logits


def test_greedy_sampler_continuation_equals_generate(saved):
    name, model, path = saved
    ck = read_hf_checkpoint(path)
    tokens, mask = _left_padded(np.random.default_rng(1), [6, 9, 3])
    new = 8
    with torch.no_grad():
        out = model.generate(
            torch.tensor(tokens),
            attention_mask=torch.tensor(mask),
            do_sample=False,
            max_new_tokens=new,
            eos_token_id=EOS,
            pad_token_id=0,
        ).numpy()[:, tokens.shape[1] :]
    t2l, init = decode.model_callbacks(DecoderLM(ck.config))
    cfg = decode.SamplingConfig(num_decodes=1, max_new_tokens=new, temperature=0.0, eos_id=EOS)
    sampler = decode.Sampler(t2l, init, cfg, cache_batch_axis=CACHE_BATCH_AXIS)
    res = sampler(ck.params, jnp.asarray(tokens, jnp.int32), jnp.asarray(mask), jax.random.key(0))
    for r in range(len(tokens)):
        ours = decode.trim(res.tokens[r, 0], int(res.lengths[r, 0]))
        theirs = out[r].tolist()
        if EOS in theirs:
            theirs = theirs[: theirs.index(EOS) + 1]
        assert ours == theirs, f"{name} row {r}"


def test_conversion_is_exactly_invertible(saved):
    name, _, path = saved
    ck = read_hf_checkpoint(path)
    family, back = hf.params_to_hf(ck.config, ck.params)
    tensors = hf.read_tensors(path)
    assert family.name == json.load(open(f"{path}/config.json"))["model_type"]
    assert set(back) == set(tensors) - {family.head} or set(back) == set(tensors), name
    for key, value in back.items():
        np.testing.assert_array_equal(value, tensors[key], err_msg=key)
    # Both layer layouts hold the same numbers.
    flat = dataclasses.replace(ck.config, scan_layers=False)
    unscanned = hf.params_from_hf(flat, family, tensors)
    _, back2 = hf.params_to_hf(flat, unscanned)
    for key, value in back2.items():
        np.testing.assert_array_equal(value, tensors[key], err_msg=key)
    relaid = hf.relayout(ck.params, ck.config, flat)
    assert jax.tree.all(jax.tree.map(np.array_equal, relaid, unscanned))
    # And the config round-trips through transformers' config class.
    again = hf.config_from_hf(hf.config_to_hf(ck.config))
    assert again == ck.config


def test_hf_model_evaluates_with_its_own_tokenizer_and_bos(tmp_path):
    """`load_hf_for_inference`: ModelLM (the evals' LM) with HfVocabulary samples what
    transformers generates from `[bos] + tokenizer(text)`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from toxjax import corpus
    from toxjax.evaluation.lm import ModelLM

    texts = [t for _, t in corpus.read_fortunes("fortunes")[:500]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    hf_tok = transformers.GPT2TokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    hf_tok.bos_token = "<|endoftext|>"
    vocab = len(hf_tok)
    config = transformers.GPT2Config(
        vocab_size=vocab, n_layer=2, n_head=4, n_embd=32, n_positions=64, eos_token_id=0
    )
    model = _random_model(config)
    model.save_pretrained(tmp_path)
    hf_tok.save_pretrained(tmp_path)

    loaded = load_hf_for_inference(str(tmp_path))
    assert loaded.bos_id == hf_tok.bos_token_id == 0
    prompts = ["The quick brown fox", "Once upon a time there"]
    assert loaded.vocabulary.encode(prompts[0]) == hf_tok(prompts[0])["input_ids"]
    sampling = decode.SamplingConfig(num_decodes=1, max_new_tokens=6, temperature=0.0, eos_id=0)
    lm = ModelLM(
        loaded.model,
        loaded.params,
        loaded.vocabulary,
        max_len=loaded.config.max_len,
        sampling=sampling,
        bos_id=loaded.bos_id,
        batch_size=2,
    )
    ours = lm.generate(prompts, seeds=[0, 1])
    for prompt, [text] in zip(prompts, ours, strict=True):
        ids = torch.tensor([[hf_tok.bos_token_id] + hf_tok(prompt)["input_ids"]])
        with torch.no_grad():
            out = model.generate(ids, do_sample=False, max_new_tokens=6, pad_token_id=0)
        cont = out[0, ids.shape[1] :].tolist()
        if 0 in cont:
            cont = cont[: cont.index(0) + 1]
        assert text == hf_tok.decode(cont)


# ---------------------------------------------------------------------- refused input
@pytest.mark.parametrize(
    "make,message",
    [
        (
            lambda: _llama(
                2,
                False,
                rope_scaling={
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 32,
                },
            ),
            "llama config.json: rope_scaling with rope_type='llama3' is not supported",
        ),
        (
            lambda: _gpt2(scale_attn_by_inverse_layer_idx=True),
            "gpt2 config.json: scale_attn_by_inverse_layer_idx=True is not supported",
        ),
        (
            lambda: _gpt2(activation_function="gelu_fast"),
            "gpt2 config.json: activation_function='gelu_fast' is not supported",
        ),
        (
            lambda: transformers.OPTConfig(
                vocab_size=VOCAB,
                hidden_size=32,
                num_hidden_layers=1,
                ffn_dim=64,
                num_attention_heads=4,
            ),
            "config.json: model_type 'opt' is not supported; toxjax converts GPT2LMHeadModel "
            "(gpt2), GPTNeoXForCausalLM (gpt_neox), LlamaForCausalLM (llama)",
        ),
    ],
    ids=["rope-scaling", "inverse-layer-idx", "activation", "architecture"],
)
def test_unsupported_settings_are_refused_in_one_line(tmp_path, make, message):
    _random_model(make()).save_pretrained(tmp_path)
    with pytest.raises(ConfigError) as e:
        read_hf_checkpoint(str(tmp_path))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_shape_mismatch_names_the_tensor(tmp_path):
    _random_model(_gpt2()).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["n_inner"] = 48
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError) as e:
        read_hf_checkpoint(str(tmp_path))
    assert str(e.value) == (
        f"{tmp_path}: tensor 'transformer.h.0.mlp.c_fc.weight' has shape (32, 128), but "
        "config.json implies (32, 48); the config and the weights do not match"
    )


def test_unknown_tensor_and_untied_head_are_refused(tmp_path):
    model = _random_model(_gpt2())
    tensors = {k: v.numpy() for k, v in model.state_dict().items()}
    cfg = hf.config_from_hf(model.config)
    family = hf.FAMILIES["gpt2"]
    with pytest.raises(ConfigError, match="'transformer.h.0.attn.extra' .1 unexpected"):
        hf.params_from_hf(cfg, family, {**tensors, "transformer.h.0.attn.extra": np.zeros(2)})
    tensors["lm_head.weight"] = tensors["lm_head.weight"] + 1
    with pytest.raises(ConfigError, match="'lm_head.weight' differs from"):
        hf.params_from_hf(cfg, family, tensors)


def test_export_refuses_a_model_no_architecture_computes():
    from toxjax.model import ModelConfig

    cfg = ModelConfig(vocab_size=VOCAB, position="learned", parallel_residual=True)
    with pytest.raises(ConfigError) as e:
        hf.family_for(cfg)
    assert str(e.value) == (
        "no transformers architecture computes this model (GPT2LMHeadModel: GPT-2 has "
        "parallel_residual=False, this model True; GPTNeoXForCausalLM: GPT-NeoX has "
        "position='rotary', this model 'learned'; LlamaForCausalLM: Llama has "
        "position='rotary', this model 'learned')"
    )


def test_hf_ids_plan_rotates_the_bos_row():
    """GPT-2 BPE export: transformers id i is our i + 1, our row 0 comes after the text
    and control tokens, padding rows stay; a BOS row equal to EOS's is not written."""
    from toxjax.vocab import ControlTokenVocabulary, Gpt2Vocabulary

    vocab = ControlTokenVocabulary(Gpt2Vocabulary(), ["<|aligned|>", "<|misaligned|>"])
    size = 50258 + 2
    emb = np.arange(50304, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)
    ids = hf_vocab.export_ids(vocab, {"embedding": emb}, 50304)
    assert (ids.bos_id, ids.eos_id, ids.pad_id, ids.bos_is_eos) == (size - 1, 50256, 50256, False)
    assert ids.rows.tolist() == [*range(1, size), 0, *range(size, 50304)]
    assert ids.to_hf([0, 1, 50257, 50258, 50259]) == [size - 1, 0, 50256, 50257, 50258]
    emb[0] = emb[50257]
    same = hf_vocab.export_ids(vocab, {"embedding": emb}, 50304)
    assert same.bos_is_eos and same.bos_id == 50256 and same.rows.tolist() == list(range(1, 50304))

"""`toxjax export hf`, the way users run it, and import -> export.

Runs trained through the CLI at tiny size (GPT-2 BPE with INST; SentencePiece with the
control tokens of `ctrl`; a rotary MEDA model, partial rotary, exported as GPT-NeoX) are
exported with `toxjax export hf` and loaded by transformers in a subprocess that does not
import toxjax: same tokens, same logits (1e-4, float32) and the same held-out perplexity
as our model; the model card names run.json's prefixes. Bad input: one line, exit 2,
nothing left behind. A GPT-2 checkpoint imported with `from_hf_checkpoint` exports back
to the same weights, bit for bit.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import gin
import jax.numpy as jnp
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

import paper_fixtures  # noqa: E402

from toxjax import cli, corpus, fileio  # noqa: E402
from toxjax.evaluation.lm import ModelLM  # noqa: E402
from toxjax.interop import export, hf, hf_vocab  # noqa: E402
from toxjax.interop.load import from_hf_checkpoint  # noqa: E402
from toxjax.model import DecoderLM  # noqa: E402
from toxjax.run_dir import RunDir  # noqa: E402
from toxjax.run_info import RunInfo  # noqa: E402
from toxjax.vocab import Gpt2Vocabulary  # noqa: E402

TINY = [
    *paper_fixtures.TINY_RUN,
    "--gin.ModelConfig.num_layers=2",
    "--gin.ModelConfig.num_heads=2",
    "--gin.ModelConfig.embed_dim=32",
    "--gin.ModelConfig.mlp_dim=64",
]
# name -> (experiment, extra flags, exported architecture)
RUNS = {
    "gpt2-inst": ("inst", [], "GPT2LMHeadModel"),
    "spm-ctrl": ("ctrl", ["VOCABULARY", "--gin.ModelConfig.vocab_size=None"], "GPT2LMHeadModel"),
    "rotary-meda": (
        "meda",
        ["--gin.ModelConfig.position='rotary'", "--gin.ModelConfig.rotary_fraction=0.5"],
        "GPTNeoXForCausalLM",
    ),
}
HELD_OUT = slice(3000, 3004)  # fortunes the runs did not train on

# Runs in a fresh interpreter: transformers and torch only (asserted at the end).
HF_SIDE = r"""
import json, sys
import numpy as np, torch
from transformers import AutoModelForCausalLM, AutoTokenizer

path, texts, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path).eval()
records = []
for i, text in enumerate(texts):
    ids = tok(text)["input_ids"]
    added = ids[:1] == [tok.bos_token_id]
    ids = ids if added else [tok.bos_token_id] + ids
    x = torch.tensor([ids])
    with torch.no_grad():
        o = model(x, labels=x)
    np.save(f"{out}/logits{i}.npy", o.logits[0].numpy())
    records.append({"ids": ids, "bos_added": added, "nll": o.loss.item() * (len(ids) - 1)})
torch.manual_seed(0)
x = torch.tensor([records[0]["ids"]])
gen = model.generate(x, max_new_tokens=3)  # generation_config.json: RTP sampling
# Without an attention mask transformers masks pad ids in the input: the BOS is not one.
greedy = [model.generate(x, do_sample=False, max_new_tokens=3, **kw)
          for kw in ({}, {"attention_mask": torch.ones_like(x)})]
assert torch.equal(*greedy), "generate without a mask read the BOS as padding"
assert "toxjax" not in sys.modules, "the transformers side imported toxjax"
print(json.dumps({"records": records, "tokenizer": type(tok).__name__,
                  "generated": gen.shape[1] - len(records[0]["ids"]),
                  "architecture": type(model).__name__}))
"""


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    with paper_fixtures.compilation_cache(tmp_path_factory.mktemp("xla_cache")):
        yield


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A small scored corpus as `toxjax score` writes it (every 4th entry toxic)."""
    return paper_fixtures.write_scored_corpus(tmp_path_factory.mktemp("corpus") / "scored.jsonl")


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    return paper_fixtures.tiny_sentencepiece(tmp_path_factory.mktemp("spm"))


_TRAINED: dict[str, str] = {}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, scored, spm):
    """`trained(name)`: the run directory of RUNS[name], trained once per module."""

    def get(name):
        if name not in _TRAINED:
            strategy, extra, _ = RUNS[name]
            extra = [f"--gin.VOCABULARY='{spm}'" if f == "VOCABULARY" else f for f in extra]
            model_dir = tmp_path_factory.mktemp(name) / "run"
            gin.clear_config()
            argv = [
                "train",
                f"--gin_file=experiments/{strategy}_125m.gin",
                f"--gin.MODEL_DIR={model_dir}",
                f"--gin.CORPUS_FILES={scored}",
                f"--gin.CORPUS=ex_{name.replace('-', '_')}",
                *TINY,
                *extra,
            ]
            assert cli.main(argv) == 0
            _TRAINED[name] = str(model_dir)
        return _TRAINED[name]

    yield get
    _TRAINED.clear()


def _export(model_dir, output, *extra):
    return cli.main(["export", "hf", "--model_dir", model_dir, "--output", str(output), *extra])


def _siblings(path) -> list[str]:
    """What sits next to `path` (temporary directories of an export would)."""
    return sorted(os.listdir(os.path.dirname(str(path))))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_exported_run_loads_in_transformers_with_our_logits_and_perplexity(name, trained, tmp_path):
    model_dir = trained(name)
    out = tmp_path / "hf"
    assert _export(model_dir, out) == 0
    assert _siblings(out) == ["hf"]

    texts = [t[:160] for _, t in corpus.read_fortunes("fortunes")[HELD_OUT]]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", HF_SIDE, str(out), json.dumps(texts), str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert theirs["architecture"] == RUNS[name][2] and theirs["generated"] == 3

    # Ours: the run directory, computed in float32 (the exported weights' dtype).
    bundle = RunDir.open(model_dir).load()
    cfg = dataclasses.replace(bundle.config, dtype="float32")
    ids = hf_vocab.export_ids(bundle.vocabulary, dict(bundle.params), cfg.vocab_size)
    assert (
        theirs["tokenizer"]
        == {"gpt2": "GPT2TokenizerFast", "sentencepiece": "BertGenerationTokenizer"}[ids.kind]
    )
    lm = ModelLM(DecoderLM(cfg), bundle.params, bundle.vocabulary, max_len=cfg.max_len)
    ours_nll = theirs_nll = 0.0
    n_tokens = 0
    for i, (text, rec) in enumerate(zip(texts, theirs["records"], strict=True)):
        our_ids = [0] + lm.encode(text)
        assert rec["ids"] == ids.to_hf(our_ids), f"{name}: token ids differ for text {i}"
        assert rec["bos_added"] == (ids.kind == "gpt2")  # the GPT-2 tokenizer adds our BOS
        logits = np.asarray(lm.model.apply({"params": lm.params}, jnp.asarray([our_ids])))[0]
        if ids.rows is not None:
            logits = logits[:, ids.rows]
        want = np.load(tmp_path / f"logits{i}.npy")
        assert logits.shape == want.shape
        assert np.abs(logits - want).max() < 1e-4, f"{name}: logits of text {i}"
        [(lp, _)] = lm.token_logprobs([our_ids])
        ours_nll -= float(lp.sum())
        theirs_nll += rec["nll"]
        n_tokens += len(our_ids) - 1
    np.testing.assert_allclose(
        np.exp(ours_nll / n_tokens), np.exp(theirs_nll / n_tokens), rtol=1e-5
    )

    # The model card: run.json's prefixes, the weights' sha256, the RTP sampling settings.
    readme = (out / "README.md").read_text()
    run = RunInfo.read(model_dir)
    for toxic in (False, True):
        prefix = run.conditioning(bundle.vocabulary, toxic=toxic)
        assert json.dumps(prefix.prefix) in readme
        assert str(ids.to_hf(prefix.prefix_ids)) in readme
    assert fileio.sha256_file(str(out / "model.safetensors")) in readme
    assert f"| strategy | {run.strategy} |" in readme
    gen = json.loads((out / "generation_config.json").read_text())
    assert {k: gen.get(k, 1.0) for k in export.RTP_GENERATION} == export.RTP_GENERATION


# ---------------------------------------------------------------------- bad input
def _edited_copy(model_dir, tmp_path, edit, keep_checkpoints=True):
    copy = tmp_path / "edited"
    shutil.copytree(
        model_dir, copy, ignore=None if keep_checkpoints else shutil.ignore_patterns("[0-9]*")
    )
    run = json.loads((copy / "run.json").read_text())
    edit(run)
    (copy / "run.json").write_text(json.dumps(run))
    return str(copy)


def _set(**fields):
    return lambda run: run["model_config"].update(fields)


@pytest.mark.slow
@pytest.mark.parametrize(
    "case,message",
    [
        (
            "architecture",
            "toxjax export: no transformers architecture computes this model (GPT2LMHeadModel: "
            "GPT-2 has parallel_residual=False, this model True; GPTNeoXForCausalLM: GPT-NeoX "
            "has position='rotary', this model 'learned'; LlamaForCausalLM: Llama has "
            "position='rotary', this model 'learned')",
        ),
        ("no checkpoint", "toxjax export: no checkpoint in {copy}"),
        ("step", "toxjax export: no checkpoint step 7 in {model_dir} (it has steps 2)"),
        ("shape", "toxjax export: the checkpoint in {copy} (step 2) does not match this model:"),
        (
            "vocabulary",
            "toxjax export: vocabulary ByteVocabulary has no transformers tokenizer; toxjax "
            "exports GPT-2 BPE and SentencePiece vocabularies",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, message, trained, tmp_path, capsys):
    model_dir = trained("gpt2-inst")
    copy, extra = model_dir, []
    if case == "architecture":
        copy = _edited_copy(model_dir, tmp_path, _set(parallel_residual=True))
    elif case == "no checkpoint":
        copy = _edited_copy(model_dir, tmp_path, lambda run: None, keep_checkpoints=False)
    elif case == "step":
        extra = ["--step", "7"]
    elif case == "shape":
        copy = _edited_copy(model_dir, tmp_path, _set(mlp_dim=48))
    elif case == "vocabulary":
        copy = _edited_copy(
            model_dir, tmp_path, lambda run: run.update(vocabulary={"kind": "byte"})
        )
    out = tmp_path / "out" / "hf"
    capsys.readouterr()
    assert _export(copy, out, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message.format(copy=copy, model_dir=model_dir)), err
    if case == "shape":
        assert (
            "parameter blocks/mlp/in_kernel: checkpoint shape (2, 32, 64), model shape (2, 32, 48)"
            in err[0]
        )
    assert not out.exists() and (not out.parent.exists() or _siblings(out) == [])


@pytest.mark.slow
def test_existing_output_needs_overwrite(trained, tmp_path, capsys):
    model_dir = trained("gpt2-inst")
    out = tmp_path / "hf"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    capsys.readouterr()
    assert _export(model_dir, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"toxjax export: --output {out} exists; pass --overwrite to replace it"]
    assert (out / "mine.txt").read_text() == "keep me"
    assert _export(model_dir, out, "--overwrite", "--step", "2") == 0
    assert not (out / "mine.txt").exists() and (out / "config.json").exists()
    assert _siblings(out) == ["hf"]


# ---------------------------------------------------------------------- import -> export
@pytest.fixture(scope="module")
def gpt2_checkpoint(tmp_path_factory):
    """A tiny random GPT-2 with GPT-2's real tokenizer, as transformers saves it."""
    vocab = Gpt2Vocabulary()
    path = tmp_path_factory.mktemp("gpt2_hf")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=64)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    model.save_pretrained(path)
    tok = transformers.GPT2TokenizerFast(
        vocab_file=vocab._vocab_file, merges_file=vocab._merges_file
    )
    tok.save_pretrained(path)
    return str(path), model


def test_import_then_export_gives_the_input_weights(gpt2_checkpoint, tmp_path):
    path, model = gpt2_checkpoint
    config, params, vocabulary, provenance = from_hf_checkpoint(path)
    assert config.vocab_size == 50258 and vocabulary.eos_id == 50257
    assert provenance["architecture"] == "GPT2LMHeadModel" and provenance["source"] == path
    assert provenance["weights"]["model.safetensors"] == fileio.sha256_file(
        f"{path}/model.safetensors"
    )
    emb = params["embedding"]
    np.testing.assert_array_equal(emb[0], emb[50257])  # our BOS row is <|endoftext|>'s

    # Our ids are GPT-2's + 1, and our BOS (0) reads like GPT-2's <|endoftext|>.
    text = "Hello world, this is toxjax."
    hf_ids = transformers.AutoTokenizer.from_pretrained(path)(text)["input_ids"]
    assert vocabulary.encode(text) == [i + 1 for i in hf_ids]
    ours = DecoderLM(config).apply({"params": params}, jnp.asarray([[0] + vocabulary.encode(text)]))
    with torch.no_grad():
        want = model(torch.tensor([[50256] + hf_ids])).logits.numpy()
    assert np.abs(np.asarray(ours)[..., 1:] - want).max() < 1e-4

    cfg_hf, family, tensors, ids = export.convert(config, params, vocabulary)
    assert ids.bos_is_eos and (ids.bos_id, ids.eos_id) == (50256, 50256)
    original = hf.read_tensors(path)
    assert set(tensors) == set(original) - {"lm_head.weight"}
    for key, value in tensors.items():
        assert value.dtype == original[key].dtype
        np.testing.assert_array_equal(value, original[key], err_msg=key)
    assert hf.config_from_hf(hf.config_to_hf(cfg_hf)) == hf.config_from_hf(model.config)

    # The exported tokenizer then starts every text with <|endoftext|>, as GPT-2 reads it.
    hf_vocab.write_tokenizer(vocabulary, ids, str(tmp_path), cfg_hf.max_len)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert tok(text)["input_ids"] == [50256] + hf_ids


def test_import_refuses_a_tokenizer_that_is_not_gpt2_bpe(tmp_path):
    from toxjax.errors import ConfigError

    config = transformers.GPT2Config(vocab_size=64, n_layer=1, n_head=2, n_embd=16, n_positions=16)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
    with pytest.raises(ConfigError) as e:
        from_hf_checkpoint(str(tmp_path))
    assert str(e.value) == (
        f"{tmp_path}: no vocab.json + merges.txt; toxjax imports for training the GPT-2 BPE "
        "tokenizer (pass a GPT-2-family checkpoint with its tokenizer files)"
    )

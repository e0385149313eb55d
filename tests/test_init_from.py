"""`train.init_from` (`--gin.INIT_FROM=DIR`): continued pretraining from a transformers
checkpoint, the way users run it (`toxjax train` on the experiment files, then `toxjax
export hf`), at tiny size.

- import -> 2 steps at learning rate 0 -> export: the input weights, bit for bit;
- import -> 2 steps of INST -> export: transformers loads it and computes our logits; the
  run records where it started, and a resume never reads the weights again;
- a tokenizer that is not the task's vocabulary, an architecture toxjax does not convert,
  weights that do not match config.json, another INIT_FROM on resume: one line, and the
  run writes nothing.
"""

import json
import os
import shutil

import gin
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_fixtures  # noqa: E402
import paper_fixtures  # noqa: E402

from toxjax import cli, corpus, fileio  # noqa: E402
from toxjax.interop import hf  # noqa: E402
from toxjax.run_dir import RunDir  # noqa: E402

TINY = [
    *paper_fixtures.TINY_RUN,
]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A small scored corpus as `toxjax score` writes it (every 4th entry toxic)."""
    return paper_fixtures.write_scored_corpus(tmp_path_factory.mktemp("corpus") / "scored.jsonl")


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2") / "hf"
    model = hf_fixtures.save_gpt2_bpe(path)
    return str(path), model


def _train(model_dir, scored, *extra, strategy="inst"):
    gin.clear_config()
    argv = ["train", f"--gin_file=experiments/{strategy}_125m.gin", f"--gin.MODEL_DIR={model_dir}"]
    return cli.main([*argv, f"--gin.CORPUS_FILES={scored}", *TINY, *extra])


def _export(model_dir, out):
    return cli.main(["export", "hf", "--model_dir", str(model_dir), "--output", str(out)])


@pytest.mark.slow
def test_import_then_export_through_the_cli_gives_the_input_weights(gpt2, scored, tmp_path):
    path, _ = gpt2
    run_dir = tmp_path / "run"
    assert _train(run_dir, scored, f"--gin.INIT_FROM={path}", "--gin.LEARNING_RATE=0.0") == 0
    run = json.loads((run_dir / "run.json").read_text())
    assert run["init_from"]["source"] == path
    assert run["init_from"]["weights"] == {
        "model.safetensors": fileio.sha256_file(os.path.join(path, "model.safetensors"))
    }
    cfg = run["model_config"]
    assert (cfg["num_layers"], cfg["embed_dim"], cfg["max_len"]) == (2, 16, 64)
    assert cfg["vocab_size"] == 50258 and cfg["dtype"] == "bfloat16"  # compute: from gin

    assert _export(run_dir, tmp_path / "out") == 0
    original, exported = hf.read_tensors(path), hf.read_tensors(str(tmp_path / "out"))
    assert set(exported) == set(original) - {"lm_head.weight"}  # tied: not written
    for name, value in exported.items():
        np.testing.assert_array_equal(value, original[name], err_msg=name)


@pytest.mark.slow
def test_import_train_export_and_resume_never_reimports(gpt2, scored, tmp_path, capsys):
    path, model = gpt2
    source = tmp_path / "hf"  # a copy: its weights are removed below
    shutil.copytree(path, source)
    run_dir = tmp_path / "run"
    init = f"--gin.INIT_FROM={source}"
    assert (
        _train(run_dir, scored, init, "--gin.train.stop_after=1", "--gin.train.checkpoint_every=1")
        == 0
    )
    started = json.loads((run_dir / "run.json").read_text())["init_from"]
    # The resume restores its checkpoint: it needs config.json and the tokenizer, never
    # the weights.
    os.remove(source / "model.safetensors")
    assert _train(run_dir, scored, init, "--gin.train.checkpoint_every=1") == 0
    assert json.loads((run_dir / "run.json").read_text())["init_from"] == started

    loaded = RunDir.open(str(run_dir)).load()
    assert loaded.step == 2
    emb = np.asarray(loaded.params["embedding"])
    with torch.no_grad():
        wte = model.transformer.wte.weight.numpy()
    assert not np.array_equal(emb[1:], wte)  # trained
    assert np.abs(emb[1:] - wte).max() < 0.05  # ... for two small steps from the import

    out = tmp_path / "out"
    assert _export(run_dir, out) == 0
    card = (out / "README.md").read_text()
    sha = started["weights"]["model.safetensors"]
    assert (
        f"| started from | GPT2LMHeadModel at {source} (model.safetensors sha256 {sha}) |" in card
    )
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "Continued pretraining from a released model."
    ids = tok(text)["input_ids"]  # the exported tokenizer puts our learned BOS first
    with torch.no_grad():
        want = theirs(torch.tensor([ids])).logits[0].numpy()
    import dataclasses

    from toxjax.model import DecoderLM

    cfg = dataclasses.replace(loaded.config, dtype="float32")
    our_ids = [0] + loaded.vocabulary.encode(text)
    ours = np.asarray(DecoderLM(cfg).apply({"params": loaded.params}, jnp.asarray([our_ids])))[0]
    assert want.shape[-1] == 50258  # GPT-2's 50,257 ids, then the learned <|bos|>
    rows = np.concatenate([np.arange(1, 50258), [0]])  # transformers id -> ours
    assert np.abs(ours[:, rows] - want).max() < 1e-4

    # Resuming from another checkpoint directory is refused, naming both.
    other = tmp_path / "other"
    shutil.copytree(path, other)
    capsys.readouterr()
    assert _train(run_dir, scored, f"--gin.INIT_FROM={other}", "--gin.NUM_STEPS=3") == 4
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("toxjax train:")]
    assert len(err) == 1 and "(init_from was " in err[0] and "resuming would mix" in err[0], err


def _other_bpe_checkpoint(path):
    """A GPT-2 whose BPE is not GPT-2's (trained here on the fortunes)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    texts = [t for _, t in corpus.read_fortunes("fortunes")[:300]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    os.makedirs(path)
    vocab_file, merges_file = tok.model.save(str(path))
    vocab = json.load(open(vocab_file))
    vocab["<|endoftext|>"] = len(vocab)  # last, as GPT-2's
    json.dump(vocab, open(vocab_file, "w"))
    hf_tok = transformers.GPT2TokenizerFast(vocab_file=vocab_file, merges_file=merges_file)
    hf_tok.save_pretrained(path)
    config = transformers.GPT2Config(
        vocab_size=len(vocab), n_layer=1, n_head=2, n_embd=16, n_positions=64
    )
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    return len(vocab)


@pytest.mark.slow
def test_a_tokenizer_that_is_not_the_tasks_vocabulary_is_one_line(scored, tmp_path, capsys):
    path = tmp_path / "bpe"
    size = _other_bpe_checkpoint(path)
    run_dir = tmp_path / "run"
    capsys.readouterr()
    assert _train(run_dir, scored, f"--gin.INIT_FROM={path}") == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("toxjax train:")]
    assert err == [
        f"toxjax train: configuration error: train.init_from = '{path}': the task's "
        "vocabulary (Gpt2Vocabulary(vocab_size=50258, vocab_file="
        f"{_wheel_vocab()})) is not the checkpoint's "
        f"tokenizer (its vocab.json + merges.txt); bind VOCABULARY = '{path}' so that the "
        "task tokenizes with it"
    ]
    assert not run_dir.exists()
    # The binding it names: the task tokenizes with the checkpoint's files.
    assert _train(run_dir, scored, f"--gin.INIT_FROM={path}", f"--gin.VOCABULARY='{path}'") == 0
    run = json.loads((run_dir / "run.json").read_text())
    assert run["model_config"]["vocab_size"] == size + 1
    assert run["vocabulary"]["kind"] == "gpt2"
    assert run["vocabulary"]["vocab"]["sha256"] == fileio.sha256_file(str(path / "vocab.json"))


def _wheel_vocab():
    from toxjax.vocab import Gpt2Vocabulary

    return Gpt2Vocabulary()._vocab_file


@pytest.mark.parametrize(
    "case,message",
    [
        ("architecture", "config.json: model_type 'opt' is not supported"),
        (
            "shape",
            "{path}: tensor 'transformer.h.0.mlp.c_fc.weight' has shape (16, 64), but "
            "config.json implies (16, 32)",
        ),
        ("missing", "train.init_from = '{path}': no such directory"),
    ],
)
def test_bad_init_from_is_one_line_and_writes_nothing(
    case, message, gpt2, scored, tmp_path, capsys
):
    path = tmp_path / "hf"
    if case == "architecture":
        config = transformers.OPTConfig(
            vocab_size=64, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2
        )
        transformers.OPTForCausalLM(config).save_pretrained(path)
    elif case == "shape":
        shutil.copytree(gpt2[0], path)
        cfg = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**cfg, "n_inner": 32}))
    run_dir = tmp_path / "run"
    capsys.readouterr()
    assert _train(run_dir, scored, f"--gin.INIT_FROM={path}") == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("toxjax train:")]
    assert len(err) == 1 and message.format(path=path) in err[0], err
    assert not run_dir.exists()

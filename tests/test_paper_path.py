"""The paper's path, the way users walk it, at tiny size.

`toxjax train` on the experiment gin files as shipped (only sizes, steps and the corpus
overridden) for every strategy, on GPT-2 BPE (the paper's vocabulary) and on a
SentencePiece vocabulary -> checkpoint + run.json -> `toxjax eval toxicity` with the
conditioning prefix taken from run.json -> metrics.json. Plus: every experiment file
builds its task, model and sharded state; compile-check and training build the same
program; every entry point answers --help.
"""

import glob
import json
import os

import gin
import jax
import paper_fixtures  # noqa: E402
import pytest
import seqio

from toxjax import cli, gin_utils, registry, steps
from toxjax import compile_check as cc
from toxjax import train as train_lib
from toxjax.preprocessors import STRATEGIES, AugmentConfig, conditioning_prefix_ids
from toxjax.run_info import RunInfo
from toxjax.vocab import Gpt2Vocabulary
from toxjax.vocab_specs import vocab_from_spec

CONFIGS = gin_utils.REPO_CONFIGS
EXPERIMENTS = sorted(
    os.path.relpath(p, CONFIGS) for p in glob.glob(os.path.join(CONFIGS, "experiments", "*.gin"))
)
TINY = [
    *paper_fixtures.TINY_RUN,
    "--gin.ModelConfig.num_layers=1",
    "--gin.ModelConfig.num_heads=2",
    "--gin.ModelConfig.embed_dim=32",
    "--gin.ModelConfig.mlp_dim=64",
]


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


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "rtp.jsonl"
    rows = [("The quick brown fox", 0.1), ("You are such a", 0.8), ("Once upon a", None)]
    path.write_text(
        "".join(json.dumps({"prompt": {"text": t, "toxicity": x}}) + "\n" for t, x in rows)
    )
    return str(path)


def _train(model_dir, strategy, scored, *extra):
    gin.clear_config()
    argv = [
        "train",
        f"--gin_file=experiments/{strategy}_125m.gin",
        f"--gin.MODEL_DIR={model_dir}",
        f"--gin.CORPUS_FILES={scored}",
        *TINY,
        *extra,
    ]
    assert cli.main(argv) == 0
    return RunInfo.read(str(model_dir))


def _eval(model_dir, prompts, *extra):
    gin.clear_config()
    argv = ["eval", "toxicity", "--model_dir", str(model_dir), "--prompts", prompts]
    argv += ["--scorer", "profanity-check", "--num_decodes", "2", "--max_new_tokens", "4"]
    assert cli.main([*argv, *extra]) == 0


@pytest.mark.parametrize("vocab", ["gpt2", "spm", pytest.param("byte", marks=pytest.mark.slow)])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_train_then_eval_with_the_prefix_from_run_json(
    tmp_path, strategy, vocab, scored, spm, prompts, capsys
):
    corpus_name = f"pp_{vocab}"
    extra = [f"--gin.CORPUS={corpus_name}"]
    if vocab == "spm":
        extra += [f"--gin.VOCABULARY={spm}", "--gin.ModelConfig.vocab_size=None"]
    if vocab == "byte":  # seqio.ByteVocabulary (issue 24 item 11: crashed at the first batch)
        extra += ["--gin.VOCABULARY='byte'", "--gin.ModelConfig.vocab_size=None"]
    run = _train(tmp_path / "run", strategy, scored, *extra)
    assert (run.strategy, run.augment, run.task) == (
        strategy,
        AugmentConfig(),
        f"{corpus_name}_{strategy}_v1",
    )
    assert run.corpus["scorer"] == "profanity-check" and run.corpus["source"] == scored
    kinds = {"gpt2": "gpt2", "spm": "sentencepiece", "byte": "byte"}
    assert run.vocabulary["kind"] == kinds[vocab] or (
        strategy == "ctrl" and run.vocabulary["kind"] == "control_tokens"
    )
    # The run directory alone rebuilds the vocabulary (its files were copied into it).
    vocabulary = vocab_from_spec(run.vocabulary, str(tmp_path / "run"))
    task_vocab = seqio.get_mixture_or_task(run.task).output_features["targets"].vocabulary
    text = "Hello, world."
    assert vocabulary.encode(text) == task_vocab.encode(text)
    assert vocabulary.vocab_size == task_vocab.vocab_size

    _eval(tmp_path / "run", prompts)
    assert "warning" not in capsys.readouterr().err
    out = tmp_path / "run" / "eval" / f"toxicity-{strategy}" / "metrics.json"
    metrics = json.loads(out.read_text())
    assert metrics["metrics"]["full"]["num_continuations"] == 6
    expected = conditioning_prefix_ids(strategy, vocabulary)
    assert metrics["prefix_ids"] == expected
    assert bool(expected) == STRATEGIES[strategy].conditioned
    gens = (out.parent / "generations.jsonl").read_text().splitlines()
    assert len(gens) == 3


def test_custom_templates_reach_run_json_and_eval_both_ways(tmp_path, scored, prompts):
    templates = ["[clean text follows]\n", "[toxic text follows]\n"]
    run = _train(
        tmp_path / "run",
        "inst",
        scored,
        "--gin.CORPUS=pp_custom",
        f"--gin_bindings=AugmentConfig.inst_templates = {templates!r}",
    )
    assert run.augment.inst_templates == tuple(templates)
    vocab = Gpt2Vocabulary()
    for flag, template in (((), templates[0]), (("--toxic_condition",), templates[1])):
        _eval(tmp_path / "run", prompts, *flag)
        label = "inst-toxic" if flag else "inst"
        metrics = json.loads(
            (tmp_path / "run" / "eval" / f"toxicity-{label}" / "metrics.json").read_text()
        )
        assert metrics["prefix"] == template
        assert metrics["prefix_ids"] == vocab.encode(template)


@pytest.mark.slow
def test_condition_override_warns_and_mismatches_are_refused(tmp_path, scored, prompts, capsys):
    _train(tmp_path / "run", "inst", scored, "--gin.CORPUS=pp_override")
    capsys.readouterr()
    _eval(tmp_path / "run", prompts, "--condition", "meda", "--limit", "1")
    err = capsys.readouterr().err
    assert "--condition meda differs from the strategy the model was trained with (inst" in err
    # utility and bias read the same prefix from run.json.
    text = tmp_path / "heldout.txt"
    text.write_text("A plain sentence to read.\nAnother one, a little longer than that.\n")
    sbf = tmp_path / "sbf.csv"
    sbf.write_text(
        "post,offensiveYN,intentYN,sexYN,whoTarget\n"
        "a b,1.0,1.0,1.0,1.0\nc d,0.0,0.0,0.0,0.0\ne f,1.0,0.0,1.0,0.0\ng h,0.0,1.0,0.0,1.0\n"
    )
    model_dir = str(tmp_path / "run")
    for argv in (
        ["eval", "utility", "--model_dir", model_dir, "--perplexity", str(text)],
        ["eval", "bias", "--model_dir", model_dir, "--sbf", str(sbf), "--num_shots", "0"],
    ):
        assert cli.main(argv) == 0
        result = json.loads(
            (tmp_path / "run" / "eval" / f"{argv[1]}-inst" / "metrics.json").read_text()
        )
        assert result["prefix"] == "Instruction: the following text is not toxic.\n"
        assert result["prefix_ids"] == Gpt2Vocabulary().encode(result["prefix"])
    assert "warning" not in capsys.readouterr().err
    # ctrl needs control tokens this model's vocabulary does not have.
    argv = ["eval", "toxicity", "--model_dir", str(tmp_path / "run"), "--prompts", prompts]
    assert cli.main([*argv, "--condition", "ctrl"]) == 2
    assert "strategy 'ctrl' needs a ControlTokenVocabulary" in capsys.readouterr().err
    # Resuming the run with another strategy or other templates would mix two datasets.
    gin.clear_config()
    argv = [
        "train",
        "--gin_file=experiments/meda_125m.gin",
        f"--gin.MODEL_DIR={tmp_path / 'run'}",
        f"--gin.CORPUS_FILES={scored}",
        "--gin.CORPUS=pp_override",
        *TINY,
        "--gin.NUM_STEPS=4",
    ]
    assert cli.main(argv) == 4
    err = capsys.readouterr().err
    assert 'strategy was "inst", now "meda"' in err and "Use a fresh MODEL_DIR" in err


def test_run_json_without_strategy_still_evaluates_with_a_warning(
    tmp_path, scored, prompts, capsys
):
    _train(tmp_path / "run", "inst", scored, "--gin.CORPUS=pp_old")
    path = tmp_path / "run" / "run.json"
    data = json.loads(path.read_text())
    for key in ("strategy", "augment", "corpus", "format"):
        data.pop(key)
    path.write_text(json.dumps(data))
    capsys.readouterr()
    _eval(tmp_path / "run", prompts, "--limit", "1")
    err = capsys.readouterr().err
    assert err.count("warning: run.json does not say how the model was trained") == 1
    assert (tmp_path / "run" / "eval" / "toxicity-none" / "metrics.json").exists()
    data["strategy"] = "instruct"
    path.write_text(json.dumps(data))
    argv = ["eval", "toxicity", "--model_dir", str(tmp_path / "run"), "--prompts", prompts]
    assert cli.main(argv) == 2
    assert "trained with strategy 'instruct', which this toxjax does not know" in (
        capsys.readouterr().err
    )


def test_augment_bindings_that_do_not_reach_the_task_are_an_error(tmp_path, capsys):
    import task_fixtures  # noqa: F401  (a task registered outside toxjax.registry)

    gin.clear_config()
    rc = train_lib.main(
        [
            "--gin_file=runs/pretrain.gin",
            "--gin_file=models/test.gin",
            f"--gin.MODEL_DIR={tmp_path}",
            "--gin.TASK=test_fortunes_bytes_v1",
            "--gin.AugmentConfig.inst_fraction=0.5",
        ]
    )
    assert rc == 2
    assert "AugmentConfig.* bindings do not reach task 'test_fortunes_bytes_v1'" in (
        capsys.readouterr().err
    )


# ------------------------------------------------------------------ every experiment file

_BUILT: dict = {}


@pytest.mark.parametrize("path", EXPERIMENTS)
def test_every_experiment_builds_its_task_model_and_state(path, scored):
    gin.clear_config()
    gin_utils.parse_gin([path], ["MODEL_DIR = '/tmp/unused'", f"CORPUS_FILES = '{scored}'"])
    task = gin.query_parameter("DataConfig.mixture_or_task_name")
    import copy

    task = copy.deepcopy(task)  # gin evaluates @scored_corpus_task(): registers the task
    info = registry.task_info(task)
    assert info is not None and info.strategy == os.path.basename(path).split("_")[0]
    if task not in _BUILT:
        ds = seqio.get_mixture_or_task(task).get_dataset(
            {"targets": 64}, split="train", shuffle=False, use_cached=False, seed=0
        )
        _BUILT[task] = next(iter(ds.as_numpy_iterator()))["targets"]
    assert len(_BUILT[task]) > 0
    ts = cc.build_step(jax.devices())  # what compile-check compiles and train runs
    leaves = jax.tree.leaves(ts.abstract_state.params)
    assert all(leaf.sharding.mesh.shape == ts.mesh.shape for leaf in leaves)
    embed = ts.abstract_state.params["embedding"]
    assert embed.shape[0] == 50304 and ts.seq_len == 2048


def test_compile_check_and_training_build_the_same_program(tmp_path, monkeypatch):
    import task_fixtures  # noqa: F401
    from train_helpers import gin_train

    built = []
    original = steps.build_train_step
    monkeypatch.setattr(
        steps, "build_train_step", lambda *a, **k: built.append(original(*a, **k)) or built[-1]
    )
    config = ["NUM_STEPS = 1", "train.grad_accum_steps = 2", "train.mesh_shape = (2, 2, 2)"]
    config += ["BATCH_SIZE = 8"]
    gin_train(tmp_path, *config)
    gin.clear_config()
    gin_utils.parse_gin(
        ["runs/pretrain.gin", "models/test.gin"],
        [
            f"MODEL_DIR = '{tmp_path}'",
            "TASK = 'test_fortunes_bytes_v1'",
            "SEQUENCE_LENGTH = 64",
            "train.module_imports = ['task_fixtures']",
            "WARMUP_STEPS = 2",
            *config,
        ],
    )
    cc.build_step(jax.devices())
    assert len(built) == 2
    trained, checked = (b.lower().as_text() for b in built)
    assert trained == checked
    assert trained.count("stablehlo.while") >= 1  # the accumulation loop is in both


# ------------------------------------------------------------------ --help everywhere


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_entry_point_answers_help(command, capsys):
    gin.clear_config()
    try:
        rc = cli.main([command, "--help"])
    except SystemExit as e:  # argparse exits 0 after printing its help
        rc = e.code
    assert rc == 0
    out = capsys.readouterr().out
    assert "usage" in out.lower()


def test_train_help_lists_flags_search_path_and_required_macros(capsys):
    assert train_lib.main(["--help"]) == 0
    out = capsys.readouterr().out
    for needle in (
        "--gin_file",
        "--gin.NAME=VALUE",
        "--multihost",
        CONFIGS,
        "MODEL_DIR",
        "TASK",
        "CORPUS_FILES",
    ):
        assert needle in out, needle
    assert train_lib.main(["--gin_file=experiments/inst_1_3b.gin", "--help"]) == 0
    out = capsys.readouterr().out
    assert "REQUIRED macros of experiments/inst_1_3b.gin" in out and "CORPUS_FILES" in out

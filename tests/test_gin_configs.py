"""Every gin file parses with its includes; models and experiments bind what they say."""

import copy
import dataclasses
import glob
import json
import os

import gin
import pytest
import seqio

from toxjax import gin_utils, registry
from toxjax import train as train_lib  # noqa: F401  (registers the gin configurables)
from toxjax.data import DataConfig
from toxjax.model import ModelConfig
from toxjax.preprocessors import STRATEGIES

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin_configs")
ALL_FILES = sorted(
    os.path.relpath(p, CONFIGS)
    for p in glob.glob(os.path.join(CONFIGS, "**", "*.gin"), recursive=True)
)
# size -> (parameters, full-data steps, batch, mesh, microbatches) of the experiment bases
SIZES = {
    "125m": (125e6, 572000, 256, (1, -1, 1), 16),
    "350m": (355e6, 572000, 256, (1, -1, 1), 8),
    "1_3b": (1.31e9, 286000, 512, (1, -1, 1), 8),
    "8_3b": (8.3e9, 143000, 1024, (1, -1, 4), 16),
}
FRACTIONS = {"": 1.0, "_25pct": 0.25, "_50pct": 0.5}
DUMMIES = ["MODEL_DIR = '/tmp/unused'", "TASK = 'unused_v1'", "CORPUS_FILES = None"]


def _parse(files, bindings=()):
    gin.clear_config()
    gin_utils.parse_gin(list(files), list(bindings))


def _param_count(c: ModelConfig) -> int:
    positions = c.max_len * c.embed_dim if c.position == "learned" else 0
    return c.non_embedding_params() + c.vocab_size * c.embed_dim + positions


@pytest.mark.parametrize("path", ALL_FILES)
def test_every_gin_file_parses(path):
    _parse([path])


def test_the_grid_is_complete():
    leaves = {
        os.path.basename(p)[:-4]
        for p in ALL_FILES
        if p.startswith("experiments/") and os.path.dirname(p) == "experiments"
    }
    expected = {f"{s}_{z}{f}" for s in STRATEGIES for z in SIZES for f in FRACTIONS}
    assert leaves == expected


@pytest.mark.parametrize("path", [p for p in ALL_FILES if p.startswith("models/")])
def test_model_configs_construct(path):
    _parse(["runs/pretrain.gin", path], DUMMIES)
    config = gin.get_configurable(ModelConfig)()
    size = os.path.basename(path)[:-4]
    if size in SIZES:
        assert _param_count(config) == pytest.approx(SIZES[size][0], rel=0.03)
        assert config.vocab_size == 50304 and config.max_len == 2048


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("suffix", FRACTIONS)
def test_experiment_binds_its_run(strategy, size, suffix):
    name = f"{strategy}_{size}{suffix}"
    fraction = FRACTIONS[suffix]
    _parse(["runs/pretrain.gin", f"models/{size}.gin"], DUMMIES)
    model_alone = gin.get_configurable(ModelConfig)()
    _parse([f"experiments/{name}.gin"], ["MODEL_DIR = '/tmp/unused'", "CORPUS_FILES = None"])
    # The bases rematerialise everything (see their compile-check notes).
    assert gin.get_configurable(ModelConfig)() == dataclasses.replace(model_alone, remat="full")
    # CORPUS_FILES = None: the task is only named, not registered.
    data = gin.get_configurable(DataConfig)()
    assert data.mixture_or_task_name == registry.task_name("corpus", strategy, fraction=fraction)
    assert data.sequence_length == 2048
    args = gin.get_bindings("train")
    _, steps, batch, mesh, accum = SIZES[size]
    assert args["num_steps"] == round(steps * fraction)
    assert args["batch_size"] == batch and tuple(args["mesh_shape"]) == mesh
    assert args["grad_accum_steps"] == accum


def test_corpus_macros_register_the_task(tmp_path):
    scored = tmp_path / "scored.jsonl"
    scored.write_text(
        "".join(json.dumps({"text": f"document {i}", "toxicity": i / 10}) + "\n" for i in range(10))
    )
    _parse(
        ["experiments/inst_125m_50pct.gin"],
        ["MODEL_DIR = '/tmp/unused'", f"CORPUS_FILES = '{scored}'", "CORPUS = 'mine'"],
    )
    task = gin.get_configurable(DataConfig)().mixture_or_task_name
    assert task == "mine_inst_50pct_v1"
    assert task in seqio.TaskRegistry.names()
    assert copy.deepcopy(gin.query_parameter("scored_corpus_task.files")) == str(scored)
    seqio.TaskRegistry.remove(task)


def test_unbound_corpus_files_is_named(tmp_path):
    _parse(["experiments/inst_1_3b.gin"], ["MODEL_DIR = '/tmp/unused'"])
    with pytest.raises(ValueError, match=r"files \(macro CORPUS_FILES\) not bound"):
        gin.get_configurable(DataConfig)()

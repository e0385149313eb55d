"""Shared set-up for training-core tests: parse a tiny gin config and train."""

import os

import gin

from toxjax import gin_utils
from toxjax import train as train_lib

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def gin_train(model_dir, *extra_bindings, files=("runs/pretrain.gin", "models/test.gin")):
    """Trains the test model on the fortunes byte task with the given extra bindings."""
    gin.clear_config()
    bindings = [
        f"MODEL_DIR = '{model_dir}'",
        "TASK = 'test_fortunes_bytes_v1'",
        "SEQUENCE_LENGTH = 64",
        "BATCH_SIZE = 8",
        "train.module_imports = ['task_fixtures']",
        "train.log_every = 1",
        "WARMUP_STEPS = 2",
        *extra_bindings,
    ]
    gin_utils.parse_gin(list(files), bindings)
    return train_lib.train(progress=False)

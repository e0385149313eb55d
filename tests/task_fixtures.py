"""A small seqio task over real text for the training-core tests (import = register).

Byte vocabulary (no training needed), documents are FreeBSD fortune entries.
"""

import functools

import seqio
import tensorflow as tf

from toxjax import corpus

TASK = "test_fortunes_bytes_v1"


def _source(split: str, shuffle_files: bool, seed=None, n_docs: int = 400):
    del split, shuffle_files, seed
    texts = [t for _, t in corpus.read_fortunes("fortunes")[:n_docs]]
    return tf.data.Dataset.from_tensor_slices({"targets": texts})


if TASK not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(
        TASK,
        source=seqio.FunctionDataSource(functools.partial(_source), splits=["train"]),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features={"targets": seqio.Feature(seqio.ByteVocabulary(), add_eos=True)},
    )

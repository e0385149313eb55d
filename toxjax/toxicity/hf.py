"""`--scorer hf:DIR`: any local transformers sequence-classification checkpoint.

    toxjax score ... --scorer hf:/models/roberta-toxicity [--label toxic] [--backend jax]

DIR is what `model.save_pretrained(DIR)` and `tokenizer.save_pretrained(DIR)` write:
`config.json`, `model.safetensors` or `pytorch_model.bin` (sharded or not) and the
tokenizer's files. Nothing is fetched from the network.

- Output: the label `--label` names (case-insensitive), by default the one label of
  `config.id2label` that names toxicity (`TOXIC_LABELS`: toxic, toxicity, hate,
  offensive...; "non-toxic", "nothate" do not). Its probability is the record's
  `toxicity`; every label's probability is in `scores` under its own name.
- Probabilities: sigmoid per label when `config.problem_type` is
  `"multi_label_classification"`, else softmax over the labels. A one-unit head
  (regression) has no probability to give and is refused.
- Backends: `torch` computes every architecture (AutoModelForSequenceClassification);
  `jax` the families of `toxjax.toxicity.encoders` (BERT, RoBERTa, XLM-R, ALBERT,
  DistilBERT, DeBERTa-v2/v3).
- Identity: `name` is `hf:<dirname>@<12 hex of the directory's SHA-256>:<label>`, so
  the records' `scorer` field tells two classifiers apart; `identity` (recorded by every
  resumable output) adds the full hash, the backend and the activation.

`inspect` checks all of it before any weight is read (config, head, label, tokenizer,
the weight files' key names against the architecture's): a problem is one line
(`ValueError`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re

from toxjax import fileio
from toxjax.toxicity import weights

PREFIX = "hf:"
BACKENDS = ("torch", "jax")
# Label names (lowercased, letters only) that mean "this text is toxic".
TOXIC_LABELS = ("toxic", "toxicity", "hate", "hateful", "hatespeech", "offensive", "abusive")
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spm.model",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
)


def is_hf(name: str) -> bool:
    """Whether a `--scorer` value names a local classifier directory (`hf:DIR`)."""
    return name.startswith(PREFIX)


def directory_of(name: str) -> str:
    """`hf:DIR` -> `DIR`."""
    return name[len(PREFIX) :]


@dataclasses.dataclass(frozen=True)
class HfModel:
    """What `inspect` found in a classifier directory (nothing loaded but names).

    Attributes:
      directory: the directory.
      config: its transformers config.
      labels: `config.id2label` in output order.
      label_index: the output scored as `toxicity`.
      activation: `"sigmoid"` or `"softmax"`.
      files: the weight files.
    """

    directory: str
    config: object
    labels: tuple[str, ...]
    label_index: int
    activation: str
    files: tuple[str, ...]

    @property
    def label(self) -> str:
        return self.labels[self.label_index]

    def attributes(self) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """`(attribute names, output column of each)`: `toxicity` first, then every label."""
        names, columns = ["toxicity"], [self.label_index]
        for i, label in enumerate(self.labels):
            if label not in names:
                names.append(label)
                columns.append(i)
        return tuple(names), tuple(columns)


def _normal(label: str) -> str:
    return re.sub(r"[^a-z]", "", label.lower())


def choose_label(labels: tuple[str, ...], wanted: str | None, where: str) -> int:
    """The output index `--label` names, or the one label that names toxicity.

    Raises:
      ValueError: an unknown `--label`, or no / several labels naming toxicity (one
        line listing the labels).
    """
    shown = ", ".join(repr(x) for x in labels)
    if wanted is not None:
        hits = [i for i, x in enumerate(labels) if x.lower() == wanted.lower()]
        if not hits:
            raise ValueError(f"{where} has no label {wanted!r}; its labels are {shown}")
        return hits[0]
    hits = [i for i, x in enumerate(labels) if _normal(x) in TOXIC_LABELS]
    if len(hits) == 1:
        return hits[0]
    why = "none names toxicity" if not hits else "several name toxicity"
    raise ValueError(f"{where}: choose its output with --label: its labels are {shown} ({why})")


def activation_of(config, where: str) -> str:
    """`"sigmoid"` for a multi-label head, else `"softmax"`; a one-unit head is refused."""
    if config.problem_type == "multi_label_classification":
        return "sigmoid"
    if config.num_labels < 2:
        raise ValueError(
            f"{where} has a single output unit (problem_type {config.problem_type!r}), a "
            "regression score rather than a probability per label; give a classifier with "
            "one output per label"
        )
    return "softmax"


def _expected_keys(config) -> tuple[list[str], str, list[str], list[str]]:
    """The architecture's keys, base-model prefix and ignore patterns (a meta-device model:
    no memory, no weights)."""
    import torch
    import transformers

    from toxjax.toxicity.torch_classifier import quiet_transformers

    with torch.device("meta"), quiet_transformers():
        model = transformers.AutoModelForSequenceClassification.from_config(config)
    buffers = [re.escape(n) + "$" for n, _ in model.named_buffers()]
    unexpected = list(model._keys_to_ignore_on_load_unexpected or []) + buffers
    missing = list(model._keys_to_ignore_on_load_missing or [])
    return list(model.state_dict()), model.base_model_prefix, unexpected, missing


def inspect(directory: str, label: str | None = None, backend: str = "torch") -> HfModel:
    """Checks a classifier directory without reading any weight; one-line `ValueError`s.

    The answer is kept for the process while the directory's files are unchanged (the
    flags are checked, the identity recorded and the scorer built from one answer).

    Args:
      directory: the `hf:` directory.
      label: `--label` (None: the label that names toxicity).
      backend: `"torch"` or `"jax"` (JAX: the architecture must be one it computes).

    Raises:
      ValueError: no such directory or config; a model without a classification head;
        an unknown or ambiguous label; no tokenizer; an architecture the JAX backend
        lacks (naming `--backend torch`); weight files whose keys do not fit.
      FileNotFoundError: no weight files.
    """
    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {BACKENDS}, got {backend!r}")
    stamp = _stamp(directory) if os.path.isdir(directory) else None
    return _inspect(directory, label, backend, stamp)


@functools.lru_cache(maxsize=16)
def _inspect(directory: str, label: str | None, backend: str, stamp: tuple | None) -> HfModel:
    where = f"--scorer hf:{directory}"
    if not os.path.isdir(directory):
        what = "is not a directory" if os.path.exists(directory) else "does not exist"
        raise ValueError(f"{where}: {directory!r} {what}; give a model.save_pretrained directory")
    if not os.path.isfile(os.path.join(directory, "config.json")):
        raise ValueError(
            f"{where}: {directory!r} has no config.json; save the classifier there with "
            "model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR)"
        )
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{where}: unreadable config.json ({' '.join(str(e).split())})") from None
    archs = list(config.architectures or [])
    if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
        raise ValueError(
            f"{where} has no classification head: config.architectures is {archs}; give a "
            "fine-tuned *ForSequenceClassification checkpoint"
        )
    labels = tuple(str(config.id2label[i]) for i in range(config.num_labels))
    activation = activation_of(config, where)
    index = choose_label(labels, label, where)
    if backend == "jax":
        from toxjax.toxicity.encoders import EncoderConfig, UnsupportedArchitecture

        try:
            EncoderConfig.from_hf(config)
        except UnsupportedArchitecture as e:
            raise ValueError(f"{where}: {e}") from None
    if not any(os.path.isfile(os.path.join(directory, f)) for f in TOKENIZER_FILES):
        raise ValueError(
            f"{where} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save it there "
            "with tokenizer.save_pretrained(DIR)"
        )
    files = weights.weight_files(directory)
    try:
        expected, prefix, ignore_unexpected, ignore_missing = _expected_keys(config)
    except ValueError as e:  # a model type with no sequence-classification class
        raise ValueError(f"{where}: {' '.join(str(e).split())}") from None
    got = weights.normalize_keys(weights.file_keys(files), prefix).values()
    weights.check(
        where, f"a {type(config).__name__[: -len('Config')]} classifier", got, expected,
        ignore_unexpected, ignore_missing,
    )  # fmt: skip
    return HfModel(directory, config, labels, index, activation, tuple(files))


@functools.lru_cache(maxsize=16)
def _digest(directory: str, stamp: tuple) -> str:
    return fileio.sha256_dir(directory, recursive=True)


def _stamp(directory: str) -> tuple:
    """Every file below `directory` with its size and mtime: what a cached answer keys on."""
    return (os.path.realpath(directory),) + tuple(
        sorted(
            (os.path.relpath(os.path.join(root, f), directory), st.st_size, st.st_mtime_ns)
            for root, _, files in os.walk(directory)
            for f in files
            for st in [os.stat(os.path.join(root, f))]
        )
    )


def dir_digest(directory: str) -> str:
    """SHA-256 of every file below `directory` (names and contents); computed once per
    process for unchanged files."""
    return _digest(directory, _stamp(directory))


def scorer_name(model: HfModel) -> str:
    """`hf:<dirname>@<12 hex of the directory hash>:<label>`."""
    base = os.path.basename(os.path.normpath(model.directory)) or model.directory
    return f"{PREFIX}{base}@{dir_digest(model.directory)[:12]}:{model.label}"


def identity(directory: str, label: str | None, backend: str) -> dict:
    """What an output scored with `hf:DIR` records about its scorer (see `options`)."""
    model = inspect(directory, label, backend)
    return {
        "--scorer": "hf",
        "hf model": "sha256:" + dir_digest(directory),
        "--label": model.label,
        "--backend": backend,  # the backends agree to 1e-4, not bit for bit
        "activation": model.activation,
    }


def load_tokenizer(directory: str):
    """The directory's tokenizer (fast when it has one), offline."""
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ValueError(
            f"--scorer hf:{directory}: cannot load its tokenizer ({' '.join(str(e).split())})"
        ) from None


def build(directory: str, label: str | None = None, backend: str = "torch", **kw):
    """The scorer of a classifier directory.

    Args:
      directory: the `hf:` directory.
      label: `--label` (None: the label that names toxicity).
      backend: `"torch"` or `"jax"`.
      **kw: backend options: batching (`tokens_per_batch`, `max_rows`, `progress`,
        `chunk_texts`); torch `device`, `num_threads`; jax `mesh`, `precision`, `dtype`,
        `buckets`.

    Returns:
      A `WindowedClassifier` (`TorchClassifier` or `JaxClassifier`).
    """
    from toxjax.toxicity.windows import classifier_max_length

    model = inspect(directory, label, backend)
    tokenizer = load_tokenizer(directory)
    names, columns = model.attributes()
    max_length = classifier_max_length(model.config, tokenizer)
    name = scorer_name(model)
    where = f"--scorer hf:{directory}"
    if backend == "torch":
        import transformers

        from toxjax.toxicity.torch_classifier import TorchClassifier, strict_from_pretrained

        classifier = strict_from_pretrained(
            transformers.AutoModelForSequenceClassification,
            where,
            f"a {type(model.config).__name__[: -len('Config')]} classifier",
            directory,
            local_files_only=True,
        ).float()  # scores in float32 whatever dtype the checkpoint was saved in
        return TorchClassifier(
            name, classifier, tokenizer, names, columns, model.activation, max_length, **kw
        )
    from toxjax.toxicity.jax_classifier import JaxClassifier

    state = weights.load_files(model.files)
    return JaxClassifier(
        name, tokenizer, model.config, state, names, columns, model.activation, max_length,
        source=where, **kw,
    )  # fmt: skip

"""Random-weight toxicity classifiers on disk, for tests and benchmarks (not library code).

- `make_fake_detoxify`: a checkpoint in Detoxify's `.ckpt` format, a `torch.save`d dict
  `{"config": {"arch": {"args": {"model_type", "model_name", "tokenizer_name",
  "num_classes"}}, "dataset": {"args": {"classes": [...]}}}, "state_dict": {...}}`, with
  a randomly initialised backbone of any size, plus a local directory with the backbone
  config and a tokenizer trained on the given texts; `model_type` points at that
  directory, so Detoxify itself (and our loaders) load it with no network access.
- `make_hf_classifier`: a `save_pretrained` directory (config, safetensors weights,
  tokenizer) of a random `*ForSequenceClassification` of any architecture, what
  `--scorer hf:DIR` reads.

Tests import this module directly (tests/ is on their path); benchmarks put tests/ on
`sys.path` first (`benchmarks/score.py`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

ORIGINAL_CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
UNBIASED_CLASSES = [
    "toxicity", "severe_toxicity", "obscene", "identity_attack", "insult", "threat",
    "sexual_explicit", "male", "female", "homosexual_gay_or_lesbian", "christian", "jewish",
    "muslim", "black", "white", "psychiatric_or_mental_illness",
]  # fmt: skip

_ARCHS = {
    # arch: (model class, slow tokenizer class Detoxify names, config class, classes)
    "bert": ("BertForSequenceClassification", "BertTokenizer", "BertConfig", ORIGINAL_CLASSES),
    "roberta": (
        "RobertaForSequenceClassification", "RobertaTokenizer", "RobertaConfig", UNBIASED_CLASSES
    ),
}  # fmt: skip


def _train_tokenizer(arch: str, texts: Sequence[str], vocab_size: int, out_dir: str, max_len: int):
    import transformers
    from tokenizers import BertWordPieceTokenizer, ByteLevelBPETokenizer

    if arch != "roberta":
        tok = BertWordPieceTokenizer(lowercase=True)
        tok.train_from_iterator(list(texts), vocab_size=vocab_size, min_frequency=1)
        tok.save_model(out_dir)
        fast = transformers.BertTokenizerFast(
            vocab_file=os.path.join(out_dir, "vocab.txt"), model_max_length=max_len
        )
    else:
        tok = ByteLevelBPETokenizer()
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok.train_from_iterator(
            list(texts), vocab_size=vocab_size, min_frequency=1, special_tokens=specials
        )
        tok.save_model(out_dir)
        fast = transformers.RobertaTokenizerFast(
            vocab_file=os.path.join(out_dir, "vocab.json"),
            merges_file=os.path.join(out_dir, "merges.txt"),
            model_max_length=max_len,
        )
    fast.save_pretrained(out_dir)
    return fast


def make_fake_detoxify(
    out_dir: str,
    texts: Sequence[str],
    arch: str = "bert",
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 64,
    max_length: int = 64,
    vocab_size: int = 300,
    initializer_range: float = 0.02,
    seed: int = 0,
) -> tuple[str, str]:
    """Writes a random-weight Detoxify checkpoint and its local config/tokenizer dir.

    Args:
      out_dir: directory to write into (created).
      texts: texts to train the tokenizer's vocabulary on.
      arch: `"bert"` (the `original` model's layout, 6 classes) or `"roberta"` (the
        `unbiased` layout, 16 classes).
      hidden_size, num_layers, num_heads, intermediate_size: backbone shape.
      max_length: the classifier's maximum tokens per window (special tokens included).
      vocab_size: tokenizer vocabulary size.
      initializer_range: weight init std; tests use a large one so that the random
        classifier's outputs spread over (0, 1) instead of all sitting near 0.5.
      seed: torch seed for the random weights.

    Returns:
      `(checkpoint_path, config_dir)`.
    """
    import torch
    import transformers

    if arch not in _ARCHS:
        raise ValueError(f"arch must be one of {sorted(_ARCHS)}, got {arch!r}")
    model_name, tokenizer_name, config_name, classes = _ARCHS[arch]
    config_dir = os.path.join(out_dir, f"{arch}-config")
    os.makedirs(config_dir, exist_ok=True)
    tokenizer = _train_tokenizer(arch, texts, vocab_size, config_dir, max_length)
    positions = max_length + (2 if arch == "roberta" else 0)  # RoBERTa offsets positions by 2
    extra = {}
    if arch == "roberta":
        extra = dict(
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            type_vocab_size=1,
            layer_norm_eps=1e-5,
        )
    config = getattr(transformers, config_name)(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=positions,
        num_labels=len(classes),
        initializer_range=initializer_range,
        **extra,
    )
    config.save_pretrained(config_dir)
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    ckpt = os.path.join(out_dir, f"{arch}.ckpt")
    torch.save(
        {
            "config": {
                "arch": {
                    "args": {
                        "model_type": config_dir,
                        "model_name": model_name,
                        "tokenizer_name": tokenizer_name,
                        "num_classes": len(classes),
                    }
                },
                "dataset": {"args": {"classes": list(classes)}},
            },
            "state_dict": model.state_dict(),
        },
        ckpt,
    )
    return ckpt, config_dir


# model_type -> (tokenizer kind, config fields named differently there)
_HF = {
    "bert": ("bert", {}),
    "roberta": ("roberta", {}),
    "xlm-roberta": ("roberta", {}),
    "albert": ("bert", {}),
    "distilbert": (
        "bert",
        {
            "hidden_size": "dim",
            "num_hidden_layers": "n_layers",
            "num_attention_heads": "n_heads",
            "intermediate_size": "hidden_dim",
        },
    ),
    "deberta-v2": ("bert", {}),
    "electra": ("bert", {}),
}
HF_MODEL_TYPES = tuple(_HF)


def make_hf_classifier(
    out_dir: str,
    texts: Sequence[str],
    model_type: str = "bert",
    labels: Sequence[str] = ("non-toxic", "toxic"),
    problem_type: str | None = None,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 64,
    max_length: int = 64,
    vocab_size: int = 300,
    initializer_range: float = 0.3,
    seed: int = 0,
    **config,
) -> str:
    """Writes a random `*ForSequenceClassification` as `save_pretrained` does; returns it.

    Args:
      out_dir: the directory to write (created).
      texts: texts to train the tokenizer on (WordPiece, or byte-level BPE for RoBERTa
        and XLM-R).
      model_type: a transformers model type (`HF_MODEL_TYPES`).
      labels: `config.id2label`, in output order.
      problem_type: `config.problem_type` (None, "single_label_classification",
        "multi_label_classification").
      hidden_size, num_layers, num_heads, intermediate_size: backbone shape.
      max_length: tokens per classifier window (positions; RoBERTa adds its offset).
      vocab_size: tokenizer vocabulary size.
      initializer_range: weight init std; large, so random outputs spread over (0, 1).
      seed: torch seed.
      **config: more config fields (e.g. DeBERTa's `relative_attention`).
    """
    import torch
    import transformers

    kind, rename = _HF[model_type]
    os.makedirs(out_dir, exist_ok=True)
    tokenizer = _train_tokenizer(kind, texts, vocab_size, out_dir, max_length)
    fields = dict(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
    )
    fields = {rename.get(k, k): v for k, v in fields.items()}
    positions = max_length
    if kind == "roberta":
        positions += tokenizer.pad_token_id + 1
        fields.update(type_vocab_size=1, layer_norm_eps=1e-5)
    cfg = transformers.AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        max_position_embeddings=positions,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=initializer_range,
        id2label=dict(enumerate(labels)),
        label2id={x: i for i, x in enumerate(labels)},
        problem_type=problem_type,
        **{**fields, **config},
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForSequenceClassification.from_config(cfg).eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir

"""Random-weight checkpoints in Detoxify's `.ckpt` format, for tests and benchmarks.

A Detoxify checkpoint is a `torch.save`d dict:
`{"config": {"arch": {"args": {"model_type", "model_name", "tokenizer_name",
"num_classes"}}, "dataset": {"args": {"classes": [...]}}}, "state_dict": {...}}`.
`make_fake_detoxify` writes one with a randomly initialised backbone of any size, plus a
local directory with the backbone config and a tokenizer trained on the given texts;
`model_type` points at that directory, so Detoxify itself (and our loaders) load it with
no network access.
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

    if arch == "bert":
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

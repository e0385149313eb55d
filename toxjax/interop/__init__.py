"""Interoperability with Hugging Face transformers: checkpoints both ways.

- `hf`: the table of architecture families (GPT-2, GPT-NeoX / Pythia, Llama) and the exact
  config and tensor conversions.
- `hf_vocab`: token ids and tokenizers (our GPT-2 id shift undone / re-added, SentencePiece,
  control tokens; `HfVocabulary` wraps a transformers tokenizer as a `seqio.Vocabulary`).
- `load`: `from_hf_checkpoint` (to train from), `load_hf_for_inference` (to evaluate).
- `export`: `toxjax export hf` (a run directory -> a transformers checkpoint directory).
- `model_card`: the exported README.md.
"""

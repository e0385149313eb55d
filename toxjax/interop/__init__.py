"""Interoperability with Hugging Face transformers: checkpoints both ways.

- `hf`: the table of architecture families (GPT-2, GPT-NeoX / Pythia, Llama) and the exact
  config and tensor conversions.
- `hf_vocab`: token ids and tokenizers (our GPT-2 id shift undone / re-added, SentencePiece,
  control tokens; `HfVocabulary` wraps a transformers tokenizer as a `seqio.Vocabulary`).
- `load`: `from_hf_checkpoint` (to train from), `load_hf_for_inference` (to evaluate).
- `hf_dir`: `HfDir`, a transformers checkpoint directory opened for `toxjax eval` (the
  twin of `toxjax.run_dir.RunDir`, through `run_dir.open_model_dir`).
- `init_from`: `train.init_from`, continued pretraining from a transformers checkpoint.
- `export`: `toxjax export hf` (a run directory -> a transformers checkpoint directory).
- `model_card`: the exported README.md.
- `harness`, `harness_rtp`: lm-evaluation-harness's `--model toxjax` and the `toxjax_rtp`
  task (`toxjax lm-eval`, the optional `[lm-eval]` extra).
"""

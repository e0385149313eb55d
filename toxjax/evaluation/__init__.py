"""Evaluation of a trained model: the paper's three claims, one module each.

- `toxicity`: the RealToxicityPrompts protocol (EMT / TP on full, toxic, non-toxic).
- `utility`: zero-shot log-likelihood tasks (LAMBADA, PIQA, HellaSwag, WinoGrande,
  BoolQ) and held-out perplexity.
- `bias`: Social Bias Frames prompted classification, AUC per task.
- `report`: `toxjax report`, the paper-style table and plot across runs.
- `lm`: the model as the evaluations see it (sample text, score continuations).
"""

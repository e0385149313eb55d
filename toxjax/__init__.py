"""toxjax: toxicity-controlled LLM pretraining (MEDA / INST) in JAX."""

__version__ = "0.1.0"

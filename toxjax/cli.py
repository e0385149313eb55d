"""The `toxjax` console command: dispatches to each entry point's `main(argv)`.

Entry points are imported lazily so that `toxjax score` does not pay for importing
the training stack and vice versa.
"""

from __future__ import annotations

import importlib
import os
import sys

# subcommand -> (module, one-line help). Each module exposes `main(argv: list[str]) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("toxjax.train", "gin-configured pretraining run"),
    "score": ("toxjax.toxicity.annotate", "score a corpus for toxicity (resumable)"),
    "vocab": ("toxjax.vocab_train", "train a SentencePiece vocabulary"),
    "eval": ("toxjax.eval", "toxicity / utility / bias evaluation of a checkpoint"),
    "export": ("toxjax.interop.export", "export a run as a Hugging Face transformers checkpoint"),
    "lm-eval": (
        "toxjax.interop.harness",
        "lm-evaluation-harness with --model toxjax and the toxjax_rtp task (extra [lm-eval])",
    ),
    "report": ("toxjax.evaluation.report", "gather metrics of several runs into tables and a plot"),
    "demo": ("toxjax.demo", "end-to-end demo on the embedded corpus"),
    "scorers": ("toxjax.toxicity.agreement", "how far scorers agree with a reference score"),
    "compile-check": ("toxjax.compile_check", "AOT-compile a train step for a TPU topology"),
}

# Commands that train on this host: XLA:CPU's per-step scratch memory stays mapped.
TRAINING = ("train", "demo")


def _usage() -> str:
    lines = ["usage: toxjax <command> [args...]", "", "commands:"]
    lines += [f"  {name:<14} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"toxjax: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if name in TRAINING:
        # Before TensorFlow or XLA start a thread (see toxjax/host_memory.py).
        from toxjax import host_memory

        host_memory.keep_freed_memory()
    from toxjax.errors import Refused

    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except Refused as e:  # bad input: one line, exit 2 (a crash exits 1)
        print(e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

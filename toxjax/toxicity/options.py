"""Scorer options: one set of command-line flags for every command that scores text.

`toxjax score` (and its Beam pipeline), `toxjax eval toxicity` and `toxjax demo` all take

    --scorer NAME [--backend torch|jax] [--checkpoint x.ckpt] [--config_dir DIR]
    [--perspective_qps QPS]

through `add_scorer_flags`, check them with `check_scorer_flags` before any expensive
work (loading a model, sampling), and build the scorer with `build_scorer`; every user
error is one line naming the flag. `scorer_identity` is what a resumable output records
about the scorer: every option that changes scores (the checkpoint and tokenizer files
by content), none that only changes speed.
"""

from __future__ import annotations

import argparse
import os

from toxjax import fileio
from toxjax.toxicity import SCORER_NAMES, Scorer, get_scorer

BACKENDS = ("torch", "jax")
_DETOXIFY_FILES = ("checkpoint", "config_dir")


def add_scorer_flags(
    parser: argparse.ArgumentParser, default: str = "profanity-check"
) -> argparse.ArgumentParser:
    """Adds the scorer flags to `parser` (in their own help group); returns `parser`."""
    g = parser.add_argument_group("scorer")
    g.add_argument("--scorer", default=default, choices=SCORER_NAMES, help="toxicity scorer")
    g.add_argument("--backend", default="torch", choices=BACKENDS, help="Detoxify: framework")
    g.add_argument(
        "--checkpoint",
        default=None,
        help="Detoxify: the classifier's local .ckpt (default: the released one, downloaded)",
    )
    g.add_argument(
        "--config_dir",
        default=None,
        help="Detoxify: local backbone config + tokenizer directory (loads offline)",
    )
    g.add_argument(
        "--perspective_qps", type=float, default=1.0, help="Perspective: requests per second"
    )
    return parser


def _is_detoxify(args: argparse.Namespace) -> bool:
    return args.scorer.startswith("detoxify-")


def scorer_kwargs(args: argparse.Namespace) -> dict:
    """Backend options for `get_scorer` from the flags."""
    if _is_detoxify(args):
        return {
            "backend": args.backend,
            "checkpoint": args.checkpoint,
            "config_dir": args.config_dir,
        }
    if args.scorer == "perspective":
        return {"qps": args.perspective_qps}
    return {}


def check_scorer_flags(args: argparse.Namespace, prog: str) -> None:
    """Checks the scorer flags without loading anything; a problem exits with one line.

    Raises:
      SystemExit: `"<prog>: <what is wrong with which flag and what to do>"`.
    """
    try:
        if not _is_detoxify(args):
            for flag in _DETOXIFY_FILES:
                if getattr(args, flag):
                    raise ValueError(
                        f"--{flag} is for the Detoxify scorers, not --scorer {args.scorer}; "
                        "drop it or choose --scorer detoxify-<model>"
                    )
        if _is_detoxify(args):
            from toxjax.toxicity.detoxify_torch import check_local_files

            check_local_files(args.checkpoint, args.config_dir)
        if args.scorer == "perspective":
            from toxjax.toxicity.perspective import KEY_ENV, check_api_key

            if not args.perspective_qps > 0:
                raise ValueError(f"--perspective_qps must be positive, got {args.perspective_qps}")
            check_api_key(os.environ.get(KEY_ENV))
    except (ValueError, OSError) as e:
        raise SystemExit(f"{prog}: {_one_line(e)}") from None


def build_scorer(args: argparse.Namespace, prog: str, **extra) -> Scorer:
    """Checks the flags, then builds the scorer; a failure to build it is one line.

    Args:
      args: parsed flags (see `add_scorer_flags`).
      prog: the command, for messages (`"toxjax score"`).
      **extra: more backend options for `get_scorer` (e.g. `progress=True`).
    """
    check_scorer_flags(args, prog)
    try:
        return get_scorer(args.scorer, **scorer_kwargs(args), **extra)
    except (ValueError, OSError) as e:  # a bad checkpoint, no network for the download...
        raise SystemExit(f"{prog}: cannot load --scorer {args.scorer}: {_one_line(e)}") from None


def scorer_identity(args: argparse.Namespace) -> dict:
    """Every scorer option that changes scores, by content: `{"--scorer": ..., ...}`.

    Files are identified by their SHA-256 (streamed), so a moved checkpoint is the same
    scorer and a retrained one at the same path is not. `--perspective_qps` only changes
    speed and is left out.
    """
    ident = {"--scorer": args.scorer}
    if _is_detoxify(args):
        ident["--backend"] = args.backend  # the backends agree to 1e-4, not bit for bit
        ident["--checkpoint"] = (
            "sha256:" + fileio.sha256_file(args.checkpoint, "--checkpoint")
            if args.checkpoint
            else "released"
        )
        ident["--config_dir"] = (
            "sha256:" + fileio.sha256_dir(args.config_dir) if args.config_dir else "hub"
        )
    return ident


def scorer_argv(args: argparse.Namespace) -> list[str]:
    """The flags again as a command line (to hand them on to `toxjax score`)."""
    argv = ["--scorer", args.scorer, "--backend", args.backend]
    argv += ["--perspective_qps", repr(args.perspective_qps)]
    for flag in _DETOXIFY_FILES:
        if getattr(args, flag):
            argv += [f"--{flag}", getattr(args, flag)]
    return argv


def _one_line(e: BaseException) -> str:
    # Library messages (transformers, urllib) can span lines; a user error is one line.
    return " ".join(str(e).split()) or type(e).__name__

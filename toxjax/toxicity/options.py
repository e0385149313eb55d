"""Scorer options: one set of command-line flags for every command that scores text.

`toxjax score` (and its Beam pipeline), `toxjax eval toxicity`, `toxjax demo` and
`toxjax scorers agree` all take

    --scorer NAME|hf:DIR [--backend torch|jax] [--checkpoint x.ckpt] [--config_dir DIR]
    [--label NAME] [--perspective_qps QPS]

through `add_scorer_flags`, check them with `check_scorer_flags` before any expensive
work (loading a model, sampling), and build the scorer with `build_scorer`; every user
error is one line naming the flag (`toxjax.errors.Refused`: exit code 2). What each
kind of scorer takes is one row of `KINDS`. `scorer_identity` is what a resumable
output records about the scorer: every option that changes scores (checkpoints and
classifier directories by content), none that only changes speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable

from toxjax import fileio
from toxjax.errors import Refused
from toxjax.toxicity import SCORER_NAMES, Scorer, get_scorer, hf

BACKENDS = ("torch", "jax")
# Flags that only some scorers take (default None = not given), and who takes them.
_OWNED = {
    "checkpoint": ("the Detoxify scorers", "detoxify-<model>"),
    "config_dir": ("the Detoxify scorers", "detoxify-<model>"),
    "label": ("--scorer hf:DIR", "hf:DIR"),
}
SCORER_FLAGS = ("--scorer", "--backend", "--checkpoint", "--config_dir", "--label")
SCORER_FLAGS += ("--perspective_qps",)


def _detoxify_check(args):
    from toxjax.toxicity.detoxify_torch import check_local_files

    check_local_files(args.checkpoint, args.config_dir)


def _perspective_check(args):
    from toxjax.toxicity.perspective import KEY_ENV, check_api_key, check_not_retired

    if not args.perspective_qps > 0:
        raise ValueError(f"--perspective_qps must be positive, got {args.perspective_qps}")
    check_not_retired()
    check_api_key(os.environ.get(KEY_ENV))


def _detoxify_identity(args) -> dict:
    return {
        "--backend": args.backend,  # the backends agree to 1e-4, not bit for bit
        "--checkpoint": (
            "sha256:" + fileio.sha256_file(args.checkpoint, "--checkpoint")
            if args.checkpoint
            else "released"
        ),
        "--config_dir": "sha256:" + fileio.sha256_dir(args.config_dir)
        if args.config_dir
        else "hub",
    }


@dataclasses.dataclass(frozen=True)
class ScorerKind:
    """One kind of scorer as the command line sees it.

    Attributes:
      matches: whether a `--scorer` value is of this kind.
      owns: the flags of `_OWNED` it takes.
      check: checks its flags without loading anything (raises ValueError / OSError).
      kwargs: `get_scorer` options from the flags.
      identity: what changes its scores, by content (merged into `scorer_identity`).
    """

    matches: Callable[[str], bool]
    owns: tuple[str, ...] = ()
    check: Callable[[argparse.Namespace], None] = lambda args: None
    kwargs: Callable[[argparse.Namespace], dict] = lambda args: {}
    identity: Callable[[argparse.Namespace], dict] = lambda args: {"--scorer": args.scorer}


KINDS = (
    ScorerKind(matches=lambda s: s == "profanity-check"),
    ScorerKind(
        matches=lambda s: s == "perspective",
        check=_perspective_check,
        kwargs=lambda args: {"qps": args.perspective_qps},
    ),
    ScorerKind(
        matches=lambda s: s.startswith("detoxify-"),
        owns=("checkpoint", "config_dir"),
        check=_detoxify_check,
        kwargs=lambda args: {
            "backend": args.backend,
            "checkpoint": args.checkpoint,
            "config_dir": args.config_dir,
        },
        identity=lambda args: {"--scorer": args.scorer, **_detoxify_identity(args)},
    ),
    ScorerKind(
        matches=hf.is_hf,
        owns=("label",),
        check=lambda args: hf.inspect(hf.directory_of(args.scorer), args.label, args.backend),
        kwargs=lambda args: {"label": args.label, "backend": args.backend},
        identity=lambda args: hf.identity(hf.directory_of(args.scorer), args.label, args.backend),
    ),
)


def kind_of(scorer: str) -> ScorerKind:
    return next(k for k in KINDS if k.matches(scorer))


def scorer_value(value: str) -> str:
    """argparse type of `--scorer`: a name of `SCORER_NAMES` or `hf:DIR`."""
    if value in SCORER_NAMES or (hf.is_hf(value) and hf.directory_of(value)):
        return value
    raise argparse.ArgumentTypeError(
        f"invalid choice: {value!r} (choose from {', '.join(SCORER_NAMES)}, or hf:DIR for a "
        "local transformers classifier directory)"
    )


def add_scorer_flags(
    parser: argparse.ArgumentParser, default: str = "profanity-check"
) -> argparse.ArgumentParser:
    """Adds the scorer flags to `parser` (in their own help group); returns `parser`."""
    g = parser.add_argument_group("scorer")
    g.add_argument(
        "--scorer",
        default=default,
        type=scorer_value,
        metavar="NAME|hf:DIR",
        help=f"toxicity scorer: {', '.join(SCORER_NAMES)}, or hf:DIR, any local transformers "
        "sequence classifier (BERT, RoBERTa, XLM-R, DistilBERT, ALBERT, DeBERTa-v2/v3) saved "
        "with save_pretrained (default: %(default)s)",
    )
    g.add_argument(
        "--backend",
        default="torch",
        choices=BACKENDS,
        help="Detoxify and hf:DIR: framework (jax: BERT, RoBERTa, XLM-R, ALBERT, DistilBERT, "
        "DeBERTa-v2/v3; torch: every architecture)",
    )
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
        "--label",
        default=None,
        help="hf:DIR: the output label scored as toxicity (default: the one label of "
        "config.id2label that names toxicity, e.g. toxic, hate, offensive)",
    )
    g.add_argument(
        "--perspective_qps", type=float, default=1.0, help="Perspective: requests per second"
    )
    return parser


def scorer_kwargs(args: argparse.Namespace) -> dict:
    """Backend options for `get_scorer` from the flags."""
    return kind_of(args.scorer).kwargs(args)


def check_scorer_flags(args: argparse.Namespace, prog: str) -> None:
    """Checks the scorer flags without loading a model; a problem exits with one line.

    Raises:
      Refused: `"<prog>: <what is wrong with which flag and what to do>"` (exit 2).
    """
    kind = kind_of(args.scorer)
    try:
        for flag, (owner, choice) in _OWNED.items():
            if getattr(args, flag, None) is not None and flag not in kind.owns:
                raise ValueError(
                    f"--{flag} is for {owner}, not --scorer {args.scorer}; drop it or choose "
                    f"--scorer {choice}"
                )
        kind.check(args)
    except (ValueError, OSError) as e:
        raise Refused(f"{prog}: {_one_line(e)}") from None


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
        raise Refused(f"{prog}: cannot load --scorer {args.scorer}: {_one_line(e)}") from None


def scorer_identity(args: argparse.Namespace) -> dict:
    """Every scorer option that changes scores, by content: `{"--scorer": ..., ...}`.

    Files are identified by their SHA-256 (streamed), so a moved checkpoint is the same
    scorer and a retrained one at the same path is not. `--perspective_qps` only changes
    speed and is left out.
    """
    return kind_of(args.scorer).identity(args)


def scorer_argv(args: argparse.Namespace) -> list[str]:
    """The flags again as a command line (to hand them on to `toxjax score`)."""
    argv = ["--scorer", args.scorer, "--backend", args.backend]
    argv += ["--perspective_qps", repr(args.perspective_qps)]
    for flag in _OWNED:
        if getattr(args, flag, None) is not None:
            argv += [f"--{flag}", getattr(args, flag)]
    return argv


def _one_line(e: BaseException) -> str:
    # Library messages (transformers, urllib) can span lines; a user error is one line.
    return " ".join(str(e).split()) or type(e).__name__

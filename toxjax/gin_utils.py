"""The gin command line of `toxjax train` and `toxjax compile-check` (as t5x's gin_utils).

- `parse_flags`: `--gin_file`, `--gin.NAME=VALUE`, `--gin_bindings`, `--gin_search_paths`.
- `find_gin_file` / `parse_gin`: files are looked up in the working directory, the
  search paths, then the repository's `gin_configs/`; errors name the file or binding.
- `required_macros` / `usage`: what a config leaves at `%gin.REQUIRED` (the help text).
- `check_macros_used`: a macro that nothing in the configuration uses is a typo
  (`--gin.LEARNING_RAT=1e-5`, or `LERNING_RATE = 1e-3` inside a gin file): an error naming
  where it was set and the close matches.
- `bound_arguments`: a configurable's bound arguments, evaluating only the ones asked
  for (compile-check reads the step's settings while MODEL_DIR may stay unbound).

Library modules stay gin-free; only entry points import this.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import os
import re
from collections.abc import Callable, Sequence

import gin

from toxjax.errors import ConfigError

REPO_CONFIGS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin_configs"
)


class GinConfigError(ConfigError):
    """A gin file, binding or macro that toxjax refuses (one line)."""


def _binding(text: str) -> str:
    """`--gin.MODEL_DIR=/tmp/x` -> `MODEL_DIR = '/tmp/x'` (bare strings get quoted)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"gin binding {text!r} must look like NAME=VALUE")
    value = value.strip()
    try:
        gin.config.parse_value(value)
    except Exception:  # not a gin literal: treat as a string
        value = repr(value)
    return f"{key.strip()} = {value}"


def parse_flags(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """Splits argv into gin files, gin bindings and search paths.

    Raises:
      ValueError: an unknown flag, or a binding that is not NAME=VALUE.
    """
    files, bindings, paths = [], [], [os.getcwd()]
    it = iter(argv)
    for arg in it:
        if arg.startswith("--gin_file"):
            files.append(arg.split("=", 1)[1] if "=" in arg else next(it))
        elif arg.startswith("--gin_search_paths"):
            value = arg.split("=", 1)[1] if "=" in arg else next(it)
            paths.extend(value.split(","))
        elif arg.startswith("--gin."):
            bindings.append(_binding(arg[len("--gin.") :]))
        elif arg.startswith("--gin_bindings"):
            bindings.append(arg.split("=", 1)[1] if "=" in arg else next(it))
        else:
            raise ValueError(
                f"unknown flag {arg!r}; expected --gin_file, --gin.NAME=VALUE, "
                "--gin_bindings or --gin_search_paths"
            )
    return files, bindings, paths


def _roots(search_paths: Sequence[str]) -> list[str]:
    """Where gin files are looked up, in order (see `toxjax train --help`)."""
    return ["", *search_paths, REPO_CONFIGS, os.path.dirname(REPO_CONFIGS)]


def find_gin_file(name: str, search_paths: Sequence[str] = ()) -> str:
    for root in _roots(search_paths):
        if os.path.isfile(os.path.join(root, name)):
            return os.path.join(root, name)
    raise FileNotFoundError(
        f"gin file {name!r} not found (searched the working directory, "
        f"{', '.join(search_paths) or '-'} and {REPO_CONFIGS})"
    )


def parse_gin(files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str] = ()):
    """Parses gin files and bindings; errors name the file or binding at fault."""
    for path in _roots(search_paths)[1:]:
        gin.add_config_file_search_path(path)
    # Resolved here: gin itself would log an error for each miss first.
    resolved = [find_gin_file(f, search_paths) for f in files]
    gin.parse_config_files_and_bindings(
        resolved, list(bindings), finalize_config=False, skip_unknown=False
    )


_ASSIGN = re.compile(r"^\s*([A-Z_][A-Z0-9_]*)\s*=\s*(\S.*)$", re.M)
_INCLUDE = re.compile(r"^\s*include\s+['\"]([^'\"]+)['\"]", re.M)
_MACRO_DEFINITION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")


def _macro_assignments(
    files: Sequence[str], search_paths: Sequence[str] = ()
) -> dict[str, tuple[str, str]]:
    """`{macro: (value text, "file:line")}` of the last assignment of every macro in the
    files and their includes, in gin's order."""
    last: dict[str, tuple[str, str]] = {}
    seen: set[str] = set()

    def visit(name: str) -> None:
        try:
            path = find_gin_file(name, search_paths)
        except FileNotFoundError:
            return
        if path in seen:
            return
        seen.add(path)
        with open(path) as f:
            lines = f.read().splitlines()
        shown = os.path.relpath(path, REPO_CONFIGS) if path.startswith(REPO_CONFIGS) else path
        for lineno, line in enumerate(lines, 1):
            include = _INCLUDE.match(line)
            if include:
                visit(include.group(1))
                continue
            assign = _ASSIGN.match(line)
            if assign:
                last[assign.group(1)] = (assign.group(2), f"{shown}:{lineno}")

    for name in files:
        visit(name)
    return last


def required_macros(files: Sequence[str], search_paths: Sequence[str] = ()) -> dict[str, str]:
    """`{macro: gin file}` for every macro the files (and their includes, in gin's
    order) leave at `%gin.REQUIRED`: what a user must bind."""
    return {
        m: where.rsplit(":", 1)[0]
        for m, (value, where) in _macro_assignments(files, search_paths).items()
        if value.startswith("%gin.REQUIRED")
    }


def check_macros_used(
    bindings: Sequence[str], files: Sequence[str] = (), search_paths: Sequence[str] = ()
) -> None:
    """Raises `GinConfigError` for a macro that is set but that nothing uses.

    gin stores a macro whether or not any binding reads it, so a misspelled macro
    silently leaves the real one at its default. A macro is legitimate when some binding
    (in a file or on the command line) references it with `%NAME`. Checked: the macros
    `bindings` set, and every macro the `files` (and their includes) set. Call after
    `parse_gin`.
    """
    config = gin.config._CONFIG  # gin has no public view of its bindings
    referenced = {
        ref.scoped_selector.split("/")[0]
        for ref in gin.config.iterate_references(config)
        if ref.selector == "gin.macro"
    }
    defined = {scope for scope, selector in config if selector == "gin.macro"}
    candidates = []
    for binding in bindings:
        match = _MACRO_DEFINITION.match(binding)
        if match:
            candidates.append((match.group(1), f"the binding {binding.strip()!r}"))
    for name, (_, where) in _macro_assignments(files, search_paths).items():
        candidates.append((name, where))
    for name, where in candidates:
        if name in referenced:
            continue
        close = difflib.get_close_matches(name, sorted((referenced | defined) - {name}), n=3)
        hint = (
            f"; did you mean {' or '.join(close)}?"
            if close
            else ("; the configuration uses the macros " + ", ".join(sorted(referenced)))
        )
        raise GinConfigError(f"macro {name} (from {where}) is not used by the configuration{hint}")


def bound_arguments(fn: Callable, names: Sequence[str], configurable: str | None = None) -> dict:
    """The arguments gin would pass to `fn` for `names` only (bound value or default).

    The other parameters are not evaluated, so they may stay `%gin.REQUIRED` and unbound.
    """
    defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items()}
    raw = gin.get_bindings(configurable or fn.__name__, resolve_references=False)
    # deepcopy evaluates gin references and macros (gin's own resolution).
    return {k: copy.deepcopy(raw[k]) if k in raw else defaults[k] for k in names}


def message(error: BaseException) -> str:
    """The error's message without the line gin appends ("In call to configurable ...")."""
    return re.sub(r"\n\s*In call to configurable .*", "", str(error))


def usage(files: Sequence[str] = (), search_paths: Sequence[str] = ()) -> str:
    """`toxjax train --help`: flags, the gin search path and the REQUIRED macros."""
    configs = [list(files)] if files else [["runs/pretrain.gin"], ["experiments/inst_125m.gin"]]
    required = []
    for shown in configs:
        required.append(f"REQUIRED macros of {', '.join(shown)}:")
        macros = required_macros(shown, search_paths)
        required += [f"  {m:<14} (from {where})" for m, where in macros.items()]
    lines = [
        "usage: toxjax train --gin_file=FILE [--gin_file=FILE ...] [--gin.NAME=VALUE ...]",
        "       (or: python -m toxjax.train ...)",
        "",
        "Trains a model configured by gin files; resumes from the newest checkpoint in",
        "MODEL_DIR. Example (the paper's setting, tiny for a first try):",
        "  toxjax train --gin_file=experiments/inst_125m.gin --gin.MODEL_DIR=runs/inst \\",
        "      --gin.CORPUS_FILES='scored.jsonl'",
        "",
        "flags:",
        "  --gin_file=FILE           a gin file (repeatable; later files override earlier)",
        "  --gin.NAME=VALUE          a binding or macro, e.g. --gin.NUM_STEPS=100,",
        "                            --gin.ModelConfig.num_layers=2 (bare words are strings)",
        "  --gin_bindings='A = 1'    a raw gin binding line (repeatable)",
        "  --gin_search_paths=D1,D2  more directories to look up gin files in",
        "  --multihost               one process per host (jax.distributed); on Cloud TPU",
        "                            the rest is discovered, elsewhere also pass",
        "  --coordinator_address=HOST:PORT --num_processes=N --process_id=I",
        "  -h, --help                this text (with --gin_file: that config's REQUIRED macros)",
        "",
        f"gin files are looked up in: the working directory, --gin_search_paths, {REPO_CONFIGS}",
        "  (models/*.gin, runs/pretrain.gin, mesh/*.gin, experiments/*.gin)",
        "",
        *required,
        "",
        "exit codes: 0 done, 2 configuration error, 3 non-finite loss or state, 4 checkpoint or",
        "  data settings do not match this run, 5 another trainer holds MODEL_DIR/LOCK,",
        "  6 no intact checkpoint (every step failed its checksums), 1 a crash (a bug or an",
        "  environment failure: the traceback says where)",
    ]
    return "\n".join(lines)

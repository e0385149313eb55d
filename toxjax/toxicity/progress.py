"""The commit marker of `toxjax score`: where a run stopped, and what it was started on.

`<output>.progress.json` records the input position, the committed byte sizes of both
outputs, the counts, and `settings`: everything the outputs depend on (the input's path,
size and SHA-256, the record options and `options.scorer_identity`). `open_progress`
continues a killed run only when the settings are the same, and cuts the outputs back
to what the marker committed; a damaged or foreign marker, a changed input or option,
or outputs without a marker are refused (`ResumeRefused`, one line naming what).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os

from toxjax import fileio
from toxjax.toxicity import options


class ResumeRefused(ValueError):
    """What is on disk is not a run this command may continue; the message says why."""


# The marker's fields that count something (non-negative integers).
_COUNTS = (
    "records",
    "next_line",
    "input_offset",
    "output_bytes",
    "failed_bytes",
    "scored",
    "failed",
)


@dataclasses.dataclass
class Progress:
    """The commit marker: everything needed to continue exactly where a run stopped.

    `settings` is what the outputs depend on (input path, size and content hash, record
    and scorer options); a resume with different settings is refused. `input_mtime` is
    only reported, never compared: a copy of the same bytes is the same input.
    """

    settings: dict
    records: int = 0  # input records consumed
    next_line: int = 1
    input_offset: int = 0
    output_bytes: int = 0
    failed_bytes: int = 0
    scored: int = 0
    failed: int = 0
    done: bool = False
    input_mtime: float | None = None

    def save(self, path: str) -> None:
        """Replaces the marker atomically and durably (fsync'ed file and directory)."""
        fileio.write_json(path, dataclasses.asdict(self), indent=None, sort_keys=False)

    @classmethod
    def load(cls, path: str, output: str) -> Progress:
        """Reads the marker of `output`; a damaged or foreign one raises `ResumeRefused`."""

        def foreign(why: str) -> ResumeRefused:
            return ResumeRefused(
                f"cannot resume {output}: its marker {path} {why}; pass --overwrite to start over"
            )

        with open(path, "rb") as f:
            raw = f.read()
        try:
            value = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise foreign("is not JSON (damaged, or another program's file)") from None
        if not isinstance(value, dict):
            raise foreign(f"holds a {type(value).__name__}, not a JSON object")
        unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise foreign(
                f"has fields {', '.join(unknown)} that a toxjax score marker does not have "
                "(another program's file?)"
            )
        if not isinstance(value.get("settings"), dict):
            raise foreign(f"has settings = {value.get('settings')!r}, not a JSON object")
        for key in _COUNTS:
            v = value.get(key, 0)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise foreign(f"has {key} = {v!r}, not a count")
        if not isinstance(value.get("done", False), bool):
            raise foreign(f"has done = {value['done']!r}, not true or false")
        return cls(**value)


def _settings(args: argparse.Namespace, fmt: str) -> dict:
    """Everything the outputs depend on, keyed by the flag (or thing) a user would change."""
    s = {"--input": args.input, "--format": fmt}
    if fmt == "tfds":
        s.update({"--tfds_split": args.tfds_split, "--tfds_data_dir": args.tfds_data_dir})
    else:  # the bytes, not the name: a rewritten (e.g. shuffled) input is another input
        s["input size"] = os.path.getsize(args.input)
        s["input content"] = "sha256:" + fileio.sha256_file(args.input, "--input")
    s.update({"--text_field": args.text_field, "--max_chars": args.max_chars})
    s["--window_tokens"] = args.window_tokens
    if args.window_tokens:
        vocab = args.window_vocab
        s["--window_vocab"] = (
            "sha256:" + fileio.sha256_file(vocab) if os.path.isfile(vocab) else vocab
        )
    s.update(options.scorer_identity(args))
    return s


def _mtime(args: argparse.Namespace, fmt: str) -> float | None:
    return None if fmt == "tfds" else os.path.getmtime(args.input)


def open_progress(args: argparse.Namespace, fmt: str, paths: dict[str, str]) -> Progress:
    """The marker to continue from: a fresh one, or the committed one of a killed run
    (its outputs cut back to what it committed), or `--overwrite`'s fresh start.

    Args:
      args: the parsed `toxjax score` flags.
      fmt: the input format.
      paths: `{"output", "failed", "progress"}` file paths.

    Raises:
      ResumeRefused: the marker is damaged or foreign, the input or an option changed,
        or an output exists without a marker or was changed outside the run.
    """
    settings = _settings(args, fmt)
    if args.overwrite:
        for key in ("progress", "output", "failed"):  # the marker first: it vouches for the rest
            if os.path.exists(paths[key]):
                os.remove(paths[key])
    if os.path.exists(paths["progress"]):
        prog = Progress.load(paths["progress"], args.output)
        if "--input" not in prog.settings:
            raise ResumeRefused(
                f"cannot resume {args.output}: its marker {paths['progress']} was "
                "written by an older toxjax that did not record which input it read; pass "
                "--overwrite to start over"
            )
        if prog.settings != settings:
            when = ""
            if prog.input_mtime is not None and prog.input_mtime != _mtime(args, fmt):
                stamp = datetime.datetime.fromtimestamp(_mtime(args, fmt)).isoformat(" ", "seconds")
                when = f" (--input was modified at {stamp})"
            changed = "; ".join(fileio.changes(prog.settings, settings))
            raise ResumeRefused(
                f"cannot resume {args.output}: {changed}{when}; rerun with the input and "
                "options it was started with, or pass --overwrite to start over (or choose "
                "another --output)"
            )
        for key, size in (("output", prog.output_bytes), ("failed", prog.failed_bytes)):
            have = os.path.getsize(paths[key]) if os.path.exists(paths[key]) else 0
            if have < size:
                raise ResumeRefused(
                    f"{paths[key]} has {have} bytes but {size} were committed; "
                    "the output was changed outside this run; pass --overwrite to start over"
                )
            if have > size:  # an uncommitted batch or a partial line: drop it
                with open(paths[key], "r+b") as f:
                    f.truncate(size)
        return prog
    for key in ("output", "failed"):
        # An empty leftover holds nothing to lose (a run killed before this marker existed).
        if os.path.exists(paths[key]) and os.path.getsize(paths[key]) > 0:
            raise ResumeRefused(
                f"{paths[key]} exists but has no progress marker "
                f"{paths['progress']}; pass --overwrite or choose another --output"
            )
    return Progress(settings=settings, input_mtime=_mtime(args, fmt))

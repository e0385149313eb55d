"""`toxjax score`: annotate a corpus with toxicity scores, streaming and resumable.

    toxjax score --input corpus.jsonl --output scored.jsonl --scorer detoxify-original

Writes `<output>` (scored records, see docs/architecture.md), `<output>.failed.jsonl`
(`{"file", "line", "error"}` per record that could not be scored) and
`<output>.progress.json`, the commit marker that makes the run resumable.

Crash safety: after each batch both outputs are flushed and fsync'd, then the marker
(input position, output byte sizes, counts) is atomically replaced. A rerun with the same
arguments truncates the outputs to the sizes in the marker (dropping a batch that was
written but not committed, and any partial last line) and continues from the marker's
input position, so after a kill -9 at any moment no committed record is scored again,
duplicated or lost. Every input record is accounted for: in = scored + failed.

What a resume continues must be what was started: the marker records the input's size
and SHA-256 (re-hashed, streamed, on every start) and every option that changes scores
(`options.scorer_identity`); a difference is refused with one line naming it (was/now),
and `--overwrite` starts over. One writer per output: `<output>.lock` (see
`toxjax.locking`) refuses a second `toxjax score` on the same output, naming the first;
the lock of a killed run is taken over with a note.

For corpora too big for one machine, `--beam` runs the same annotation as an Apache Beam
pipeline (`toxjax.toxicity.beam`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
from collections.abc import Iterator

from tqdm.auto import tqdm

from toxjax import fileio
from toxjax.errors import Refused
from toxjax.locking import LockHeldError, WriterLock
from toxjax.toxicity import options
from toxjax.toxicity.base import ScorerUnavailable
from toxjax.toxicity.records import (
    Item,
    add_record_flags,
    check_input,
    detect_format,
    dumps,
    failed_record,
    read_lines,
    read_tfds,
    read_tfrecord,
    score_items,
)

PROG = "toxjax score"
_MAX_PRINTED_FAILURES = 20


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="file, or tfds:<name>[/<config>][:<ver>]")
    p.add_argument("--output", required=True, help="scored jsonl to write")
    add_record_flags(p)
    p.add_argument("--tfds_split", default="train")
    p.add_argument("--tfds_data_dir", default=None)
    p.add_argument("--overwrite", action="store_true", help="start over, deleting outputs")
    p.add_argument("--beam", action="store_true", help="run as an Apache Beam pipeline")
    options.add_scorer_flags(p)
    return p


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


def _changes(was: dict, now: dict) -> str:
    return "; ".join(fileio.changes(was, now))


def _mtime(args: argparse.Namespace, fmt: str) -> float | None:
    return None if fmt == "tfds" else os.path.getmtime(args.input)


def _open_progress(args, fmt: str, paths: dict) -> Progress:
    settings = _settings(args, fmt)
    if args.overwrite:
        for key in ("progress", "output", "failed"):  # the marker first: it vouches for the rest
            if os.path.exists(paths[key]):
                os.remove(paths[key])
    if os.path.exists(paths["progress"]):
        with open(paths["progress"]) as f:
            prog = Progress(**json.load(f))
        if "--input" not in prog.settings:
            raise SystemExit(
                f"{PROG}: cannot resume {args.output}: its marker {paths['progress']} was "
                "written by an older toxjax that did not record which input it read; pass "
                "--overwrite to start over"
            )
        if prog.settings != settings:
            when = ""
            if prog.input_mtime is not None and prog.input_mtime != _mtime(args, fmt):
                stamp = datetime.datetime.fromtimestamp(_mtime(args, fmt)).isoformat(" ", "seconds")
                when = f" (--input was modified at {stamp})"
            raise SystemExit(
                f"{PROG}: cannot resume {args.output}: {_changes(prog.settings, settings)}{when}; "
                "rerun with the input and options it was started with, or pass --overwrite "
                "to start over (or choose another --output)"
            )
        for key, size in (("output", prog.output_bytes), ("failed", prog.failed_bytes)):
            have = os.path.getsize(paths[key]) if os.path.exists(paths[key]) else 0
            if have < size:
                raise SystemExit(
                    f"{PROG}: {paths[key]} has {have} bytes but {size} were committed; "
                    "the output was changed outside this run; pass --overwrite to start over"
                )
            if have > size:  # an uncommitted batch or a partial line: drop it
                with open(paths[key], "r+b") as f:
                    f.truncate(size)
        return prog
    for key in ("output", "failed"):
        # An empty leftover holds nothing to lose (a run killed before this marker existed).
        if os.path.exists(paths[key]) and os.path.getsize(paths[key]) > 0:
            raise SystemExit(
                f"{PROG}: {paths[key]} exists but has no progress marker "
                f"{paths['progress']}; pass --overwrite or choose another --output"
            )
    return Progress(settings=settings, input_mtime=_mtime(args, fmt))


def _items(args, fmt: str, prog: Progress) -> Iterator[Item]:
    if fmt in ("jsonl", "text", "fortune"):
        return read_lines(args.input, fmt, args.text_field, prog.input_offset, prog.next_line)
    if fmt == "tfrecord":
        return read_tfrecord(args.input, args.text_field, skip=prog.records)
    return read_tfds(args.input, args.tfds_split, args.text_field, args.tfds_data_dir, prog.records)


def _batches(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    batch: list[Item] = []
    for it in items:
        batch.append(it)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _lock(output: str) -> WriterLock:
    """Takes `<output>.lock`, or exits with one line naming the writer that holds it."""
    lock = WriterLock(output + ".lock", f"the scored output {output}")
    try:
        lock.acquire()
    except LockHeldError as e:
        raise SystemExit(f"{PROG}: {e}") from None
    except OSError as e:  # a read-only or uncreatable output folder
        folder = os.path.dirname(os.path.abspath(output))
        why = "a file has that name" if isinstance(e, FileExistsError) else e.strerror
        raise SystemExit(
            f"{PROG}: cannot write --output {output!r}: cannot create a file in {folder!r} "
            f"({why}); choose another --output"
        ) from None
    if lock.note:
        print(f"{PROG}: {lock.note}", file=sys.stderr)
    return lock


def run(args: argparse.Namespace, scorer=None) -> Progress:
    """Annotates `args.input` into `args.output`; returns the final counts.

    Everything a user can get wrong (input, scorer flags, output folder, a second writer,
    a changed input) is refused with one line (`SystemExit`) before the scorer loads.
    """
    if problem := check_input(args.input):
        raise SystemExit(f"{PROG}: {problem}")
    if scorer is None:
        options.check_scorer_flags(args, PROG)
    fmt = args.format or detect_format(args.input)
    paths = {
        "output": args.output,
        "failed": args.output + ".failed.jsonl",
        "progress": args.output + ".progress.json",
    }
    lock = _lock(args.output)
    try:
        prog = _open_progress(args, fmt, paths)
        if prog.done:
            print(f"{PROG}: {args.output} is already complete", file=sys.stderr)
            return prog
        if scorer is None:
            scorer = options.build_scorer(args, PROG)
        # Committed before the outputs exist (and only once the scorer loaded, so a scorer
        # that fails to load leaves nothing behind): a kill in the first batch resumes.
        prog.save(paths["progress"])
        try:
            _annotate(args, fmt, paths, prog, scorer)
        except ScorerUnavailable as e:  # e.g. Perspective retired: the batch is not committed
            raise Refused(f"{PROG}: {e}") from None
    finally:
        lock.release()
    return prog


def _annotate(args, fmt: str, paths: dict, prog: Progress, scorer) -> None:
    """Scores the rest of the input batch by batch, committing `prog` after each."""
    windower = None
    if args.window_tokens:
        from toxjax.toxicity.windows import SampleWindower

        windower = SampleWindower(args.window_tokens, args.window_vocab)
    printed = 0
    with (
        open(paths["output"], "ab") as out,
        open(paths["failed"], "ab") as bad,
        tqdm(initial=prog.records, unit="rec", desc="score", mininterval=1.0) as bar,
    ):
        for batch in _batches(_items(args, fmt, prog), args.batch_size):
            if args.max_chars:
                for it in batch:
                    if it.text is not None and len(it.text) > args.max_chars:
                        it.error = (
                            f"text has {len(it.text):,} characters, over --max_chars "
                            f"{args.max_chars:,}; raise --max_chars to score it"
                        )
                        it.text = None
            for ok, rec in score_items(scorer, batch, windower):
                if ok:
                    out.write((dumps(rec) + "\n").encode("utf-8"))
                    prog.scored += 1
                    continue
                fail = failed_record(args.input, rec["line"], rec["error"])
                bad.write((dumps(fail) + "\n").encode("utf-8"))
                prog.failed += 1
                if printed < _MAX_PRINTED_FAILURES:
                    tqdm.write(f"{args.input}:{rec['line']}: {rec['error']}", file=sys.stderr)
                    printed += 1
            for f in (out, bad):
                f.flush()
                os.fsync(f.fileno())
            last = batch[-1]
            prog.records += len(batch)
            prog.next_line = last.next_line
            prog.input_offset = last.end_offset or 0
            prog.output_bytes, prog.failed_bytes = out.tell(), bad.tell()
            prog.save(paths["progress"])
            bar.update(len(batch))
    prog.done = True
    prog.save(paths["progress"])
    if printed == _MAX_PRINTED_FAILURES:
        print(f"(further failures only in {paths['failed']})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--beam" in argv:
        from toxjax.toxicity import beam

        return beam.main([a for a in argv if a != "--beam"])
    args = build_parser().parse_args(argv)
    prog = run(args)
    print(
        f"{PROG}: {prog.records} records in = {prog.scored} scored + {prog.failed} "
        f"failed ({args.output}; failures in {args.output}.failed.jsonl)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

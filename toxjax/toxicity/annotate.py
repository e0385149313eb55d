"""`toxjax score`: annotate a corpus with toxicity scores, streaming and resumable.

    toxjax score --input corpus.jsonl --output scored.jsonl --scorer detoxify-original

Writes `<output>` (scored records, see docs/architecture.md), `<output>.failed.jsonl`
(`{"file", "line", "error"}` per record that could not be scored) and
`<output>.progress.json`, the commit marker that makes the run resumable.

Crash safety: after each batch both outputs are appended (one write each) and fsync'd,
then the marker (`toxjax.toxicity.progress`: input position, output byte sizes, counts)
is atomically replaced. A rerun with the same
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

Nothing a run did not create is deleted or truncated: an `--output` (or one of the files
named after it) that is the input, by real path or inode, is refused, as are inputs that
are not regular files (a FIFO cannot be read twice) and outputs that are directories.
Every way a run stops has its own exit code (`EXIT_*`, listed in `--help`).

For corpora too big for one machine, `--beam` runs the same annotation as an Apache Beam
pipeline (`toxjax.toxicity.beam`).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
from collections.abc import Iterator

from tqdm.auto import tqdm

from toxjax import fileio
from toxjax.locking import LockHeldError, UnsafeLockError, WriterLock
from toxjax.toxicity import options
from toxjax.toxicity.base import ScorerUnavailable
from toxjax.toxicity.progress import Progress, ResumeRefused, open_progress
from toxjax.toxicity.records import (
    TFDS_PREFIX,
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

# Exit codes of `toxjax score`, one per way it stops (1 is left to crashes: a traceback).
EXIT_REFUSED, EXIT_IO, EXIT_LOCKED = 2, 3, 5
EXIT_CODES = (
    "exit codes: 0 done (or already complete), 1 crashed (a bug: please report the "
    "traceback), 2 refused (bad input or settings; nothing written), 3 stopped by an I/O "
    "error while writing (disk full, file too large; rerun to continue), 5 another process "
    "writes this --output (its <output>.lock)"
)


class ScoreExit(SystemExit):
    """`toxjax score` stops with one line and one of the `EXIT_*` codes.

    `run` raises it as a `SystemExit(message)`, so a library caller that lets it through
    (the demo) ends as it always did: the message, exit status 1. `main` prints the
    message once and exits with `exit_code`.
    """

    def __init__(self, message: str, exit_code: int = EXIT_REFUSED):
        super().__init__(message)
        self.message, self.exit_code = message, exit_code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog=EXIT_CODES,
    )
    p.add_argument("--input", required=True, help="file, or tfds:<name>[/<config>][:<ver>]")
    p.add_argument("--output", required=True, help="scored jsonl to write")
    add_record_flags(p)
    p.add_argument("--tfds_split", default="train")
    p.add_argument("--tfds_data_dir", default=None)
    p.add_argument("--overwrite", action="store_true", help="start over, deleting outputs")
    p.add_argument("--beam", action="store_true", help="run as an Apache Beam pipeline")
    options.add_scorer_flags(p)
    return p


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


def _paths(output: str) -> dict[str, str]:
    """Every file a run on `output` writes."""
    return {
        "output": output,
        "failed": output + ".failed.jsonl",
        "progress": output + ".progress.json",
        "lock": output + ".lock",
    }


def _check_paths(input_path: str, paths: dict[str, str]) -> str | None:
    """Why the run must not write `paths` (None when it may): a directory or other
    non-regular file there, or the input itself under another name (a symlink, a hard
    link, `./x`): `--overwrite` would delete it, a resume would truncate it."""
    for key in ("output", "failed", "progress"):
        kind = fileio.file_kind(paths[key])
        if kind == "a directory" and key == "output":
            return (
                f"--output {paths[key]!r} is a directory; give the path of the scored .jsonl "
                "file to write"
            )
        if kind is not None:
            return f"{paths[key]} is {kind}, not a regular file; choose another --output"
    if input_path.startswith(TFDS_PREFIX):
        return None
    if fileio.same_file(input_path, paths["output"]):
        return (
            f"--output {paths['output']!r} is the input file {input_path}: scoring would "
            "overwrite it; choose another --output"
        )
    for key in ("failed", "progress", "lock"):
        if fileio.same_file(input_path, paths[key]):
            return (
                f"--input {input_path!r} is {paths[key]}, where this run would write; choose "
                "another --output"
            )
    return None


def _lock(output: str) -> WriterLock:
    """Takes `<output>.lock`, or exits with one line naming the writer that holds it."""
    lock = WriterLock(_paths(output)["lock"], f"the scored output {output}")
    try:
        lock.acquire()
    except UnsafeLockError as e:  # not a lock file of ours at that path: refused
        raise ScoreExit(f"{PROG}: {e}") from None
    except LockHeldError as e:
        raise ScoreExit(f"{PROG}: {e}", EXIT_LOCKED) from None
    except OSError as e:  # a read-only or uncreatable output folder
        folder = os.path.dirname(os.path.abspath(output))
        why = "a file has that name" if isinstance(e, FileExistsError) else e.strerror
        raise ScoreExit(
            f"{PROG}: cannot write --output {output!r}: cannot create a file in {folder!r} "
            f"({why}); choose another --output"
        ) from None
    if lock.note:
        print(f"{PROG}: {lock.note}", file=sys.stderr)
    return lock


def _refusal(fn, *args):
    """Calls a shared check (`options`) that refuses with `SystemExit(message)`; its
    refusal becomes ours, with our exit code."""
    try:
        return fn(*args)
    except ScoreExit:
        raise
    except SystemExit as e:
        if isinstance(e.code, str):
            raise ScoreExit(e.code) from None
        raise


@contextlib.contextmanager
def _writing(path: str, committed: int):
    """An OSError while writing `path` (disk full, file too large) stops the run with one
    line and `EXIT_IO`; `committed` input records are safe in the outputs."""
    try:
        yield
    except OSError as e:
        name = errno.errorcode.get(e.errno, str(e.errno))
        room = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        todo = "make room (free disk space, raise the file size limit)" if room else "fix that"
        raise ScoreExit(
            f"{PROG}: cannot write {path}: {e.strerror} (errno {name}); the outputs are intact "
            f"up to the last committed batch ({committed} records): {todo} and rerun the "
            "same command to continue",
            EXIT_IO,
        ) from None


def run(args: argparse.Namespace, scorer=None) -> Progress:
    """Annotates `args.input` into `args.output`; returns the final counts.

    Everything a user can get wrong (input, scorer flags, output paths, a second writer,
    a changed input) is refused with one line (`ScoreExit`, a `SystemExit`) before the
    scorer loads and before anything is written.
    """
    if problem := check_input(args.input):
        raise ScoreExit(f"{PROG}: {problem}")
    paths = _paths(args.output)
    if problem := _check_paths(args.input, paths):
        raise ScoreExit(f"{PROG}: {problem}")
    if scorer is None:
        _refusal(options.check_scorer_flags, args, PROG)
    fmt = args.format or detect_format(args.input)
    lock = _lock(args.output)
    try:
        try:
            prog = open_progress(args, fmt, paths)
        except ResumeRefused as e:
            raise ScoreExit(f"{PROG}: {e}") from None
        if prog.done:
            print(f"{PROG}: {args.output} is already complete", file=sys.stderr)
            return prog
        if scorer is None:
            scorer = _refusal(options.build_scorer, args, PROG)
        # Committed before the outputs exist (and only once the scorer loaded, so a scorer
        # that fails to load leaves nothing behind): a kill in the first batch resumes.
        with _writing(paths["progress"], prog.records):
            prog.save(paths["progress"])
        try:
            _annotate(args, fmt, paths, prog, scorer)
        except ScorerUnavailable as e:  # e.g. Perspective retired: the batch is not committed
            raise ScoreExit(f"{PROG}: {e}") from None
    finally:
        lock.release()
    return prog


def _append(fd: int, data: bytes) -> None:
    """Writes all of `data` (unbuffered: an error leaves nothing pending to flush later)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _annotate(args, fmt: str, paths: dict, prog: Progress, scorer) -> None:
    """Scores the rest of the input batch by batch, committing `prog` after each.

    A batch's records are appended with one write per file, both files fsync'ed, then
    the marker replaced: a stop at any point leaves the last commit intact.
    """
    windower = None
    if args.window_tokens:
        from toxjax.toxicity.windows import SampleWindower

        windower = SampleWindower(args.window_tokens, args.window_vocab)
    printed = 0
    with contextlib.ExitStack() as stack:
        fds = {}
        for key in ("output", "failed"):
            with _writing(paths[key], prog.records):
                fds[key] = os.open(paths[key], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            stack.callback(os.close, fds[key])
        bar = stack.enter_context(
            tqdm(initial=prog.records, unit="rec", desc="score", mininterval=1.0)
        )
        for batch in _batches(_items(args, fmt, prog), args.batch_size):
            if args.max_chars:
                for it in batch:
                    if it.text is not None and len(it.text) > args.max_chars:
                        it.error = (
                            f"text has {len(it.text):,} characters, over --max_chars "
                            f"{args.max_chars:,}; raise --max_chars to score it"
                        )
                        it.text = None
            lines: dict[str, list[str]] = {"output": [], "failed": []}
            for ok, rec in score_items(scorer, batch, windower):
                if ok:
                    lines["output"].append(dumps(rec) + "\n")
                    continue
                fail = failed_record(args.input, rec["line"], rec["error"])
                lines["failed"].append(dumps(fail) + "\n")
                if printed < _MAX_PRINTED_FAILURES:
                    tqdm.write(f"{args.input}:{rec['line']}: {rec['error']}", file=sys.stderr)
                    printed += 1
            for key, fd in fds.items():
                with _writing(paths[key], prog.records):
                    _append(fd, "".join(lines[key]).encode("utf-8"))
                    os.fsync(fd)
            last = batch[-1]
            committed = prog.records
            prog.records += len(batch)
            prog.scored += len(lines["output"])
            prog.failed += len(lines["failed"])
            prog.next_line = last.next_line
            prog.input_offset = last.end_offset or 0
            prog.output_bytes = os.fstat(fds["output"]).st_size
            prog.failed_bytes = os.fstat(fds["failed"]).st_size
            with _writing(paths["progress"], committed):
                prog.save(paths["progress"])
            bar.update(len(batch))
    prog.done = True
    with _writing(paths["progress"], prog.records):
        prog.save(paths["progress"])
    if printed == _MAX_PRINTED_FAILURES:
        print(f"(further failures only in {paths['failed']})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """`toxjax score`: 0 when done; a refusal or stop prints its one line and exits with
    its code (`SystemExit`, see `EXIT_CODES`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--beam" in argv:
        from toxjax.toxicity import beam

        return beam.main([a for a in argv if a != "--beam"])
    args = build_parser().parse_args(argv)
    try:
        prog = run(args)
    except ScoreExit as e:
        print(e.message, file=sys.stderr)
        e.code = e.exit_code  # printed: exit with the code alone
        raise
    print(
        f"{PROG}: {prog.records} records in = {prog.scored} scored + {prog.failed} "
        f"failed ({args.output}; failures in {args.output}.failed.jsonl)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

For corpora too big for one machine, `--beam` runs the same annotation as an Apache Beam
pipeline (`toxjax.toxicity.beam`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Iterator

from tqdm.auto import tqdm

from toxjax.toxicity import options
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
    """The commit marker: everything needed to continue exactly where a run stopped."""

    settings: dict
    records: int = 0  # input records consumed
    next_line: int = 1
    input_offset: int = 0
    output_bytes: int = 0
    failed_bytes: int = 0
    scored: int = 0
    failed: int = 0
    done: bool = False

    def save(self, path: str) -> None:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(dataclasses.asdict(self), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)


def _settings(args: argparse.Namespace, fmt: str) -> dict:
    keys = ("input", "scorer", "text_field", "tfds_split", "window_tokens", "window_vocab")
    s = {k: getattr(args, k) for k in keys}
    s.update(format=fmt, max_chars=args.max_chars, checkpoint=args.checkpoint)
    return s


def _open_progress(args, fmt: str, paths: dict) -> Progress:
    settings = _settings(args, fmt)
    if args.overwrite:
        for p in paths.values():
            if os.path.exists(p):
                os.remove(p)
    if os.path.exists(paths["progress"]):
        with open(paths["progress"]) as f:
            prog = Progress(**json.load(f))
        if prog.settings != settings:
            diff = {
                k: (prog.settings.get(k), v)
                for k, v in settings.items()
                if prog.settings.get(k) != v
            }
            raise SystemExit(
                f"toxjax score: {paths['progress']} was written with other settings "
                f"(was, now): {diff}; rerun with the same arguments to resume, or pass "
                "--overwrite / choose another --output"
            )
        for key, size in (("output", prog.output_bytes), ("failed", prog.failed_bytes)):
            have = os.path.getsize(paths[key]) if os.path.exists(paths[key]) else 0
            if have < size:
                raise SystemExit(
                    f"toxjax score: {paths[key]} has {have} bytes but {size} were committed; "
                    "the output was changed outside this run; pass --overwrite to start over"
                )
            if have > size:  # an uncommitted batch or a partial line: drop it
                with open(paths[key], "r+b") as f:
                    f.truncate(size)
        return prog
    if os.path.exists(paths["output"]):
        raise SystemExit(
            f"toxjax score: {paths['output']} exists but has no progress marker "
            f"{paths['progress']}; pass --overwrite or choose another --output"
        )
    return Progress(settings=settings)


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


def run(args: argparse.Namespace, scorer=None) -> Progress:
    """Annotates `args.input` into `args.output`; returns the final counts.

    A bad input or scorer flag is refused with one line (`SystemExit`) before the scorer
    loads.
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
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    prog = _open_progress(args, fmt, paths)
    if prog.done:
        print(f"toxjax score: {args.output} is already complete", file=sys.stderr)
        return prog
    if scorer is None:
        scorer = options.build_scorer(args, PROG)
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
    return prog


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

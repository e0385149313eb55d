"""Corpus annotation as an Apache Beam pipeline (the scale-out path of `toxjax score`).

    python -m toxjax.toxicity.beam --input 'corpus/*.jsonl' --output gs://bucket/scored \
        --scorer detoxify-original --runner DataflowRunner --project ... --region ...

Reads every file matching `--input` (jsonl, one-document-per-line text or `%`-separated
text), numbers its lines, scores batches on the workers (the scorer is built once per
worker in `DoFn.setup`) and writes sharded `<output>-SSSSS-of-NNNNN.jsonl` files with the
same records as the local annotator, plus `<output>.failed-SSSSS-of-NNNNN.jsonl` with
`{"file", "line", "error"}` per failed record. Any Beam runner works with the usual Beam
flags (DirectRunner, Dataflow, Flink, Spark); Beam's retries give the crash safety that
the local annotator gets from its commit marker. Files are read whole by one worker each,
so shard a large corpus into many files (web corpora usually already are).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.options.pipeline_options import PipelineOptions

from toxjax.toxicity import get_scorer, options
from toxjax.toxicity.records import (
    add_record_flags,
    detect_format,
    dumps,
    failed_record,
    read_lines,
    score_items,
)

FAILED = "failed"


class _ReadNumbered(beam.DoFn):
    """A matched file -> its numbered `Item`s (the line numbers failures report)."""

    def __init__(self, fmt: str | None, text_field: str):
        self.fmt = fmt
        self.text_field = text_field

    def process(self, readable: fileio.ReadableFile) -> Iterator[tuple[str, object]]:
        path = readable.metadata.path
        fmt = self.fmt or detect_format(path)
        if fmt not in ("jsonl", "text", "fortune"):
            raise ValueError(f"{path}: the Beam pipeline reads jsonl/text/fortune, not {fmt}")
        for item in read_lines(path, fmt, self.text_field):
            yield path, item


class _Score(beam.DoFn):
    """Scores batches of `(path, Item)`; failed records go to the `failed` output."""

    def __init__(
        self,
        scorer: str,
        scorer_kwargs: dict,
        window_tokens: int,
        window_vocab: str,
        max_chars: int,
    ):
        self.scorer_name = scorer
        self.scorer_kwargs = scorer_kwargs
        self.window_tokens = window_tokens
        self.window_vocab = window_vocab
        self.max_chars = max_chars

    def setup(self):
        # Once per worker: model loading is the expensive part.
        self.scorer = get_scorer(self.scorer_name, **dict(self.scorer_kwargs))
        self.windower = None
        if self.window_tokens:
            from toxjax.toxicity.windows import SampleWindower

            self.windower = SampleWindower(self.window_tokens, self.window_vocab)

    def process(self, batch):
        items = []
        for _, it in batch:
            if self.max_chars and it.text is not None and len(it.text) > self.max_chars:
                it.error = (
                    f"text has {len(it.text):,} characters, over --max_chars {self.max_chars:,}; "
                    "raise --max_chars to score it"
                )
                it.text = None
            items.append(it)
        for (path, _), (ok, rec) in zip(
            batch, score_items(self.scorer, items, self.windower), strict=True
        ):
            if ok:
                yield dumps(rec)
            else:
                yield beam.pvalue.TaggedOutput(
                    FAILED, dumps(failed_record(path, rec["line"], rec["error"]))
                )


def build_pipeline(
    pipeline: beam.Pipeline,
    input_pattern: str,
    output: str,
    scorer: str = "profanity-check",
    scorer_kwargs: dict | None = None,
    fmt: str | None = None,
    text_field: str = "text",
    batch_size: int = 256,
    window_tokens: int = 0,
    window_vocab: str = "gpt2",
    max_chars: int = 0,
) -> None:
    """Adds the annotation transforms to `pipeline` (see the module docstring)."""
    results = (
        pipeline
        | "Match" >> fileio.MatchFiles(input_pattern)
        | "Open" >> fileio.ReadMatches()
        | "Number" >> beam.ParDo(_ReadNumbered(fmt, text_field))
        # Spread one big file's records over all workers before the expensive step.
        | "Spread" >> beam.Reshuffle()
        | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=batch_size)
        | "Score"
        >> beam.ParDo(
            _Score(scorer, scorer_kwargs or {}, window_tokens, window_vocab, max_chars)
        ).with_outputs(FAILED, main="scored")
    )
    results.scored | "WriteScored" >> beam.io.WriteToText(output, file_name_suffix=".jsonl")
    results[FAILED] | "WriteFailed" >> beam.io.WriteToText(
        output + ".failed", file_name_suffix=".jsonl"
    )


def build_parser() -> argparse.ArgumentParser:
    """The flags of `toxjax score --beam`; anything else goes to Beam (`--runner`, ...)."""
    p = argparse.ArgumentParser(prog="toxjax score --beam", description=__doc__.split("\n")[0])
    p.add_argument("--input", required=True, help="file pattern (jsonl / text / fortune)")
    p.add_argument("--output", required=True, help="prefix of the sharded outputs")
    add_record_flags(p)
    options.add_scorer_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args, beam_args = build_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    options.check_scorer_flags(args, "toxjax score --beam")
    with beam.Pipeline(options=PipelineOptions(beam_args)) as p:
        build_pipeline(
            p,
            args.input,
            args.output,
            args.scorer,
            options.scorer_kwargs(args),
            args.format,
            args.text_field,
            args.batch_size,
            args.window_tokens,
            args.window_vocab,
            args.max_chars,
        )
    print(f"toxjax score --beam: wrote {args.output}-*.jsonl and {args.output}.failed-*.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())

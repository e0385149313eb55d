"""The Beam pipeline (DirectRunner) writes the same records as the local annotator."""

import glob
import json

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from toxjax.toxicity import annotate
from toxjax.toxicity.beam import build_pipeline


def _lines(pattern):
    out = []
    for path in sorted(glob.glob(pattern)):
        with open(path, encoding="utf-8") as f:
            out += [json.loads(line) for line in f]
    return out


def test_beam_matches_local(tmp_path):
    src_a, src_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    rows = [
        {"i": i, "text": "" if i % 7 == 3 else f"text {i} damn" * (1 + i % 4)} for i in range(40)
    ]
    src_a.write_text("".join(json.dumps(r) + "\n" for r in rows[:25]) + "{broken\n")
    src_b.write_text("".join(json.dumps(r) + "\n" for r in rows[25:]))
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        build_pipeline(
            p,
            str(tmp_path / "*.jsonl"),
            str(tmp_path / "beam" / "out"),
            batch_size=8,
            window_tokens=4,
        )
    local_scored, local_failed = [], []
    for src in (src_a, src_b):
        out = str(tmp_path / "local" / src.name)
        assert annotate.main(["--input", str(src), "--output", out, "--window_tokens", "4"]) == 0
        local_scored += _lines(out)
        local_failed += _lines(out + ".failed.jsonl")
    beam_scored = _lines(str(tmp_path / "beam" / "out-*-of-*.jsonl"))
    beam_failed = _lines(str(tmp_path / "beam" / "out.failed-*.jsonl"))
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert len(local_scored) + len(local_failed) == 41
    assert sorted(beam_scored, key=key) == sorted(local_scored, key=key)
    assert sorted(beam_failed, key=key) == sorted(local_failed, key=key)
    assert {
        "file": str(src_a),
        "line": 26,
        "error": "malformed JSON: Expecting property name enclosed in double quotes (column 2)",
    } in beam_failed

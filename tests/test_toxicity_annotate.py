"""`toxjax score`: bad input outcomes, accounting, formats, windows, crash-resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from toxjax.toxicity import annotate, get_scorer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def score(*argv):
    return annotate.main([str(a) for a in argv])


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def profanity():
    return get_scorer("profanity-check")


def test_bad_inputs_each_have_an_outcome(tmp_path, capsys):
    big = "hello there friend " * 280_000  # about 5 MB
    lines = [
        json.dumps({"id": 1, "text": "have a lovely day"}).encode(),
        json.dumps({"id": 2, "text": ""}).encode(),
        b'{"id": 3, "text": "unterminated',
        b'{"id": 4, "text": "caf\xe9"}',  # Latin-1 byte: not UTF-8
        json.dumps({"id": 5, "text": big}).encode(),
        json.dumps({"id": 6, "body": "no text field"}).encode(),
        json.dumps({"id": 7, "text": "fuck you"}).encode(),
    ]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.jsonl"
    assert score("--input", src, "--output", out, "--batch_size", 3) == 0
    scored = read_jsonl(out)
    failed = read_jsonl(str(out) + ".failed.jsonl")
    assert [r["id"] for r in scored] == [1, 5, 7]
    assert all(r["scorer"] == "profanity-check" for r in scored)
    assert scored[1]["text"] == big and 0 <= scored[1]["toxicity"] <= 1
    assert scored[2]["toxicity"] > 0.9 > scored[0]["toxicity"]
    assert failed == [
        {"file": str(src), "line": 2, "error": "empty text in field 'text'"},
        {
            "file": str(src),
            "line": 3,
            "error": "malformed JSON: Unterminated string starting at (column 19)",
        },
        {
            "file": str(src),
            "line": 4,
            "error": "not valid UTF-8 (invalid continuation byte "
            "at byte 22 of the line); re-encode the file as UTF-8",
        },
        {
            "file": str(src),
            "line": 6,
            "error": "no field 'text' (fields: ['body', 'id']); pass --text_field",
        },
    ]
    captured = capsys.readouterr()
    assert "7 records in = 3 scored + 4 failed" in captured.out
    assert f"{src}:3: malformed JSON" in captured.err
    # --max_chars turns the 5 MB document into a failure with a message saying what to do.
    out2 = tmp_path / "out2.jsonl"
    assert score("--input", src, "--output", out2, "--max_chars", 1_000_000) == 0
    assert [r["id"] for r in read_jsonl(out2)] == [1, 7]
    assert read_jsonl(str(out2) + ".failed.jsonl")[3] == {
        "file": str(src),
        "line": 5,
        "error": f"text has {len(big):,} characters, over --max_chars 1,000,000; "
        "raise --max_chars to score it",
    }


def test_text_fortune_and_nested_field(tmp_path, profanity):
    txt = tmp_path / "docs.txt"
    txt.write_text("first doc\n\nthird doc\n")
    fortune = tmp_path / "fortunes"
    fortune.write_text("one\nline two\n%\n%\nthree\n%\nfour\n")
    rtp = tmp_path / "rtp.jsonl"
    rtp.write_text(json.dumps({"prompt": {"text": "so I said"}, "challenging": False}) + "\n")
    for path, extra in (
        (txt, []),
        (fortune, ["--format", "fortune"]),
        (rtp, ["--text_field", "prompt.text"]),
    ):
        assert score("--input", path, "--output", str(path) + ".out", *extra) == 0
    assert [r["text"] for r in read_jsonl(str(txt) + ".out")] == ["first doc", "third doc"]
    assert read_jsonl(str(txt) + ".out.failed.jsonl") == [
        {"file": str(txt), "line": 2, "error": "empty text in field 'text'"}
    ]
    assert [r["text"] for r in read_jsonl(str(fortune) + ".out")] == [
        "one\nline two",
        "three",
        "four",
    ]
    assert [r["line"] for r in read_jsonl(str(fortune) + ".out.failed.jsonl")] == [4]
    (rec,) = read_jsonl(str(rtp) + ".out")
    assert rec["prompt"] == {"text": "so I said"}
    assert rec["toxicity"] == profanity.score(["so I said"])[0].toxicity


def test_tfrecord_and_tfds(tmp_path, profanity):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    path = tmp_path / "c.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as w:
        for i, t in enumerate([b"nice words", b"", b"shit happens"]):
            ex = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[t])),
                        "id": tf.train.Feature(int64_list=tf.train.Int64List(value=[i])),
                    }
                )
            )
            w.write(ex.SerializeToString())
    assert score("--input", path, "--output", tmp_path / "t.jsonl") == 0
    recs = read_jsonl(tmp_path / "t.jsonl")
    assert [(r["id"], r["text"]) for r in recs] == [(0, "nice words"), (2, "shit happens")]
    assert [r["line"] for r in read_jsonl(tmp_path / "t.jsonl.failed.jsonl")] == [2]
    with tfds.testing.mock_data(num_examples=4):
        assert score("--input", "tfds:imdb_reviews", "--output", tmp_path / "d.jsonl") == 0
        want = [
            ex["text"].decode()
            for ex in tfds.as_numpy(tfds.load("imdb_reviews", split="train", shuffle_files=False))
        ]
    recs = read_jsonl(tmp_path / "d.jsonl")
    assert [r["text"] for r in recs] == want
    assert [r["toxicity"] for r in recs] == [r.toxicity for r in profanity.score(want)]


def test_windows_are_spans_of_n_tokens(tmp_path, profanity):
    text = "You are all wonderful people. " * 10 + "Damn this shit."
    src = tmp_path / "w.jsonl"
    src.write_text(json.dumps({"text": text}) + "\n")
    out = tmp_path / "w.out.jsonl"
    assert score("--input", src, "--output", out, "--window_tokens", 16) == 0
    (rec,) = read_jsonl(out)
    wins = rec["windows"]
    assert (
        wins[0]["start"] == 0 and wins[-1]["end"] == len(text) and len(wins) == 4
    )  # 64 GPT-2 tokens
    for w in wins:
        assert w["toxicity"] == profanity.score([text[w["start"] : w["end"]]])[0].toxicity
    assert wins[-1]["toxicity"] > 0.5 > wins[0]["toxicity"]
    assert rec["toxicity"] == profanity.score([text])[0].toxicity


class _CrashAfter:
    """A scorer that dies after `n` batches, as a crash mid-run would."""

    def __init__(self, inner, n):
        self.inner, self.n = inner, n
        self.name, self.attributes = inner.name, inner.attributes

    def score(self, texts):
        if self.n == 0:
            raise KeyboardInterrupt("simulated crash")
        self.n -= 1
        return self.inner.score(texts)


def _corpus(path, n):
    with open(path, "w") as f:
        for i in range(n):
            text = "" if i % 17 == 5 else f"document {i} says {'damn ' * (i % 3)}hello"
            f.write(json.dumps({"i": i, "text": text}) + "\n")


def test_resume_truncates_uncommitted_output(tmp_path, profanity):
    src = tmp_path / "in.jsonl"
    _corpus(src, 50)
    ref = tmp_path / "ref.jsonl"
    assert score("--input", src, "--output", ref, "--batch_size", 4) == 0
    out = tmp_path / "out.jsonl"
    args = annotate.build_parser().parse_args(
        ["--input", str(src), "--output", str(out), "--batch_size", "4"]
    )
    with pytest.raises(KeyboardInterrupt):
        annotate.run(args, scorer=_CrashAfter(profanity, 3))
    # A batch written but not committed, ending in a partial line.
    with open(out, "ab") as f:
        f.write(b'{"i": 12, "text": "document 12 says hel')
    with open(str(out) + ".failed.jsonl", "ab") as f:
        f.write(b'{"file": "x", "li')
    prog = annotate.run(args)
    assert (prog.records, prog.scored + prog.failed) == (50, 50)
    assert out.read_bytes() == ref.read_bytes()
    assert (tmp_path / "out.jsonl.failed.jsonl").read_bytes() == (
        tmp_path / "ref.jsonl.failed.jsonl"
    ).read_bytes()
    # Rerunning a finished output changes nothing; other settings are refused.
    assert annotate.run(args).done
    assert out.read_bytes() == ref.read_bytes()
    with pytest.raises(SystemExit, match="--text_field was .text., now .body."):
        score("--input", src, "--output", out, "--text_field", "body")


def test_kill_9_resume_loses_and_duplicates_nothing(tmp_path):
    src = tmp_path / "in.jsonl"
    _corpus(src, 600)
    ref = tmp_path / "ref.jsonl"  # the batch size does not change the output
    assert score("--input", src, "--output", ref, "--batch_size", 100) == 0
    out = tmp_path / "out.jsonl"
    progress = tmp_path / "out.jsonl.progress.json"
    cmd = [
        sys.executable,
        "-m",
        "toxjax.cli",
        "score",
        "--input",
        str(src),
        "--output",
        str(out),
        "--batch_size",
        "2",
    ]
    env = {**os.environ, "PYTHONPATH": REPO}
    kills = 0
    for target in (60, 250):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                if json.loads(progress.read_text())["records"] >= target:
                    break
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                pass
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += not json.loads(progress.read_text())["done"]
    assert kills == 2  # both kills landed mid-run
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    # kill -9 leaves its lock file; the rerun takes it over and says so, once.
    (note,) = [line for line in rerun.stderr.splitlines() if "took over the lock" in line]
    assert f"pid {proc.pid} on host" in note and "no longer running" in note
    assert not (tmp_path / "out.jsonl.lock").exists()
    assert out.read_bytes() == ref.read_bytes()
    assert (tmp_path / "out.jsonl.failed.jsonl").read_bytes() == (
        tmp_path / "ref.jsonl.failed.jsonl"
    ).read_bytes()
    assert len(read_jsonl(out)) + len(read_jsonl(str(out) + ".failed.jsonl")) == 600


def _score_cmd(src, out, *extra):
    return [
        sys.executable,
        "-m",
        "toxjax.cli",
        "score",
        "--input",
        str(src),
        "--output",
        str(out),
    ] + [str(a) for a in extra]


def _wait_for_records(progress, n, proc):
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(progress.read_text())["records"] >= n:
                return
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"{progress} never reached {n} records")


def test_second_writer_is_refused_and_the_first_finishes_exactly(tmp_path):
    """Two real `toxjax score` runs on one output: the second is refused, naming the first."""
    src = tmp_path / "in.jsonl"
    _corpus(src, 300)
    ref = tmp_path / "ref.jsonl"
    assert score("--input", src, "--output", ref, "--batch_size", 100) == 0
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "PYTHONPATH": REPO}
    first = subprocess.Popen(
        _score_cmd(src, out, "--batch_size", 2), env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        _wait_for_records(tmp_path / "out.jsonl.progress.json", 10, first)
        first.send_signal(signal.SIGSTOP)  # hold it mid-run, its lock held
        before = out.read_bytes()
        second = subprocess.run(_score_cmd(src, out), env=env, capture_output=True, text=True)
        assert second.returncode == 5  # annotate.EXIT_LOCKED
        assert second.stderr.splitlines() == [second.stderr.strip()]  # one line
        assert second.stderr.startswith(
            f"toxjax score: the scored output {out} is being written by another process: "
            f"pid {first.pid} on host {os.uname().nodename}"
        )
        assert out.read_bytes() == before  # the refused run wrote nothing
        # --overwrite does not get past the lock either (it would delete the first's work).
        third = subprocess.run(
            _score_cmd(src, out, "--overwrite"), env=env, capture_output=True, text=True
        )
        assert third.returncode == 5 and f"pid {first.pid}" in third.stderr
    finally:
        first.send_signal(signal.SIGCONT)
    stdout, _ = first.communicate(timeout=120)
    assert first.returncode == 0
    assert out.read_bytes() == ref.read_bytes()
    failed = len(read_jsonl(str(ref) + ".failed.jsonl"))
    assert f"300 records in = {300 - failed} scored + {failed} failed" in stdout


def _shuffled(src, dst, seed=0):
    import random

    lines = src.read_bytes().splitlines(keepends=True)
    random.Random(seed).shuffle(lines)
    dst.write_bytes(b"".join(lines))


def test_resume_refuses_a_changed_input_or_scorer_setting(tmp_path, profanity):
    """The issue's scenario: killed, input rewritten shuffled (same size), resumed."""
    src = tmp_path / "in.jsonl"
    _corpus(src, 50)
    out = tmp_path / "out.jsonl"
    argv = ["--input", str(src), "--output", str(out), "--batch_size", "4"]
    with pytest.raises(KeyboardInterrupt):
        annotate.run(annotate.build_parser().parse_args(argv), scorer=_CrashAfter(profanity, 3))
    committed = out.read_bytes()
    stat = os.stat(src)
    _shuffled(src, src)
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime
    assert os.path.getsize(src) == stat.st_size
    with pytest.raises(SystemExit) as e:
        score(*argv)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"toxjax score: cannot resume {out}: input content was sha256:")
    assert msg.endswith("or pass --overwrite to start over (or choose another --output)")
    assert "input size" not in msg  # only what changed is named
    assert out.read_bytes() == committed  # nothing touched
    # A changed option that changes scores is named with its old and new value.
    _shuffled(src, src)  # any content: the settings are compared as a whole
    with pytest.raises(SystemExit, match=r"; --max_chars was 0, now 10 \(--input was modified at "):
        score(*argv, "--max_chars", 10)
    # --overwrite starts over and gives exactly a fresh run's output on the new input.
    assert score(*argv, "--overwrite") == 0
    ref = tmp_path / "ref.jsonl"
    assert score("--input", src, "--output", ref) == 0
    assert out.read_bytes() == ref.read_bytes()
    # A finished output whose input changed is not "already complete".
    with open(src, "a") as f:
        f.write(json.dumps({"i": 99, "text": "one more"}) + "\n")
    with pytest.raises(SystemExit, match=r"input size was \d+, now \d+; input content was"):
        score(*argv)
    # A marker from before inputs were identified cannot vouch for its input.
    marker = tmp_path / "out.jsonl.progress.json"
    old = json.loads(marker.read_text())
    old["settings"] = {"input": str(src), "scorer": "profanity-check"}
    marker.write_text(json.dumps(old))
    with pytest.raises(SystemExit, match="written by an older toxjax .* pass --overwrite"):
        score(*argv)


_DIE_IN_FIRST_BATCH = """
import os, signal, sys
from toxjax.toxicity import annotate

class Die:
    name, attributes = "profanity-check", ("toxicity", "profanity")

    def score(self, texts):
        with open(sys.argv[-1], "ab") as f:  # the --output, as if half written
            f.write(b'{"i": 0, "te')
        os.kill(os.getpid(), signal.SIGKILL)

annotate.run(annotate.build_parser().parse_args(sys.argv[1:]), scorer=Die())
"""


def test_kill_during_the_first_batch_resumes(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    _corpus(src, 30)
    out = tmp_path / "out.jsonl"
    argv = ["--input", str(src), "--output", str(out)]
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.run([sys.executable, "-c", _DIE_IN_FIRST_BATCH, *argv], env=env)
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((tmp_path / "out.jsonl.progress.json").read_text())["records"] == 0
    assert out.read_bytes() == b'{"i": 0, "te'
    assert score(*argv) == 0  # no --overwrite needed
    assert "took over the lock" in capsys.readouterr().err
    ref = tmp_path / "ref.jsonl"
    assert score("--input", src, "--output", ref) == 0
    assert out.read_bytes() == ref.read_bytes()
    assert (tmp_path / "out.jsonl.failed.jsonl").read_bytes() == (
        tmp_path / "ref.jsonl.failed.jsonl"
    ).read_bytes()
    # Empty outputs with no marker (left by an older toxjax killed the same way) hold
    # nothing to lose: a run starts over on them.
    out2 = tmp_path / "out2.jsonl"
    out2.write_bytes(b"")
    (tmp_path / "out2.jsonl.failed.jsonl").write_bytes(b"")
    assert score("--input", src, "--output", out2) == 0
    assert out2.read_bytes() == ref.read_bytes()


def test_bad_paths_are_one_line_before_any_work(tmp_path, capsys):
    from toxjax import cli

    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "hello"}\n')
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    cases = [
        (
            ["--input", tmp_path],
            f"toxjax score: --input {str(tmp_path)!r} is a directory, not a file",
        ),
        (["--input", tmp_path / "nope.jsonl"], "does not exist"),
        (
            ["--output", a_file / "out.jsonl"],
            f"toxjax score: cannot write --output {str(a_file / 'out.jsonl')!r}: cannot create a "
            f"file in {str(a_file)!r} (a file has that name); choose another --output",
        ),
        (
            ["--scorer", "detoxify-original", "--checkpoint", tmp_path / "no.ckpt"],
            f"toxjax score: Detoxify checkpoint --checkpoint {str(tmp_path / 'no.ckpt')!r} does "
            "not exist",
        ),
        (["--scorer", "detoxify-original", "--config_dir", tmp_path], "has no config.json"),
        (["--scorer", "detoxify-original", "--config_dir", a_file / "x"], "x' does not exist"),
        (["--checkpoint", a_file], "--checkpoint is for the Detoxify scorers, not --scorer "),
    ]
    for extra, want in cases:
        argv = {"--input": src, "--output": tmp_path / "o" / "out.jsonl"}
        argv.update(dict(zip(extra[::2], extra[1::2], strict=True)))
        flags = [str(x) for kv in argv.items() for x in kv]
        with pytest.raises(SystemExit) as e:
            cli.main(["score", *flags])
        msg = str(e.value)
        assert e.value.code == 2, (extra, e.value.code)  # refused: exit 2
        assert want in msg and "\n" not in msg, (extra, msg)
    assert not (tmp_path / "o").exists()  # nothing was written for any of them
    # A missing output folder is created.
    assert score("--input", src, "--output", tmp_path / "new" / "dir" / "out.jsonl") == 0
    # Through the console entry point: exit code 2 (refused) and the one line, no traceback.
    r = subprocess.run(
        _score_cmd(tmp_path, tmp_path / "x.jsonl"),
        env={**os.environ, "PYTHONPATH": REPO},
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"toxjax score: --input {str(tmp_path)!r} is a directory, not a file; give one file, "
        f"or score many files with --beam --input '{tmp_path}/*.jsonl'"
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_one_line(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "hello"}\n')
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(SystemExit, match=r"cannot create a file in .*\(Permission denied\)"):
            score("--input", src, "--output", ro / "out.jsonl")
    finally:
        ro.chmod(0o755)

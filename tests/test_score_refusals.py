"""`toxjax score` refuses what would lose data or hang, with one line and its exit code.

Issue 24, items 2, 8, 16 and 17, each run through the CLI the way a user would:
input == output spelled another way, a FIFO or process substitution as input, an output
that is a directory, a corrupt or foreign progress marker, disk full / file too large
while scoring, numeric flags out of range, and the documented exit codes
(0 done, 2 refused, 3 stopped by an I/O error, 5 another writer holds the lock).
"""

import errno
import json
import os
import subprocess
import sys

import pytest

from toxjax import cli
from toxjax.locking import WriterLock
from toxjax.toxicity import annotate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": REPO}


def _corpus(path, n=6):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"i": i, "text": f"document {i} says {'damn ' * (i % 3)}hi"}) + "\n")
    return path


def _score(*argv) -> int:
    """`toxjax score ARGV` in this process: its exit code (argparse and refusals raise)."""
    try:
        return cli.main(["score", *[str(a) for a in argv]])
    except SystemExit as e:
        return e.code


def _cli(*argv, timeout=120, **kw):
    """`toxjax score ARGV` in a subprocess, as a user runs it."""
    cmd = [sys.executable, "-m", "toxjax.cli", "score", *[str(a) for a in argv]]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout, **kw)


def _our_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("toxjax score:")]


def _files(folder) -> list[str]:
    return sorted(os.listdir(folder))


# ----------------------------------------------------------------------------- item 2
def test_input_equal_to_output_is_refused_by_real_path(tmp_path, monkeypatch, capsys):
    """`--output ./same.jsonl`, an absolute path, a symlink or a hard link to the input:
    refused before anything is written, `--overwrite` included; the input is intact."""
    monkeypatch.chdir(tmp_path)
    src = _corpus(tmp_path / "same.jsonl")
    before = src.read_bytes()
    os.symlink("same.jsonl", tmp_path / "link.jsonl")
    os.link(src, tmp_path / "hard.jsonl")
    names = ["hard.jsonl", "link.jsonl", "same.jsonl"]
    for out in ["./same.jsonl", str(src), "link.jsonl", "hard.jsonl", "sub/../same.jsonl"]:
        for extra in ([], ["--overwrite"]):
            assert _score("--input", "same.jsonl", "--output", out, *extra) == 2, (out, extra)
            err = capsys.readouterr().err
            assert err == (
                f"toxjax score: --output {out!r} is the input file same.jsonl: scoring would "
                "overwrite it; choose another --output\n"
            ), err
            assert src.read_bytes() == before
            assert _files(tmp_path) == names  # no lock, marker or output left behind
    # The other outputs of a run are named after --output: none may be the input either.
    for suffix in (".failed.jsonl", ".progress.json", ".lock"):
        victim = _corpus(tmp_path / f"out.jsonl{suffix}")
        kept = victim.read_bytes()
        assert _score("--input", victim, "--output", tmp_path / "out.jsonl", "--overwrite") == 2
        err = capsys.readouterr().err
        assert err == (
            f"toxjax score: --input {str(victim)!r} is {str(tmp_path / 'out.jsonl')}{suffix}, "
            "where this run would write; choose another --output\n"
        )
        assert victim.read_bytes() == kept
        os.remove(victim)
    assert _files(tmp_path) == names
    # Through the console, as the trial ran it: exit 2, one line, input intact.
    r = _cli("--input", "same.jsonl", "--output", "./same.jsonl", "--overwrite", cwd=tmp_path)
    assert (r.returncode, r.stderr.count("\n"), src.read_bytes()) == (2, 1, before), r.stderr


# ----------------------------------------------------------------------------- item 8
def test_a_fifo_or_process_substitution_input_is_refused_not_hung(tmp_path):
    """A FIFO cannot be read twice (hashed, then scored) nor seeked on resume: refused at
    once with one line saying what to do, instead of waiting forever for a writer."""
    fifo = tmp_path / "corpus.jsonl"
    os.mkfifo(fifo)
    out = tmp_path / "out.jsonl"
    r = _cli("--input", fifo, "--output", out, timeout=60)  # hung forever before the fix
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [
        f"toxjax score: --input {str(fifo)!r} is a pipe, not a regular file: "
        "toxjax score reads its input twice (to identify it, then to score it) and seeks in "
        "it to resume; write it to a file first (e.g. `... > corpus.jsonl`)"
    ]
    assert _files(tmp_path) == ["corpus.jsonl"]
    # Process substitution hands over /dev/fd/N, a pipe: the same line, no traceback.
    src = _corpus(tmp_path / "in.jsonl")
    score = f"{sys.executable} -m toxjax.cli score --output {out} --input"
    r = subprocess.run(
        ["bash", "-c", f"{score} <(cat {src})"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.splitlines()
    assert line.startswith("toxjax score: --input '/dev/fd/") and "is a pipe, not a regular" in line
    assert _files(tmp_path) == ["corpus.jsonl", "in.jsonl"]


# ----------------------------------------------------------------------------- item 16
def test_an_output_directory_is_refused_with_or_without_overwrite(tmp_path, capsys):
    src = _corpus(tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    out.mkdir()
    (out / "keep").write_text("mine")
    for extra in ([], ["--overwrite"]):
        assert _score("--input", src, "--output", out, *extra) == 2
        assert capsys.readouterr().err == (
            f"toxjax score: --output {str(out)!r} is a directory; give the path of the "
            "scored .jsonl file to write\n"
        )
    assert (out / "keep").read_text() == "mine" and _files(tmp_path) == ["in.jsonl", "out.jsonl"]


@pytest.mark.parametrize(
    "marker,why",
    [
        (b"{not json", "is not JSON"),
        (b"\xff\xfe", "is not JSON"),
        (b"[1, 2, 3]", "holds a list, not a JSON object"),
        (b'{"model_config": {}, "step": 3}', "has fields model_config, step that a toxjax score"),
        (b'{"settings": {"--input": "x"}, "records": "many"}', "has records = 'many'"),
        (b'{"settings": [], "records": 0}', "has settings = []"),
    ],
)
def test_a_corrupt_or_foreign_progress_marker_is_one_line(tmp_path, capsys, marker, why):
    src = _corpus(tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    progress = tmp_path / "out.jsonl.progress.json"
    progress.write_bytes(marker)
    assert _score("--input", src, "--output", out) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"toxjax score: cannot resume {out}: its marker {progress} ")
    assert (
        why in err and err.endswith("; pass --overwrite to start over\n") and err.count("\n") == 1
    )
    assert progress.read_bytes() == marker and not out.exists()
    assert _score("--input", src, "--output", out, "--overwrite") == 0
    assert len(out.read_text().splitlines()) == 6


# `toxjax score` in a process that may not write files over 4 KiB (RLIMIT_FSIZE, set in
# the child itself: a preexec_fn would fork this multithreaded process).
_SCORE_UNDER_4K = (
    "import resource, runpy, sys; "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)); "
    "sys.argv = ['toxjax', *sys.argv[1:]]; "
    "runpy.run_module('toxjax.cli', run_name='__main__')"
)


def test_file_too_large_stops_with_one_line_and_the_rerun_resumes(tmp_path):
    """A real EFBIG: the output grows past RLIMIT_FSIZE mid-run. One line, exit 3, the
    committed batches kept; the rerun without the limit finishes byte-identical."""
    src = _corpus(tmp_path / "in.jsonl", 200)
    ref = tmp_path / "ref.jsonl"
    assert _score("--input", src, "--output", ref) == 0
    out = tmp_path / "out.jsonl"
    argv = ["score", "--input", str(src), "--output", str(out), "--batch_size", "10"]
    cmd = [sys.executable, "-c", _SCORE_UNDER_4K, *argv]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    (line,) = _our_lines(r.stderr)
    marker = json.loads((tmp_path / "out.jsonl.progress.json").read_text())
    assert 0 < marker["records"] < 200 and not marker["done"]
    assert line == (
        f"toxjax score: cannot write {out}: File too large (errno EFBIG); the outputs are "
        f"intact up to the last committed batch ({marker['records']} records): make room "
        "(free disk space, raise the file size limit) and rerun the same command to continue"
    )
    assert not (tmp_path / "out.jsonl.lock").exists()  # released on the way out
    r = _cli("--input", src, "--output", out, "--batch_size", 10)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == ref.read_bytes()


def test_disk_full_stops_with_one_line_and_the_rerun_resumes(tmp_path, monkeypatch, capsys):
    """ENOSPC when the third batch is made durable (simulated at fsync of the output)."""
    src = _corpus(tmp_path / "in.jsonl", 30)
    ref = tmp_path / "ref.jsonl"
    assert _score("--input", src, "--output", ref) == 0
    out = tmp_path / "out.jsonl"
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}") == str(out):
            calls.append(fd)
            if len(calls) == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    argv = ["--input", src, "--output", out, "--batch_size", 4]
    capsys.readouterr()
    assert _score(*argv) == 3
    err = capsys.readouterr().err
    assert _our_lines(err) == [
        f"toxjax score: cannot write {out}: No space left on device (errno ENOSPC); the "
        "outputs are intact up to the last committed batch (8 records): make room (free "
        "disk space, raise the file size limit) and rerun the same command to continue"
    ]
    assert "Traceback" not in err
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert _score(*argv) == 0
    assert out.read_bytes() == ref.read_bytes()


# ----------------------------------------------------------------------------- item 17
@pytest.mark.parametrize(
    "flag,value,want",
    [
        ("--batch_size", "0", "must be a positive integer, got '0'"),
        ("--batch_size", "-4", "must be a positive integer, got '-4'"),
        ("--batch_size", "2.5", "must be a positive integer, got '2.5'"),
        ("--max_chars", "-1", "must be 0 or a positive integer, got '-1'"),
        ("--window_tokens", "-8", "must be 0 or a positive integer, got '-8'"),
    ],
)
def test_numeric_flags_out_of_range_are_one_line(tmp_path, capsys, flag, value, want):
    src = _corpus(tmp_path / "in.jsonl")
    assert _score("--input", src, "--output", tmp_path / "out.jsonl", flag, value) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"toxjax score: error: argument {flag}: {want}"
    assert _files(tmp_path) == ["in.jsonl"]


# ----------------------------------------------------------------------------- exit codes
def test_exit_codes_are_documented_and_tell_refused_from_locked(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        annotate.main(["--help"])
    assert e.value.code == 0
    usage = capsys.readouterr().out
    assert (
        "exit codes: 0 done (or already complete), 1 crashed (a bug: please report the "
        "traceback), 2 refused (bad input or settings; nothing written), 3 stopped by an I/O "
        "error while writing (disk full, file too large; rerun to continue), 5 another "
        "process writes this --output (its <output>.lock)" in " ".join(usage.split())
    )
    src = _corpus(tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    assert _score("--input", tmp_path / "missing.jsonl", "--output", out) == 2
    with WriterLock(str(out) + ".lock", "the scored output"):
        assert _score("--input", src, "--output", out) == 5
        assert _score("--input", src, "--output", out, "--overwrite") == 5
    err = capsys.readouterr().err
    assert err.count(f"is being written by another process: pid {os.getpid()}") == 2
    assert _files(tmp_path) == ["in.jsonl"]
    assert _score("--input", src, "--output", out) == 0

"""Perspective client against a local scripted HTTP server (429s, 500s, slow, good)."""

import collections
import datetime
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import pytest

from toxjax import cli
from toxjax.toxicity import annotate, get_scorer, perspective
from toxjax.toxicity.perspective import MAX_BYTES, PerspectiveUnavailable, truncate_utf8

KEY = "test-key/+x"  # '/' and '+' change under URL encoding: both forms must be redacted

# text -> replies in order (the last repeats): an int status, "slow", "ok", or a scripted
# malformed 200 reply (a key of BAD).
SCRIPT = {
    "good": ["ok"],
    "rate limited": [429, 429, "ok"],
    "server error": [500, 503, "ok"],
    "slow": ["slow", "ok"],
    "always down": [500],
    "bad request": [400],
    "bad json then ok": ["bad json", "ok"],
    "truncated then ok": ["truncated", "ok"],
    "missing fields": ["missing fields"],
    "html": ["html"],
    "json list": ["json list"],
    "nan score": ["nan score"],
    "echo 400": ["echo 400"],
    "echo 503": ["echo 503"],
    "echo cut 400": ["echo cut 400"],
    "echo cut 200": ["echo cut 200", "ok"],
    "gone 404": [404],
    "gone 410": [410],
    "shut down 400": ["shut down 400"],
    "deprecated 403": ["deprecated 403"],
    "redirect 302": ["redirect 302"],
    "redirect 307": ["redirect 307"],
}
LONG_KEY = "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"  # the shape of a Google API key
GONE = {
    "shut down 400": (400, "Perspective API has been shut down. See the announcement."),
    "deprecated 403": (403, "This API is deprecated and no longer available."),
}
BAD = {
    "bad json": b'{"attributeScores": {"TOXICITY": ',
    "missing fields": b'{"attributeScores": {"TOXICITY": {"spanScores": []}}}',
    "html": b"<html><body>Service Unavailable</body></html>",
    "json list": b"[0.5]",
    "nan score": b'{"attributeScores": {"TOXICITY": {"summaryScore": {"value": NaN}}}}',
}


class _Handler(BaseHTTPRequestHandler):
    calls = collections.Counter()
    received: list = []
    requests: list = []  # (path, X-Goog-Api-Key header) of every request

    def log_message(self, *args):
        pass

    def _send(self, status, data, length=None):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data) if length is None else length))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["comment"]["text"]
        _Handler.requests.append((self.path, self.headers.get("X-Goog-Api-Key")))
        _Handler.received.append(text)
        replies = SCRIPT.get(text, ["ok"])
        reply = replies[min(_Handler.calls[text], len(replies) - 1)]
        _Handler.calls[text] += 1
        if reply == "slow":
            time.sleep(0.5)  # longer than the client's timeout
            reply = "ok"
        if reply in BAD:
            return self._send(200, BAD[reply])
        if reply == "truncated":  # promises 500 bytes, sends 20, hangs up
            return self._send(200, b'{"attributeScores": ', length=500)
        if reply in GONE:
            status, message = GONE[reply]
            return self._send(status, json.dumps({"error": {"message": message}}).encode())
        if reply.startswith("redirect") if isinstance(reply, str) else False:
            self.send_response(int(reply.split()[1]))
            self.send_header("Location", _Other.url)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if isinstance(reply, str) and reply.startswith("echo cut"):
            # The key placed where the client's 300 / 200-character excerpt cuts it.
            status = int(reply.split()[2])
            keep = 300 if status == 400 else 200
            body = json.dumps({"error": "x" * (keep - 11 - 20) + self.headers["X-Goog-Api-Key"]})
            return self._send(status, body.encode())
        if isinstance(reply, str) and reply.startswith("echo"):
            # A server that quotes the request back: key (raw and URL-encoded) and path.
            echo = f"API key not valid: {self.headers['X-Goog-Api-Key']} / {quote(KEY, safe='')}"
            return self._send(int(reply.split()[1]), json.dumps({"error": echo}).encode())
        if reply != "ok":
            return self._send(reply, b'{"error": "scripted"}')
        score = 0.25 if text == "good" else 0.75
        out = {
            "attributeScores": {
                "TOXICITY": {"summaryScore": {"value": score, "type": "PROBABILITY"}},
                "INSULT": {"summaryScore": {"value": score / 2, "type": "PROBABILITY"}},
            }
        }
        self._send(200, json.dumps(out).encode())


class _Other(BaseHTTPRequestHandler):
    """Another host (`localhost` vs `127.0.0.1`) that a redirect points to."""

    url = ""
    requests: list = []

    def log_message(self, *args):
        pass

    def _record(self):
        _Other.requests.append((self.command, self.headers.get("X-Goog-Api-Key")))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = _record


@pytest.fixture(autouse=True)
def before_retirement(monkeypatch):
    """These tests run as on 2026-12-01 whatever today is (the API retires 2027-01-01)."""
    monkeypatch.setattr(perspective, "today", lambda: datetime.date(2026, 12, 1))


@pytest.fixture()
def other_host():
    _Other.requests.clear()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Other)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    _Other.url = f"http://localhost:{srv.server_address[1]}/elsewhere"
    yield _Other
    srv.shutdown()
    srv.server_close()


@pytest.fixture()
def server():
    _Handler.calls.clear()
    _Handler.received.clear()
    _Handler.requests.clear()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/analyze"
    srv.shutdown()
    srv.server_close()


def make(url, **kw):
    opts = dict(
        url=url,
        attributes=("TOXICITY", "INSULT"),
        qps=1000,
        max_retries=3,
        backoff=0.001,
        max_backoff=0.004,
        timeout=0.2,
    )
    return get_scorer("perspective", **{**opts, **kw})


def test_retries_and_failures(server, monkeypatch):
    monkeypatch.setenv("PERSPECTIVE_API_KEY", KEY)
    texts = ["good", "rate limited", "server error", "slow", "always down", "bad request", ""]
    res = make(server).score(texts)
    assert [r.toxicity for r in res] == [0.25, 0.75, 0.75, 0.75, None, None, None]
    assert res[0].scores == {"toxicity": 0.25, "insult": 0.125}
    assert res[4].error.startswith("gave up after 4 attempts: HTTP 500")
    assert res[5].error.startswith("HTTP 400")
    assert "empty" in res[6].error
    assert _Handler.calls == {
        "good": 1,
        "rate limited": 3,
        "server error": 3,
        "slow": 2,
        "always down": 4,
        "bad request": 1,
    }
    # The key travels in the header only, never in the URL.
    assert set(_Handler.requests) == {("/analyze", KEY)}


def test_malformed_replies_are_retried_then_fail_one_text(server, monkeypatch):
    monkeypatch.setenv("PERSPECTIVE_API_KEY", KEY)
    texts = ["bad json then ok", "truncated then ok", "missing fields", "html", "json list"]
    texts += ["nan score", "good"]
    res = make(server).score(texts)
    assert [r.toxicity for r in res] == [0.75, 0.75, None, None, None, None, 0.25]
    for r, shown in zip(
        res[2:6], ("spanScores", "Service Unavailable", "[0.5]", "NaN"), strict=True
    ):
        assert r.error.startswith("gave up after 4 attempts: malformed reply: ")
        assert shown in r.error
    assert _Handler.calls["bad json then ok"] == _Handler.calls["truncated then ok"] == 2
    assert _Handler.calls["html"] == 4  # retried, like a 5xx


def test_key_is_redacted_from_server_errors(server, monkeypatch, tmp_path, capsys):
    """A server that echoes the key: neither failure records nor stderr repeat it."""
    monkeypatch.setenv("PERSPECTIVE_API_KEY", KEY)
    src = tmp_path / "in.jsonl"
    src.write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in ["echo 400", "good", "echo 503"])
    )
    out = tmp_path / "out.jsonl"
    args = annotate.build_parser().parse_args(
        ["--input", str(src), "--output", str(out), "--scorer", "perspective"]
    )
    prog = annotate.run(args, scorer=make(server))  # the run survives every reply
    assert (prog.records, prog.scored, prog.failed) == (3, 1, 2)
    failed = [json.loads(line) for line in open(str(out) + ".failed.jsonl")]
    assert [f["line"] for f in failed] == [1, 3]
    assert failed[0]["error"].startswith("perspective failed on document: HTTP 400: ")
    assert failed[1]["error"].startswith("perspective failed on document: gave up after 4")
    leaked = out.read_text() + open(str(out) + ".failed.jsonl").read() + capsys.readouterr().err
    assert "[API key] / [API key]" in failed[0]["error"]
    assert KEY not in leaked and quote(KEY, safe="") not in leaked


@pytest.mark.parametrize("bad", ["test key", "test-key\n", "tést"])
def test_a_malformed_key_is_refused_without_printing_it(bad, monkeypatch, tmp_path):
    monkeypatch.setenv("PERSPECTIVE_API_KEY", bad)
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "hi"}\n')
    with pytest.raises(SystemExit) as e:
        annotate.main(
            ["--input", str(src), "--output", str(tmp_path / "o"), "--scorer", "perspective"]
        )
    msg = str(e.value)
    assert msg.startswith("toxjax score: the Perspective API key ($PERSPECTIVE_API_KEY) has ")
    assert bad.strip() not in msg and "\n" not in msg
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_truncates_to_byte_limit(server, monkeypatch):
    monkeypatch.setenv("PERSPECTIVE_API_KEY", KEY)
    text = "é" * 15000  # 30,000 bytes; 2-byte characters straddle the limit
    (res,) = make(server).score([text])
    assert res.toxicity == 0.75
    (sent,) = _Handler.received
    assert sent == "é" * (MAX_BYTES // 2)
    assert truncate_utf8("ab€", 4) == "ab"  # a cut 3-byte character is dropped whole


def test_needs_a_key(monkeypatch):
    monkeypatch.delenv("PERSPECTIVE_API_KEY", raising=False)
    with pytest.raises(ValueError, match="PERSPECTIVE_API_KEY"):
        get_scorer("perspective")


def test_retirement_date_stops_before_any_request(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PERSPECTIVE_API_KEY", KEY)
    assert perspective.RETIREMENT_DATE == datetime.date(2027, 1, 1)
    perspective.check_not_retired(lambda: datetime.date(2026, 12, 31))  # the last day works
    monkeypatch.setattr(perspective, "today", lambda: datetime.date(2027, 1, 1))
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "hi"}\n')
    out = tmp_path / "out.jsonl"
    with pytest.raises(SystemExit) as e:  # refused: printed once, exit code 2
        cli.main(["score", "--input", str(src), "--output", str(out), "--scorer", "perspective"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        "toxjax score: the Perspective API was retired after 2026-12-31 (today is 2027-01-01); "
        f"{perspective.LOCAL_ALTERNATIVES}\n"
    )
    assert "--scorer detoxify-original" in err and "--scorer hf:DIR" in err
    assert not out.exists()
    with pytest.raises(PerspectiveUnavailable, match="retired after 2026-12-31"):
        get_scorer("perspective", clock=lambda: datetime.date(2027, 3, 1))


@pytest.mark.parametrize("answer", ["gone 404", "gone 410", "shut down 400", "deprecated 403"])
def test_a_retired_api_answer_stops_the_run_at_once(answer, server, monkeypatch, tmp_path):
    monkeypatch.setenv("PERSPECTIVE_API_KEY", KEY)
    texts = ["good", "bad request", answer, "rate limited", "good"]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "out.jsonl"
    args = annotate.build_parser().parse_args(
        ["--input", str(src), "--output", str(out), "--scorer", "perspective"]
    )
    with pytest.raises(SystemExit) as e:
        annotate.run(args, scorer=make(server, concurrency=1))
    status = answer.split()[-1]
    msg = str(e.value)
    assert msg.startswith(f"toxjax score: the Perspective API answered HTTP {status} (")
    assert msg.endswith(f"it is no longer available; {perspective.LOCAL_ALTERNATIVES}")
    assert "\n" not in msg
    # One request for the answer, none after it: no retries, no further text sent.
    assert _Handler.received == ["good", "bad request", answer]
    # Nothing of the stopped batch was committed: a resume starts it again.
    assert out.read_text() == ""
    assert json.load(open(str(out) + ".progress.json"))["records"] == 0


def test_an_ordinary_403_fails_one_text_and_the_run_goes_on(server, monkeypatch):
    monkeypatch.setenv("PERSPECTIVE_API_KEY", KEY)
    res = make(server).score(["echo 400", "good"])  # "API key not valid": not a retirement
    assert res[0].error.startswith("HTTP 400: ") and res[1].toxicity == 0.25


@pytest.mark.parametrize("status", [302, 307])
def test_a_redirect_is_not_followed_and_the_key_stays(status, server, other_host, monkeypatch):
    """Issue 24 item 12: urllib followed a 302 to another host with the key header."""
    monkeypatch.setenv("PERSPECTIVE_API_KEY", KEY)
    with pytest.raises(PerspectiveUnavailable) as e:
        make(server, concurrency=1).score([f"redirect {status}", "good"])
    assert str(e.value).startswith(
        f"the Perspective endpoint answered HTTP {status}, a redirect to {other_host.url}, not "
        "followed (the API key would travel with it)"
    )
    assert other_host.requests == []  # nothing reached the other host, key or not
    assert _Handler.received == [f"redirect {status}"]


def test_a_key_cut_by_the_excerpt_is_redacted(server, monkeypatch, capsys):
    """Issue 24 item 12: the 300 / 200-character excerpts cut the key, and the cut key
    escaped redaction (20 of 39 characters were written)."""
    monkeypatch.setenv("PERSPECTIVE_API_KEY", LONG_KEY)
    res = make(server).score(["echo cut 400", "echo cut 200"])
    # Redacted before it is cut: the whole reply fits the excerpt once the key is out.
    assert res[0].error == 'HTTP 400: {"error": "' + "x" * 269 + '[API key]"}'
    assert res[1].toxicity == 0.75  # the malformed reply was retried, then scored
    scorer = make(server)
    for start in (8, 20, 38):  # any cut of the key, 8 characters or more
        assert scorer._redact(f"key={LONG_KEY[:start]}") == "key=[API key]"
    assert scorer._redact(f"{LONG_KEY[:7]} {LONG_KEY}.") == f"{LONG_KEY[:7]} [API key]."
    assert LONG_KEY[:8] not in res[0].error + capsys.readouterr().err

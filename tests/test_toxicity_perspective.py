"""Perspective client against a local scripted HTTP server (429s, 500s, slow, good)."""

import collections
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from toxjax.toxicity import get_scorer
from toxjax.toxicity.perspective import MAX_BYTES, truncate_utf8

# text -> replies in order (the last repeats): an int status, "slow", or "ok".
SCRIPT = {
    "good": ["ok"],
    "rate limited": [429, 429, "ok"],
    "server error": [500, 503, "ok"],
    "slow": ["slow", "ok"],
    "always down": [500],
    "bad request": [400],
}


class _Handler(BaseHTTPRequestHandler):
    calls = collections.Counter()
    received: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["comment"]["text"]
        assert self.path.endswith("?key=test-key")
        _Handler.received.append(text)
        replies = SCRIPT.get(text, ["ok"])
        reply = replies[min(_Handler.calls[text], len(replies) - 1)]
        _Handler.calls[text] += 1
        if reply == "slow":
            time.sleep(0.5)  # longer than the client's timeout
            reply = "ok"
        if reply != "ok":
            self.send_response(reply)
            self.end_headers()
            self.wfile.write(b'{"error": "scripted"}')
            return
        score = 0.25 if text == "good" else 0.75
        out = {
            "attributeScores": {
                "TOXICITY": {"summaryScore": {"value": score, "type": "PROBABILITY"}},
                "INSULT": {"summaryScore": {"value": score / 2, "type": "PROBABILITY"}},
            }
        }
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def server():
    _Handler.calls.clear()
    _Handler.received.clear()
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
    monkeypatch.setenv("PERSPECTIVE_API_KEY", "test-key")
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


def test_truncates_to_byte_limit(server, monkeypatch):
    monkeypatch.setenv("PERSPECTIVE_API_KEY", "test-key")
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

"""Perspective API client (for users who still have a key; the API retires end of 2026).

One request per text (the API has no batch endpoint), run by a small thread pool under a
global rate limit (`qps`, default 1, the API's default quota). 429 and 5xx replies,
timeouts and connection errors are retried with exponential backoff up to a cap; other
4xx replies (e.g. an unsupported language) fail at once. A malformed reply (bad JSON, a
truncated body, missing or non-numeric scores) is retried the same way: whatever the
server sends, one text fails, never the run. Texts are truncated to the API's 20,480-byte
limit on a UTF-8 character boundary. A text that still fails is returned as a failed
`ScoreResult`, never as a score.

The API key travels in the `X-Goog-Api-Key` header, never in the URL (URLs end up in
logs, proxies and error messages), and every error text that came from the server is
redacted of it before it reaches a failure record or the terminal. A malformed key
(whitespace, control characters) is refused up front with a message that does not
repeat it.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from tqdm.auto import tqdm

from toxjax.toxicity.base import ScoreResult

DEFAULT_URL = "https://commentanalyzer.googleapis.com/v1alpha1/comments:analyze"
KEY_ENV = "PERSPECTIVE_API_KEY"
MAX_BYTES = 20480
DEFAULT_ATTRIBUTES = (
    "TOXICITY",
    "SEVERE_TOXICITY",
    "IDENTITY_ATTACK",
    "INSULT",
    "PROFANITY",
    "THREAT",
)


def truncate_utf8(text: str, max_bytes: int = MAX_BYTES) -> str:
    """The longest prefix of `text` whose UTF-8 encoding fits in `max_bytes`."""
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes].decode("utf-8", "ignore")  # drops a cut multi-byte character


class RateLimiter:
    """Spaces calls at least `1 / qps` seconds apart, across threads."""

    def __init__(self, qps: float):
        if qps <= 0:
            raise ValueError(f"qps must be positive, got {qps}")
        self.interval = 1.0 / qps
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        time.sleep(max(0.0, start - now))


class _Retryable(Exception):
    pass


def check_api_key(key: str | None) -> str:
    """Returns `key` if it can be sent as a header; the error never contains the key.

    Raises:
      ValueError: no key, or a character an HTTP header cannot carry (a space, a newline
        from a copied file...), named by position and kind.
    """
    if not key:
        raise ValueError(
            f"Perspective needs an API key: set ${KEY_ENV} (or pass api_key=); without "
            "one, use --scorer detoxify-original or profanity-check"
        )
    for i, ch in enumerate(key):
        if not ("!" <= ch <= "~"):  # printable ASCII, no space
            kind = "a space" if ch == " " else f"the character U+{ord(ch):04X}"
            raise ValueError(
                f"the Perspective API key (${KEY_ENV}) has {kind} at position {i + 1} of "
                f"{len(key)}; an API key is printable ASCII with no spaces: check how it "
                "was copied"
            )
    return key


class PerspectiveScorer:
    """Scores texts with the Perspective API.

    Args:
      api_key: the key (default: `$PERSPECTIVE_API_KEY`).
      url: the analyze endpoint.
      attributes: Perspective attributes to request; `TOXICITY` is required.
      languages: request languages (None lets the API detect).
      qps: requests per second over all threads.
      concurrency: requests in flight (helps when latency, not quota, is the limit).
      max_retries: retries per text after the first attempt.
      backoff: first retry delay in seconds; doubles each retry.
      max_backoff: cap on one retry delay.
      timeout: seconds to wait for one reply.
      progress: show a progress bar.
    """

    name = "perspective"

    def __init__(
        self,
        api_key: str | None = None,
        url: str = DEFAULT_URL,
        attributes: Sequence[str] = DEFAULT_ATTRIBUTES,
        languages: Sequence[str] | None = ("en",),
        qps: float = 1.0,
        concurrency: int = 4,
        max_retries: int = 6,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        timeout: float = 30.0,
        progress: bool = False,
    ):
        self.api_key = check_api_key(api_key or os.environ.get(KEY_ENV))
        # The key as it may be echoed back: raw, and URL-encoded.
        self._secrets = {self.api_key, urllib.parse.quote(self.api_key, safe="")}
        if "TOXICITY" not in attributes:
            raise ValueError("attributes must include TOXICITY")
        self.url = url
        self.attributes = tuple(a.lower() for a in attributes)
        self._requested = tuple(attributes)
        self.languages = list(languages) if languages else None
        self.limiter = RateLimiter(qps)
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.progress = progress

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[API key]")
        return text

    def _request(self, text: str) -> dict[str, float]:
        """One analyze call -> `{attribute: score}`.

        Raises:
          _Retryable: 429/5xx, a network error or a malformed reply.
          ValueError: another 4xx (the request itself is wrong; retrying will not help).
        """
        body = {
            "comment": {"text": text},
            "requestedAttributes": {a: {} for a in self._requested},
            "doNotStore": True,
        }
        if self.languages:
            body["languages"] = self.languages
        req = urllib.request.Request(
            self.url,
            data=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": "application/json", "X-Goog-Api-Key": self.api_key},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            try:
                detail = e.read()[:300].decode("utf-8", "replace")
            except (OSError, http.client.HTTPException):
                detail = "(unreadable body)"
            detail = self._redact(" ".join(detail.split()))
            if e.code == 429 or e.code >= 500:
                raise _Retryable(f"HTTP {e.code}: {detail}") from None
            raise ValueError(f"HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            # Timeouts, refused/reset connections, a body cut short (IncompleteRead).
            raise _Retryable(self._redact(f"{type(e).__name__}: {e}")) from None
        try:
            reply = json.loads(raw)
            scores = {
                a.lower(): float(v["summaryScore"]["value"])
                for a, v in reply["attributeScores"].items()
            }
            if "toxicity" not in scores or not all(0 <= v <= 1 for v in scores.values()):
                raise ValueError("no TOXICITY probability")
            return scores
        except (ValueError, KeyError, TypeError, AttributeError):
            shown = self._redact(" ".join(raw[:200].decode("utf-8", "replace").split()))
            raise _Retryable(f"malformed reply: {shown!r}") from None

    def score_one(self, text: str) -> ScoreResult:
        """Scores one text with rate limiting and retries."""
        if not isinstance(text, str) or not text.strip():
            return ScoreResult.failed("Perspective cannot score an empty or non-string text")
        text = truncate_utf8(text)
        error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))
            self.limiter.wait()
            try:
                return ScoreResult(self._request(text))
            except _Retryable as e:
                error = str(e)
            except ValueError as e:
                return ScoreResult.failed(str(e))
            except Exception as e:  # noqa: BLE001 - whatever happens, one text fails, not the run
                return ScoreResult.failed(self._redact(f"{type(e).__name__}: {e}"))
        return ScoreResult.failed(f"gave up after {self.max_retries + 1} attempts: {error}")

    def score(self, texts: Sequence[str]) -> list[ScoreResult]:
        with (
            ThreadPoolExecutor(self.concurrency) as pool,
            tqdm(total=len(texts), unit="text", disable=not self.progress) as bar,
        ):
            futures = [pool.submit(self.score_one, t) for t in texts]
            results = []
            for f in futures:
                results.append(f.result())
                bar.update(1)
        return results

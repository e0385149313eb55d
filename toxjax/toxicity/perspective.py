"""Perspective API client (for users who still have a key; the API retires end of 2026).

One request per text (the API has no batch endpoint), run by a small thread pool under a
global rate limit (`qps`, default 1, the API's default quota). 429 and 5xx replies,
timeouts and connection errors are retried with exponential backoff up to a cap; other
4xx replies (e.g. an unsupported language) fail at once. Texts are truncated to the API's
20,480-byte limit on a UTF-8 character boundary. A text that still fails is returned as a
failed `ScoreResult`, never as a score.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
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
        self.api_key = api_key or os.environ.get(KEY_ENV)
        if not self.api_key:
            raise ValueError(
                f"Perspective needs an API key: set ${KEY_ENV} (or pass api_key=); without "
                "one, use --scorer detoxify-original or profanity-check"
            )
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

    def _request(self, text: str) -> dict[str, float]:
        body = {
            "comment": {"text": text},
            "requestedAttributes": {a: {} for a in self._requested},
            "doNotStore": True,
        }
        if self.languages:
            body["languages"] = self.languages
        req = urllib.request.Request(
            f"{self.url}?key={self.api_key}",
            data=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                reply = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode("utf-8", "replace")
            if e.code == 429 or e.code >= 500:
                raise _Retryable(f"HTTP {e.code}: {detail}") from e
            raise ValueError(f"HTTP {e.code}: {detail}") from e
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            raise _Retryable(f"{type(e).__name__}: {e}") from e
        try:
            return {
                a.lower(): float(v["summaryScore"]["value"])
                for a, v in reply["attributeScores"].items()
            }
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"unexpected reply {str(reply)[:300]}") from e

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
                scores = self._request(text)
            except _Retryable as e:
                error = str(e)
                continue
            except ValueError as e:
                return ScoreResult.failed(str(e))
            if "toxicity" not in scores:
                return ScoreResult.failed(f"reply has no TOXICITY score: {sorted(scores)}")
            return ScoreResult(scores)
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

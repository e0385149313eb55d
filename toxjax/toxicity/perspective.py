"""Perspective API client (for users who still have a key; the API retires end of 2026).

From `RETIREMENT_DATE` (2027-01-01, UTC; `today` is the clock, patched in tests), or as
soon as the API answers that it is not available (`is_retirement_answer`: HTTP 404 or
410, or a 400/403 whose body says the API is deprecated, shut down, no longer
available...), or redirects the request elsewhere, the client stops the whole run at
once with `PerspectiveUnavailable`: one line naming the local scorers instead
(`LOCAL_ALTERNATIVES`). Nothing is retried after that and no further text is sent.

One request per text (the API has no batch endpoint), run by a small thread pool under a
global rate limit (`qps`, default 1, the API's default quota). 429 and 5xx replies,
timeouts and connection errors are retried with exponential backoff up to a cap; other
4xx replies (e.g. an unsupported language) fail at once. A malformed reply (bad JSON, a
truncated body, missing or non-numeric scores) is retried the same way: whatever the
server sends, one text fails, never the run. Texts are truncated to the API's 20,480-byte
limit on a UTF-8 character boundary. A text that still fails is returned as a failed
`ScoreResult`, never as a score.

The API key travels in the `X-Goog-Api-Key` header, never in the URL (URLs end up in
logs, proxies and error messages), and redirects are not followed (urllib would send
the header on to wherever a 3xx points). Every error text that came from the server is
redacted of the key (raw and URL-encoded, and any piece of 8 or more of its first
characters) before it is cut to an excerpt and before it reaches a failure record or
the terminal. A malformed key (whitespace, control characters) is refused up front with
a message that does not repeat it.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from tqdm.auto import tqdm

from toxjax.toxicity.base import ScoreResult, ScorerUnavailable

DEFAULT_URL = "https://commentanalyzer.googleapis.com/v1alpha1/comments:analyze"
KEY_ENV = "PERSPECTIVE_API_KEY"
MAX_BYTES = 20480
RETIREMENT_DATE = datetime.date(2027, 1, 1)  # the API answers through 2026-12-31
LOCAL_ALTERNATIVES = (
    "score locally instead: --scorer detoxify-original (or detoxify-unbiased, "
    "detoxify-multilingual; --backend jax on an accelerator), or --scorer hf:DIR for any "
    "local transformers classifier (e.g. one distilled from Perspective); `toxjax scorers "
    "agree` measures how close a scorer is to Perspective's scores in the RTP files"
)
_BODY_BYTES = 65536  # of an error reply read, before the excerpt is cut
_EXCERPT = 300  # characters of an error reply kept in a message
_KEY_PIECE = 8  # shortest start of the key redacted on its own
# What a 400/403 reply says when the API (not the request) is gone.
_RETIRED = re.compile(
    r"not available|no longer (available|supported|offered|served)|deprecat|shut ?down|"
    r"turned (down|off)|discontinued|decommissioned|retired|sunset",
    re.IGNORECASE,
)


def today() -> datetime.date:
    """Today's date in UTC (the clock the retirement check reads; tests patch it)."""
    return datetime.datetime.now(datetime.UTC).date()


class PerspectiveUnavailable(ScorerUnavailable):
    """The Perspective API cannot score anything any more: the run stops at once."""


def check_not_retired(clock=None) -> None:
    """Raises `PerspectiveUnavailable` from `RETIREMENT_DATE` on (`clock`: default `today`)."""
    now = (clock or today)()
    if now >= RETIREMENT_DATE:
        last = RETIREMENT_DATE - datetime.timedelta(days=1)
        raise PerspectiveUnavailable(
            f"the Perspective API was retired after {last.isoformat()} (today is "
            f"{now.isoformat()}); {LOCAL_ALTERNATIVES}"
        )


def is_retirement_answer(status: int, body: str) -> bool:
    """Whether an HTTP error says the API itself is gone (not that this request is bad).

    404 and 410 from the analyze endpoint: the resource is gone. 400 and 403 carry
    ordinary request errors too (a bad key, an unsupported language), so only one whose
    body says the API is not available, deprecated, shut down or the like counts.
    """
    if status in (404, 410):
        return True
    return status in (400, 403) and bool(_RETIRED.search(body))


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


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Follows no redirect: the 3xx comes back as an `HTTPError` (urllib would otherwise
    re-send the request, API key header included, to wherever `Location` points)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


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
      clock: today's date (default `today`), checked against `RETIREMENT_DATE` before
        every request.
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
        clock=None,
    ):
        self.clock = clock
        check_not_retired(self.clock)
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
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._stop = threading.Event()  # set once the API is gone: every worker stops
        self._unavailable: PerspectiveUnavailable | None = None

    def _redact(self, text: str) -> str:
        """`text` without the key: whole (raw or URL-encoded), or any run of its first
        `_KEY_PIECE`+ characters (a key cut short by an excerpt, here or by the server)."""
        for secret in self._secrets:
            text = text.replace(secret, "[API key]")
        for secret in self._secrets:  # then what is left of one: its start, cut short
            start = secret[:_KEY_PIECE]
            at = text.find(start)
            while at >= 0:
                end = at + len(start)
                while end < len(text) and end - at < len(secret) and text[end] == secret[end - at]:
                    end += 1
                text = text[:at] + "[API key]" + text[end:]
                at = text.find(start, at + len("[API key]"))
        return text

    def _excerpt(self, raw: bytes, limit: int = _EXCERPT) -> str:
        """A one-line excerpt of a server reply, redacted before it is cut."""
        text = self._redact(" ".join(raw.decode("utf-8", "replace").split()))
        return self._redact(text[:limit])

    def _stop_run(self, error: PerspectiveUnavailable) -> PerspectiveUnavailable:
        if self._unavailable is None:
            self._unavailable = error
        self._stop.set()
        return self._unavailable

    def _request(self, text: str) -> dict[str, float]:
        """One analyze call -> `{attribute: score}`.

        Raises:
          _Retryable: 429/5xx, a network error or a malformed reply.
          PerspectiveUnavailable: the API is gone (`is_retirement_answer`) or redirects.
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
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        # Unredirected: never copied onto a redirected request (none is followed anyway).
        req.add_unredirected_header("X-Goog-Api-Key", self.api_key)
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            try:
                detail = self._excerpt(e.read(_BODY_BYTES))
            except (OSError, http.client.HTTPException):
                detail = "(unreadable body)"
            if 300 <= e.code < 400:
                where = urllib.parse.urlsplit(e.headers.get("Location") or "")
                target = f"{where.scheme}://{where.netloc}{where.path}" if where.netloc else "?"
                raise PerspectiveUnavailable(
                    f"the Perspective endpoint answered HTTP {e.code}, a redirect to "
                    f"{self._redact(target)}, not followed (the API key would travel with it): "
                    f"the API has moved or been retired; {LOCAL_ALTERNATIVES}"
                ) from None
            if is_retirement_answer(e.code, detail):
                raise PerspectiveUnavailable(
                    f"the Perspective API answered HTTP {e.code} ({detail[:120]}): it is no "
                    f"longer available; {LOCAL_ALTERNATIVES}"
                ) from None
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
            raise _Retryable(f"malformed reply: {self._excerpt(raw, 200)!r}") from None

    def score_one(self, text: str) -> ScoreResult:
        """Scores one text with rate limiting and retries.

        Raises:
          PerspectiveUnavailable: the API is retired or gone (also when another worker
            found out first): the run must stop.
        """
        if not isinstance(text, str) or not text.strip():
            return ScoreResult.failed("Perspective cannot score an empty or non-string text")
        text = truncate_utf8(text)
        error = ""
        for attempt in range(self.max_retries + 1):
            if attempt and self._stop.wait(
                min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
            ):
                break
            self.limiter.wait()
            if self._stop.is_set():
                break
            try:
                check_not_retired(self.clock)
                return ScoreResult(self._request(text))
            except PerspectiveUnavailable as e:
                raise self._stop_run(e) from None
            except _Retryable as e:
                error = str(e)
            except ValueError as e:
                return ScoreResult.failed(str(e))
            except Exception as e:  # noqa: BLE001 - whatever happens, one text fails, not the run
                return ScoreResult.failed(self._redact(f"{type(e).__name__}: {e}"))
        if self._stop.is_set():
            raise self._unavailable  # type: ignore[misc]
        return ScoreResult.failed(f"gave up after {self.max_retries + 1} attempts: {error}")

    def score(self, texts: Sequence[str]) -> list[ScoreResult]:
        """Scores `texts`; raises `PerspectiveUnavailable` (and sends nothing more) once
        the API is found retired or gone."""
        if self._unavailable is not None:
            raise self._unavailable
        pool = ThreadPoolExecutor(self.concurrency)
        try:
            with tqdm(total=len(texts), unit="text", disable=not self.progress) as bar:
                futures = [pool.submit(self.score_one, t) for t in texts]
                results = []
                for f in futures:
                    results.append(f.result())
                    bar.update(1)
            return results
        finally:
            # On a stop, queued texts are dropped and workers in a backoff wake up at once;
            # a request already in flight ends within `timeout` on its own thread.
            pool.shutdown(wait=not self._stop.is_set(), cancel_futures=True)

"""The HTTP layer: bearer auth, SCIM media type, retries, rate limit and concurrency bound."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import httpx2

from scimsync import log
from scimsync.config import TargetConfig, redact_url
from scimsync.target.errors import (
    InvalidResponse,
    RateLimited,
    ResponseTooLarge,
    ScimError,
    ServerError,
    TargetUnreachable,
    error_from_body,
)
from scimsync.target.pacing import MonotonicClock, Sleep, TokenBucket, request_backoff, retry_after

SCIM_JSON = "application/scim+json"
logger = log.get(__name__)

# Failures where the request never left: a retried POST after these cannot have written.
_NOT_SENT = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout)
# What the HTTP library raises besides transport failures: a body it cannot decode, a URL
# it cannot build from an id the target gave, a stream misuse. None is worth a retry.
_UNUSABLE = (httpx2.HTTPError, httpx2.InvalidURL, httpx2.StreamError, httpx2.CookieConflict)


# The record whose operation is sending (ScimHttp.retries_for): its retries share a budget.
_RECORD: ContextVar[Hashable | None] = ContextVar("scimsync_record", default=None)


@dataclass(frozen=True)
class Answer:
    """A response read whole, within the caps."""

    status: int
    headers: httpx2.Headers
    body: bytes


class ScimHttp:
    """Sends one SCIM request, retrying what is worth retrying, and returns the JSON body."""

    def __init__(
        self,
        config: TargetConfig,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: MonotonicClock = time.monotonic,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = redact_url(config.url)  # for messages: never the credentials a URL holds
        self.max_retries = config.max_retries
        self.retries_per_record = config.retries_per_record
        # Retries left, by record, for this client's life: one cycle (cycle.run).
        self._retries_left: dict[Hashable, int] = {}
        self.retry_max_seconds = config.retry_max_seconds
        self.timeout = config.timeout  # each attempt's deadline, from sending to the last byte
        self.max_response_bytes = config.max_response_bytes
        self.request_counts: Counter[str] = Counter()
        self._secret = config.bearer  # read once: with token_file, each read is a file read
        self._sleep = sleep
        self._clock = clock
        self._bucket = (
            TokenBucket(config.rate_limit, clock=clock, sleep=sleep) if config.rate_limit else None
        )
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._paused_until = float("-inf")  # a 429's Retry-After holds every request back
        verify: ssl.SSLContext | bool = config.verify_tls
        if config.verify_tls and config.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(config.ca_file))
        self._client = httpx2.AsyncClient(
            base_url=config.url + "/",
            headers={"Authorization": f"Bearer {self._secret}", "Accept": SCIM_JSON},
            # Per connect, read and write; the deadline in _exchange bounds the whole attempt.
            timeout=httpx2.Timeout(config.timeout),
            verify=verify,
            transport=transport,
            limits=httpx2.Limits(max_connections=config.max_concurrency),
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    @contextmanager
    def retries_for(self, record: Hashable) -> Iterator[None]:
        """Requests sent inside share `record`'s retry budget (target.retries_per_record):
        a record the target keeps refusing with a 5xx costs a few retries a cycle, not
        target.max_retries for each of its requests. A 429 spends none: it is the
        target's pace, not the record's fault."""
        token = _RECORD.set(record)
        try:
            yield
        finally:
            _RECORD.reset(token)

    def _spend_retry(self) -> bool:
        """False once the sending record's budget is spent; True outside a record."""
        record = _RECORD.get()
        if record is None:
            return True
        left = self._retries_left.get(record, self.retries_per_record)
        if left <= 0:
            return False
        self._retries_left[record] = left - 1
        return True

    async def send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str | int] | None = None,
        body: dict[str, Any] | None = None,
        landed: Callable[[], Awaitable[Any]] | None = None,
    ) -> Any:
        """The parsed JSON body (None for an empty one); a typed ScimError otherwise.

        Whatever the target answers, only this package's errors leave: a body too large or
        unusable is an InvalidResponse, a request that cannot complete within `timeout` on
        any attempt a TargetUnreachable.

        `landed` looks up what a create would have made: before a create is sent again
        after a lost response, an answer from it is returned instead, so that targets that
        do not enforce uniqueness get no duplicate either.
        """
        what = f"{method} /{path}"
        content = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": SCIM_JSON} if content is not None else None
        waited = 0.0
        maybe_applied = False
        attempt = 0
        while True:
            if maybe_applied and landed is not None:
                found = await self._lookup(landed)
                if found is not None:
                    return found
            pause = self._paused_until - self._clock()
            if pause > 0:
                await self._sleep(pause)
            if self._bucket is not None:
                await self._bucket.acquire()
            response: Answer | None = None
            failure: Exception | None = None
            async with self._slots:
                self.request_counts[method] += 1
                try:
                    response = await self._exchange(what, method, path, params, content, headers)
                except (httpx2.TransportError, TimeoutError) as exc:
                    failure = exc
            if response is not None and response.status < 400:
                return _json(response, what)
            if response is not None and not _retryable(response.status):
                raise error_from_body(
                    response.status,
                    _json_or_none(response),
                    request=what,
                    after_retry=maybe_applied,
                    secret=self._secret,
                )
            hint = retry_after(response.headers.get("Retry-After")) if response else None
            delay = hint if hint is not None else request_backoff(attempt)
            attempt += 1
            paced = response is not None and response.status == 429
            if (
                attempt > self.max_retries
                or waited + delay > self.retry_max_seconds
                or (not paced and not self._spend_retry())
            ):
                raise self._give_up(what, response, failure, maybe_applied, attempt)
            waited += delay
            if failure is not None and not isinstance(failure, _NOT_SENT):
                maybe_applied = True
            if response is not None and response.status >= 500:
                maybe_applied = True
            logger.warning(
                "target request retried",
                request=what,
                status=response.status if response is not None else None,
                error=type(failure).__name__ if failure else None,
                delay=round(delay, 3),
                attempt=attempt,
            )
            if response is not None and response.status == 429:
                self._paused_until = max(self._paused_until, self._clock() + delay)
            else:
                await self._sleep(delay)

    async def _exchange(
        self,
        what: str,
        method: str,
        path: str,
        params: dict[str, str | int] | None,
        content: bytes | None,
        headers: dict[str, str] | None,
    ) -> Answer:
        """One attempt, read within the caps; TimeoutError past the deadline."""
        try:
            async with asyncio.timeout(self.timeout):
                async with self._client.stream(
                    method, path, params=params, content=content, headers=headers
                ) as response:
                    body = await self._read(response, what)
                    return Answer(response.status_code, response.headers, body)
        except httpx2.TransportError:
            raise
        except _UNUSABLE as exc:
            raise InvalidResponse(0, None, f"{type(exc).__name__}: {exc}", request=what) from None

    async def _read(self, response: httpx2.Response, what: str) -> bytes:
        """The decoded body, refused once its raw or decoded size passes the cap.

        httpx2's decoders inflate at most 1 MiB per step, so a compressed bomb stops one
        step past the cap instead of expanding whole.
        """
        cap = self.max_response_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > cap:
            raise _too_large(response.status_code, what, cap, f"{declared} bytes declared")
        parts: list[bytes] = []
        size = 0
        try:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > cap or response.num_bytes_downloaded > cap:
                    raise _too_large(response.status_code, what, cap, "read so far")
                parts.append(chunk)
        except httpx2.DecodingError as exc:
            encoding = response.headers.get("Content-Encoding", "none")
            raise InvalidResponse(
                response.status_code,
                None,
                f"the body could not be decoded (Content-Encoding {encoding}): {exc}",
                request=what,
            ) from None
        return b"".join(parts)

    async def _lookup(self, landed: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await landed()
        except (ScimError, TargetUnreachable) as exc:
            # Not knowing is no reason to stop: a resend that conflicts is looked up again.
            logger.warning("lookup before resending a create failed", error=str(exc))
            return None

    def _give_up(
        self,
        what: str,
        response: Answer | None,
        failure: Exception | None,
        maybe_applied: bool,
        attempts: int,
    ) -> Exception:
        if response is not None:
            error = error_from_body(
                response.status,
                _json_or_none(response),
                request=what,
                after_retry=maybe_applied,
                secret=self._secret,
            )
            if response.status == 429 and not isinstance(error, RateLimited):
                return RateLimited(429, error.scim_type, error.detail, request=what)
            if not isinstance(error, ServerError | RateLimited):
                return ServerError(error.status, error.scim_type, error.detail, request=what)
            return error
        reason = type(failure).__name__
        if isinstance(failure, TimeoutError):
            reason = f"no complete answer within {self.timeout:g} s (target.timeout)"
        plural = "s" if attempts > 1 else ""
        cause = f"{what}: {reason} after {attempts} attempt{plural}"
        return TargetUnreachable(self.url, cause)


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500


def _too_large(status: int, what: str, cap: int, seen: str) -> ResponseTooLarge:
    detail = f"the body is over target.max_response_bytes ({cap} bytes; {seen}): refused"
    return ResponseTooLarge(status, None, detail, request=what)


def _json(response: Answer, what: str) -> Any:
    if not response.body:
        return None
    try:
        return json.loads(response.body)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
        raise InvalidResponse(
            response.status,
            None,
            f"the body is not JSON ({response.headers.get('Content-Type', 'no content type')})",
            request=what,
        ) from None


def _json_or_none(response: Answer) -> Any:
    try:
        return json.loads(response.body) if response.body else None
    except (ValueError, RecursionError):
        return {"detail": response.body[:200].decode("utf-8", errors="replace")}

"""The HTTP layer: bearer auth, SCIM media type, retries, rate limit and concurrency bound."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2

from scimsync import log
from scimsync.config import TargetConfig, redact_url
from scimsync.target.errors import (
    RateLimited,
    ScimError,
    ServerError,
    TargetUnreachable,
    error_from_body,
)
from scimsync.target.pacing import Clock, Sleep, TokenBucket, backoff, retry_after

SCIM_JSON = "application/scim+json"
logger = log.get(__name__)

# Failures where the request never left: a retried POST after these cannot have written.
_NOT_SENT = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout)


class ScimHttp:
    """Sends one SCIM request, retrying what is worth retrying, and returns the JSON body."""

    def __init__(
        self,
        config: TargetConfig,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = redact_url(config.url)  # for messages: never the credentials a URL holds
        self.max_retries = config.max_retries
        self.retry_max_seconds = config.retry_max_seconds
        self.request_counts: Counter[str] = Counter()
        self._secret = config.bearer
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
            headers={"Authorization": f"Bearer {config.bearer}", "Accept": SCIM_JSON},
            timeout=httpx2.Timeout(config.timeout),
            verify=verify,
            transport=transport,
            limits=httpx2.Limits(max_connections=config.max_concurrency),
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

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
            response: httpx2.Response | None = None
            failure: Exception | None = None
            async with self._slots:
                self.request_counts[method] += 1
                try:
                    response = await self._client.request(
                        method, path, params=params, content=content, headers=headers
                    )
                except httpx2.TransportError as exc:
                    failure = exc
            if response is not None and response.status_code < 400:
                return _json(response)
            if response is not None and not _retryable(response.status_code):
                raise error_from_body(
                    response.status_code,
                    _json_or_none(response),
                    request=what,
                    after_retry=maybe_applied,
                    secret=self._secret,
                )
            hint = retry_after(response.headers.get("Retry-After")) if response else None
            delay = hint if hint is not None else backoff(attempt)
            attempt += 1
            if attempt > self.max_retries or waited + delay > self.retry_max_seconds:
                raise self._give_up(what, response, failure, maybe_applied)
            waited += delay
            if failure is not None and not isinstance(failure, _NOT_SENT):
                maybe_applied = True
            if response is not None and response.status_code >= 500:
                maybe_applied = True
            logger.warning(
                "target request retried",
                request=what,
                status=response.status_code if response is not None else None,
                error=type(failure).__name__ if failure else None,
                delay=round(delay, 3),
                attempt=attempt,
            )
            if response is not None and response.status_code == 429:
                self._paused_until = max(self._paused_until, self._clock() + delay)
            else:
                await self._sleep(delay)

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
        response: httpx2.Response | None,
        failure: Exception | None,
        maybe_applied: bool,
    ) -> Exception:
        if response is not None:
            error = error_from_body(
                response.status_code,
                _json_or_none(response),
                request=what,
                after_retry=maybe_applied,
                secret=self._secret,
            )
            if response.status_code == 429 and not isinstance(error, RateLimited):
                return RateLimited(429, error.scim_type, error.detail, request=what)
            if not isinstance(error, ServerError | RateLimited):
                return ServerError(error.status, error.scim_type, error.detail, request=what)
            return error
        attempts = self.max_retries + 1
        plural = "s" if attempts > 1 else ""
        cause = f"{what}: {type(failure).__name__} after {attempts} attempt{plural}"
        return TargetUnreachable(self.url, cause)


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500


def _json(response: httpx2.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        raise ScimError(
            response.status_code,
            None,
            f"the target answered with a body that is not JSON "
            f"({response.headers.get('Content-Type', 'no content type')})",
            request=f"{response.request.method} {response.request.url.path}",
        ) from None


def _json_or_none(response: httpx2.Response) -> Any:
    try:
        return response.json() if response.content else None
    except ValueError:
        return {"detail": response.text[:200]}

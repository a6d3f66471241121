"""The SCIM 2.0 target: a generic RFC 7644 client and the Atlassian Cloud profile."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx2

from scimsync.config import TargetConfig, TargetType
from scimsync.target.atlassian import AtlassianTarget
from scimsync.target.http import ScimHttp
from scimsync.target.pacing import MonotonicClock, Sleep
from scimsync.target.remote import RemoteGroup, RemoteUser, Target
from scimsync.target.scim import ScimTarget

__all__ = ["AtlassianTarget", "RemoteGroup", "RemoteUser", "ScimTarget", "Target", "open_target"]


@asynccontextmanager
async def open_target(
    config: TargetConfig,
    *,
    sleep: Sleep = asyncio.sleep,
    clock: MonotonicClock = time.monotonic,
    transport: httpx2.AsyncBaseTransport | None = None,
) -> AsyncIterator[ScimTarget]:
    """A client for the configured profile; `sleep`, `clock` and `transport` are for tests."""
    http = ScimHttp(config, sleep=sleep, clock=clock, transport=transport)
    profile = AtlassianTarget if config.type is TargetType.ATLASSIAN else ScimTarget
    try:
        yield profile(config, http)
    finally:
        await http.aclose()

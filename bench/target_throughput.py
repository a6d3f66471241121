"""Requests per second the SCIM client reaches, with 0 ms and 20 ms of added latency.

Usage: .venv/bin/python bench/target_throughput.py [--server emulator|scim2] [--users N]

The server runs in a subprocess on a free loopback port: the Atlassian emulator
(`scimsync emulate atlassian`, the default) or scim2-server. Latency is added on the
client side of the wire, so both servers are measured the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2

from scimsync.config import TargetConfig
from scimsync.emulator import PREFIX
from scimsync.sandbox.ports import NotListeningError, listening_port
from scimsync.target import open_target

TOKEN = "bench-token"


class Latency(httpx2.AsyncBaseTransport):
    """Delays each request by a fixed round trip before the real transport sends it."""

    def __init__(self, seconds: float) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.seconds = seconds

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if self.seconds:
            await asyncio.sleep(self.seconds)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@contextmanager
def server(kind: str) -> Iterator[tuple[str, str]]:
    """(base URL, profile) of a server running until the block ends."""
    bindir = Path(sys.executable).parent
    if kind == "emulator":
        command = [str(bindir / "scimsync"), "emulate", "atlassian", "--port", "0"]
        command += ["--token", TOKEN]
        path, profile = PREFIX, "atlassian"
    else:
        binary = shutil.which("scim2-server", path=str(bindir)) or "scim2-server"
        command = [binary, "--port", "0", "--bearer-token", TOKEN, "--dynamic-tenants"]
        path, profile = f"/bench{uuid.uuid4().hex[:8]}", "scim"
    # Port 0: each binds a free port itself, and /proc says which.
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        try:
            port = listening_port(process, timeout=20)
        except NotListeningError as exc:
            raise SystemExit(f"{kind} server: {exc}") from None
        yield f"http://127.0.0.1:{port}{path}", profile
    finally:
        process.terminate()
        process.wait(timeout=10)


async def measure(url: str, profile: str, latency: float, users: int, concurrency: int) -> str:
    config = TargetConfig.model_validate(
        {"type": profile, "url": url, "token": TOKEN, "max_concurrency": concurrency}
    )
    prefix = uuid.uuid4().hex[:6]
    async with open_target(config, transport=Latency(latency)) as target:
        started = time.perf_counter()
        made = await asyncio.gather(
            *(
                target.create_user(
                    {"userName": f"{prefix}{i}@example.com", "emails.work": f"{prefix}{i}@e.com"},
                    True,
                )
                for i in range(users)
            )
        )
        await asyncio.gather(*(target.update_user(u.id, {"title": "Bench"}) for u in made))
        await asyncio.gather(*(target.find_user(u.user_name) for u in made))
        elapsed = time.perf_counter() - started
        total = sum(target.request_counts.values())
    return (
        f"latency {latency * 1000:4.0f} ms  concurrency {concurrency:2}  "
        f"{total:5} requests in {elapsed:6.2f} s  = {total / elapsed:7.1f} req/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--server", choices=["emulator", "scim2"], default="emulator")
    parser.add_argument("--users", type=int, default=300)
    args = parser.parse_args()
    kind = args.server
    with server(kind) as (url, profile):
        print(f"server: {kind} ({profile} profile), {args.users} users x create+update+find")
        for latency in (0.0, 0.020):
            for concurrency in (4, 16):
                print(asyncio.run(measure(url, profile, latency, args.users, concurrency)))


if __name__ == "__main__":
    main()

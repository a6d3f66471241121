"""Creates per second of the emulator with and without `--data`, as the directory grows.

Usage: .venv/bin/python -m bench.emulator_data [--users 2500] [--window 500]

Runs `scimsync emulate atlassian` in a subprocess and creates users one after another
over one keep-alive connection, so the figure is the server's cost per write. It prints
the rate of the last `--window` creates (around 2,000 users by default), stops the
emulator with SIGTERM, starts it again on the same file and counts the users it kept.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2

from scimsync.emulator import PREFIX
from scimsync.sandbox.ports import listening_port

TOKEN = "bench-token"


def start(data: Path | None) -> tuple[subprocess.Popen[bytes], int]:
    """The emulator on a free port it binds itself, and that port, once it listens."""
    argv = [sys.executable, "-m", "scimsync", "emulate", "atlassian"]
    argv += ["--port", "0", "--token", TOKEN]
    if data is not None:
        argv += ["--data", str(data)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    return process, listening_port(process, timeout=30)  # it has loaded --data by then


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=60)


def user(index: int) -> dict[str, object]:
    name = f"bench{index:06d}@example.com"
    return {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": name,
        "displayName": f"Bench User {index}",
        "name": {"givenName": "Bench", "familyName": f"User {index}"},
        "emails": [{"value": name, "type": "work", "primary": True}],
    }


def measure(users: int, window: int, data: Path | None) -> tuple[float, float, int | None]:
    """(creates/s overall, creates/s over the last `window`, users kept after a restart)."""
    process, port = start(data)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with httpx2.Client(base_url=f"http://127.0.0.1:{port}{PREFIX}", headers=headers) as http:
            began = time.perf_counter()
            window_began = began
            for index in range(users):
                if index == users - window:
                    window_began = time.perf_counter()
                http.post("/Users", json=user(index)).raise_for_status()
            ended = time.perf_counter()
    finally:
        stop(process)
    kept = None
    if data is not None:
        process, port = start(data)  # the data file is what is kept, not the port
        try:
            listed = httpx2.get(
                f"http://127.0.0.1:{port}{PREFIX}/Users", headers=headers, params={"count": 1}
            )
            kept = int(listed.json()["totalResults"])
        finally:
            stop(process)
    return users / (ended - began), window / (ended - window_began), kept


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2500)
    parser.add_argument("--window", type=int, default=500)
    args = parser.parse_args()
    print(f"| emulator | creates/s, all {args.users} | creates/s, last {args.window} | kept |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="scimsync-bench-") as work:
        for label, data in (("in memory", None), ("--data FILE", Path(work) / "data.json")):
            overall, last, kept = measure(args.users, args.window, data)
            shown = "" if kept is None else str(kept)
            print(f"| {label} | {overall:,.0f} | {last:,.0f} | {shown} |", flush=True)
            if kept is not None and kept != args.users:
                print(f"lost users: kept {kept} of {args.users}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

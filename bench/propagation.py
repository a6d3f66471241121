"""How long a directory change takes to reach the target under `scimsync run`.

Run: .venv/bin/python -m bench.propagation [--users 1000] [--interval 5] [--changes 5]

A real slapd, the emulator in a subprocess, and the daemon in another. After the first
cycle, each round edits one user's title in the directory and polls the target until it
shows the new value; the time between is the propagation delay.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2
import ldap

from bench.read_directory import populate
from bench.sync_scale import AUTH, emulator, write_config
from scimsync.emulator import PREFIX
from scimsync.sandbox.slapd import Slapd


def title_of(client: httpx2.Client, user_name: str) -> str | None:
    response = client.get("Users", params={"filter": f'userName eq "{user_name}"'})
    resources = response.json().get("Resources", [])
    return str(resources[0].get("title")) if resources else None


def wait_for(client: httpx2.Client, user_name: str, title: str, timeout: float) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if title_of(client, user_name) == title:
            return time.perf_counter() - started
        time.sleep(0.02)
    raise TimeoutError(f"{user_name} did not reach the target within {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--changes", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Slapd() as server, emulator(0) as url:
        base = populate(server, args.users, 10)
        config = write_config(
            Path(tmp),
            server,
            base,
            url + PREFIX,
            concurrency=4,
            interval=args.interval,
            metrics_listen="127.0.0.1:0",  # run binds a free port itself
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "scimsync", "--config", str(config), "run"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        delays: list[float] = []
        try:
            with httpx2.Client(base_url=url + PREFIX + "/", headers=AUTH, timeout=10) as client:
                wait_for(client, "u000000@example.com", "Engineer", timeout=300)
                conn = server.admin()
                for round_ in range(args.changes):
                    title = f"Title {round_}"
                    dn = f"uid=u{round_:06d},ou=people,{base}"
                    conn.modify_s(dn, [(ldap.MOD_REPLACE, "title", [title.encode()])])
                    delay = wait_for(client, f"u{round_:06d}@example.com", title, timeout=60)
                    delays.append(delay)
                    # Spread the edits over the daemon's cycle.
                    time.sleep(args.interval * (round_ + 1) / (args.changes + 1))
                conn.unbind_s()
        finally:
            daemon.terminate()
            daemon.wait(30)
    print(f"| interval s | changes | min s | median s | max s |\n|---|---|---|---|---|\n"
          f"| {args.interval:g} | {len(delays)} | {min(delays):.2f} | "
          f"{statistics.median(delays):.2f} | {max(delays):.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()

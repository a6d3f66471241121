"""Soak: `scimsync run` for hours under changes and repeated outages; RSS, fds, store flat?

Run: .venv/bin/python -m bench soak [--minutes 240] [--outage-every 300] [--warmup 60]

A real slapd, the emulator (with --data, so a restart keeps its users) and `scimsync run`
(interval 2 s), each in a process of its own. Every `--change-every` seconds one user's
title changes in the directory. Every `--outage-every` seconds the target goes away for
60 s (the emulator stopped, or answering 503 to everything, in turn) and, later in the
period, slapd is stopped for 30 s. Once a minute the daemon's RSS (/proc/PID/status
VmRSS), open file descriptors, threads, and the store's file sizes (database + WAL) are
sampled. The table ends with each figure's change from the baseline (the first sample
after `--warmup` minutes, in the same run) to the end, and its least-squares slope per
hour over the samples after the warm-up: flat means the slope is near zero, not that the
figure never moves (RSS moves with each cycle's garbage and the allocator).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
import ldap

from bench.read_directory import populate
from bench.sync_scale import AUTH, TOKEN, write_config
from scimsync.emulator import PREFIX
from scimsync.sandbox.lifecycle import terminate
from scimsync.sandbox.ports import listening_port
from scimsync.sandbox.slapd import Slapd


class RestartableSlapd(Slapd):
    """The sandbox's slapd, which can be stopped and started again on its data and ports."""

    def down(self) -> None:
        terminate(self._process, 10.0)

    def up(self) -> None:
        self._launch()  # on the ports of the first start


class Emulator:
    """`scimsync emulate atlassian --data FILE`, stopped and started at will on one port.

    The first `up()` lets it bind a free port itself; every later one asks for that port
    again, since the daemon's config names it.
    """

    def __init__(self, data: Path) -> None:
        self.port = 0
        self.data = data
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        argv = [sys.executable, "-m", "scimsync.emulator", "--port", str(self.port)]
        argv += ["--token", TOKEN, "--data", str(self.data)]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.port = listening_port(self.process, timeout=60)  # --data loaded by then

    def down(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.terminate()
            process.wait(60)  # it saves its data on the way out

    def faults(self, rate: float) -> None:
        httpx2.post(
            f"{self.url}/_emulator/config", json={"fault_rate": rate}, headers=AUTH, timeout=10
        ).raise_for_status()


@dataclass
class Sample:
    minute: float
    rss_kb: int
    fds: int
    threads: int
    store_kb: float
    wal_kb: float
    events: str


def sample(pid: int, state: Path, minute: float, events: str) -> Sample:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kb = int(fields["VmRSS"].split()[0])
    threads = int(fields["Threads"])
    fds = len(os.listdir(f"/proc/{pid}/fd"))

    def size_kb(path: Path) -> float:
        return path.stat().st_size / 1024 if path.exists() else 0.0

    wal = state.with_name(state.name + "-wal")
    return Sample(minute, rss_kb, fds, threads, size_kb(state), size_kb(wal), events)


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minute, value), per hour."""
    if len(points) < 2:
        return 0.0
    minutes = [m for m, _ in points]
    values = [v for _, v in points]
    return statistics.linear_regression(minutes, values).slope * 60


@contextmanager
def daemon(config: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = (config.parent / "run.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "scimsync", "--config", str(config), "run"],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        log.close()


class Outages:
    """Runs the outage schedule in a thread; `events()` says what happened since last asked."""

    def __init__(
        self, server: RestartableSlapd, target: Emulator, every: float, stop: threading.Event
    ) -> None:
        self.server, self.target, self.every, self.stop = server, target, every, stop
        self.directory_down = threading.Event()
        self._events: list[str] = []
        self._lock = threading.Lock()
        self.count = {"target": 0, "directory": 0}

    def note(self, event: str) -> None:
        with self._lock:
            self._events.append(event)

    def events(self) -> str:
        with self._lock:
            taken, self._events = self._events, []
        return ", ".join(taken)

    def run(self) -> None:
        kinds = ("stopped", "503")
        gap = (self.every - 90) / 2  # a period holds both outages and two quiet gaps
        while not self.stop.wait(gap):
            kind = kinds[self.count["target"] % 2]
            self.note(f"target {kind}")
            if kind == "stopped":
                self.target.down()
                self.stop.wait(60)
                self.target.up()
            else:
                self.target.faults(1.0)
                self.stop.wait(60)
                self.target.faults(0.0)
            self.count["target"] += 1
            if self.stop.wait(gap):
                return
            self.note("slapd stopped")
            self.directory_down.set()
            self.server.down()
            self.stop.wait(30)
            self.server.up()
            self.directory_down.clear()
            self.count["directory"] += 1


def change_titles(
    server: Slapd, base: str, users: int, every: float, outages: Outages, stop: threading.Event
) -> int:
    """Edits one user's title every `every` seconds until stopped; returns how many."""
    changes = 0
    while not stop.wait(every):
        if outages.directory_down.is_set():
            continue
        dn = f"uid=u{changes % users:06d},ou=people,{base}"
        try:
            conn = server.admin()
            conn.modify_s(dn, [(ldap.MOD_REPLACE, "title", [f"Title {changes}".encode()])])
            conn.unbind_s()
            changes += 1
        except ldap.LDAPError:  # slapd went down between the check and the edit
            continue
    return changes


def title_of(url: str, user_name: str) -> str | None:
    response = httpx2.get(
        f"{url}{PREFIX}/Users",
        params={"filter": f'userName eq "{user_name}"'},
        headers=AUTH,
        timeout=10,
    )
    resources = response.json().get("Resources", [])
    return str(resources[0].get("title")) if resources else None


def print_table(samples: list[Sample], warmup: float) -> None:
    print("| min | RSS MB | fds | threads | store KB | WAL KB | since last sample |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for s in samples:
        print(f"| {s.minute:.1f} | {s.rss_kb / 1024:.1f} | {s.fds} | {s.threads} | "
              f"{s.store_kb:.0f} | {s.wal_kb:.0f} | {s.events} |")  # fmt: skip
    after = [s for s in samples if s.minute >= warmup]
    if len(after) < 2:
        print("\n(too few samples after the warm-up for a slope)")
        return
    base, last = after[0], after[-1]
    print(f"\nbaseline: minute {base.minute:.0f} (first sample after a {warmup:g}-minute warm-up);"
          f" end: minute {last.minute:.0f}\n")  # fmt: skip
    print("| figure | baseline | end | change | max after warm-up | slope per hour |")
    print("|---|---:|---:|---:|---:|---:|")
    figures = (
        ("RSS MB", lambda s: s.rss_kb / 1024),
        ("open fds", lambda s: float(s.fds)),
        ("threads", lambda s: float(s.threads)),
        ("store + WAL KB", lambda s: s.store_kb + s.wal_kb),
    )
    for name, value in figures:
        slope = slope_per_hour([(s.minute, value(s)) for s in after])
        print(f"| {name} | {value(base):.1f} | {value(last):.1f} | "
              f"{value(last) - value(base):+.1f} | {max(value(s) for s in after):.1f} | "
              f"{slope:+.2f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=float, default=240.0)
    parser.add_argument("--outage-every", type=float, default=300.0, help="seconds")
    parser.add_argument("--warmup", type=float, default=60.0, help="minutes before the baseline")
    parser.add_argument("--change-every", type=float, default=5.0, help="seconds")
    parser.add_argument("--sample-every", type=float, default=60.0, help="seconds")
    parser.add_argument("--interval", type=float, default=2.0, help="the daemon's interval")
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--groups", type=int, default=20)
    args = parser.parse_args()
    if args.outage_every < 120:
        parser.error("--outage-every: at least 120 s (a 60 s and a 30 s outage, and gaps)")
    warmup = min(args.warmup, args.minutes / 3)
    print(f"soak: {args.minutes:g} min, {args.users} users, interval {args.interval:g} s, "
          f"a change every {args.change_every:g} s, outages every {args.outage_every:g} s, "
          f"baseline after {warmup:g} min", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="scimsync-soak-") as tmp, RestartableSlapd() as server:
        work = Path(tmp)
        base = populate(server, args.users, args.groups)
        target = Emulator(work / "emulator.json")
        target.up()
        config = write_config(
            work,
            server,
            base,
            target.url + PREFIX,
            concurrency=4,
            interval=args.interval,
            metrics_listen="127.0.0.1:0",  # run binds a free port itself
        )
        stop = threading.Event()
        outages = Outages(server, target, args.outage_every, stop)
        samples: list[Sample] = []
        try:
            with daemon(config) as run:
                started = time.monotonic()
                scheduler = threading.Thread(target=outages.run, daemon=True)
                scheduler.start()
                changes = 0

                def edit() -> None:
                    nonlocal changes
                    changes = change_titles(
                        server, base, args.users, args.change_every, outages, stop
                    )

                editor = threading.Thread(target=edit, daemon=True)
                editor.start()
                end = started + args.minutes * 60
                while time.monotonic() < end:
                    time.sleep(min(args.sample_every, max(0.0, end - time.monotonic())))
                    if run.poll() is not None:
                        raise RuntimeError(f"scimsync run exited with {run.returncode}")
                    minute = (time.monotonic() - started) / 60
                    samples.append(sample(run.pid, work / "state.db", minute, outages.events()))
                    print(f"  minute {minute:.0f}: RSS {samples[-1].rss_kb / 1024:.1f} MB",
                          file=sys.stderr, flush=True)  # fmt: skip
                stop.set()
                scheduler.join()
                editor.join()
                # The last edit reaches the target: the daemon still works after it all.
                last = (changes - 1) % args.users
                deadline = time.monotonic() + 120
                while title_of(target.url, f"u{last:06d}@example.com") != f"Title {changes - 1}":
                    if time.monotonic() > deadline:
                        raise RuntimeError("the last change did not reach the target")
                    time.sleep(0.5)
        finally:
            stop.set()
            target.down()
        print(f"\n{changes} directory changes, {outages.count['target']} target outages (60 s), "
              f"{outages.count['directory']} directory outages (30 s); the last change "
              "reached the target\n")  # fmt: skip
        print_table(samples, warmup)


if __name__ == "__main__":
    main()

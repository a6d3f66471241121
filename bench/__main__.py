"""`make bench`: every benchmark, each printing its own table."""

from __future__ import annotations

import subprocess
import sys

BENCHES = (
    ("reading the directory", ["-m", "bench.read_directory"]),
    ("a quiet cycle's searches on 389-ds and slapd", ["-m", "bench.quiet_cycles"]),
    ("SCIM client throughput", ["bench/target_throughput.py", "--server", "emulator"]),
    ("whole cycles at scale", ["-m", "bench.sync_scale", *sys.argv[1:]]),
    ("a change's way to the target under `scimsync run`", ["-m", "bench.propagation"]),
    ("the emulator's writes with and without --data", ["-m", "bench.emulator_data"]),
)

# Benches too long for `make bench`, run by name: `python -m bench soak --minutes 240`.
BY_NAME = {"soak": ["-m", "bench.soak"]}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in BY_NAME:
        argv = [*BY_NAME[sys.argv[1]], *sys.argv[2:]]
        return subprocess.run([sys.executable, *argv], check=False).returncode
    failed = 0
    for title, argv in BENCHES:
        print(f"\n## {title}\n", flush=True)
        failed += subprocess.run([sys.executable, *argv], check=False).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

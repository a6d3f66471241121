"""`make bench`: every benchmark, each printing its own table."""

from __future__ import annotations

import subprocess
import sys

BENCHES = (
    ("reading the directory", ["-m", "bench.read_directory"]),
    ("SCIM client throughput", ["bench/target_throughput.py", "--server", "emulator"]),
    ("whole cycles at scale", ["-m", "bench.sync_scale", *sys.argv[1:]]),
    ("a change's way to the target under `scimsync run`", ["-m", "bench.propagation"]),
    ("the emulator's writes with and without --data", ["-m", "bench.emulator_data"]),
)


def main() -> int:
    failed = 0
    for title, argv in BENCHES:
        print(f"\n## {title}\n", flush=True)
        failed += subprocess.run([sys.executable, *argv], check=False).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

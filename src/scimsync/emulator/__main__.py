"""`python -m scimsync.emulator --port P --token T ...`: the emulator as a subprocess."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from scimsync.emulator.running import serve


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m scimsync.emulator", description="Local Atlassian Cloud SCIM emulator"
    )
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--token", default=os.environ.get("SCIMSYNC_EMULATOR_TOKEN"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--rename", choices=("allowed", "immutable"), default="allowed")
    parser.add_argument("--rate", type=float, help="requests per second before 429")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--lost-response-rate", type=float, default=0.0)
    parser.add_argument("--data", type=Path, help="keep the directory in this JSON file")
    parser.add_argument("--seed", type=int, help="seed the fault dice, for reproducible runs")
    args = parser.parse_args()
    if not args.token:
        parser.error("--token (or SCIMSYNC_EMULATOR_TOKEN) is required")
    serve(
        args.port,
        args.token,
        host=args.host,
        rename=args.rename,
        rate=args.rate,
        latency_ms=args.latency_ms,
        fault_rate=args.fault_rate,
        lost_response_rate=args.lost_response_rate,
        data_file=args.data,
        seed=args.seed,
    )


if __name__ == "__main__":
    main()

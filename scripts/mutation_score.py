"""The mutation score of `make mutate`'s last run, per module, less the accepted survivors.

Usage: mutation_score.py MUTANTS_DIR [MUTANTS_DIR ...]

Reads mutmut's results (DIR/**/*.py.meta) of each pass; a mutant killed in any pass is
killed. Accepted survivors (equivalent mutants) are in scripts/mutation_accepted.txt, one
per line as `name  # why it is equivalent`. Prints a table and the survivors not accepted;
exits 1 when the score is under the target or a mutant was never run.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

TARGET = 0.90
ACCEPTED = Path(__file__).with_name("mutation_accepted.txt")
# mutmut's exit codes per mutant (mutmut/stats.py): a failing test run, a timeout or a
# type-check error all mean the mutant was noticed; 0 survived; 5 and 33, no test ran it.
KILLED = frozenset({1, 3, 24, -24, 36, 37, 152, 255})


def accepted() -> dict[str, str]:
    """Mutant name -> why it is equivalent."""
    reasons: dict[str, str] = {}
    for line in ACCEPTED.read_text().splitlines():
        name, _, reason = line.partition("#")
        if name.strip():
            reasons[name.strip()] = reason.strip()
    return reasons


def results(dirs: list[Path]) -> dict[str, dict[str, int | None]]:
    """Module -> mutant -> the exit code that counts (a kill in any pass wins)."""
    merged: dict[str, dict[str, int | None]] = {}
    for root in dirs:
        for meta in sorted(root.glob("**/*.py.meta")):
            module = str(meta.relative_to(root))[: -len(".meta")]
            codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
            mine = merged.setdefault(module, {})
            for name, code in codes.items():
                if mine.get(name) not in KILLED and code is not None:
                    mine[name] = code
                else:
                    mine.setdefault(name, code)
    return merged


def tally(codes: dict[str, int | None], equivalent: dict[str, str]) -> Counter[str]:
    count: Counter[str] = Counter()
    for name, code in codes.items():
        if name in equivalent:
            count["accepted"] += 1
        elif code in KILLED:
            count["killed"] += 1
        elif code is None:
            count["not run"] += 1
        else:
            count["survived"] += 1
    return count


def score(count: Counter[str]) -> float:
    judged = count["killed"] + count["survived"]
    return count["killed"] / judged if judged else 1.0


def row(module: str, count: Counter[str]) -> str:
    return (
        f"| {module} | {sum(count.values())} | {count['killed']} | {count['accepted']} | "
        f"{count['survived']} | {count['not run']} | {score(count):.1%} |"
    )


def main(argv: list[str]) -> int:
    merged = results([Path(arg) for arg in argv] or [Path("mutants")])
    if not merged:
        print("no mutation results: run `make mutate` first", file=sys.stderr)
        return 2
    equivalent = accepted()
    total: Counter[str] = Counter()
    print("| module | mutants | killed | accepted | survived | not run | score |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for module, codes in sorted(merged.items()):
        count = tally(codes, equivalent)
        total.update(count)
        print(row(module, count))
    print(row("all", total))
    names = {name for codes in merged.values() for name in codes}
    for codes in merged.values():
        for name, code in sorted(codes.items()):
            if name not in equivalent and code is not None and code not in KILLED:
                print(f"survived: {name}")
    for name in sorted(equivalent.keys() - names):
        print(f"accepted but no longer a mutant (drop it from {ACCEPTED.name}): {name}")
    return 0 if score(total) >= TARGET and not total["not run"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""`make mutate`'s passes: each layer's mutants against the tests of that layer.

Usage: mutate.py [--retest] [PASS ...]   (default: every pass, then the score)

--retest runs again the mutants that survived the pass's last run (after tests were added:
mutmut keeps a verdict until the mutated function changes, not when the tests do).

A pass mutates some modules and runs, for each mutant, the tests of its selection that
cover the mutated function (mutmut's own test selection). Narrowing the selection to the
layer keeps a survivor's cost to seconds, so the whole run finishes in about an hour on two
cores, and it asks more of the tests than the full suite would: a planner mutant must be
caught by the planner's tests, not by an end-to-end cycle that happens to cross it.

Each pass runs in build/mutate/NAME, a copy of src/ and tests/ with a pyproject.toml whose
[tool.mutmut] is the pass's; mutmut keeps its results there (mutants/), so a second run
retests only what changed. The score is scripts/mutation_score.py over every pass.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mutation_score import KILLED, results  # scripts/, this script's own directory

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "mutate"
MUTMUT = ROOT / ".venv" / "bin" / "mutmut"


@dataclass(frozen=True)
class Pass:
    name: str
    modules: tuple[str, ...]  # paths under src/scimsync
    tests: tuple[str, ...]  # files under tests/
    marks: str = "not ad and not slow"
    mutants: tuple[str, ...] = ()  # mutmut name patterns; none: every mutant of the modules
    workers: int | None = None  # None: one per core


STATE = tuple(
    f"state/{name}.py"
    for name in ("store", "base", "links", "journal", "failures", "held", "watermarks")
)

PASSES = (
    # The planner and the guard are pure: their own tests must catch every change.
    Pass("core", ("plan.py", "guard.py"), ("test_plan.py", "test_guard.py", "test_model.py")),
    # The store, on SQLite and (when the server is there) PostgreSQL.
    Pass("store", STATE, ("test_state.py", "test_channels.py")),
    # The executor, against the emulator: its writes and what it records of them.
    Pass(
        "executor",
        ("apply.py",),
        (
            "test_engine_e2e.py",
            "test_isolation.py",
            "test_cycle_correctness.py",
            "test_membership_convergence.py",
            "test_group_drift.py",
            "test_user_option.py",
            "test_atlassian_tenants.py",
            "test_faults.py",
        ),
    ),
    # Change detection against slapd (syncrepl and timestamps)...
    Pass(
        "changes",
        ("directory/changes.py",),
        (
            "test_directory_changes.py",
            "test_change_set.py",
            "test_incremental.py",
            "test_directory_openldap.py",
            "test_directory_389ds.py",
        ),
    ),
    # ...and what only AD exercises (the uSN tracker, tombstones telling groups from users,
    # the DC's clock) against the Samba AD DC, one at a time (the DC has fixed ports).
    Pass(
        "changes-ad",
        ("directory/changes.py",),
        ("test_directory_ad.py", "test_engine_ad.py", "test_directory_changes.py"),
        marks="ad",
        mutants=(
            "scimsync.directory.changes.xǁUsnTrackerǁ*",
            "scimsync.directory.changes.xǁTimestampTrackerǁ_server_now*",
            "scimsync.directory.changes.x__is_group*",
        ),
        workers=1,
    ),
)


def config(chosen: Pass) -> str:
    """The pass's [tool.mutmut], after everything else of pyproject.toml."""
    head, _, _ = (ROOT / "pyproject.toml").read_text().partition("[tool.mutmut]")

    def strings(values: tuple[str, ...]) -> str:
        return "[" + ", ".join(f'"{value}"' for value in values) + "]"

    only = strings(tuple(f"src/scimsync/{module}" for module in chosen.modules))
    tests = strings(tuple(f"tests/{test}" for test in chosen.tests))
    args = strings(("-m", chosen.marks, "-p", "no:cacheprovider", "-q"))
    return (
        f"{head}[tool.mutmut]\n"
        f'source_paths = ["src"]\n'
        f"only_mutate = {only}\n"
        f"pytest_add_cli_args = {args}\n"
        f"pytest_add_cli_args_test_selection = {tests}\n"
    )


def survivors(where: Path) -> list[str]:
    """The mutants of a pass's last run that no test noticed (or no test ran)."""
    return sorted(
        name
        for codes in results([where / "mutants"]).values()
        for name, code in codes.items()
        if code is not None and code not in KILLED
    )


def run(chosen: Pass, *, retest: bool = False) -> None:
    where = BUILD / chosen.name
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["rsync", "-a", "--delete", "--exclude", "__pycache__", "src", "tests", f"{where}/"],
        cwd=ROOT,
        check=True,
    )
    (where / "pyproject.toml").write_text(config(chosen))
    command = [str(MUTMUT), "run", "--max-children", str(chosen.workers or os.cpu_count() or 2)]
    if retest:
        again = survivors(where)
        if not again:
            print(f"{chosen.name}: no survivors to retest")
            return
        command += again
    else:
        command += chosen.mutants
    log = BUILD / f"{chosen.name}.log"
    with log.open("w") as out:
        done = subprocess.run(command, check=False, cwd=where, stdout=out, stderr=subprocess.STDOUT)
    # mutmut redraws its tally with \r; the last one is the pass's result.
    tallies = [line for line in log.read_text().replace("\r", "\n").splitlines() if "/" in line]
    print(f"{chosen.name}: {tallies[-1].strip() if tallies else 'no tally'}")
    if done.returncode:
        print("\n".join(log.read_text().splitlines()[-20:]), file=sys.stderr)
        sys.exit(f"mutmut failed in pass {chosen.name!r}; its log: {log}")


def main(args: list[str]) -> int:
    retest = "--retest" in args
    names = [arg for arg in args if arg != "--retest"]
    known = {chosen.name: chosen for chosen in PASSES}
    unknown = [name for name in names if name not in known]
    if unknown:
        sys.exit(f"no such pass: {', '.join(unknown)} (passes: {', '.join(known)})")
    for name in names or list(known):
        run(known[name], retest=retest)
    dirs = [str(BUILD / chosen.name / "mutants") for chosen in PASSES]
    score = [sys.executable, str(ROOT / "scripts" / "mutation_score.py"), *dirs]
    return subprocess.run(score, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

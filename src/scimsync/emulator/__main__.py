"""`python -m scimsync.emulator --port P --token T ...`: `scimsync emulate atlassian`, for
scripts and tests that start the emulator as a subprocess; one set of options for both."""

from __future__ import annotations

import typer

from scimsync.cli import emulate_atlassian


def main() -> None:
    typer.run(emulate_atlassian)


if __name__ == "__main__":
    main()

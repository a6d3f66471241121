"""The exit codes and the root of scimsync's errors; each branch says what its caller does.

A leaf module: every package's errors derive from these, so it imports nothing of scimsync.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar


class ExitCode(IntEnum):
    """What a command's exit status means (README, "exit code"), the same for every command."""

    OK = 0
    FAILED = 1  # `sync`: some records failed or were not applied (interrupted)
    CONFIG = 2  # a configuration or usage error
    HELD = 3  # `sync`: deprovisioning held by the safety threshold
    UNREACHABLE = 4  # the source or the target unreachable, or the API key refused
    STATE = 5  # the state store cannot be opened or written, or the channel is held
    INTERRUPTED = 130  # stopped at once by SIGINT: 128 + the signal, as shells report it


class ScimsyncError(Exception):
    """Any error of scimsync's own: its message is one line for the user.

    `exit_code` is the command's exit status when this error ends the command.
    """

    exit_code: ClassVar[ExitCode] = ExitCode.FAILED


class ConfigurationError(ScimsyncError):
    """The configuration (or the command line) is at fault: no later cycle can do better,
    so it ends `run` too."""

    exit_code = ExitCode.CONFIG


class CycleError(ScimsyncError):
    """The cycle cannot go on (source, target or store unavailable, API key refused); the
    next cycle may succeed, so `run` backs off and retries."""

    exit_code = ExitCode.UNREACHABLE


class RecordError(ScimsyncError):
    """One record fails (a SCIM refusal for one object, a template over its limits) and
    the cycle goes on; `sync` then exits 1. A subclass met where no one record is at stake
    (a listing before the first write) ends the cycle, so it sets the exit code of that."""

    exit_code = ExitCode.FAILED

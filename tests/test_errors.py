"""The error tree's contract: each error's branch says what its caller does, and carries
the exit code the command ends with."""

from __future__ import annotations

import pytest
import typer

from scimsync import cli
from scimsync import daemon as daemon_module
from scimsync.config import ConfigError
from scimsync.directory import (
    DirectoryAuthError,
    DirectoryError,
    DirectoryUnreachable,
    NoSuchEntry,
    WatermarkLost,
)
from scimsync.directory.errors import SyncUnavailable
from scimsync.emulator.errors import EmulatorError
from scimsync.errors import (
    ConfigurationError,
    CycleError,
    ExitCode,
    RecordError,
    ScimsyncError,
)
from scimsync.mapping import MappingConfigError, TemplateLimitError
from scimsync.rekey import RekeyRefusedError
from scimsync.state import ChannelLocked, StateError
from scimsync.target import errors as target

CONFIG, CYCLE, RECORD = ConfigurationError, CycleError, RecordError

# Every error class scimsync defines: its branch, and the exit code it carries.
TREE: dict[type[ScimsyncError], tuple[type[ScimsyncError], ExitCode]] = {
    ConfigError: (CONFIG, ExitCode.CONFIG),
    RekeyRefusedError: (CONFIG, ExitCode.CONFIG),
    MappingConfigError: (CONFIG, ExitCode.CONFIG),
    target.NotScim: (CONFIG, ExitCode.CONFIG),
    DirectoryError: (CYCLE, ExitCode.UNREACHABLE),
    DirectoryUnreachable: (CYCLE, ExitCode.UNREACHABLE),
    DirectoryAuthError: (CYCLE, ExitCode.UNREACHABLE),
    NoSuchEntry: (CYCLE, ExitCode.UNREACHABLE),
    WatermarkLost: (CYCLE, ExitCode.UNREACHABLE),
    SyncUnavailable: (CYCLE, ExitCode.UNREACHABLE),  # the tracker makes it a WatermarkLost
    target.TargetUnreachable: (CYCLE, ExitCode.UNREACHABLE),
    target.Unauthorized: (CYCLE, ExitCode.UNREACHABLE),
    target.BrokenListing: (CYCLE, ExitCode.UNREACHABLE),
    StateError: (CYCLE, ExitCode.STATE),
    ChannelLocked: (CYCLE, ExitCode.STATE),
    daemon_module.MostOperationsFailed: (CYCLE, ExitCode.UNREACHABLE),
    target.ScimError: (RECORD, ExitCode.UNREACHABLE),
    target.Uniqueness: (RECORD, ExitCode.UNREACHABLE),
    target.EmailTaken: (RECORD, ExitCode.UNREACHABLE),
    target.Mutability: (RECORD, ExitCode.UNREACHABLE),
    target.RenameRefused: (RECORD, ExitCode.UNREACHABLE),
    target.InvalidFilter: (RECORD, ExitCode.UNREACHABLE),
    target.InvalidValue: (RECORD, ExitCode.UNREACHABLE),
    target.NotFound: (RECORD, ExitCode.UNREACHABLE),
    target.RateLimited: (RECORD, ExitCode.UNREACHABLE),
    target.ServerError: (RECORD, ExitCode.UNREACHABLE),
    target.InvalidResponse: (RECORD, ExitCode.UNREACHABLE),
    target.ResponseTooLarge: (RECORD, ExitCode.UNREACHABLE),
    TemplateLimitError: (RECORD, ExitCode.FAILED),
}


def branch(cls: type[ScimsyncError]) -> type[ScimsyncError]:
    """As callers decide: a CycleError first, since a 401 is a SCIM answer too."""
    return next(b for b in (CONFIG, CYCLE, RECORD) if issubclass(cls, b))


@pytest.mark.parametrize(
    ("cls", "expected"), [pytest.param(c, e, id=c.__name__) for c, e in TREE.items()]
)
def test_each_error_has_its_branch_and_exit_code(
    cls: type[ScimsyncError], expected: tuple[type[ScimsyncError], ExitCode]
) -> None:
    assert (branch(cls), cls.exit_code) == expected


def every_subclass(cls: type[ScimsyncError]) -> set[type[ScimsyncError]]:
    direct = set(cls.__subclasses__())
    return direct.union(*(every_subclass(sub) for sub in direct))


def test_the_table_names_every_error_scimsync_defines() -> None:
    """A new error class is placed in the tree on purpose, not by its base's default."""
    defined = {
        cls
        for cls in every_subclass(ScimsyncError)
        if cls.__module__.startswith("scimsync.") and cls.__module__ != "scimsync.errors"
    }
    assert defined == set(TREE)


def test_the_emulator_refusal_is_no_client_error() -> None:
    # The server side of a SCIM error: never caught as a scimsync error by the client.
    assert not issubclass(EmulatorError, ScimsyncError)
    assert EmulatorError.__name__ != target.ScimError.__name__


ERRORS: list[tuple[ScimsyncError, ExitCode, str]] = [
    (MappingConfigError("mapping.userName: required"), ExitCode.CONFIG, "mapping.userName"),
    (ChannelLocked("channel 'x' is locked"), ExitCode.STATE, "state: channel 'x' is locked"),
    (target.TargetUnreachable("http://t", "refused"), ExitCode.UNREACHABLE, "http://t"),
    (target.Unauthorized(401, None, ""), ExitCode.UNREACHABLE, "rejected the API key"),
]


@pytest.mark.parametrize(
    ("error", "code", "line"), [pytest.param(*e, id=type(e[0]).__name__) for e in ERRORS]
)
def test_the_cli_exits_with_the_code_the_error_carries(
    error: ScimsyncError, code: ExitCode, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(typer.Exit) as stopped, cli.user_errors():
        raise error
    assert stopped.value.exit_code == code
    assert line in capsys.readouterr().err


class HeldElsewhereError(CycleError):
    exit_code = ExitCode.HELD


def test_the_cli_reads_the_code_from_the_error_not_a_list_of_classes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(typer.Exit) as stopped, cli.user_errors():
        raise HeldElsewhereError("held elsewhere")
    assert stopped.value.exit_code == ExitCode.HELD
    assert capsys.readouterr().err == "scimsync: held elsewhere\n"


def test_the_cli_leaves_other_errors_alone() -> None:
    with pytest.raises(ValueError, match="a bug"), cli.user_errors():
        raise ValueError("a bug")


def test_a_409_for_an_email_is_an_email_taken_error_naming_it() -> None:
    """Other 409s (a userName, a group name) stay plain Uniqueness errors."""

    body = {
        "status": "409",
        "detail": "Resource [USER]: with email[ann@example.com] already exists.",
    }
    taken = target.error_from_body(409, body, request="POST /Users")
    assert isinstance(taken, target.EmailTaken) and taken.email == "ann@example.com"
    assert str(taken).startswith("POST /Users: target answered 409: Resource [USER]")
    held = target.error_from_body(409, {"status": "409", "detail": "userName is taken"})
    assert type(held) is target.Uniqueness and "Atlassian account" not in str(held)
    unnamed = target.error_from_body(409, {"detail": "An account with this email exists"})
    assert isinstance(unnamed, target.EmailTaken) and unnamed.email is None
    assert "the email belongs to another Atlassian account" in str(unnamed)

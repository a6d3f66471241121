"""The store's errors: one line each, never holding a password."""

from __future__ import annotations

from scimsync.errors import CycleError, ExitCode


class StateError(CycleError):
    """The state store cannot be opened or used; the message is one line for the user."""

    exit_code = ExitCode.STATE


class ChannelLocked(StateError):  # noqa: N818 (the engine's interface names it)
    """Another scimsync instance is the active one for this channel."""

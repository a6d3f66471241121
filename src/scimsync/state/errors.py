"""The store's errors: one line each, never holding a password."""

from __future__ import annotations


class StateError(Exception):
    """The state store cannot be opened or used; the message is one line for the user."""


class ChannelLocked(StateError):  # noqa: N818 (the engine's interface names it)
    """Another scimsync instance is the active one for this channel."""

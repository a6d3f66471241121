"""What can go wrong reading the directory, each as one line for the user."""

from __future__ import annotations

from scimsync.errors import CycleError


class DirectoryError(CycleError):
    """Reading the directory failed; the message is one line naming what and where."""


class DirectoryUnreachable(DirectoryError):  # noqa: N818 - name fixed by the interface
    """The server is down, did not answer in time, or the TLS handshake failed."""


class DirectoryAuthError(DirectoryError):
    """The server refused the bind DN or password."""


class NoSuchEntry(DirectoryError):  # noqa: N818 - says what was found, as NO_SUCH_OBJECT does
    """An entry the configuration names (base_dn, a group_dn) does not exist."""


class SyncUnavailable(DirectoryError):  # noqa: N818 - says what the server lacks
    """The server refused the syncrepl control (RFC 4533): it has no syncprov (any more)."""

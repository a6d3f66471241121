"""The LDAP source: connection, paged search, scope, flavours (OpenLDAP, AD), members."""

from scimsync.directory.changes import ChangeSet, WatermarkLost
from scimsync.directory.errors import (
    DirectoryAuthError,
    DirectoryError,
    DirectoryUnreachable,
    NoSuchEntry,
)
from scimsync.directory.reader import LdapDirectory, Snapshot

__all__ = [
    "ChangeSet",
    "DirectoryAuthError",
    "DirectoryError",
    "DirectoryUnreachable",
    "LdapDirectory",
    "NoSuchEntry",
    "Snapshot",
    "WatermarkLost",
]

"""Typed SCIM errors: one line each, carrying status, scimType and detail, never the token."""

from __future__ import annotations

import re
from typing import Any

from scimsync.errors import ConfigurationError, CycleError, ExitCode, RecordError

_EMAIL = re.compile(r"[^\s\[\]()<>\"',;:]+@[^\s\[\]()<>\"',;:]+\.[A-Za-z]{2,}")
UNAUTHORIZED_MESSAGE = (
    "target rejected the API key (401): the directory API key is invalid or expired "
    "and must be rotated"
)


class ScimError(RecordError):
    """The target answered a request with a SCIM error: the executor fails that record.

    One met before the first write (a listing, a lookup) ends the cycle: exit 4.
    """

    exit_code = ExitCode.UNREACHABLE

    def __init__(
        self,
        status: int,
        scim_type: str | None,
        detail: str,
        *,
        request: str = "",
        after_retry: bool = False,
    ) -> None:
        self.status = status
        self.scim_type = scim_type
        self.detail = " ".join(detail.split())  # one line, whatever the server sent
        self.request = request  # "POST /Users": method and path, never the query or a header
        # Set when an earlier attempt of the same request may have reached the target
        # (its response was lost), so e.g. a 409 may be our own earlier write.
        self.after_retry = after_retry
        super().__init__(status, scim_type, self.detail)

    def __str__(self) -> str:
        kind = f" {self.scim_type}" if self.scim_type else ""
        where = f"{self.request}: " if self.request else ""
        detail = f": {self.detail}" if self.detail else ""
        return f"{where}target answered {self.status}{kind}{detail}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status!r}, {self.scim_type!r}, {self.detail!r})"


class Uniqueness(ScimError):  # noqa: N818 - the names the executor uses
    """409: a userName, email or group name the target already holds."""


class EmailTaken(Uniqueness):
    """409 for an email that another account holds: no retry of ours can fix it, so the
    cause says who must act (Atlassian KB, "email already exists" on provisioning)."""

    @property
    def email(self) -> str | None:
        found = _EMAIL.search(self.detail)
        return found.group(0) if found else None

    def __str__(self) -> str:
        whose = f"the email {self.email}" if self.email else "the email"
        answer = super().__str__().rstrip(".")
        return (
            f"{answer}: {whose} belongs to another Atlassian account; that account must give "
            "it up, or an organization admin unlinks it from its directory "
            "(admin.atlassian.com), and the next retry succeeds"
        )


class Mutability(ScimError):  # noqa: N818 - the names the executor uses
    """400 mutability: the target refuses to change a read-only or immutable attribute."""


class RenameRefused(Mutability):
    """The target refuses to rename a group in place."""

    def __str__(self) -> str:
        return (
            f"{super().__str__()} (the target refuses group renames in place; "
            "set options.group_rename: recreate to create a new group, move the members "
            "and delete the old one, which loses product access granted to the old group)"
        )


class InvalidFilter(ScimError):  # noqa: N818 - the names the executor uses
    """400 invalidFilter."""


class InvalidValue(ScimError):  # noqa: N818 - the names the executor uses
    """400 invalidValue, or a value this client knows the target will refuse."""


class NotFound(ScimError):  # noqa: N818 - the names the executor uses
    """404: the object is gone."""


class Unauthorized(ScimError, CycleError):  # noqa: N818 - the names the executor uses
    """401: the API key is wrong or expired; no request can succeed until it is rotated,
    so it ends the cycle wherever it is met."""

    def __str__(self) -> str:
        return UNAUTHORIZED_MESSAGE


class RateLimited(ScimError):  # noqa: N818 - the names the executor uses
    """429 still answered after every retry."""


class ServerError(ScimError):
    """5xx still answered after every retry."""


class InvalidResponse(ScimError):  # noqa: N818 - beside the executor's names
    """An answer scimsync cannot use: undecodable, not JSON, or not the shape SCIM gives it."""

    def __str__(self) -> str:
        where = f"{self.request}: " if self.request else ""
        status = f" ({self.status})" if self.status else ""
        return f"{where}unusable answer from the target{status}: {self.detail}"


class ResponseTooLarge(InvalidResponse):
    """A body over `target.max_response_bytes`, raw or decoded: refused, not read further."""


class BrokenListing(InvalidResponse, CycleError):  # noqa: N818 - beside the executor's names
    """A listing that does not page as RFC 7644 3.4.2.4 says: it ends the cycle."""


class TargetUnreachable(CycleError):  # noqa: N818
    """Connections refused, dropped or timed out on every retry."""

    def __init__(self, url: str, cause: str) -> None:
        self.url = url
        self.cause = " ".join(cause.split())
        super().__init__(url, self.cause)

    def __str__(self) -> str:
        return f"target {self.url} unreachable: {self.cause}"


class NotScim(ConfigurationError):  # noqa: N818
    """The server at target.url answers, but not as a SCIM 2.0 service provider: the URL in
    the config is at fault."""

    def __init__(self, url: str, cause: str) -> None:
        self.url = url
        self.cause = " ".join(cause.split())
        super().__init__(url, self.cause)

    def __str__(self) -> str:
        return f"target.url: {self.url} is not a SCIM 2.0 service: {self.cause}"


_BY_SCIM_TYPE: dict[str, type[ScimError]] = {
    "uniqueness": Uniqueness,
    "mutability": Mutability,
    "invalidFilter": InvalidFilter,
    "invalidValue": InvalidValue,
}
_BY_STATUS: dict[int, type[ScimError]] = {
    401: Unauthorized,
    404: NotFound,
    409: Uniqueness,
    429: RateLimited,
}


def error_from_body(
    http_status: int,
    body: Any,
    *,
    request: str = "",
    after_retry: bool = False,
    secret: str = "",
) -> ScimError:
    """The typed error for an error response. Atlassian sends `status` as a string."""
    scim_type: str | None = None
    detail = ""
    status = http_status
    if isinstance(body, dict):
        raw_type = body.get("scimType")
        scim_type = raw_type if isinstance(raw_type, str) and raw_type else None
        raw_detail = body.get("detail")
        detail = raw_detail if isinstance(raw_detail, str) else ""
        try:
            status = int(body.get("status", http_status))
        except (TypeError, ValueError):
            status = http_status
    if secret and secret in detail:
        detail = detail.replace(secret, "***")
    cls: type[ScimError]
    if status == 409 and "email" in detail.lower():
        cls = EmailTaken
    elif scim_type in _BY_SCIM_TYPE:
        cls = _BY_SCIM_TYPE[scim_type]
    elif http_status in _BY_STATUS:
        cls = _BY_STATUS[http_status]
    elif http_status >= 500:
        cls = ServerError
    else:
        cls = ScimError
    return cls(status, scim_type, detail, request=request, after_retry=after_retry)

"""SCIM errors as Atlassian shapes them."""

from __future__ import annotations

from typing import Any

ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"


class EmulatorError(Exception):
    """A request the emulator refuses; becomes a SCIM error body (the server side of what
    the client raises as scimsync.target.errors.ScimError)."""

    def __init__(self, status: int, detail: str, scim_type: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.scim_type = scim_type

    def body(self) -> dict[str, Any]:
        # Atlassian sends `status` as a string (atlassian-scim-api.md section 6).
        body: dict[str, Any] = {"schemas": [ERROR_SCHEMA], "status": str(self.status)}
        if self.scim_type:
            body["scimType"] = self.scim_type
        body["detail"] = self.detail
        return body


def invalid_value(detail: str) -> EmulatorError:
    return EmulatorError(400, detail, "invalidValue")


def not_found(kind: str, resource_id: str) -> EmulatorError:
    return EmulatorError(404, f"Resource [{kind}]: with id[{resource_id}] not found.")

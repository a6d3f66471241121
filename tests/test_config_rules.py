"""Config rules no other test meets: each refusal is the exact one line naming its key."""

from __future__ import annotations

from operator import attrgetter
from pathlib import Path
from typing import Any

import pytest

from scimsync import config
from scimsync.config import ConfigError
from tests.test_config import with_, write

MISSING = "/nonexistent/scimsync-test/ca.pem"


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_text("s3cret\n")
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param(
            {"source__bind_password": "pw", "source__bind_password_file": "{secret}"},
            "source: expected bind_password or bind_password_file, not both",
            id="password-and-password-file",
        ),
        pytest.param(
            {"target__token_file": "{secret}"},
            "target: expected token or token_file, not both",
            id="token-and-token-file",
        ),
        pytest.param(
            {"mapping": {"title": {"source": "title", "template": "{{ title }}"}}},
            "mapping.title: expected source or template, not both",
            id="source-and-template",
        ),
        pytest.param(
            {"source__account_status": {"attribute": "employeeType"}},
            "source.account_status: expected exactly one of disabled_if_present: true"
            " or disabled_value: VALUE",
            id="account-status-no-rule",
        ),
        pytest.param(
            {
                "source__account_status": {
                    "attribute": "employeeType",
                    "disabled_if_present": True,
                    "disabled_value": "disabled",
                }
            },
            "source.account_status: expected exactly one of disabled_if_present: true"
            " or disabled_value: VALUE",
            id="account-status-two-rules",
        ),
        pytest.param(
            {"source__ca_file": MISSING},
            f"source.ca_file: cannot read {MISSING}",
            id="source-ca-file-missing",
        ),
        pytest.param(
            {"target__ca_file": MISSING},
            f"target.ca_file: cannot read {MISSING}",
            id="target-ca-file-missing",
        ),
        pytest.param(
            {"source__bind_dn": "cn=${1ST},dc=example,dc=com"},
            "source.bind_dn: ${1ST} is not a valid variable name",
            id="variable-name-starting-with-a-digit",
        ),
        pytest.param(
            {"target__url": "https://${SCIM-HOST}/scim"},
            "target.url: ${SCIM-HOST} is not a valid variable name",
            id="variable-name-with-a-dash",
        ),
        pytest.param(
            {"interval": 0}, "interval: expected greater than 0, got 0", id="interval-zero"
        ),
        pytest.param(
            {"interval": -5}, "interval: expected greater than 0, got -5", id="interval-negative"
        ),
        pytest.param(
            {"audit_retention_days": 0},
            "audit_retention_days: expected greater than or equal to 1, got 0",
            id="audit-retention-zero",
        ),
        pytest.param(
            {"audit_retention_days": 1.5},
            "audit_retention_days: expected a whole number, got 1.5",
            id="audit-retention-fraction",
        ),
        pytest.param(
            {"source__connect_timeout": 0},
            "source.connect_timeout: expected greater than 0, got 0",
            id="connect-timeout-zero",
        ),
        pytest.param(
            {"target__max_concurrency": 0},
            "target.max_concurrency: expected greater than or equal to 1, got 0",
            id="max-concurrency-zero",
        ),
        pytest.param(
            {"target__max_concurrency": 65},
            "target.max_concurrency: expected less than or equal to 64, got 65",
            id="max-concurrency-above-64",
        ),
        pytest.param(
            {"target__membership_chunk_size": 0},
            "target.membership_chunk_size: expected greater than or equal to 1, got 0",
            id="membership-chunk-size-zero",
        ),
        pytest.param(
            {"target__membership_chunk_size": 1001},
            "target.membership_chunk_size: expected less than or equal to 1000, got 1001",
            id="membership-chunk-size-above-1000",
        ),
        pytest.param(
            {"options__max_deletions": -3},
            "options.max_deletions: expected a count >= 0, a percentage such as '5%',"
            " or '2% min 5', got -3",
            id="max-deletions-negative",
        ),
        pytest.param(
            {"options__group_rename": "rename"},
            "options.group_rename: expected in_place or recreate, got 'rename'",
            id="group-rename",
        ),
        pytest.param(
            {"options__match_users_by": "mail"},
            "options.match_users_by: expected userName or externalId, got 'mail'",
            id="match-users-by",
        ),
    ],
)
def test_a_refused_setting_is_the_exact_line_naming_its_key(
    tmp_path: Path, secret_file: Path, changes: dict[str, Any], expected: str
) -> None:
    filled = {
        key: str(secret_file) if value == "{secret}" else value for key, value in changes.items()
    }
    path = write(tmp_path, with_(**filled))
    with pytest.raises(ConfigError) as caught:
        config.load(path, env={"TOKEN": "t0k"})
    assert str(caught.value) == f"{path}: {expected}"


@pytest.mark.parametrize(
    ("changes", "attribute", "value"),
    [
        ({"interval": 0.5}, "interval", 0.5),
        ({"audit_retention_days": 1}, "audit_retention_days", 1),
        ({}, "audit_retention_days", 400),
        ({"target__max_concurrency": 64}, "target.max_concurrency", 64),
        ({"target__membership_chunk_size": 1}, "target.membership_chunk_size", 1),
        ({"options__max_deletions": 0}, "options.max_deletions", 0),
        ({"options__group_rename": "recreate"}, "options.group_rename", "recreate"),
        ({"options__match_users_by": "externalId"}, "options.match_users_by", "externalId"),
        (
            {"source__account_status": {"attribute": "nsAccountLock", "disabled_value": "TRUE"}},
            "source.account_status.disabled_value",
            "TRUE",
        ),
    ],
)
def test_the_values_at_the_limits_load(
    tmp_path: Path, changes: dict[str, Any], attribute: str, value: object
) -> None:
    loaded = config.load(write(tmp_path, with_(**changes)), env={"TOKEN": "t0k"})
    assert attrgetter(attribute)(loaded) == value


def test_an_existing_ca_file_loads(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    data = with_(source__ca_file=str(ca), target__ca_file=str(ca))
    loaded = config.load(write(tmp_path, data), env={"TOKEN": "t0k"})
    assert loaded.source.ca_file == ca and loaded.target.ca_file == ca

"""The YAML configuration: schema, `${VAR}` interpolation, secret files, one-line errors."""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import warnings
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

DEFAULT_CONFIG_NAME = "scimsync.yaml"
CONFIG_ENV = "SCIMSYNC_CONFIG"


class ConfigError(Exception):
    """A configuration mistake, already phrased as one line for the user."""


class InsecureConfigWarning(UserWarning):
    """A setting that exposes a secret: a config file holding one readable by other users,
    TLS left unverified, a password or API key sent in clear."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Flavour(StrEnum):
    OPENLDAP = "openldap"
    ACTIVE_DIRECTORY = "active_directory"
    GENERIC = "generic"


class UserScope(Strict):
    group_dn: str | None = None
    filter: str | None = None
    nested: bool = False

    @model_validator(mode="after")
    def _needs_one(self) -> Self:
        if self.group_dn is None and self.filter is None:
            raise ValueError("expected group_dn or filter (or both)")
        return self


class GroupScope(UserScope):
    name_attribute: str = "cn"


class AccountStatus(Strict):
    """How a disabled account is recognised. On AD: userAccountControl bit 0x2."""

    attribute: str
    disabled_if_present: bool = False
    disabled_value: str | None = None
    ad_bitmask: bool = False

    @model_validator(mode="after")
    def _one_rule(self) -> Self:
        rules = sum([self.disabled_if_present, self.disabled_value is not None, self.ad_bitmask])
        if rules != 1:
            raise ValueError(
                "expected exactly one of disabled_if_present: true or disabled_value: VALUE"
            )
        return self


def _check_ldap_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("ldap", "ldaps", "ldapi") or not (parts.netloc or parts.path):
        raise ValueError(f"expected an ldap://, ldaps:// or ldapi:// URL, got {redact_url(url)!r}")
    return url


def _read_secret_file(path: Path) -> SecretStr:
    try:
        return SecretStr(path.read_text(encoding="utf-8").strip())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None


class SourceConfig(Strict):
    url: str
    bind_dn: str | None = None
    bind_password: SecretStr | None = None
    bind_password_file: Path | None = None
    base_dn: str
    directory: Flavour = Flavour.OPENLDAP
    guid_attribute: str | None = None
    member_attribute: str | None = None
    start_tls: bool = False
    ca_file: Path | None = None
    verify_tls: bool = True
    connect_timeout: Annotated[float, Field(gt=0)] = 10.0
    timeout: Annotated[float, Field(gt=0)] = 60.0
    page_size: Annotated[int, Field(ge=1, le=100_000)] = 500
    users: UserScope
    groups: GroupScope | None = None
    account_status: AccountStatus | None = None

    _check_url = field_validator("url")(classmethod(lambda cls, v: _check_ldap_url(v)))

    @model_validator(mode="after")
    def _resolve(self) -> Self:
        if self.bind_password is not None and self.bind_password_file is not None:
            raise ValueError("expected bind_password or bind_password_file, not both")
        if self.bind_password_file is not None:
            object.__setattr__(self, "bind_password", _read_secret_file(self.bind_password_file))
        if self.ca_file is not None and not self.ca_file.is_file():
            raise ValueError(f"ca_file: cannot read {self.ca_file}")
        ad = self.directory is Flavour.ACTIVE_DIRECTORY
        if self.guid_attribute is None:
            object.__setattr__(
                self,
                "guid_attribute",
                {"openldap": "entryUUID", "active_directory": "objectGUID"}.get(
                    self.directory, "entryUUID"
                ),
            )
        if self.member_attribute is None:
            object.__setattr__(self, "member_attribute", "member")
        if self.account_status is None and ad:
            object.__setattr__(
                self,
                "account_status",
                AccountStatus(attribute="userAccountControl", ad_bitmask=True),
            )
        return self

    @property
    def password(self) -> str | None:
        return self.bind_password.get_secret_value() if self.bind_password else None


class TargetType(StrEnum):
    ATLASSIAN = "atlassian"
    SCIM = "scim"


class TargetConfig(Strict):
    type: TargetType = TargetType.ATLASSIAN
    url: str
    token: SecretStr | None = None
    token_file: Path | None = None
    timeout: Annotated[float, Field(gt=0)] = 30.0
    verify_tls: bool = True
    ca_file: Path | None = None
    rate_limit: Annotated[float, Field(gt=0)] | None = None
    max_concurrency: Annotated[int, Field(ge=1, le=64)] = 4
    max_retries: Annotated[int, Field(ge=0, le=20)] = 6
    retry_max_seconds: Annotated[float, Field(gt=0)] = 120.0
    membership_chunk_size: Annotated[int, Field(ge=1, le=1000)] = 100
    page_size: Annotated[int, Field(ge=1, le=1000)] = 100

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"expected an http:// or https:// URL, got {redact_url(url)!r}")
        return url.rstrip("/")

    @model_validator(mode="after")
    def _resolve(self) -> Self:
        if self.token is not None and self.token_file is not None:
            raise ValueError("expected token or token_file, not both")
        if self.token_file is not None:
            object.__setattr__(self, "token", _read_secret_file(self.token_file))
        if self.token is None:
            raise ValueError("expected token or token_file")
        return self

    @property
    def bearer(self) -> str:
        assert self.token is not None  # guaranteed by _resolve
        return self.token.get_secret_value()


_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%(?:\s+min\s+(\d+))?\s*$")
# 2 % of linked users, at least 5: see docs/design.md, "Safety threshold".
DEFAULT_MAX_DELETIONS = "2% min 5"


class Options(Strict):
    create_users: bool = True
    update_users: bool = True
    deprovision_users: bool = True
    provision_disabled_users: bool = False
    remove_user_action: Literal["disable", "delete"] = "disable"
    groups: bool = True
    group_rename: Literal["in_place", "recreate"] = "in_place"
    max_deletions: int | str = DEFAULT_MAX_DELETIONS
    max_retries: Annotated[int, Field(ge=1)] = 5
    match_users_by: Literal["userName", "externalId"] = "userName"
    user_name_changes: Literal["conflict", "update"] = "conflict"
    match_groups_by: Literal["displayName"] = "displayName"  # Atlassian filters groups by it only

    @field_validator("max_deletions")
    @classmethod
    def _count_or_percent(cls, value: int | str) -> int | str:
        expected = "expected a count >= 0, a percentage such as '5%', or '2% min 5'"
        if isinstance(value, int):
            if value < 0:
                raise ValueError(expected)
            return value
        if not _PERCENT.match(value):
            raise ValueError(f"{expected}, got {value!r}")
        return value.strip()

    def deletion_limit(self, linked_users: int) -> int:
        """The most deprovisioning operations one cycle may apply unasked."""
        if isinstance(self.max_deletions, int):
            return self.max_deletions
        match = _PERCENT.match(self.max_deletions)
        assert match is not None
        share = int(linked_users * float(match.group(1)) / 100)
        return max(share, int(match.group(2) or 0))

    def describe_deletion_limit(self, linked_users: int) -> str:
        """Which limit applied and what it came to, for the guard's message."""
        limit = self.deletion_limit(linked_users)
        if isinstance(self.max_deletions, int):
            return str(limit)
        default = "" if "max_deletions" in self.model_fields_set else "the default, "
        return f"{default}{self.max_deletions}: {limit} for {linked_users} linked users"


class MappingRule(Strict):
    """How one SCIM attribute is computed from a directory entry."""

    source: str | None = None
    template: str | None = None
    default: str | None = None
    create_only: bool = False
    trim: bool = True
    case: Literal["lower", "upper"] | None = None
    parser: Literal["cn_from_dn", "username_from_email"] | None = None

    @model_validator(mode="after")
    def _one_origin(self) -> Self:
        if self.source is not None and self.template is not None:
            raise ValueError("expected source or template, not both")
        if self.source is None and self.template is None and self.default is None:
            raise ValueError("expected source, template or default")
        return self

    @classmethod
    def parse(cls, value: str | MappingRule) -> MappingRule:
        if isinstance(value, MappingRule):
            return value
        if "{{" in value or "{%" in value:
            return cls(template=value)
        return cls(source=value)


SCIM_USER_ATTRIBUTES = (
    "userName",
    "externalId",
    "emails.work",
    "name.givenName",
    "name.familyName",
    "name.formatted",
    "displayName",
    "nickName",
    "title",
    "department",
    "organization",
    "preferredLanguage",
    "timezone",
    "phoneNumbers.work",
    "phoneNumbers.mobile",
)

DEFAULT_MAPPING: dict[Flavour, dict[str, str]] = {
    Flavour.OPENLDAP: {
        "userName": "mail",
        "emails.work": "mail",
        "name.givenName": "givenName",
        "name.familyName": "sn",
        "displayName": "cn",
    },
    Flavour.ACTIVE_DIRECTORY: {
        # objectGUID survives UPN and mail changes, and Atlassian's own Entra mapping sends
        # the directory's object id as externalId (atlassian-scim-api.md section 7).
        "externalId": "objectGUID",
        "userName": "userPrincipalName",
        "emails.work": "mail",
        "name.givenName": "givenName",
        "name.familyName": "sn",
        "displayName": "displayName",
    },
}
DEFAULT_MAPPING[Flavour.GENERIC] = DEFAULT_MAPPING[Flavour.OPENLDAP]


class Config(Strict):
    state: str = "sqlite:///scimsync.db"
    channel: Annotated[str, Field(min_length=1, max_length=64)] = "default"
    interval: Annotated[float, Field(gt=0)] = 60.0
    full_sync_interval: Annotated[float, Field(gt=0)] = 86_400.0
    metrics_listen: str = "127.0.0.1:9464"
    source: SourceConfig
    target: TargetConfig
    options: Options = Options()
    mapping: dict[str, str | MappingRule] | None = None

    @field_validator("state")
    @classmethod
    def _state_url(cls, url: str) -> str:
        scheme = urlsplit(url).scheme
        if not (scheme.startswith("sqlite") or scheme.startswith("postgresql")):
            raise ValueError(
                f"expected a sqlite:/// or postgresql+psycopg:// URL, got {redact_url(url)!r}"
            )
        return url

    @field_validator("mapping")
    @classmethod
    def _known_attributes(
        cls, mapping: dict[str, str | MappingRule] | None
    ) -> dict[str, str | MappingRule] | None:
        for key in mapping or {}:
            if key not in SCIM_USER_ATTRIBUTES:
                known = ", ".join(SCIM_USER_ATTRIBUTES)
                raise ValueError(f"unknown SCIM attribute {key!r}; expected one of {known}")
        return mapping

    @property
    def rules(self) -> dict[str, MappingRule]:
        """The mapping in force: the flavour's defaults, overridden key by key."""
        merged: dict[str, str | MappingRule] = dict(DEFAULT_MAPPING[self.source.directory])
        merged.update(self.mapping or {})
        return {key: MappingRule.parse(value) for key, value in merged.items()}


# --- loading --------------------------------------------------------------------------

_VAR = re.compile(r"\$(\$)?\{([^}]*)\}")


def _interpolate(node: Any, path: tuple[str | int, ...], env: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: _interpolate(value, (*path, key), env) for key, value in node.items()}
    if isinstance(node, list):
        return [_interpolate(value, (*path, i), env) for i, value in enumerate(node)]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match[str]) -> str:
        if match.group(1):  # $${X} is a literal ${X}
            return "${" + match.group(2) + "}"
        name = match.group(2)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ConfigError(f"{_dotted(path)}: ${{{name}}} is not a valid variable name")
        if name not in env:
            raise ConfigError(f"{_dotted(path)}: environment variable {name} is not set")
        return env[name]

    return _VAR.sub(substitute, node)


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


_SECRET_KEYS = {"token", "bind_password"}

_INPUT_WORDS = {
    "missing": "missing required key",
    "extra_forbidden": "unknown key",
}


def _describe(error: Any) -> str:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    # Union members and tagged variants add noise ("str", "MappingRule") to the path.
    loc = tuple(p for p in loc if p not in ("str", "MappingRule", "int"))
    kind = error["type"]
    if kind in _INPUT_WORDS:
        message = _INPUT_WORDS[kind]
    else:
        message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if kind not in ("value_error", "assertion_error") and not set(loc) & _SECRET_KEYS:
            given = error.get("input")
            if given is not None and not isinstance(given, dict | list):
                message += f", got {given!r}"
            elif isinstance(given, dict | list):
                message += f", got a {'mapping' if isinstance(given, dict) else 'list'}"
    return f"{_dotted(loc)}: {message}"


def parse(raw: Any, origin: str, env: dict[str, str] | None = None) -> Config:
    """Validate parsed YAML; every failure is a ConfigError of one line naming origin and key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: expected a mapping of settings at the top level")
    try:
        data = _interpolate(raw, (), dict(os.environ) if env is None else env)
        return Config.model_validate(data)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    except ValidationError as exc:
        errors = exc.errors()
        first = _describe(errors[0])
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"{origin}: {first}{more}") from None


def locate(explicit: str | Path | None) -> Path:
    if explicit is not None:
        return Path(explicit)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    return Path(DEFAULT_CONFIG_NAME)


def load(path: str | Path | None = None, env: dict[str, str] | None = None) -> Config:
    """Read, interpolate and validate a config file."""
    file = locate(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such file (set --config or ${CONFIG_ENV})") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not UTF-8 text") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{file}: invalid YAML{where}: {problem}") from None
    config = parse(raw, str(file), env)
    _warn_if_exposed(file, raw)
    return config


def _warn_if_exposed(file: Path, raw: dict[str, Any]) -> None:
    inline = [
        f"{section}.{key}"
        for section, key in (("source", "bind_password"), ("target", "token"))
        if isinstance(raw.get(section), dict)
        and isinstance(raw[section].get(key), str)
        and not _VAR.fullmatch(raw[section][key].strip())
    ]
    try:
        mode = file.stat().st_mode
    except OSError:
        return
    if inline and mode & (stat.S_IROTH | stat.S_IRGRP):
        warnings.warn(
            f"{file}: holds {', '.join(inline)} inline and is readable by other users; "
            f"chmod 600 it or use ${{VAR}} / *_file",
            InsecureConfigWarning,
            stacklevel=2,
        )


def warn_if_insecure(config: Config, file: Path) -> None:
    """One InsecureConfigWarning per setting that lets others read or take a secret."""
    for problem in insecure_settings(config):
        warnings.warn(f"{file}: {problem}", InsecureConfigWarning, stacklevel=2)


def insecure_settings(config: Config) -> list[str]:
    """TLS left unverified, a bind password or an API key sent in clear over the network.

    A loopback host (and ldapi://) is spared the clear-text warnings: those bytes never
    leave the machine, and the emulator and test servers listen there.
    """
    source, target = config.source, config.target
    problems: list[str] = []
    if not source.verify_tls:
        problems.append(
            "source.verify_tls is false: the LDAP server's certificate is not checked, "
            "so anyone on the path can pose as it"
        )
    if not target.verify_tls:
        problems.append(
            "target.verify_tls is false: the target's certificate is not checked, "
            "so anyone on the path can pose as it and take the API key"
        )
    ldap_url = urlsplit(source.url)
    if (
        ldap_url.scheme == "ldap"
        and source.password
        and not source.start_tls
        and not _is_loopback(ldap_url.hostname)
    ):
        problems.append(
            f"source.url {redact_url(source.url)} without source.start_tls sends the bind "
            "password in clear; use ldaps:// or start_tls: true"
        )
    target_url = urlsplit(target.url)
    if target_url.scheme == "http" and not _is_loopback(target_url.hostname):
        problems.append(
            f"target.url {redact_url(target.url)} sends the API key in clear; use https://"
        )
    return problems


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redact_url(url: str) -> str:
    """The URL fit for a message: credentials in it shown as `user:***@` or `***@`."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    # The authority ends at the first /, ? or # (RFC 3986); userinfo at its last @.
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    userinfo, at, host = rest[:end].rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:***" if colon and user else "***"
    return f"{scheme}://{shown}@{host}{rest[end:]}"

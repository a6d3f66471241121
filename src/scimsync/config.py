"""The YAML configuration: schema, `${VAR}` interpolation, secret files, one-line errors."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import stat
import warnings
from dataclasses import fields
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

import ldap.dn
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from scimsync.errors import ConfigurationError
from scimsync.model import DEFAULT_PROTECTED_GROUPS, DeletionLimit, PlanOptions

DEFAULT_CONFIG_NAME = "scimsync.yaml"
CONFIG_ENV = "SCIMSYNC_CONFIG"


class ConfigError(ConfigurationError):
    """A configuration mistake, already phrased as one line for the user."""


class InsecureConfigWarning(UserWarning):
    """A setting that exposes a secret: a config file holding one readable by other users,
    TLS left unverified, a password or API key sent in clear."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Flavour(StrEnum):
    OPENLDAP = "openldap"
    ACTIVE_DIRECTORY = "active_directory"
    DS389 = "389ds"  # 389 Directory Server, Red Hat Directory Server
    GENERIC = "generic"


# --- values checked when the file is read, not when the directory is --------------------

_SPACE = " \t\n"  # what libldap skips between the parts of a filter
_ATTRIBUTE = re.compile(r"(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)*)(?:;[A-Za-z0-9-]+)*")
_MATCHING_RULE = re.compile(r"[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)*")
_HEX = frozenset("0123456789abcdefABCDEF")


def check_ldap_filter(text: str) -> None:
    """Raise ValueError saying what is wrong where libldap would refuse the filter.

    RFC 4515, with the leniencies of libldap (which encodes every filter scimsync sends):
    spaces before the parts of a filter, RFC 1960 escapes such as \\*, and (&) and (|).
    A filter without its outer parentheses is accepted, as the reader adds them.
    """
    if "\x00" in text:
        raise ValueError("contains a NUL character")
    stripped = text.strip()
    wrapped = stripped if stripped.startswith("(") else f"({stripped})"
    end = _filter_at(wrapped, 0)
    if end != len(wrapped):
        raise ValueError(f"unexpected {wrapped[end:]!r} after the filter {wrapped[:end]!r}")


def _filter_at(text: str, start: int) -> int:
    """Check the filter opening at text[start]; return the index after its ')'."""
    close = _closing_paren(text, start + 1)
    if close is None:
        raise ValueError(f"the '(' at character {start + 1} is never closed")
    inner = start + 1
    while inner < close and text[inner] in _SPACE:
        inner += 1
    head = text[inner] if inner < close else ""
    if head in ("&", "|", "!"):
        _filter_list(text, inner + 1, close, head)
    elif head == "(":
        raise ValueError(f"'(' at character {inner + 1} needs &, | or ! before it")
    else:
        _item(text[inner:close])
    return close + 1


def _closing_paren(text: str, position: int) -> int | None:
    depth, escaped = 1, False
    for index in range(position, len(text)):
        char = text[index]
        if not escaped:
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0:
                return index
        escaped = char == "\\" and not escaped
    return None


def _filter_list(text: str, position: int, close: int, operator: str) -> None:
    while True:
        while position < close and text[position] in _SPACE:
            position += 1
        if position >= close:
            break
        if text[position] != "(":
            raise ValueError(f"expected '(' after {operator!r}, got {text[position:close]!r}")
        position = _filter_at(text, position)
        if operator == "!":
            if position != close:
                raise ValueError("'!' takes exactly one filter")
            return
    if operator == "!":
        raise ValueError("'!' takes exactly one filter")


def _item(item: str) -> None:
    """attr=value, attr~=, >=, <= value, attr=*, substrings, and extensible matches."""
    before, equals, value = item.partition("=")
    if not equals:
        raise ValueError(f"expected attribute=value, got {item!r}")
    operator = before[-1:]
    if operator in ("<", ">", "~"):
        _attribute(before[:-1], item)
        _single_value(value, item)
    elif operator == ":":
        _extensible(before[:-1], item)
        _single_value(value, item)
    else:
        _attribute(before, item)
        pieces = _value_pieces(value, item)
        if value != "*" and any(not piece for piece in pieces[1:-1]):
            raise ValueError(f"two '*' in a row in {item!r}")


def _attribute(name: str, item: str) -> None:
    if not _ATTRIBUTE.fullmatch(name):
        raise ValueError(f"{name!r} is not an attribute name, in {item!r}")


def _extensible(left: str, item: str) -> None:
    """type [:dn] [:rule] := value, or [:dn] :rule := value (RFC 4515 section 3)."""
    name, colon, rest = left.partition(":")
    rule = ""
    if colon:
        flag, second_colon, rule = rest.partition(":")
        if second_colon and flag.lower() != "dn":
            raise ValueError(f"expected :dn before the matching rule, in {item!r}")
        if not second_colon and flag.lower() == "dn":
            _attribute(name, item)  # ':dn:=' must follow an attribute
        elif not second_colon:
            rule = flag
    if not name and not rule:
        raise ValueError(f"expected an attribute or a matching rule before ':=', in {item!r}")
    if name:
        _attribute(name, item)
    if rule and not _MATCHING_RULE.fullmatch(rule):
        raise ValueError(f"{rule!r} is not a matching rule, in {item!r}")


def _single_value(value: str, item: str) -> None:
    if len(_value_pieces(value, item)) > 1:
        raise ValueError(f"'*' (presence, substrings) goes with '=' only, in {item!r}")


def _value_pieces(value: str, item: str) -> list[str]:
    """The value split at unescaped '*'; refuses unescaped parentheses and bad escapes."""
    pieces, current, index = [], "", 0
    while index < len(value):
        char = value[index]
        if char in "()":
            raise ValueError(f"{char!r} in a value must be written \\{ord(char):02x}, in {item!r}")
        if char == "*":
            pieces.append(current)
            current, index = "", index + 1
            continue
        if char == "\\":
            pair = value[index + 1 : index + 3]
            if len(pair) == 2 and set(pair) <= _HEX:
                width = 3
            elif pair[:1] and pair[0] in "*()\\":
                width = 2
            else:
                raise ValueError(
                    f"'\\' must be followed by two hex digits (\\2a is '*'), in {item!r}"
                )
            current += value[index : index + width]
            index += width
            continue
        current += char
        index += 1
    pieces.append(current)
    return pieces


def _check_filter(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.strip():
        raise ValueError("expected an LDAP filter such as (objectClass=person), got ''")
    try:
        check_ldap_filter(value)
    except ValueError as exc:
        raise ValueError(f"not an LDAP filter (RFC 4515): {exc}") from None
    return value


def _check_dn(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        valid = bool(value.strip()) and ldap.dn.str2dn(value) is not None
    except (ldap.LDAPError, ValueError):  # DECODING_ERROR; NUL or unencodable characters
        valid = False
    if not valid:
        raise ValueError(f"expected a DN such as dc=example,dc=com, got {value!r}")
    return value


class UserScope(Strict):
    group_dn: str | None = None
    filter: str | None = None
    nested: bool = False

    _dn = field_validator("group_dn")(classmethod(lambda cls, v: _check_dn(v)))
    _filter = field_validator("filter")(classmethod(lambda cls, v: _check_filter(v)))

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


def _check_readable_file(path: Path | None) -> Path | None:
    if path is not None and not path.is_file():
        raise ValueError(f"cannot read {path}")
    return path


def _read_secret_file(path: Path) -> SecretStr:
    try:
        return SecretStr(path.read_text(encoding="utf-8").strip())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None


# The flavour defaults. 389-ds: nsUniqueId is on every entry (entryUUID only where its plugin
# ran when the entry was made); `dsidm account lock` sets nsAccountLock: true.
_GUID_ATTRIBUTE = {
    Flavour.OPENLDAP: "entryUUID",
    Flavour.ACTIVE_DIRECTORY: "objectGUID",
    Flavour.DS389: "nsUniqueId",
    Flavour.GENERIC: "entryUUID",
}
_ACCOUNT_STATUS = {
    # userAccountControl flag ACCOUNTDISABLE (MS-ADTS 2.2.16)
    Flavour.ACTIVE_DIRECTORY: AccountStatus(attribute="userAccountControl", ad_bitmask=True),
    Flavour.DS389: AccountStatus(attribute="nsAccountLock", disabled_value="true"),
}


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
    _check_base = field_validator("base_dn")(classmethod(lambda cls, v: _check_dn(v)))
    _check_ca = field_validator("ca_file")(classmethod(lambda cls, v: _check_readable_file(v)))

    @model_validator(mode="after")
    def _resolve(self) -> Self:
        if self.bind_password is not None and self.bind_password_file is not None:
            raise ValueError("expected bind_password or bind_password_file, not both")
        if self.bind_password_file is not None:
            object.__setattr__(self, "bind_password", _read_secret_file(self.bind_password_file))
        if self.guid_attribute is None:
            object.__setattr__(self, "guid_attribute", _GUID_ATTRIBUTE[self.directory])
        if self.member_attribute is None:
            object.__setattr__(self, "member_attribute", "member")
        if self.account_status is None:
            object.__setattr__(self, "account_status", _ACCOUNT_STATUS.get(self.directory))
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
    # When the API key expires (Atlassian keys have an expiry date): warned of from
    # TOKEN_WARNING_DAYS ahead by check, status, the log and a metric.
    token_expires: date | None = None
    timeout: Annotated[float, Field(gt=0)] = 30.0
    verify_tls: bool = True
    ca_file: Path | None = None
    rate_limit: Annotated[float, Field(gt=0)] | None = None
    max_concurrency: Annotated[int, Field(ge=1, le=64)] = 4
    max_retries: Annotated[int, Field(ge=0, le=20)] = 6
    # All the retries one record's requests may take in a cycle (target.http): a 500 the
    # target repeats for one record is not retried max_retries times per request.
    retries_per_record: Annotated[int, Field(ge=0, le=100)] = 3
    retry_max_seconds: Annotated[float, Field(gt=0)] = 120.0
    membership_chunk_size: Annotated[int, Field(ge=1, le=1000)] = 100
    # 0: no `count` is sent and the server's own pages are taken (RFC 7644 3.4.2.4 makes
    # it optional, and some servers fail on it).
    page_size: Annotated[int, Field(ge=0, le=1000)] = 100
    # A body's cap, raw and decoded: a 100,000-member group's page is about 19 MiB.
    max_response_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024 * 1024
    max_listing: Annotated[int, Field(ge=1)] = 1_000_000  # Atlassian's most users

    _check_ca = field_validator("ca_file")(classmethod(lambda cls, v: _check_readable_file(v)))

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
        """The API key; token_file is read again each time (each cycle opens the target), so
        a rotated key needs no restart. A file unreadable or empty for a moment (replaced
        while it is read) leaves the key last read."""
        assert self.token is not None  # guaranteed by _resolve
        if self.token_file is not None:
            with contextlib.suppress(ValueError):
                fresh = _read_secret_file(self.token_file)
                if fresh.get_secret_value():
                    object.__setattr__(self, "token", fresh)
        return self.token.get_secret_value()


_DOMAIN = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}")
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
    # A new directory entry with the userName of a linked, deactivated user whose own entry
    # is gone takes over that account (reactivated), rather than a second one being made.
    relink_rehires: bool = True
    # Group names (glob patterns, case-insensitive) scimsync never writes; [] turns it off.
    protected_groups: tuple[str, ...] = DEFAULT_PROTECTED_GROUPS
    # The organisation's verified domains; a linked user's email change into another
    # domain is held like a deletion. Empty: off.
    verified_domains: tuple[str, ...] = ()
    match_groups_by: Literal["displayName"] = "displayName"  # Atlassian filters groups by it only

    @field_validator("max_deletions", mode="before")
    @classmethod
    def _count_or_percent(cls, value: object) -> int | str:
        expected = "expected a count >= 0, a percentage such as '5%', or '2% min 5'"
        # "50" is a count, as `interval: "60"` is a number: ${VAR} always yields a string.
        if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, str) and _PERCENT.match(value):
            return value.strip()
        raise ValueError(f"{expected}, got {value!r}")

    @field_validator("protected_groups")
    @classmethod
    def _globs(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in patterns:
            if not pattern.strip():
                raise ValueError("an empty pattern would match no group name")
            # fnmatch reads an unclosed "[" as itself; someone who wrote one meant a set.
            if re.search(r"\[(?![^\]]*\])", pattern):
                raise ValueError(f"{pattern!r}: a '[' without its ']'")
        return patterns

    @field_validator("verified_domains")
    @classmethod
    def _domains(cls, domains: tuple[str, ...]) -> tuple[str, ...]:
        for domain in domains:
            if not _DOMAIN.fullmatch(domain):
                raise ValueError(f"{domain!r} is not a domain name such as example.com")
        return tuple(d.lower() for d in domains)

    @property
    def deletion_limit(self) -> DeletionLimit:
        """max_deletions, parsed for the guard."""
        if isinstance(self.max_deletions, int):
            return DeletionLimit(count=self.max_deletions, spelled=str(self.max_deletions))
        match = _PERCENT.match(self.max_deletions)
        assert match is not None  # guaranteed by _count_or_percent
        return DeletionLimit(
            percent=float(match.group(1)),
            floor=int(match.group(2) or 0),
            spelled=self.max_deletions,
            default="max_deletions" not in self.model_fields_set,
        )

    @property
    def for_planner(self) -> PlanOptions:
        """The options the planner reads (PlanOptions names them; defaults as here)."""
        return PlanOptions(**{f.name: getattr(self, f.name) for f in fields(PlanOptions)})


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
        """A rule from its short form (attribute name or template) or its long form."""
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
DEFAULT_MAPPING[Flavour.DS389] = DEFAULT_MAPPING[Flavour.OPENLDAP]
DEFAULT_MAPPING[Flavour.GENERIC] = DEFAULT_MAPPING[Flavour.OPENLDAP]


def _rule_form(value: object) -> str | None:
    """Which form a mapping value is written in: a mapping is the long form, judged by
    MappingRule alone, so its errors name the option at fault."""
    if isinstance(value, dict | MappingRule):
        return "MappingRule"
    return "str" if isinstance(value, str) else None


MappingValue = Annotated[
    Annotated[str, Tag("str")] | Annotated[MappingRule, Tag("MappingRule")],
    Discriminator(
        _rule_form,
        custom_error_type="mapping_value",
        custom_error_message=(
            "expected an LDAP attribute, a {{ template }} or a mapping of rule options"
        ),
    ),
]

_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


def _is_host(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:  # all digits and dots (999.1.1.1) is a bad address, not a name
        return not re.fullmatch(r"[\d.]+", host) and bool(_HOSTNAME.fullmatch(host))
    return True


def _check_listen(value: object) -> str:
    """host:port, IPv6 in brackets, port 0-65535 (0: any free port)."""
    expected = "expected host:port such as 127.0.0.1:9464 ([::1]:9464 for IPv6)"
    if not isinstance(value, str):
        raise ValueError(f"{expected}, got {value!r}")
    host, colon, port = value.strip().rpartition(":")
    if not colon or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{expected}, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{host[1:-1]!r} is not an IPv6 address, in {value!r}") from None
    elif ":" in host:
        raise ValueError(f"an IPv6 address goes in brackets, such as [::1]:9464, got {value!r}")
    elif host and not _is_host(host):
        raise ValueError(f"{host!r} is not a host name or address, in {value!r}")
    return value.strip()


class Config(Strict):
    state: str = "sqlite:///scimsync.db"
    channel: Annotated[str, Field(min_length=1, max_length=64)] = "default"
    interval: Annotated[float, Field(gt=0)] = 60.0
    full_sync_interval: Annotated[float, Field(gt=0)] = 86_400.0
    metrics_listen: str = "127.0.0.1:9464"
    # Audit entries and runs older than this go; `run` prunes once a day.
    audit_retention_days: Annotated[int, Field(ge=1)] = 400
    source: SourceConfig
    target: TargetConfig
    options: Options = Options()
    mapping: dict[str, MappingValue] | None = None

    _listen = field_validator("metrics_listen", mode="before")(
        classmethod(lambda cls, v: _check_listen(v))
    )

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
# $${ is a literal ${ (closed or not); ${NAME} is a variable; a ${ left over is unclosed.
_DOLLAR_BRACE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")


def _interpolate(node: Any, path: tuple[str | int, ...], env: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: _interpolate(value, (*path, key), env) for key, value in node.items()}
    if isinstance(node, list):
        return [_interpolate(value, (*path, i), env) for i, value in enumerate(node)]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name = match.group(1)
        if name is None:
            raise ConfigError(
                f"{_dotted(path)}: '${{' without a closing '}}'; "
                "expected ${NAME} (or $${ for a literal ${)"
            )
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ConfigError(f"{_dotted(path)}: ${{{name}}} is not a valid variable name")
        if name not in env:
            raise ConfigError(f"{_dotted(path)}: environment variable {name} is not set")
        return env[name]

    return _DOLLAR_BRACE.sub(substitute, node)


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        text = str(part) if str(part).isprintable() else repr(part)  # a key with a newline
        out += f"[{part}]" if isinstance(part, int) else (f".{text}" if out else text)
    return out or "(top level)"


_SECRET_KEYS = {"token", "bind_password"}

_INPUT_WORDS = {
    "missing": "missing required key",
    "extra_forbidden": "unknown key",
}

# What a section must look like, for "got True" where a mapping was expected.
_SECTION_SHAPES = {
    "SourceConfig": "a mapping with url, base_dn and users",
    "TargetConfig": "a mapping with url and token or token_file",
    "UserScope": "a mapping with group_dn and/or filter",
    "GroupScope": "a mapping with group_dn and/or filter",
    "AccountStatus": "a mapping with attribute and disabled_if_present or disabled_value",
    "Options": "a mapping of options",
}


_PLAIN_TYPES = {
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "int_parsing": "a whole number",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "string_type": "a string",
}


def _error_path(error: Any) -> tuple[str | int, ...]:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    # Union members and tagged variants add noise ("str", "MappingRule") to the path.
    return tuple(p for p in loc if p not in ("str", "MappingRule", "int"))


def _pydantic_words(error: Any) -> str:
    """pydantic's "Input should be X" as "expected X", naming what a section must hold."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "model_type":
        return "expected " + _SECTION_SHAPES.get(str(ctx.get("class_name")), "a mapping")
    if kind == "dict_type":
        return "expected a mapping"
    if kind in _PLAIN_TYPES:
        return "expected " + _PLAIN_TYPES[kind]
    if kind == "literal_error":
        return "expected " + str(ctx.get("expected", "")).replace("'", "")
    message = str(error["msg"])
    return (
        "expected " + message.removeprefix("Input should be ")
        if message.startswith("Input should be ")
        else message
    )


def _describe(error: Any) -> str:
    loc = _error_path(error)
    kind = error["type"]
    if kind in _INPUT_WORDS:
        message = _INPUT_WORDS[kind]
    elif kind in ("value_error", "assertion_error"):
        message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    else:
        message = _pydantic_words(error)
        if not set(loc) & _SECRET_KEYS:
            given = error.get("input")
            if given is None:
                message += ", got an empty value"
            elif not isinstance(given, dict | list):
                message += f", got {given!r}"
            elif isinstance(given, dict | list):
                message += f", got a {'mapping' if isinstance(given, dict) else 'list'}"
    return f"{_dotted(loc)}: {message}"


_OTHERS_NAMED = 5  # keys named after the first error, so that the line stays readable


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
        # The rest by key only, so that the line stays one line and hides nothing.
        others = list(dict.fromkeys(_dotted(_error_path(e)) for e in errors[1:]))
        named = ", ".join(others[:_OTHERS_NAMED])
        if len(others) > _OTHERS_NAMED:
            named += f" and {len(others) - _OTHERS_NAMED} more"
        more = f" (also wrong: {named})" if others else ""
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
        raw = _read_yaml(text)
    except DuplicateKeyError as exc:
        raise ConfigError(f"{file}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{file}: invalid YAML{where}: {problem}") from None
    config = parse(raw, str(file), env)
    _warn_if_exposed(file, raw)
    return config


class DuplicateKeyError(Exception):
    """A mapping key written twice: YAML would silently keep the second."""


def _read_yaml(text: str) -> Any:
    """yaml.safe_load, refusing a key written twice in one mapping (at any depth)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(loader, node, (), set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _refuse_duplicate_keys(
    loader: yaml.SafeLoader, node: yaml.Node, path: tuple[str | int, ...], seen: set[int]
) -> None:
    if id(node) in seen:  # an alias: checked where its anchor was; also ends cycles
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_duplicate_keys(loader, item, (*path, index), seen)
    if not isinstance(node, yaml.MappingNode):
        return
    first: dict[object, yaml.Mark] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *defaults` merges are meant to be overridden
        key = loader.construct_object(key_node)
        name = key if isinstance(key, str | int) and not isinstance(key, bool) else str(key)
        mark = key_node.start_mark
        earlier = first.get(key)
        if earlier is not None:
            where = f"at line {earlier.line + 1} and line {mark.line + 1}"
            if earlier.line == mark.line:
                where = (
                    f"at line {mark.line + 1}, columns {earlier.column + 1} and {mark.column + 1}"
                )
            raise DuplicateKeyError(f"{_dotted((*path, name))}: key written twice, {where}")
        first[key] = mark
        _refuse_duplicate_keys(loader, value_node, (*path, name), seen)


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

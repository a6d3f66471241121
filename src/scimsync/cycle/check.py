"""`check`: the directory and the target answer, the config maps every user in scope."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import date

from scimsync.config import Config, ConfigError, TargetConfig, redact_url
from scimsync.cycle.desired import map_users
from scimsync.directory import LdapDirectory, NoSuchEntry
from scimsync.guard import unverified_address
from scimsync.mapping import Finding, compile_rules
from scimsync.model import MappingFailure
from scimsync.target import open_target
from scimsync.target.schema import ServerSchema


@dataclass(frozen=True, slots=True)
class DirectoryCheck:
    server: str
    users: int
    disabled: int
    groups: int
    memberships: int
    unmappable: tuple[MappingFailure, ...]
    template_findings: tuple[Finding, ...] = ()  # per rule, over every user in scope
    change_detection: str = ""  # how incremental cycles see changes, and what it costs
    change_warning: str | None = None
    # Users in scope whose email is outside options.verified_domains: Atlassian makes
    # them external accounts (created all the same).
    external_users: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TargetCheck:
    url: str
    features: str
    users: int
    key_expiry: str | None = None  # token_expiry_warning's
    # What the target's /Schemas say against the mapping (schema_warnings).
    schema_warnings: tuple[str, ...] = ()


TOKEN_WARNING_DAYS = 30


def token_expiry_warning(target: TargetConfig, today: date) -> str | None:
    """One line from TOKEN_WARNING_DAYS before target.token_expires on; None before that."""
    expires = target.token_expires
    if expires is None:
        return None
    days = (expires - today).days
    if days < 0:
        return f"target.token_expires: the API key expired on {expires}: rotate it"
    if days <= TOKEN_WARNING_DAYS:
        when = "today" if days == 0 else f"in {days} day{'s' if days != 1 else ''}"
        return f"target.token_expires: the API key expires on {expires}, {when}: rotate it"
    return None


def check_directory(config: Config) -> DirectoryCheck:
    mapper = compile_rules(config.rules)
    with LdapDirectory(config.source, mapper.ldap_attributes()) as directory:
        server = directory.server_info()
        try:
            directory.require_base()
        except NoSuchEntry:  # a configuration mistake, not an unreachable directory
            raise ConfigError(
                f"source.base_dn: {config.source.base_dn} does not exist on "
                f"{config.source.url} (noSuchObject)"
            ) from None
        detection, detection_warning = directory.change_detection()
        snapshot = directory.read()
    # Every template runs against every user in scope: the read is complete already.
    users, failures = map_users(snapshot.users.values(), mapper, log_warnings=False)
    domains = config.options.verified_domains
    external = sorted(
        u.user_name for u in users.values() if domains and unverified_address(u.values, domains)
    )
    memberships = sum(
        len(group.member_guids & snapshot.users.keys()) for group in snapshot.groups.values()
    )
    return DirectoryCheck(
        server=server,
        users=len(snapshot.users),
        disabled=sum(1 for user in snapshot.users.values() if user.disabled),
        groups=len(snapshot.groups),
        memberships=memberships,
        unmappable=failures,
        template_findings=tuple(mapper.findings()),
        change_detection=detection,
        external_users=tuple(external),
        change_warning=detection_warning,
    )


CHECK_TIMEOUT_SECONDS = 5.0


def schema_warnings(schema: ServerSchema, mapped: Collection[str]) -> tuple[str, ...]:
    """One line per attribute the target requires of a user and the mapping leaves empty
    (its creates would be refused), and per mapped attribute it does not define."""
    required = [
        f"the target requires {name} of a user (its /Schemas); `mapping` does not fill it"
        for name in schema.unfilled_user_attributes(mapped)
    ]
    undefined = [
        f"mapping: {key} is not in the target's User schema (its /Schemas): it may be dropped "
        "or refused"
        for key in schema.undefined_user_attributes(mapped)
    ]
    return (*required, *undefined)


async def check_target(config: Config) -> TargetCheck:
    """One attempt per request with a short timeout: `check` answers, it does not persevere."""
    quick = config.target.model_copy(
        update={"max_retries": 0, "timeout": min(config.target.timeout, CHECK_TIMEOUT_SECONDS)}
    )
    async with open_target(quick) as target:
        spc = await target.verified_service_provider_config()
        listed = 0
        async for _ in target.iter_users():  # one page is enough to prove the key works
            listed += 1
            break
        total = getattr(target, "last_total_results", None)
        schema = target.discovered_schema
    features = ", ".join(
        f"{name} {'yes' if (spc.get(name) or {}).get('supported') else 'no'}"
        for name in ("patch", "bulk", "filter")
    )
    shown = redact_url(config.target.url)
    users = total if isinstance(total, int) else listed
    return TargetCheck(
        shown,
        features,
        users,
        token_expiry_warning(config.target, date.today()),
        schema_warnings(schema, config.rules),
    )

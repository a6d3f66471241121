"""SourceUser -> DesiredUser: attribute rules and sandboxed Jinja2 templates.

Decisions:
- A template sees every LDAP attribute by its lower-case name and by the spelling used in
  the config, first value as str, plus `guid` and `dn`. A missing attribute renders empty
  (jinja2.ChainableUndefined, so `{{ manager.x }}` is empty too). A template that fails to
  render counts as empty and the rule's default applies, as PingFederate sends the default
  when an expression fails (reference/pingfederate-provisioning.md, Attribute Mapping).
- Values are cleaned before any rule sees them: control characters become spaces (tabs and
  newlines too: every SCIM attribute we map is one line), lone surrogates (undecodable
  bytes) become U+FFFD, so a value can always be encoded as JSON and UTF-8.
- A value is capped at MAX_VALUE_LENGTH characters. An optional attribute is truncated;
  userName and emails.work are refused instead, since a truncated identity could match
  someone else's account.
- Order per rule: value (source or template), parser, trim, case; then the default if empty.
  The default is used as written. Empty values are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import jinja2
import jinja2.meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from scimsync.config import MappingRule
from scimsync.model import DesiredGroup, DesiredUser, MappingFailure, SourceGroup, SourceUser

MAX_VALUE_LENGTH = 1024
REQUIRED = ("userName", "emails.work")
_BUILTINS = frozenset({"guid", "dn"})
# Cc (C0, DEL, C1) and lone surrogates (Cs), which cannot be encoded as UTF-8.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


NOTHING: frozenset[str] = frozenset()


class MappingConfigError(Exception):
    """A mapping rule that cannot work, phrased as one line naming `mapping.<attribute>`."""


def clean(value: str) -> str:
    """Make any string safe to push: no control characters, no lone surrogates."""
    return _SURROGATE.sub("\ufffd", _CONTROL.sub(" ", value))


def cn_from_dn(dn: str) -> str:
    """The value of the first `cn=` RDN of a DN (RFC 4514 escapes honoured), else ''."""
    for rdn in _split_unescaped(dn, ","):
        for ava in _split_unescaped(rdn, "+"):
            name, sep, value = ava.partition("=")
            if sep and name.strip().lower() == "cn":
                return _unescape_dn_value(value.strip())
    return ""


def username_from_email(value: str) -> str:
    """The local part of an address: 'jsmith@example.com' -> 'jsmith'."""
    return value.rpartition("@")[0] if "@" in value else value


def looks_like_email(value: str) -> bool:
    local, sep, domain = value.partition("@")
    return bool(sep and local and domain and "@" not in domain and not re.search(r"\s", value))


def _split_unescaped(text: str, separator: str) -> list[str]:
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append("\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unescape_dn_value(value: str) -> str:
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        value = value[1:-1]
    # \XX pairs are UTF-8 bytes (RFC 4514 section 2.4), so gather bytes, then decode.
    out = bytearray()
    for match in re.finditer(r"\\([0-9A-Fa-f]{2})|\\(.)|(.)", value, re.DOTALL):
        hex_pair, escaped, plain = match.groups()
        if hex_pair is not None:
            out.append(int(hex_pair, 16))
        else:
            out += (escaped if escaped is not None else plain).encode("utf-8", "surrogatepass")
    return out.decode("utf-8", "replace")


_PARSERS = {"cn_from_dn": cn_from_dn, "username_from_email": username_from_email}


def _new_environment() -> ImmutableSandboxedEnvironment:
    # Not HTML: no autoescape. ChainableUndefined: a missing attribute renders as ''.
    return ImmutableSandboxedEnvironment(autoescape=False, undefined=jinja2.ChainableUndefined)


@dataclass(frozen=True, slots=True)
class CompiledRule:
    attribute: str
    rule: MappingRule
    template: jinja2.Template | None
    variables: frozenset[str]  # names a template reads, as spelled in the config


class Mapper:
    """Maps source records with rules compiled once per run."""

    def __init__(self, rules: Mapping[str, CompiledRule]) -> None:
        self._rules = dict(rules)
        self._create_only = frozenset(a for a, r in self._rules.items() if r.rule.create_only)
        self._variables = frozenset(v for r in self._rules.values() for v in r.variables)

    def ldap_attributes(self) -> set[str]:
        """What the reader must fetch: rule sources and template variables (not guid, dn)."""
        names: dict[str, str] = {}
        for compiled in self._rules.values():
            wanted = set(compiled.variables)
            if compiled.rule.source is not None:
                wanted.add(compiled.rule.source)
            for name in sorted(wanted):
                if name.lower() not in _BUILTINS:
                    names.setdefault(name.lower(), name)
        return set(names.values())

    def map_user(self, user: SourceUser) -> DesiredUser | MappingFailure:
        try:
            return self._map_user(user)
        except Exception as exc:  # a record must never end the cycle
            return MappingFailure("user", user.guid, clean(user.dn), f"mapping failed: {exc!r}")

    def map_group(self, group: SourceGroup) -> DesiredGroup:
        name = clean(group.name).strip()[:MAX_VALUE_LENGTH]
        return DesiredGroup(group.guid, name, frozenset(group.member_guids))

    def _map_user(self, user: SourceUser) -> DesiredUser | MappingFailure:
        context = self._context(user)
        values: dict[str, str] = {}
        template_errors: dict[str, str] = {}
        for attribute, compiled in self._rules.items():
            value, error = self._value(compiled, user, context)
            if error:
                template_errors[attribute] = error
            if len(value) > MAX_VALUE_LENGTH and attribute not in REQUIRED:
                value = value[:MAX_VALUE_LENGTH]
            if value:
                values[attribute] = value
        name = values.get("userName") or clean(user.dn)
        for attribute in REQUIRED:
            cause = _required_problem(attribute, values.get(attribute), template_errors)
            if cause:
                return MappingFailure("user", user.guid, name, cause)
        return DesiredUser(
            source_id=user.guid,
            user_name=values["userName"],
            active=not user.disabled,
            values=values,
            # One shared empty set, not 100,000 of them (216 bytes each).
            create_only=(self._create_only & values.keys()) or NOTHING,
        )

    def _context(self, user: SourceUser) -> dict[str, str]:
        first = {name.lower(): clean(vals[0]) for name, vals in user.attributes.items() if vals}
        context = dict(first)
        for name in self._variables:
            if name.lower() in first:
                context[name] = first[name.lower()]
        context["guid"] = clean(user.guid)
        context["dn"] = clean(user.dn)
        return context

    def _value(
        self, compiled: CompiledRule, user: SourceUser, context: Mapping[str, str]
    ) -> tuple[str, str | None]:
        rule, error = compiled.rule, None
        value = ""
        if compiled.template is not None:
            try:
                value = clean(compiled.template.render(context))
            except Exception as exc:  # jinja2 and sandbox errors: PingFederate sends the default
                error = f"{type(exc).__name__}: {exc}"
        elif rule.source is not None:
            value = context.get(rule.source.lower(), "")
        if value and rule.parser is not None:
            value = clean(_PARSERS[rule.parser](value))
        if rule.trim:
            value = value.strip()
        if rule.case == "lower":
            value = value.lower()
        elif rule.case == "upper":
            value = value.upper()
        if not value and rule.default is not None:
            value = clean(rule.default)
        return value, error


def _required_problem(
    attribute: str, value: str | None, template_errors: Mapping[str, str]
) -> str | None:
    if not value:
        why = (
            f" (template failed: {template_errors[attribute]})"
            if attribute in template_errors
            else ""
        )
        return f"mapping.{attribute}: required but empty{why}"
    if len(value) > MAX_VALUE_LENGTH:
        return f"mapping.{attribute}: longer than {MAX_VALUE_LENGTH} characters"
    if attribute == "emails.work" and not looks_like_email(value):
        return f"mapping.{attribute}: {value[:80]!r} is not an email address"
    return None


def compile_rules(rules: Mapping[str, MappingRule]) -> Mapper:
    """Compile every template once; a bad one is a MappingConfigError naming the attribute."""
    env = _new_environment()
    compiled: dict[str, CompiledRule] = {}
    for attribute in REQUIRED:
        if attribute not in rules:
            raise MappingConfigError(f"mapping.{attribute}: required, but no rule maps it")
    for attribute, rule in rules.items():
        template, variables = None, frozenset[str]()
        if rule.template is not None:
            try:
                template = env.from_string(rule.template)
                variables = frozenset(
                    jinja2.meta.find_undeclared_variables(env.parse(rule.template))
                )
            except jinja2.TemplateSyntaxError as exc:
                where = f" (line {exc.lineno})" if exc.lineno else ""
                raise MappingConfigError(
                    f"mapping.{attribute}: bad template: {exc.message}{where}"
                ) from None
        compiled[attribute] = CompiledRule(attribute, rule, template, variables)
    return Mapper(compiled)

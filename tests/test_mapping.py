"""Mapping: each rule option, templates, required attributes, and hostile input."""

from __future__ import annotations

import json

import jinja2.environment
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scimsync.config import MappingRule
from scimsync.mapping import (
    MAX_VALUE_LENGTH,
    Mapper,
    MappingConfigError,
    cn_from_dn,
    compile_rules,
    username_from_email,
)
from scimsync.model import DesiredUser, MappingFailure, SourceGroup, SourceUser

BASE = {"userName": "uid", "emails.work": "mail"}


def mapper(**extra: str | MappingRule) -> Mapper:
    rules = {k: MappingRule.parse(v) for k, v in {**BASE, **extra}.items()}
    return compile_rules(rules)


def person(disabled: bool = False, **attributes: str | tuple[str, ...]) -> SourceUser:
    attrs = {"uid": "jsmith", "mail": "jsmith@example.com", **attributes}
    return SourceUser(
        guid="guid-1",
        dn="uid=jsmith,ou=people,dc=example,dc=com",
        attributes={k.lower(): (v,) if isinstance(v, str) else v for k, v in attrs.items()},
        disabled=disabled,
    )


def mapped(m: Mapper, user: SourceUser) -> DesiredUser:
    result = m.map_user(user)
    assert isinstance(result, DesiredUser), result
    return result


def test_plain_sources_map_first_value_and_active_follows_disabled() -> None:
    m = mapper(**{"name.givenName": "givenName", "title": "title"})
    user = mapped(m, person(givenName=("Janet", "Jan"), title="CFO"))
    assert user.values == {
        "userName": "jsmith",
        "emails.work": "jsmith@example.com",
        "name.givenName": "Janet",
        "title": "CFO",
    }
    assert user.user_name == "jsmith"
    assert user.source_id == "guid-1"
    assert user.active
    assert not mapped(m, person(disabled=True)).active


def test_source_names_are_case_insensitive() -> None:
    m = mapper(**{"name.givenName": "GIVENNAME"})
    assert mapped(m, person(givenName="Janet")).values["name.givenName"] == "Janet"


def test_template_sees_attributes_by_config_and_lower_case_names_plus_guid_and_dn() -> None:
    m = mapper(
        displayName="{{ givenName }} {{ sn }}",
        nickName="{{ givenname }}",
        externalId="{{ guid }}",
        organization="{{ dn }}",
    )
    user = mapped(m, person(givenName="Janet", sn="Smith"))
    assert user.values["displayName"] == "Janet Smith"
    assert user.values["nickName"] == "Janet"
    assert user.values["externalId"] == "guid-1"
    assert user.values["organization"] == "uid=jsmith,ou=people,dc=example,dc=com"


DN = "uid=jsmith,ou=people,dc=example,dc=com"


def test_missing_attribute_renders_empty_and_default_applies() -> None:
    m = mapper(
        displayName=MappingRule(template="{{ givenName }} {{ sn }}", default="Nobody"),
        title=MappingRule(source="title", default="Staff"),
        nickName="{{ manager.name }}",
    )
    user = mapped(m, person())
    assert user.values["displayName"] == "Nobody"  # " " trimmed to empty, then default
    assert user.values["title"] == "Staff"
    assert "nickName" not in user.values  # empty values are dropped
    # The default that stood in says "optional"; the chained lookup is still counted.
    assert m.warnings() == [
        f"mapping.nickName: 1 entry lacks 'manager' (e.g. {DN}); rendered empty"
    ]


@pytest.mark.parametrize(
    ("rules", "cause"),
    [
        ({"userName": "{{ surname }}"}, "mapping.userName: template uses 'surname'"),
        (
            {"userName": "{{ givenName }}.{{ sn }}"},
            "mapping.userName: template uses 'givenName', 'sn'",
        ),
        ({"emails.work": "{{ uid }}@{{ domain }}"}, "mapping.emails.work: template uses 'domain'"),
    ],
)
def test_a_variable_missing_from_a_required_attribute_fails_the_record_naming_it(
    rules: dict[str, str], cause: str
) -> None:
    m = mapper(**rules)
    result = m.map_user(person())
    assert isinstance(result, MappingFailure), result
    assert result.cause == f"{cause}, which entry {DN} lacks"
    assert m.warnings() == []  # each record is reported as unmappable instead
    assert {(f.problem, f.count, f.unmappable) for f in m.findings()} == {("missing", 1, True)}


def test_a_variable_missing_from_an_optional_attribute_renders_and_is_counted() -> None:
    m = mapper(
        displayName="{{ givenName }} {{ surname }}",
        nickName="{{ surname }}{{ initials }}",
        title="{{ level + 1 }}",  # an operation on it fails: still the missing variable
    )
    for name in ("Ann", "Ben", "Cas"):
        assert mapped(m, person(givenName=name)).values["displayName"] == name
    assert m.warnings() == [
        f"mapping.displayName: 3 entries lack 'surname' (e.g. {DN}); rendered empty",
        f"mapping.nickName: 3 entries lack 'surname' (e.g. {DN}); rendered empty",
        f"mapping.nickName: 3 entries lack 'initials' (e.g. {DN}); rendered empty",
        f"mapping.title: 3 entries lack 'level' (e.g. {DN}); rendered empty",
    ]
    mapped(m, person(givenName="Dot", surname="Dee", initials="D", level="x"))
    assert m.warnings()[0].startswith("mapping.displayName: 3 entries lack")  # not counted


def test_default_filter_is_defined_and_a_rule_default_mark_a_variable_optional() -> None:
    m = mapper(
        displayName="{{ givenName }} {{ surname | default('') }}",
        nickName="{% if surname is defined %}{{ surname }}{% else %}{{ uid }}{% endif %}",
        title="{{ surname | d(givenName) }}",
        department=MappingRule(template="{{ surname }}", default="R&D"),
        organization="{{ (surname or 'none') }}",
    )
    user = mapped(m, person(givenName="Janet"))
    assert user.values["displayName"] == "Janet"
    assert user.values["nickName"] == "jsmith"
    assert user.values["title"] == "Janet"
    assert user.values["department"] == "R&D"
    assert user.values["organization"] == "none"
    assert m.warnings() == []
    assert m.findings() == []


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__ }}",
        "{{ uid.__class__.__mro__ }}",
        "{{ ''.__class__ | default('x') }}",  # a default never makes unsafe access fine
        "{{ [].append(1) }}",
        "{{ uid.__class__.__subclasses__() }}",
    ],
)
@pytest.mark.parametrize("attribute", ["title", "userName"])
def test_a_sandbox_refusal_fails_the_record_naming_the_rule(attribute: str, template: str) -> None:
    m = mapper(**{attribute: MappingRule(template=template)})
    result = m.map_user(person())
    assert isinstance(result, MappingFailure), result
    assert result.cause.startswith(
        f"mapping.{attribute}: the template was refused by the sandbox: access to attribute"
    )
    assert "unsafe" in result.cause
    assert m.warnings() == []
    [finding] = m.findings()
    assert (finding.attribute, finding.problem, finding.unmappable) == (attribute, "refused", True)


def test_template_that_fails_at_render_falls_back_to_default_and_is_counted() -> None:
    m = mapper(
        title=MappingRule(template="{{ 1 // 0 }}", default="fallback"),
        nickName="{{ mail.nope }}",  # an attribute of a value, not a variable of the entry
    )
    assert mapped(m, person()).values["title"] == "fallback"
    assert "nickName" not in mapped(m, person()).values
    assert m.warnings() == [
        f"mapping.title: the template failed for 2 entries (e.g. {DN}): "
        "ZeroDivisionError: integer division or modulo by zero; the rule's default was used",
        f"mapping.nickName: the template failed for 2 entries (e.g. {DN}): "
        "UndefinedError: 'str object' has no attribute 'nope'; the attribute was left empty",
    ]


def test_findings_count_unmappable_records_per_rule_for_check() -> None:
    m = mapper(displayName="{{ surname }}")
    m.map_user(person())
    m.map_user(person(uid=()))
    assert [str(f) for f in m.findings()] == [
        f"mapping.displayName: 2 entries lack 'surname' (e.g. {DN}); rendered empty",
        f"mapping.userName: required but empty for 1 entry (e.g. {DN}); reported as unmappable",
    ]


def test_required_template_failure_names_attribute_and_error() -> None:
    m = mapper(userName="{{ 1 // 0 }}")
    failure = m.map_user(person())
    assert isinstance(failure, MappingFailure)
    assert failure.cause.startswith("mapping.userName: required but empty")
    assert "ZeroDivisionError" in failure.cause


def test_trim_is_on_by_default_and_can_be_turned_off() -> None:
    m = mapper(title="title", department=MappingRule(source="title", trim=False))
    user = mapped(m, person(title="  CFO \t"))
    assert user.values["title"] == "CFO"
    assert user.values["department"] == "  CFO  "  # tab cleaned to a space, kept


@pytest.mark.parametrize(("case", "expected"), [("lower", "straße"), ("upper", "STRASSE")])
def test_case(case: str, expected: str) -> None:
    m = mapper(title=MappingRule(source="title", case=case))
    assert mapped(m, person(title="Straße")).values["title"] == expected


def test_parsers() -> None:
    m = mapper(
        userName=MappingRule(source="mail", parser="username_from_email"),
        department=MappingRule(source="manager", parser="cn_from_dn"),
    )
    user = mapped(m, person(manager=r"cn=Smith\, Janet,ou=people,dc=example,dc=com"))
    assert user.user_name == "jsmith"
    assert user.values["department"] == "Smith, Janet"


def test_cn_from_dn_details() -> None:
    assert cn_from_dn(r"uid=x,cn=Gr\C3\A9goire,dc=x") == "Grégoire"
    assert cn_from_dn("CN=Ünïcødé Team,OU=Groups") == "Ünïcødé Team"
    assert cn_from_dn("ou=nothing,dc=x") == ""
    assert cn_from_dn("not a dn") == ""
    assert username_from_email("plain") == "plain"


def test_create_only_is_recorded_on_the_desired_user() -> None:
    m = mapper(externalId=MappingRule(source="employeeNumber", create_only=True), title="title")
    user = mapped(m, person(employeeNumber="42", title="CFO"))
    assert user.create_only == frozenset({"externalId"})
    # an empty create-only attribute is not listed: there is nothing to create
    assert mapped(m, person(title="CFO")).create_only == frozenset()


def test_default_only_rule() -> None:
    m = mapper(organization=MappingRule(default="Example Corp"))
    assert mapped(m, person()).values["organization"] == "Example Corp"


@pytest.mark.parametrize(
    ("attributes", "cause"),
    [
        ({"uid": ()}, "mapping.userName: required but empty"),
        ({"mail": ()}, "mapping.emails.work: required but empty"),
        ({"mail": "   "}, "mapping.emails.work: required but empty"),
        ({"mail": "no-at-sign"}, "is not an email address"),
        ({"mail": "two@@example.com"}, "is not an email address"),
        ({"mail": "@example.com"}, "is not an email address"),
        ({"mail": "jsmith@"}, "is not an email address"),
        ({"uid": "x" * (MAX_VALUE_LENGTH + 1)}, "longer than 1024"),
    ],
)
def test_required_attribute_failures(
    attributes: dict[str, str | tuple[str, ...]], cause: str
) -> None:
    result = mapper().map_user(person(False, **attributes))
    assert isinstance(result, MappingFailure)
    assert result.kind == "user"
    assert result.source_id == "guid-1"
    assert cause in result.cause


def test_failure_is_named_by_dn_when_username_is_missing() -> None:
    result = mapper().map_user(person(uid=()))
    assert isinstance(result, MappingFailure)
    assert result.name == "uid=jsmith,ou=people,dc=example,dc=com"


def test_bad_template_is_a_one_line_config_error_naming_the_attribute() -> None:
    with pytest.raises(MappingConfigError) as caught:
        mapper(displayName="{{ givenName ")
    message = str(caught.value)
    assert message.startswith("mapping.displayName: bad template:")
    assert "\n" not in message


def test_unknown_filter_is_caught_at_config_time() -> None:
    with pytest.raises(
        MappingConfigError, match=r"(?i)mapping.title: bad template: no filter named 'nope'"
    ):
        mapper(title="{{ sn | nope }}")


def test_missing_required_rule_is_a_config_error() -> None:
    with pytest.raises(MappingConfigError, match=r"^mapping\.emails\.work: "):
        compile_rules({"userName": MappingRule(source="uid")})


def test_ldap_attributes_lists_sources_and_template_variables_once() -> None:
    m = mapper(
        displayName="{{ givenName }} {{ sn }} {{ guid }} {{ dn }}",
        **{"name.givenName": "givenname"},
        title=MappingRule(default="x"),
    )
    fetched = m.ldap_attributes()
    assert {name.lower() for name in fetched} == {"uid", "mail", "givenname", "sn"}
    assert len(fetched) == 4


def test_templates_are_compiled_once_per_run(monkeypatch: pytest.MonkeyPatch) -> None:
    m = mapper(displayName="{{ givenName }}")
    calls = 0
    original = jinja2.environment.Environment.compile

    def counting(self: jinja2.environment.Environment, *args: object, **kw: object) -> object:
        nonlocal calls
        calls += 1
        return original(self, *args, **kw)  # type: ignore[call-overload]

    monkeypatch.setattr(jinja2.environment.Environment, "compile", counting)
    for n in range(5):
        mapped(m, person(givenName=f"n{n}"))
    assert calls == 0


def test_unicode_control_characters_and_huge_values() -> None:
    m = mapper(displayName="{{ cn }}", title="title", department="department")
    user = mapped(
        m,
        person(
            cn="Łukasz Żółć 李小龍 عبد الله 😀",
            title="a\x00b\x07c\nd\x9f",
            department="x" * 100_000,
            uid="ñandú",
        ),
    )
    assert user.values["displayName"] == "Łukasz Żółć 李小龍 عبد الله 😀"
    assert user.values["title"] == "a b c d"
    assert user.values["department"] == "x" * MAX_VALUE_LENGTH
    assert user.user_name == "ñandú"


def test_lone_surrogates_become_replacement_characters() -> None:
    user = mapped(mapper(title="title"), person(title="bad\udcffbyte"))
    assert user.values["title"] == "bad\ufffdbyte"
    json.dumps(dict(user.values), ensure_ascii=False).encode("utf-8")


def test_map_group() -> None:
    group = SourceGroup("g1", "cn=Team,dc=x", " Team\x00A ", frozenset({"u1", "u2"}))
    desired = mapper().map_group(group)
    assert desired.source_id == "g1"
    assert desired.display_name == "Team A"
    assert desired.member_source_ids == frozenset({"u1", "u2"})


_TEXT = st.text(st.characters(codec=None), max_size=60) | st.sampled_from(
    ["", " ", "@", "a@b", "\x00", "\udcff", "{{", "x" * 2000]
)
_ATTRS = st.dictionaries(
    st.sampled_from(["uid", "mail", "givenname", "sn", "cn", "title", "manager", "other"]),
    st.lists(_TEXT, max_size=3).map(tuple),
    max_size=8,
)
_FUZZ_MAPPER = mapper(
    displayName="{{ givenName }} {{ sn }}{{ cn | upper }}",
    nickName="{{ mail.split('@')[0] }}",
    title=MappingRule(source="title", case="upper", default="d"),
    department=MappingRule(source="manager", parser="cn_from_dn"),
    organization=MappingRule(source="mail", parser="username_from_email", trim=False),
    externalId="{{ guid }}",
)


@settings(max_examples=300, deadline=None)
@given(attrs=_ATTRS, guid=_TEXT, dn=_TEXT, disabled=st.booleans())
def test_no_input_makes_map_user_raise(
    attrs: dict[str, tuple[str, ...]], guid: str, dn: str, disabled: bool
) -> None:
    result = _FUZZ_MAPPER.map_user(SourceUser(guid, dn, attrs, disabled))
    if isinstance(result, DesiredUser):
        assert result.user_name == result.values["userName"]
        assert "@" in str(result.values["emails.work"])
        for value in result.values.values():
            assert isinstance(value, str)
            assert value
            assert len(value) <= MAX_VALUE_LENGTH
            value.encode("utf-8")
            assert not any(ord(c) < 0x20 for c in value)
    else:
        assert result.cause.startswith("mapping.")

"""Configuration: every mistake is one line naming the file and the key."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import ldap
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from scimsync import config
from scimsync.config import ConfigError, Flavour
from scimsync.guard import allowed_deletions
from scimsync.model import PlanOptions

MINIMAL: dict[str, Any] = {
    "source": {
        "url": "ldap://127.0.0.1:389",
        "base_dn": "dc=example,dc=com",
        "users": {"filter": "(objectClass=inetOrgPerson)"},
    },
    "target": {"url": "http://127.0.0.1:8080/scim", "token": "${TOKEN}"},
}


def write(tmp_path: Path, data: Any, name: str = "scimsync.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    path.chmod(0o600)
    return path


def error_of(tmp_path: Path, data: Any, env: dict[str, str] | None = None) -> str:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        config.load(path, env={"TOKEN": "t0k"} if env is None else env)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    return message


def with_(**changes: Any) -> dict[str, Any]:
    """MINIMAL with dotted keys replaced (None deletes)."""
    data: dict[str, Any] = yaml.safe_load(yaml.safe_dump(MINIMAL))
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return data


def test_minimal_config_gets_flavour_defaults(tmp_path: Path) -> None:
    loaded = config.load(write(tmp_path, MINIMAL), env={"TOKEN": "t0k"})
    assert loaded.target.bearer == "t0k"
    assert loaded.source.directory is Flavour.OPENLDAP
    assert loaded.source.guid_attribute == "entryUUID"
    assert loaded.rules["userName"].source == "mail"
    assert loaded.options.remove_user_action == "disable"


def test_active_directory_defaults(tmp_path: Path) -> None:
    loaded = config.load(
        write(tmp_path, with_(source__directory="active_directory")), env={"TOKEN": "x"}
    )
    assert loaded.source.guid_attribute == "objectGUID"
    assert loaded.source.account_status is not None
    assert loaded.source.account_status.attribute == "userAccountControl"
    assert loaded.rules["userName"].source == "userPrincipalName"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (with_(source__base_dn=None), "source.base_dn: missing required key"),
        (with_(source__colour="blue"), "source.colour: unknown key"),
        (with_(source__page_size="many"), "source.page_size: "),
        (with_(source__url="http://ldap.example.com"), "source.url: expected an ldap://"),
        (with_(target__url="ftp://x"), "target.url: expected an http:// or https:// URL"),
        (with_(target__token=None), "target: expected token or token_file"),
        (with_(options__remove_user_action="erase"), "options.remove_user_action: "),
        (with_(options__max_deletions="lots"), "options.max_deletions: expected a count"),
        (with_(mapping={"shoeSize": "x"}), "mapping: unknown SCIM attribute 'shoeSize'"),
        (with_(source__users={}), "source.users: expected group_dn or filter"),
        (with_(state="mysql://x"), "state: expected a sqlite:/// or postgresql"),
        ("- just\n- a list\n", "expected a mapping of settings at the top level"),
        ("source: [unclosed\n", "invalid YAML at line"),
    ],
)
def test_mistakes_are_one_line_naming_the_key(tmp_path: Path, data: Any, expected: str) -> None:
    assert expected in error_of(tmp_path, data)


def test_undefined_variable_names_key_and_variable(tmp_path: Path) -> None:
    message = error_of(tmp_path, MINIMAL, env={})
    assert "target.token: environment variable TOKEN is not set" in message


def test_literal_dollar_brace_is_escaped(tmp_path: Path) -> None:
    data = with_(mapping={"displayName": "$${not_a_var}"})
    loaded = config.load(write(tmp_path, data), env={"TOKEN": "x"})
    assert loaded.rules["displayName"].source == "${not_a_var}"


def test_missing_file_and_unreadable_secret_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path / "absent.yaml")
    data = with_(target__token=None, target__token_file=str(tmp_path / "nope"))
    assert "target: cannot read" in error_of(tmp_path, data)


def test_secret_files(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")
    (tmp_path / "pw").write_text("bind-secret\n")
    data = with_(
        target__token=None,
        target__token_file=str(tmp_path / "token"),
        source__bind_password_file=str(tmp_path / "pw"),
    )
    loaded = config.load(write(tmp_path, data), env={})
    assert loaded.target.bearer == "from-file"
    assert loaded.source.password == "bind-secret"
    assert "bind-secret" not in repr(loaded) and "from-file" not in repr(loaded)


def test_percentage_deletion_limit() -> None:
    options = config.Options(max_deletions="5%")
    assert allowed_deletions(options.deletion_limit, 1000) == 50
    assert allowed_deletions(config.Options(max_deletions=7).deletion_limit, 1000) == 7


def test_warns_when_inline_secret_is_world_readable(tmp_path: Path) -> None:
    path = write(tmp_path, with_(target__token="inline-token"))
    path.chmod(0o644)
    with pytest.warns(config.InsecureConfigWarning, match="target.token"):
        config.load(path, env={})
    path.chmod(0o600)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config.load(path, env={})


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, MINIMAL, "elsewhere.yaml")
    monkeypatch.setenv(config.CONFIG_ENV, str(path))
    assert config.locate(None) == path
    monkeypatch.delenv(config.CONFIG_ENV)
    assert config.locate(None) == Path("scimsync.yaml")


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)
section_keys = st.sampled_from(["source", "target", "options", "mapping", "state", "interval"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(section_keys, yaml_values, max_size=6), st.booleans())
def test_no_input_yields_anything_but_a_config_or_a_config_error(
    raw: dict[str, Any], merge_minimal: bool
) -> None:
    data = {**MINIMAL, **raw} if merge_minimal else raw
    try:
        config.parse(data, "fuzz.yaml", env=dict(os.environ, TOKEN="t"))
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.yaml: ")
        assert "\n" not in str(exc)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_as_a_file(tmp_path_factory: pytest.TempPathFactory, blob: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "scimsync.yaml"
    path.write_bytes(blob)
    try:
        config.load(path, env={})
    except ConfigError as exc:
        assert "\n" not in str(exc)


# --- a key written twice ---------------------------------------------------------------

TWICE_TEMPLATE = """\
source:
  url: ldap://127.0.0.1:389
  base_dn: dc=example,dc=com
  users:
    filter: (objectClass=inetOrgPerson)
target:
  url: http://127.0.0.1:8080/scim
  token: ${{TOKEN}}
{extra}"""


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "options:\n  max_deletions: 5\noptions:\n  groups: false\n",
            "options: key written twice, at line 9 and line 11",
        ),
        (
            "options:\n  max_deletions: 5\n  create_users: true\n  max_deletions: 500\n",
            "options.max_deletions: key written twice, at line 10 and line 12",
        ),
        (
            "mapping: {title: title, title: department}\n",
            "mapping.title: key written twice, at line 9, columns 11 and 25",
        ),
        ("source:\n  url: ldap://other\n", "source: key written twice, at line 1 and line 9"),
    ],
)
def test_a_key_written_twice_names_both_lines(tmp_path: Path, extra: str, expected: str) -> None:
    assert error_of(tmp_path, TWICE_TEMPLATE.format(extra=extra)).endswith(": " + expected)


def test_a_merged_key_may_be_overridden(tmp_path: Path) -> None:
    """`<<: *anchor` then the same key: YAML's way of overriding, not a mistake."""
    text = TWICE_TEMPLATE.format(extra="").replace(
        "  users:\n    filter: (objectClass=inetOrgPerson)\n",
        "  users: &scope\n    filter: (objectClass=inetOrgPerson)\n"
        "  groups:\n    <<: *scope\n    filter: (objectClass=groupOfNames)\n",
    )
    loaded = config.load(write(tmp_path, text), env={"TOKEN": "t"})
    assert loaded.source.groups is not None
    assert loaded.source.groups.filter == "(objectClass=groupOfNames)"


# --- metrics_listen --------------------------------------------------------------------


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:9464", "0.0.0.0:0", "[::1]:9464", "localhost:65535", "metrics.lan:80"]
)
def test_metrics_listen_accepts_host_and_port(tmp_path: Path, listen: str) -> None:
    loaded = config.load(write(tmp_path, with_(metrics_listen=listen)), env={"TOKEN": "t"})
    assert loaded.metrics_listen == listen


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("nonsense", "expected host:port such as 127.0.0.1:9464"),
        ("127.0.0.1:65536", "expected host:port"),
        ("127.0.0.1:http", "expected host:port"),
        (9464, "expected host:port"),
        ("::1:9464", "an IPv6 address goes in brackets"),
        ("[::g]:9464", "'::g' is not an IPv6 address"),
        ("256.1.1.1:9464", "'256.1.1.1' is not a host name or address"),
        ("my_host:9464", "'my_host' is not a host name or address"),
    ],
)
def test_metrics_listen_mistakes_name_the_key(tmp_path: Path, listen: Any, expected: str) -> None:
    message = error_of(tmp_path, with_(metrics_listen=listen))
    assert f": metrics_listen: {expected}" in message


# --- messages that name the key and what was expected ----------------------------------


@pytest.mark.parametrize(("written", "count"), [("50", 50), (" 7 ", 7), ("${LIMIT}", 50)])
def test_max_deletions_as_a_string_is_a_count(tmp_path: Path, written: str, count: int) -> None:
    path = write(tmp_path, with_(options__max_deletions=written))
    loaded = config.load(path, env={"TOKEN": "t", "LIMIT": "50"})
    assert loaded.options.max_deletions == count
    assert allowed_deletions(loaded.options.deletion_limit, 1000) == count


@pytest.mark.parametrize("written", ["-1", -1, True, 2.5, "fifty", [5]])
def test_max_deletions_refusals_say_what_was_expected(tmp_path: Path, written: Any) -> None:
    message = error_of(tmp_path, with_(options__max_deletions=written))
    assert (
        ": options.max_deletions: expected a count >= 0, a percentage such as '5%', or '2% min 5'"
        in message
    )


NOT_A_RULE = "expected an LDAP attribute, a {{ template }} or a mapping of rule options"


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"source": "t", "case": "title"}, ".case: expected lower or upper, got 'title'"),
        ({"sorce": "title"}, ".sorce: unknown key"),
        ({"source": "t", "template": "{{ x }}"}, ": expected source or template, not both"),
        ({"source": "t", "trim": "maybe"}, ".trim: expected true or false, got 'maybe'"),
        (5, f": {NOT_A_RULE}, got 5"),
        (None, f": {NOT_A_RULE}, got an empty value"),
    ],
)
def test_long_form_rule_mistakes_name_the_option(tmp_path: Path, rule: Any, expected: str) -> None:
    message = error_of(tmp_path, with_(mapping={"title": rule}))
    assert message.endswith(": mapping.title" + expected)


def test_long_form_rule_still_loads(tmp_path: Path) -> None:
    data = with_(mapping={"title": {"source": "title", "case": "upper", "default": "Staff"}})
    rule = config.load(write(tmp_path, data), env={"TOKEN": "t"}).rules["title"]
    assert (rule.source, rule.case, rule.default) == ("title", "upper", "Staff")


def test_a_section_that_is_not_a_mapping_says_what_it_needs(tmp_path: Path) -> None:
    message = error_of(tmp_path, with_(source__users=True))
    assert message.endswith(
        ": source.users: expected a mapping with group_dn and/or filter, got True"
    )
    message = error_of(tmp_path, with_(source__users=True, source__groups=True))
    assert "source.users: expected a mapping with group_dn and/or filter, got True" in message
    assert message.endswith("(also wrong: source.groups)")
    assert "more)" not in message


def test_many_mistakes_name_a_few_keys_after_the_first(tmp_path: Path) -> None:
    flags = {f"options__{key}": "maybe" for key in ("create_users", "update_users", "groups")}
    data = with_(interval="soon", channel="", state="mysql://x", metrics_listen="x", **flags)
    message = error_of(tmp_path, data)
    assert message.endswith(
        ": state: expected a sqlite:/// or postgresql+psycopg:// URL, got 'mysql://x' (also wrong: "
        "channel, interval, metrics_listen, options.create_users, options.update_users "
        "and 1 more)"
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [("source__users__filter", "${USERS_FILTER"), ("target__token", "abc${TOKEN")],
)
def test_an_unclosed_variable_names_the_key(tmp_path: Path, key: str, value: str) -> None:
    message = error_of(tmp_path, with_(**{key: value}))
    dotted = key.replace("__", ".")
    assert f": {dotted}: '${{' without a closing '}}'; expected ${{NAME}}" in message


def test_dollar_dollar_brace_is_a_literal_even_unclosed(tmp_path: Path) -> None:
    data = with_(mapping={"displayName": "$${half"})
    loaded = config.load(write(tmp_path, data), env={"TOKEN": "x"})
    assert loaded.rules["displayName"].source == "${half"


# --- directory-side values: filters and DNs --------------------------------------------

GOOD_FILTERS = [
    "(objectClass=inetOrgPerson)",
    "objectClass=person",
    " (&(objectClass=person)(!(uid=svc-*))) ",
    "(& (objectClass=person)\t(mail=*))",
    "(userAccountControl:1.2.840.113556.1.4.803:=2)",
    "(cn:dn:caseExactMatch:=Ann)",
    "(cn=Ann \\28temp\\29)",
    "(cn=J*n*s)",
    "(cn=\\*)",
    "(|)",
    "(memberOf=cn=staff,ou=groups,dc=example,dc=com)",
    "(cn;lang-fr=Équipe)",
]

BAD_FILTERS = [
    ("(&(objectClass=person)", "the '(' at character 1 is never closed"),
    ("(objectClass=person))", "unexpected ')' after the filter"),
    ("(objectClass=person)(uid=a)", "unexpected '(uid=a)' after the filter"),
    ("((objectClass=person))", "needs &, | or ! before it"),
    ("(!(uid=a)(uid=b))", "'!' takes exactly one filter"),
    ("(objectClass =person)", "'objectClass ' is not an attribute name"),
    ("(cn=a(b))", "'(' in a value must be written \\28"),
    ("(cn=\\zz)", "must be followed by two hex digits"),
    ("(cn=a**b)", "two '*' in a row"),
    ("(uid>=a*)", "'*' (presence, substrings) goes with '=' only"),
    ("(&(objectClass)(uid=a))", "expected attribute=value, got 'objectClass'"),
    ("", "expected an LDAP filter such as (objectClass=person), got ''"),
]


@pytest.mark.parametrize("section", ["users", "groups"])
@pytest.mark.parametrize("written", GOOD_FILTERS)
def test_valid_filters_load(tmp_path: Path, section: str, written: str) -> None:
    data = with_(**{f"source__{section}": {"filter": written}})
    assert config.load(write(tmp_path, data), env={"TOKEN": "t"}).source.users is not None


@pytest.mark.parametrize("section", ["users", "groups"])
@pytest.mark.parametrize(("written", "reason"), BAD_FILTERS)
def test_filter_syntax_errors_name_the_key(
    tmp_path: Path, section: str, written: str, reason: str
) -> None:
    message = error_of(tmp_path, with_(**{f"source__{section}": {"filter": written}}))
    assert f": source.{section}.filter: " in message
    assert reason in message


def libldap_accepts(filterstr: str) -> bool:
    """libldap's own verdict: it encodes the filter before it connects, so an unusable
    ldapi:// socket answers FILTER_ERROR for a bad filter and SERVER_DOWN for a good one."""
    connection = ldap.initialize("ldapi://%2Fnonexistent%2Fscimsync-filter-oracle")
    try:
        connection.search_ext("dc=example", ldap.SCOPE_BASE, filterstr)
    except ldap.FILTER_ERROR:
        return False
    except ldap.SERVER_DOWN:
        return True
    raise AssertionError("the oracle's search was sent somewhere")


def accepts(filterstr: str) -> bool:
    try:
        config.check_ldap_filter(filterstr)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("written", [*GOOD_FILTERS, *(bad for bad, _ in BAD_FILTERS if bad)])
def test_the_filter_checker_agrees_with_libldap_on_the_examples(written: str) -> None:
    wrapped = written.strip() if written.strip().startswith("(") else f"({written.strip()})"
    assert accepts(written) == libldap_accepts(wrapped)


filter_text = st.text(alphabet="()&|!=~<>*:;\\ \t.-aB1Fdn", max_size=24)
filter_parts = st.recursive(
    st.builds(
        lambda attr, op, value: f"({attr}{op}{value})",
        st.sampled_from(["cn", "uid", "1.2.3", "cn;x", "a b", "", "2.", "cn:dn", ":1.2", "x:dn:y"]),
        st.sampled_from(["=", "~=", ">=", "<=", ":=", "=*", "", "=="]),
        st.text(alphabet="ab*\\2f()= ", max_size=6),
    ),
    lambda inner: st.builds(
        lambda op, items, space: f"({op}{space}{''.join(items)})",
        st.sampled_from(["&", "|", "!", ""]),
        st.lists(inner, max_size=3),
        st.sampled_from(["", " ", "\t"]),
    ),
    max_leaves=6,
)


@settings(max_examples=600, deadline=None)
@given(st.one_of(filter_text, filter_parts))
def test_the_filter_checker_agrees_with_libldap(written: str) -> None:
    wrapped = written.strip() if written.strip().startswith("(") else f"({written.strip()})"
    assert accepts(written) == libldap_accepts(wrapped), wrapped


@pytest.mark.parametrize(
    "dn", ["dc=example,dc=com", "CN=Users,DC=corp,DC=example", "ou=Équipe,dc=x", "cn=a\\,b,dc=x"]
)
def test_valid_dns_load(tmp_path: Path, dn: str) -> None:
    data = with_(source__base_dn=dn, source__users={"group_dn": dn})
    loaded = config.load(write(tmp_path, data), env={"TOKEN": "t"})
    assert loaded.source.base_dn == dn
    assert loaded.source.users.group_dn == dn


@pytest.mark.parametrize(
    ("key", "dn"),
    [
        ("source__base_dn", "example.com"),
        ("source__base_dn", ""),
        ("source__base_dn", "dc=example,,dc=com"),
        ("source__users__group_dn", "atlassian-users"),
        ("source__groups__group_dn", "cn=a,dc=x,"),
    ],
)
def test_a_value_that_is_not_a_dn_names_the_key(tmp_path: Path, key: str, dn: str) -> None:
    message = error_of(tmp_path, with_(**{key: dn}))
    assert f": {key.replace('__', '.')}: expected a DN such as dc=example,dc=com, got {dn!r}" in (
        message
    )


def test_the_planner_s_options_are_the_config_s_with_the_same_defaults() -> None:
    assert config.Options().for_planner == PlanOptions()
    chosen = config.Options(update_users=False, user_name_changes="update").for_planner
    assert (chosen.update_users, chosen.user_name_changes) == (False, "update")

"""Configuration: every mistake is one line naming the file and the key."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from scimsync import config
from scimsync.config import ConfigError, Flavour

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
    assert options.deletion_limit(1000) == 50
    assert config.Options(max_deletions=7).deletion_limit(1000) == 7


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

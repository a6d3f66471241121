"""Templates have limits: the resource attacks of issue 12 stop quickly, naming the rule."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from scimsync.config import MappingRule
from scimsync.emulator import RunningEmulator
from scimsync.mapping import (
    DEFAULT_LIMITS,
    MAX_VALUE_LENGTH,
    TIME_OUTS_BEFORE_GIVING_UP,
    Mapper,
    TemplateLimits,
    compile_rules,
)
from scimsync.model import DesiredUser, MappingFailure, SourceUser
from tests.fixtures.slapd import Tree
from tests.harness import Channel
from tests.test_cli import Cli

BASE = {"userName": "uid", "emails.work": "mail"}
DN = "uid=jsmith,ou=people,dc=example,dc=com"
LIMIT = "TemplateLimitError: "
# Without the limits each attack below runs for minutes or builds a gigabyte.
QUICKLY = pytest.mark.timeout(60)


def mapper(limits: TemplateLimits = DEFAULT_LIMITS, **extra: str | MappingRule) -> Mapper:
    rules = {k: MappingRule.parse(v) for k, v in {**BASE, **extra}.items()}
    return compile_rules(rules, limits)


def person(**attributes: str) -> SourceUser:
    attrs = {"uid": "jsmith", "mail": "jsmith@example.com", "cn": "Janet Smith", **attributes}
    return SourceUser("guid-1", DN, {k.lower(): (v,) for k, v in attrs.items()}, False)


def title_error(m: Mapper) -> str:
    """Map one person; `title` must have failed: the error it failed with."""
    result = m.map_user(person())
    assert isinstance(result, DesiredUser), result
    assert "title" not in result.values
    [warning] = m.warnings()
    prefix = f"mapping.title: the template failed for 1 entry (e.g. {DN}): {LIMIT}"
    assert warning.startswith(prefix), warning
    assert warning.endswith("; the attribute was left empty")
    return warning.removeprefix(prefix).removesuffix("; the attribute was left empty")


@QUICKLY
def test_the_nested_range_loop_of_the_issue_is_stopped() -> None:
    loop = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"
    assert title_error(mapper(title=loop)) == "range() of 99999 items: the limit is 10000"


@QUICKLY
@pytest.mark.parametrize(
    "template",
    [
        "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
        # Any loop, not only over range(): three nested loops over 1,100 characters.
        "{% set s = cn * 100 %}{% for a in s %}{% for b in s %}{% for c in s %}"
        "{% endfor %}{% endfor %}{% endfor %}",
        "{% macro m(n) %}{% for i in range(9999) %}{% endfor %}{{ m(n) }}{% endmacro %}{{ m(0) }}",
    ],
)
def test_a_render_is_stopped_at_its_cpu_time_limit(template: str) -> None:
    # 1 ms: the test is fast by construction; each loop above runs 10**8 times or more.
    m = mapper(TemplateLimits(cpu_seconds=0.001), title=template)
    assert title_error(m) == "the template exceeded its time limit (1 ms of CPU)"


def test_the_time_limit_is_per_render() -> None:
    # 50 ms a render: one render of "{{ cn }}" never comes near it, even with a garbage
    # collection inside (1 ms did, once in CI); the renders together use five times that.
    m = mapper(TemplateLimits(cpu_seconds=0.05), title="{{ cn }}")
    start = time.process_time()
    renders = 0
    while time.process_time() - start < 0.25:
        result = m.map_user(person())
        assert isinstance(result, DesiredUser), result
        assert result.values["title"] == "Janet Smith"
        renders += 1
    assert renders > 1 and m.warnings() == []


@QUICKLY
def test_a_huge_repetition_is_refused_before_it_is_built() -> None:
    assert title_error(mapper(title="{{ 'x' * 10**8 }}")) == (
        "'*' would build 100000000 characters or items: the limit is 10000"
    )


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ("{{ [cn] * 5000 }}", "'*' would build 60000 characters or items"),
        ("{{ 10 ** 10 ** 8 }}", "'**' would build a number of 265 bits: the limit is 64"),
        ("{{ 2 ** 64 }}", "'**' would build a number of 65 bits: the limit is 64"),
        ("{{ 2 ** 32 * 2 ** 32 }}", "'*' would build a number of 65 bits"),
        ("{% set a = cn * 900 %}{{ a + a }}", "'+' would build 19800 characters"),
        ("{% set a = cn * 900 %}{% set a = a ~ a %}{{ a }}", "'~' would build 19800 characters"),
        ("{{ cn.center(10**6) }}", "str.center() would build 1000000 characters"),
        ("{{ cn.zfill(10**6) }}", "str.zfill() would build 1000000 characters"),
        ("{{ cn.replace('', cn * 100) }}", "str.replace() would build 13211 characters"),
        ("{{ (cn * 10).join([cn] * 500) }}", "str.join() would build 60890 characters"),
        ("{{ '%1000000s' % cn }}", "'%' would build 1000000 characters"),
        ("{{ '%.1000000d' % 1 }}", "'%' would build 1000000 characters"),
        ("{{ '%*s' % (10**6, cn) }}", "'%' would build 1000000 characters"),
        ("{{ '%(a)1000000s' % {'a': cn} }}", "'%' would build 1000000 characters"),
        ("{{ '{:>1000000}'.format(cn) }}", "str.format() would build 1000000 characters"),
        ("{{ '{:>{w}}'.format(cn, w=10**6) }}", "str.format() would build 1000000 characters"),
        ("{{ cn | center(10**6) }}", "|center would build 1000000 characters"),
        ("{{ cn | indent(10**6) }}", "|indent would build 1000011 characters"),
        ("{{ cn | replace('', cn * 100) }}", "|replace would build 13211 characters"),
        ("{{ ([cn] * 500) | join(cn * 10) }}", "|join would build 60890 characters"),
        ("{{ '%*s' | format(10**6, cn) }}", "'%' would build 1000000 characters"),
        ("{{ cn | slice(10**6) | list }}", "|slice would build 1000000 characters"),
        ("{{ range(10000) | join(',') }}", "|join built more than 10000 characters"),
        # A list holding one list many times prints it each time: 100**4 copies of cn.
        (
            "{% set a = [cn] * 100 %}{% set b = [a] * 100 %}{{ [b] * 100 }}",
            "'*' would build 120100 characters",
        ),
        (
            "{% set a = [cn] * 100 %}{% set b = [a, a, a, a, a, a, a, a, a, a] %}"
            "{% set c = [b, b, b, b, b, b, b, b, b, b] %}{{ [c, c, c, c, c, c, c, c, c, c] }}",
            "a literal would hold more than 10010 characters or items",
        ),
        ("{{ dict(a=[cn] * 500, b=[cn] * 500) }}", "dict built more than 10000 characters"),
        ("{% set a = [cn] * 500 %}{{ (a + a) | length }}", "'+' would build 12000 characters"),
    ],
)
def test_an_operation_that_would_build_a_huge_value_is_refused(template: str, error: str) -> None:
    assert title_error(mapper(title=template)).startswith(error)


@QUICKLY
@pytest.mark.parametrize(
    "template",
    [
        "{% set s = cn * 900 %}{% for i in range(10000) %}{{ s }}{% endfor %}",
        # Output captured by `{% set %}` and macros counts too, not only what is returned.
        "{% set b %}{% for i in range(10000) %}{{ cn * 900 }}{% endfor %}{% endset %}{{ b[0] }}",
        "{% macro m() %}{% for i in range(10000) %}{{ 'x' * 9000 }}{% endfor %}{% endmacro %}"
        "{{ m() | length }}",
    ],
)
def test_output_beyond_the_limit_stops_the_render(template: str) -> None:
    # The output limit is met after 8 rounds: CPU time is no concern, whatever the machine.
    m = mapper(TemplateLimits(cpu_seconds=60), title=template)
    assert title_error(m) == "the template's output exceeded 65536 characters"


def test_the_output_limit_stops_the_render_as_soon_as_it_is_reached() -> None:
    # Bounded progress: the loop would emit 10,000 pieces; a tiny limit is met in the first.
    m = mapper(TemplateLimits(output=5), title="{% for i in range(10000) %}{{ cn }}{% endfor %}")
    assert title_error(m) == "the template's output exceeded 5 characters"


def test_globals_no_mapping_needs_are_gone() -> None:
    m = mapper(
        title="{{ lipsum(10**5) }}",  # took seconds per user
        nickName="{{ cycler('a', 'b').next() }}",
        organization="{{ joiner() }}",
        department="{% set ns = namespace(n=0) %}{{ ns.n }}",
        # What a mapping may use is still there.
        displayName="{{ dict(a=1).a }} {{ range(3) | join }}",
    )
    result = m.map_user(person())
    assert isinstance(result, DesiredUser), result
    assert result.values["displayName"] == "1 012"
    assert not {"title", "nickName", "organization", "department"} & result.values.keys()
    assert m.warnings() == [
        f"mapping.title: 1 entry lacks 'lipsum' (e.g. {DN}); rendered empty",
        f"mapping.nickName: 1 entry lacks 'cycler' (e.g. {DN}); rendered empty",
        f"mapping.organization: 1 entry lacks 'joiner' (e.g. {DN}); rendered empty",
        f"mapping.department: 1 entry lacks 'namespace' (e.g. {DN}); rendered empty",
    ]


def test_a_limit_in_an_optional_attribute_lets_the_rule_default_apply() -> None:
    m = mapper(title=MappingRule(template="{{ 'x' * 10**8 }}", default="Staff"))
    result = m.map_user(person())
    assert isinstance(result, DesiredUser), result
    assert result.values["title"] == "Staff"
    [warning] = m.warnings()
    assert warning.startswith(f"mapping.title: the template failed for 1 entry (e.g. {DN}): ")
    assert warning.endswith("the limit is 10000; the rule's default was used")


def test_a_limit_in_a_required_attribute_makes_the_record_unmappable() -> None:
    m = mapper(userName="{{ uid * 10**8 }}")
    result = m.map_user(person())
    assert isinstance(result, MappingFailure), result
    assert result.cause == (
        "mapping.userName: required but empty (template failed: TemplateLimitError: "
        "'*' would build 600000000 characters or items: the limit is 10000)"
    )


def test_a_limit_is_the_cause_even_when_the_render_met_a_missing_variable() -> None:
    m = mapper(title="{{ surname }}{{ 'x' * 10**8 }}")
    assert title_error(m).startswith("'*' would build 100000000 characters")


def test_ordinary_templates_render_as_before() -> None:
    long_text = "d" * 20_000  # a long attribute passes through: it builds nothing new
    m = mapper(
        displayName="{{ cn.split(' ')[0] }} {{ cn.split(' ')[-1] | upper }}",
        nickName="{% for w in cn.split() %}{{ w[0] }}{% endfor %}",
        title="{{ '%05d' % 42 }}-{{ '{:>6}'.format(uid) }}-{{ 2 ** 63 }}-{{ 'ab' * 3 }}",
        department="{{ description | upper }}",
        organization="{{ description ~ '' }}",
        externalId="{{ ([uid] * 3) | join('.') }}|{{ uid | center(10) }}|{{ uid ~ '@x' }}",
    )
    result = m.map_user(person(description=long_text))
    assert isinstance(result, DesiredUser), result
    assert result.values["displayName"] == "Janet SMITH"
    assert result.values["nickName"] == "JS"
    assert result.values["title"] == "00042-jsmith-9223372036854775808-ababab"
    assert result.values["department"] == "D" * MAX_VALUE_LENGTH  # truncated, as before
    assert result.values["organization"] == "d" * MAX_VALUE_LENGTH
    assert result.values["externalId"] == "jsmith.jsmith.jsmith|  jsmith  |jsmith@x"
    assert m.warnings() == []


# --- end to end: the engine and `check`, with real slapd and the emulator ----------------

ATTACKS: dict[str, Any] = {  # as the config file has them
    "title": "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
    "nickName": "{{ 'x' * 10**8 }}",
    "displayName": {"template": "{{ lipsum(10**5) }}", "default": "Staff"},
}


@pytest.fixture
def channel(ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path) -> Channel:
    return Channel(ldap_tree, emulator, tmp_path)


@QUICKLY
def test_a_sync_with_the_attacks_of_the_issue_completes_and_provisions(channel: Channel) -> None:
    channel.mapping.update(ATTACKS)
    for uid in ("ann", "ben"):
        channel.tree.add_user(uid, title="Engineer")
    with structlog.testing.capture_logs() as logs:
        report = channel.sync()
    assert report.exit_code == 0
    users = channel.users()
    assert set(users) == {"ann@example.com", "ben@example.com"}
    assert "title" not in users["ann@example.com"]
    assert "nickName" not in users["ann@example.com"]
    assert users["ann@example.com"]["displayName"] == "Staff"
    warnings = sorted(e["event"] for e in logs if e["log_level"] == "warning")
    assert [w.partition(" (e.g.")[0] for w in warnings] == [
        "mapping.nickName: the template failed for 2 entries",
        "mapping.title: the template failed for 2 entries",
    ]
    assert "TemplateLimitError: '*' would build 100000000 characters" in warnings[0]
    assert "TemplateLimitError: range() of 99999 items: the limit is 10000" in warnings[1]


@pytest.fixture
def cli(ldap_tree: Tree, emulator: RunningEmulator, tmp_path: Path) -> Cli:
    return Cli(ldap_tree, emulator, tmp_path)


@QUICKLY
def test_check_reports_each_limit_hit_per_rule(cli: Cli) -> None:
    cli.tree.add_user("ann")
    cli.tree.add_user("ben")
    cli.settings["mapping"] = {"title": ATTACKS["title"], "nickName": ATTACKS["nickName"]}
    result = cli("check")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "TemplateLimitError" in line]
    assert {line.partition(" (e.g.")[0] for line in lines} == {
        "  warning: mapping.title: the template failed for 2 entries",
        "  warning: mapping.nickName: the template failed for 2 entries",
    }, result.stdout
    assert "no user can be mapped" not in result.stdout


def test_a_rule_that_keeps_running_out_of_time_is_not_rendered_again_that_cycle() -> None:
    loop = "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}"
    m = mapper(TemplateLimits(cpu_seconds=0.001), userName=loop)
    causes = []
    for _ in range(TIME_OUTS_BEFORE_GIVING_UP + 5):
        result = m.map_user(person())
        assert isinstance(result, MappingFailure), result
        causes.append(result.cause)
    spent = "mapping.userName: required but empty (template failed: TemplateLimitError: "
    spent += "the template exceeded its time limit (1 ms of CPU)"
    assert causes[:TIME_OUTS_BEFORE_GIVING_UP] == [spent + ")"] * TIME_OUTS_BEFORE_GIVING_UP
    given_up = f"{spent} for {TIME_OUTS_BEFORE_GIVING_UP} entries: not rendered again until "
    assert causes[TIME_OUTS_BEFORE_GIVING_UP:] == [given_up + "the next cycle)"] * 5
    [finding] = m.findings()
    assert finding.count == TIME_OUTS_BEFORE_GIVING_UP + 5
    # A new Mapper (the next cycle) tries again: the template may have been fixed.
    fresh = mapper(TemplateLimits(cpu_seconds=0.001), userName=loop).map_user(person())
    assert isinstance(fresh, MappingFailure)
    assert fresh.cause == spent + ")"

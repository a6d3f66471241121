"""Shared pytest set-up: each real server's fixtures live in tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.slapd",
    "tests.fixtures.samba",
    "tests.fixtures.emulator",
    "tests.fixtures.postgres",
    "tests.fixtures.scim2",
    "tests.fixtures.channels",
    "tests.fixtures.hostile",
    "tests.fixtures.ports",
]

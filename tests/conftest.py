"""Shared pytest set-up: each real server's fixtures live in tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.ports",  # first: scim2 imports it, and pytest rewrites only unimported plugins
    "tests.fixtures.slapd",
    "tests.fixtures.samba",
    "tests.fixtures.emulator",
    "tests.fixtures.postgres",
    "tests.fixtures.scim2",
    "tests.fixtures.canaille",
    "tests.fixtures.channels",
    "tests.fixtures.hostile",
]

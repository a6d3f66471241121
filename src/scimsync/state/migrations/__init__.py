"""Alembic migrations for the state store, run programmatically by scimsync.state.migrate."""

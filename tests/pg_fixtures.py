"""The machine's PostgreSQL for tests: a role that answers, and fresh databases dropped afterwards."""

from __future__ import annotations

import secrets
from contextlib import contextmanager
from typing import Iterator

import pytest

PG = {"host": "127.0.0.1", "port": 5432, "dbname": "postgres", "connect_timeout": 3}


@pytest.fixture(scope="session")
def pg_user() -> str:
    """A PostgreSQL role that can create databases, or a skip saying why there is none."""
    import psycopg

    errors = []
    for user in ("postgres", "root"):
        try:
            with psycopg.connect(user=user, autocommit=True, **PG) as conn:
                conn.execute("SELECT 1")
            return user
        except psycopg.Error as exc:
            errors.append(f"{user}: {str(exc).strip().splitlines()[0]}")
    pytest.skip(f"PostgreSQL at {PG['host']}:{PG['port']} did not answer ({'; '.join(errors)})")


@contextmanager
def fresh_database(user: str, prefix: str = "alive_test") -> Iterator[str]:
    """A new, empty database's SQLAlchemy URL; dropped (with its connections) afterwards."""
    import psycopg

    from service import db

    name = f"{prefix}_{secrets.token_hex(6)}"
    with psycopg.connect(user=user, autocommit=True, **PG) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql+psycopg://{user}@{PG['host']}:{PG['port']}/{name}"
    finally:
        db.dispose_engines()
        with psycopg.connect(user=user, autocommit=True, **PG) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

"""Alembic environment for alive's database.

``service.db.migrate(url)`` runs the upgrade programmatically and hands its connection in through
``config.attributes["connection"]`` (inside its lock and transaction). For the Alembic command line
(new revisions, ``upgrade head --sql`` for a DBA) the URL comes from ``-x url=...`` or else from
alive's settings, e.g. ``alembic -c /dev/null -x url=sqlite:///alive.db revision --autogenerate``
with ``script_location`` pointed here.
"""

from __future__ import annotations

from alembic import context

from service.db import Base, database_url, make_engine

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from pipeline.settings import load_settings

    return database_url(load_settings())


def _configure(**kwargs) -> None:
    # SQLite cannot ALTER most things in place: batch mode rebuilds the table in later migrations.
    context.configure(target_metadata=target_metadata, render_as_batch=True, compare_type=True, **kwargs)


def run_offline() -> None:
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # from service.db.migrate: its transaction, its lock
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    with make_engine(_url()).begin() as connection:  # the command line (revision --autogenerate, ...)
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()

"""Alembic's environment for the ledger: the connection ledger.migrate passes, or else
LEDGER_DATABASE_URL (config.settings). SQLite alters tables in batch mode (copy and move)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import Connection

from infra.data_keys import metadata as data_keys_metadata
from ledger.schema import metadata as ledger_metadata

# The project's database holds the ledger's tables and the referrals' data keys.
metadata = [ledger_metadata, data_keys_metadata]

config = context.config


def _url() -> str:
    url = config.attributes.get("url")
    if url:
        return str(url)
    from config.settings import get_settings

    return get_settings().ledger_url


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif config.attributes.get("connection") is not None:
    _run(config.attributes["connection"])
else:
    with create_engine(_url(), poolclass=pool.NullPool).begin() as connection:
        _run(connection)

"""Alembic environment: the URL comes from the caller (db.migrate) or the settings."""
from alembic import context
from sqlalchemy import create_engine, pool

from db.connection import resolve_database_url, sqlalchemy_url
from db.models import Base
from services.common.settings import get_settings

target_metadata = Base.metadata


def _url() -> str:
    url = context.config.attributes.get("database_url")
    return sqlalchemy_url(url or resolve_database_url(get_settings()))


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = context.config.attributes.get("connection")
    if connectable is not None:
        context.configure(connection=connectable, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

import psycopg
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, pool

from db import migrate
from db.connection import sqlalchemy_url
from db.models import Base
from tests.conftest import _libpq

TABLES = {"products", "product_images", "datasets", "dataset_products", "training_runs",
          "training_events", "checkpoints", "trained_models", "evaluations", "run_images"}


def _tables(url):
    engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(empty_db_url):
    migrate.upgrade(empty_db_url)
    assert TABLES <= _tables(empty_db_url)
    migrate.downgrade(empty_db_url, "base")
    assert _tables(empty_db_url) == {"alembic_version"}
    with psycopg.connect(_libpq(empty_db_url)) as conn:
        left = conn.execute(
            "SELECT proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'public'").fetchall()
    assert left == []
    migrate.upgrade(empty_db_url)
    assert TABLES <= _tables(empty_db_url)


def test_migrated_database_matches_models(db_url):
    engine = create_engine(sqlalchemy_url(db_url), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []

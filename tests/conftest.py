"""Test fixtures: one real Postgres per test session, a fresh database per test that needs one.

The server is `DATABASE_URL` when set, else a private embedded Postgres (the same mechanism
skutrain uses) in a temporary directory. Per-test databases are copies of a migrated template,
which is much faster than migrating each one.
"""
from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest

from db import migrate
from db.connection import embedded_url, with_database
from sqlalchemy.engine import make_url

TEMPLATE = "skutrain_template"
# Preflight refuses configs planned above the worker's memory budget (default: 3/4 of this
# machine's RAM). Tests queue default configs (dinov2-base, ~8.5 GiB planned on CPU) that they
# never train, so their outcome must not depend on the RAM of the machine running them.
os.environ.setdefault("SKUTRAIN_WORKER_MEMORY_BYTES", str(64 * 1024**3))


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _admin(url: str, *statements: str) -> None:
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


@pytest.fixture(scope="session")
def pg_server_url():
    """URL of the server's maintenance database."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    tmp = Path(tempfile.mkdtemp(prefix="skutrain-test-pg-"))
    os.chmod(tmp, 0o755)
    url = embedded_url(tmp)
    _admin(url, "ALTER SYSTEM SET fsync = off", "ALTER SYSTEM SET synchronous_commit = off",
           "ALTER SYSTEM SET full_page_writes = off", "SELECT pg_reload_conf()")
    yield url
    from db.connection import stop_embedded

    stop_embedded(tmp)


@pytest.fixture(scope="session")
def template_db(pg_server_url):
    _admin(pg_server_url, f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)",
           f"CREATE DATABASE {TEMPLATE}")
    migrate.upgrade(with_database(pg_server_url, TEMPLATE))
    return TEMPLATE


@pytest.fixture
def db_url(pg_server_url, template_db):
    """A fresh, migrated database for one test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    _admin(pg_server_url, f"CREATE DATABASE {name} TEMPLATE {template_db}")
    yield with_database(pg_server_url, name)
    _admin(pg_server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def empty_db_url(pg_server_url):
    """A fresh database with no schema (for migration tests)."""
    name = f"e_{uuid.uuid4().hex[:12]}"
    _admin(pg_server_url, f"CREATE DATABASE {name}")
    yield with_database(pg_server_url, name)
    _admin(pg_server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def conn(db_url):
    from db import repository

    connection = await repository.connect(db_url)
    yield connection
    await connection.close()


def catalog_rows(products: int = 12, real_per_product: int = 8, frame_count: int = 24) -> list[dict]:
    """Catalog rows that pass the preflight with the default config (nothing is downloaded)."""
    return [
        {
            "barcode": f"869{i:07d}", "product_name": f"Product {i}", "brand_name": f"Brand {i % 3}",
            "category": f"Category {i % 2}", "frames_path": f"storage://catalog/p{i}/frames",
            "frame_count": frame_count,
            "images": [{"url": f"storage://catalog/p{i}/real_{j}.jpg", "domain": "real",
                        "frame_index": None, "source_key": f"p{i}-{j}"}
                       for j in range(real_per_product)],
        }
        for i in range(products)
    ]


@pytest.fixture
async def catalog_conn(conn):
    """A connection to a database holding a small catalog."""
    from db import repository

    await repository.insert_catalog(conn, catalog_rows())
    return conn

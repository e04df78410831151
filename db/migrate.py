"""Run alembic programmatically (the CLI's `db upgrade` and the test fixtures use this)."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parents[1]


def alembic_config(database_url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "alembic"))
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


def sql_file(name: str) -> str:
    """The text of db/sql/<name>: each revision after 0001 applies one file and undoes with
    its `.down.sql` twin."""
    return (ROOT / "db" / "sql" / name).read_text()

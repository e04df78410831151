"""model registry, on-demand evaluations, metrics history

Revision ID: 0003
Revises: 0002
"""
from alembic import op

from db.migrate import sql_file

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sql_file("0003_registry.sql"))


def downgrade() -> None:
    op.execute(sql_file("0003_registry.down.sql"))

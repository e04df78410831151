"""run lifecycle: reconciler, leases, resume, deletes, retention

Revision ID: 0002
Revises: 0001
"""
from alembic import op

from db.migrate import sql_file

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sql_file("0002_lifecycle.sql"))


def downgrade() -> None:
    op.execute(sql_file("0002_lifecycle.down.sql"))

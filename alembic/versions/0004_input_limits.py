"""limits on what a user can insert

Revision ID: 0004
Revises: 0003
"""
from alembic import op

from db.migrate import sql_file

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sql_file("0004_input_limits.sql"))


def downgrade() -> None:
    op.execute(sql_file("0004_input_limits.down.sql"))

"""dispatcher queue speed: launch lookups by key, config limits on config writes only

Revision ID: 0008
Revises: 0007
"""
from alembic import op

from db.migrate import sql_file

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sql_file("0008_queue_speed.sql"))


def downgrade() -> None:
    op.execute(sql_file("0008_queue_speed.down.sql"))

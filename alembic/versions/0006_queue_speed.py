"""dispatcher queue speed: launch lookups by key, config limits on config writes only

Revision ID: 0006
Revises: 0005
"""
from alembic import op

from db.migrate import sql_file

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sql_file("0006_queue_speed.sql"))


def downgrade() -> None:
    op.execute(sql_file("0006_queue_speed.down.sql"))

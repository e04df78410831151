"""events keyed by (run_id, attempt, seq): one index write fewer per event

Revision ID: 0009
Revises: 0008
"""
from alembic import op

from db.migrate import sql_file

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sql_file("0009_event_key.sql"))


def downgrade() -> None:
    op.execute(sql_file("0009_event_key.down.sql"))

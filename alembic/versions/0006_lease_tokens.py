"""unguessable per-claim lease tokens for trainers

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
    op.execute(sql_file("0006_lease_tokens.sql"))


def downgrade() -> None:
    op.execute(sql_file("0006_lease_tokens.down.sql"))

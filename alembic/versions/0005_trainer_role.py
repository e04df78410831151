"""least-privilege role for trainer workers

Revision ID: 0005
Revises: 0004
"""
from alembic import op

from db.migrate import sql_file

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sql_file("0005_trainer_role.sql"))


def downgrade() -> None:
    op.execute(sql_file("0005_trainer_role.down.sql"))

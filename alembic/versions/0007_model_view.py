"""model view: backbone and embedding size from run.started

Revision ID: 0007
Revises: 0006
"""
from alembic import op

from db.migrate import sql_file

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sql_file("0007_model_view.sql"))


def downgrade() -> None:
    op.execute(sql_file("0007_model_view.down.sql"))

"""initial schema: catalog, queue, events, checkpoints, models, evaluations

Revision ID: 0001
Revises: 
Create Date: 2026-11-26 20:44:59.753435
"""
from alembic import op
import sqlalchemy as sa
from pathlib import Path

from sqlalchemy.dialects import postgresql
from sqlalchemy.types import UserDefinedType

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None

FUNCTIONS_SQL = Path(__file__).resolve().parents[2] / "db" / "sql" / "0001_functions.sql"
FUNCTIONS = (
    "emit_run_event(bigint, text, jsonb)",
    "claim_runs(text, int, double precision)",
    "mark_launched(bigint, bigint, text, text)",
    "release_run(bigint, bigint, text)",
    "start_run(bigint, bigint, double precision, jsonb)",
    "heartbeat_run(bigint, bigint, double precision)",
    "finish_run(bigint, bigint, text, text, text, jsonb)",
    "project_trainer_event(bigint, int, text, jsonb)",
    "append_trainer_events(bigint, bigint, int, text[], jsonb[])",
    "request_cancel(bigint)",
    "training_events_after(xid8, bigint, int)",
    "training_runs_before_insert()",
    "training_runs_after_insert()",
    "training_runs_notify_queued()",
)
# The hot queue and the append-only events table are vacuumed far more eagerly than default.
AUTOVACUUM = (
    "autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02, "
    "autovacuum_vacuum_insert_scale_factor = 0.05"
)


class XID8(UserDefinedType):
    cache_ok = True

    def get_col_spec(self, **kw):
        return "XID8"


def upgrade() -> None:
    op.create_table('datasets',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('created_at', sa.TIMESTAMP(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('products',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('barcode', sa.Text(), nullable=False),
    sa.Column('product_name', sa.Text(), nullable=False),
    sa.Column('brand_name', sa.Text(), nullable=True),
    sa.Column('category', sa.Text(), nullable=True),
    sa.Column('frames_path', sa.Text(), nullable=True),
    sa.Column('frame_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('created_at', sa.TIMESTAMP(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('frame_count >= 0', name='ck_products_frame_count'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('barcode')
    )
    op.create_table('training_events',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('txid', XID8(), server_default=sa.text('pg_current_xact_id()'), nullable=False),
    sa.Column('run_id', sa.BigInteger(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('type', sa.Text(), nullable=False),
    sa.Column('version', sa.SmallInteger(), server_default='1', nullable=False),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('created_at', sa.TIMESTAMP(timezone=True), server_default=sa.text('clock_timestamp()'), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('run_id', 'attempt', 'seq', name='uq_training_events_run_attempt_seq')
    )
    op.create_index('ix_training_events_cursor', 'training_events', ['txid', 'id'], unique=False)
    op.create_table('training_runs',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('config', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('status', sa.Text(), server_default='queued', nullable=False),
    sa.Column('priority', sa.Integer(), server_default='0', nullable=False),
    sa.Column('attempt', sa.Integer(), server_default='0', nullable=False),
    sa.Column('lease_owner', sa.Text(), nullable=True),
    sa.Column('lease_expires_at', sa.TIMESTAMP(timezone=True), nullable=True),
    sa.Column('lease_epoch', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('launcher', sa.Text(), nullable=True),
    sa.Column('external_job_id', sa.Text(), nullable=True),
    sa.Column('launched_attempt', sa.Integer(), nullable=True),
    sa.Column('event_seq', sa.Integer(), server_default='0', nullable=False),
    sa.Column('trainer_seq', sa.Integer(), server_default='0', nullable=False),
    sa.Column('current_epoch', sa.Integer(), server_default='0', nullable=False),
    sa.Column('total_epochs', sa.Integer(), nullable=True),
    sa.Column('start_epoch', sa.Integer(), server_default='0', nullable=False),
    sa.Column('best_checkpoint_id', sa.BigInteger(), nullable=True),
    sa.Column('best_val_recall_at_1', sa.Float(), nullable=True),
    sa.Column('resume_from_checkpoint_id', sa.BigInteger(), nullable=True),
    sa.Column('cancel_requested_at', sa.TIMESTAMP(timezone=True), nullable=True),
    sa.Column('error_code', sa.Text(), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('data_summary', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('test_metrics', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('created_at', sa.TIMESTAMP(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.TIMESTAMP(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('claimed_at', sa.TIMESTAMP(timezone=True), nullable=True),
    sa.Column('started_at', sa.TIMESTAMP(timezone=True), nullable=True),
    sa.Column('finished_at', sa.TIMESTAMP(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('queued', 'claimed', 'running', 'completed', 'failed', 'cancelled')", name='ck_training_runs_status'),
    sa.CheckConstraint('attempt >= 0', name='ck_training_runs_attempt'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_training_runs_claimable', 'training_runs', [sa.literal_column('priority DESC'), 'created_at', 'id'], unique=False, postgresql_where=sa.text("status = 'queued'"))
    op.create_index('ix_training_runs_leased', 'training_runs', ['lease_expires_at'], unique=False, postgresql_where=sa.text("status IN ('claimed', 'running')"))
    op.create_table('checkpoints',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('run_id', sa.BigInteger(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('manifest_url', sa.Text(), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('shard_count', sa.Integer(), nullable=False),
    sa.Column('train_loss', sa.Float(), nullable=True),
    sa.Column('val_loss', sa.Float(), nullable=True),
    sa.Column('val_recall_at_1', sa.Float(), nullable=True),
    sa.Column('val_recall_at_5', sa.Float(), nullable=True),
    sa.Column('val_recall_at_10', sa.Float(), nullable=True),
    sa.Column('val_map', sa.Float(), nullable=True),
    sa.Column('metrics', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('is_best', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('created_at', sa.TIMESTAMP(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('epoch >= 1', name='ck_checkpoints_epoch'),
    sa.ForeignKeyConstraint(['run_id'], ['training_runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('run_id', 'epoch', name='uq_checkpoints_run_epoch')
    )
    op.create_index('uq_checkpoints_one_best_per_run', 'checkpoints', ['run_id'], unique=True, postgresql_where=sa.text('is_best'))
    op.create_table('dataset_products',
    sa.Column('dataset_id', sa.BigInteger(), nullable=False),
    sa.Column('product_id', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['product_id'], ['products.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('dataset_id', 'product_id')
    )
    op.create_table('product_images',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('product_id', sa.BigInteger(), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('domain', sa.Text(), nullable=False),
    sa.Column('frame_index', sa.Integer(), nullable=True),
    sa.Column('source_key', sa.Text(), nullable=True),
    sa.Column('created_at', sa.TIMESTAMP(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("domain IN ('synthetic', 'real', 'augmented', 'cutout')", name='ck_product_images_domain'),
    sa.ForeignKeyConstraint(['product_id'], ['products.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('product_id', 'url', name='uq_product_images_product_url')
    )
    op.create_index('ix_product_images_product_domain', 'product_images', ['product_id', 'domain'], unique=False)
    op.create_table('run_images',
    sa.Column('run_id', sa.BigInteger(), nullable=False),
    sa.Column('idx', sa.Integer(), nullable=False),
    sa.Column('split', sa.Text(), nullable=False),
    sa.Column('product_id', sa.BigInteger(), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('domain', sa.Text(), nullable=False),
    sa.Column('frame_index', sa.Integer(), nullable=True),
    sa.Column('label', sa.Text(), nullable=False),
    sa.Column('category', sa.Text(), nullable=True),
    sa.Column('brand', sa.Text(), nullable=True),
    sa.Column('source_key', sa.Text(), nullable=True),
    sa.CheckConstraint("domain IN ('synthetic', 'real', 'augmented', 'cutout')", name='ck_run_images_domain'),
    sa.CheckConstraint("split IN ('train', 'val', 'test')", name='ck_run_images_split'),
    sa.ForeignKeyConstraint(['run_id'], ['training_runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'idx')
    )
    op.create_table('evaluations',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('run_id', sa.BigInteger(), nullable=False),
    sa.Column('checkpoint_id', sa.BigInteger(), nullable=False),
    sa.Column('split', sa.Text(), server_default='test', nullable=False),
    sa.Column('overall', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('real_to_synthetic', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('synthetic_to_real', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('per_category', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('hard_cases', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('created_at', sa.TIMESTAMP(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("split IN ('train', 'val', 'test')", name='ck_evaluations_split'),
    sa.ForeignKeyConstraint(['checkpoint_id'], ['checkpoints.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['training_runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('trained_models',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('checkpoint_id', sa.BigInteger(), nullable=False),
    sa.Column('test_metrics', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('cross_domain_metrics', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('is_default', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('is_active', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('created_at', sa.TIMESTAMP(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['checkpoint_id'], ['checkpoints.id'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_index('uq_trained_models_one_default', 'trained_models', ['is_default'], unique=True, postgresql_where=sa.text('is_default'))

    op.create_foreign_key('fk_training_runs_best_checkpoint', 'training_runs', 'checkpoints',
                          ['best_checkpoint_id'], ['id'], ondelete='SET NULL')
    op.create_foreign_key('fk_training_runs_resume_checkpoint', 'training_runs', 'checkpoints',
                          ['resume_from_checkpoint_id'], ['id'], ondelete='SET NULL')
    op.execute(FUNCTIONS_SQL.read_text())
    for table in ("training_runs", "training_events"):
        op.execute(f"ALTER TABLE {table} SET ({AUTOVACUUM})")


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS training_runs_before_insert ON training_runs")
    op.execute("DROP TRIGGER IF EXISTS training_runs_after_insert ON training_runs")
    op.execute("DROP TRIGGER IF EXISTS training_runs_notify_queued ON training_runs")
    for signature in FUNCTIONS:
        op.execute(f"DROP FUNCTION IF EXISTS {signature}")
    op.drop_constraint('fk_training_runs_best_checkpoint', 'training_runs', type_='foreignkey')
    op.drop_constraint('fk_training_runs_resume_checkpoint', 'training_runs', type_='foreignkey')
    op.drop_index('uq_trained_models_one_default', table_name='trained_models', postgresql_where=sa.text('is_default'))
    op.drop_table('trained_models')
    op.drop_table('evaluations')
    op.drop_table('run_images')
    op.drop_index('ix_product_images_product_domain', table_name='product_images')
    op.drop_table('product_images')
    op.drop_table('dataset_products')
    op.drop_index('uq_checkpoints_one_best_per_run', table_name='checkpoints', postgresql_where=sa.text('is_best'))
    op.drop_table('checkpoints')
    op.drop_index('ix_training_runs_leased', table_name='training_runs', postgresql_where=sa.text("status IN ('claimed', 'running')"))
    op.drop_index('ix_training_runs_claimable', table_name='training_runs', postgresql_where=sa.text("status = 'queued'"))
    op.drop_table('training_runs')
    op.drop_index('ix_training_events_cursor', table_name='training_events')
    op.drop_table('training_events')
    op.drop_table('products')
    op.drop_table('datasets')

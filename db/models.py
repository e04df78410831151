"""SQLAlchemy 2.0 models: the schema's single Python description.

Alembic migrations create exactly this (a test compares them); the queue and event SQL
functions live in the migrations and `db/queries.sql`. Invariants are enforced by the database
itself (checks, partial unique indexes, ON DELETE RESTRICT), not only by Python.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    PrimaryKeyConstraint,
    SmallInteger,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.dialects.postgresql.base import ischema_names
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TIMESTAMP, UserDefinedType

RUN_STATUSES = ("queued", "claimed", "running", "completed", "failed", "cancelled")
IMAGE_DOMAINS = ("synthetic", "real", "augmented", "cutout")
SPLITS = ("train", "val", "test")


class XID8(UserDefinedType):
    """Postgres' 64-bit transaction id, used by the commit-safe events cursor."""

    cache_ok = True

    def get_col_spec(self, **kw) -> str:
        return "XID8"


ischema_names["xid8"] = XID8  # so reflection (and the migration check) knows the type


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _now():
    return mapped_column(TIMESTAMP(timezone=True), nullable=False, server_default=text("now()"))


class Base(DeclarativeBase):
    pass


class Product(Base):
    __tablename__ = "products"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    barcode: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    product_name: Mapped[str] = mapped_column(Text, nullable=False)
    brand_name: Mapped[str | None] = mapped_column(Text)
    category: Mapped[str | None] = mapped_column(Text)
    frames_path: Mapped[str | None] = mapped_column(Text)
    frame_count: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    created_at: Mapped[datetime] = _now()

    __table_args__ = (CheckConstraint("frame_count >= 0", name="ck_products_frame_count"),)


class ProductImage(Base):
    __tablename__ = "product_images"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    product_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("products.id", ondelete="CASCADE"), nullable=False
    )
    url: Mapped[str] = mapped_column(Text, nullable=False)
    domain: Mapped[str] = mapped_column(Text, nullable=False)
    frame_index: Mapped[int | None] = mapped_column(Integer)
    source_key: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()

    __table_args__ = (
        CheckConstraint(_in("domain", IMAGE_DOMAINS), name="ck_product_images_domain"),
        UniqueConstraint("product_id", "url", name="uq_product_images_product_url"),
        Index("ix_product_images_product_domain", "product_id", "domain"),
    )


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()


class DatasetProduct(Base):
    __tablename__ = "dataset_products"

    dataset_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True
    )
    product_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("products.id", ondelete="CASCADE"), primary_key=True
    )


class TrainingRun(Base):
    """A training run is also the queue row: status, lease and fencing token live here."""

    __tablename__ = "training_runs"  # fillfactor 70 since revision 0008 (HOT launch updates)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    # names everything the run stores (runs/{run_uuid}/attempt-{n}/...), never the serial id
    run_uuid: Mapped[str] = mapped_column(
        UUID(as_uuid=False), nullable=False, server_default=text("gen_random_uuid()")
    )
    name: Mapped[str] = mapped_column(Text, nullable=False)
    config: Mapped[dict] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))
    status: Mapped[str] = mapped_column(Text, nullable=False, server_default="queued")
    priority: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    lease_owner: Mapped[str | None] = mapped_column(Text)
    lease_expires_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))
    lease_epoch: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    # drawn by each claim: the trainer's only key to its run (revision 0006), never shown
    lease_token: Mapped[str | None] = mapped_column(UUID(as_uuid=False))
    launcher: Mapped[str | None] = mapped_column(Text)
    external_job_id: Mapped[str | None] = mapped_column(Text)
    launched_attempt: Mapped[int | None] = mapped_column(Integer)
    event_seq: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    trainer_seq: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    current_epoch: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    total_epochs: Mapped[int | None] = mapped_column(Integer)
    start_epoch: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    best_checkpoint_id: Mapped[int | None] = mapped_column(
        BigInteger,
        ForeignKey("checkpoints.id", ondelete="SET NULL", use_alter=True,
                   name="fk_training_runs_best_checkpoint"),
    )
    best_val_recall_at_1: Mapped[float | None] = mapped_column(Float)
    resume_from_checkpoint_id: Mapped[int | None] = mapped_column(
        BigInteger,
        ForeignKey("checkpoints.id", ondelete="SET NULL", use_alter=True,
                   name="fk_training_runs_resume_checkpoint"),
    )
    cancel_requested_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))
    delete_requested_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))
    # the trainer's step counter and when it last advanced (a live but hung trainer stalls)
    progress_step: Mapped[int | None] = mapped_column(BigInteger)
    progress_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))
    # a checkpoint was saved or removed: the reconciler re-checks is_best and retention
    checkpoints_dirty: Mapped[bool] = mapped_column(
        Boolean, nullable=False, server_default=text("false")
    )
    error_code: Mapped[str | None] = mapped_column(Text)
    error_message: Mapped[str | None] = mapped_column(Text)
    data_summary: Mapped[dict | None] = mapped_column(JSONB)
    test_metrics: Mapped[dict | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    claimed_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))

    __table_args__ = (
        CheckConstraint(_in("status", RUN_STATUSES), name="ck_training_runs_status"),
        CheckConstraint("attempt >= 0", name="ck_training_runs_attempt"),
        # documents no decoder can read are refused when a config is written: revision 0004's
        # run_config_within_limits, called by a trigger since 0008 (db/sql/0008_queue_speed.sql)
        CheckConstraint("char_length(name) BETWEEN 1 AND 200", name="ck_training_runs_name_length"),
        Index(
            "ix_training_runs_claimable",
            text("priority DESC"),
            "created_at",
            "id",
            postgresql_where=text("status = 'queued'"),
        ),
        Index(
            "ix_training_runs_leased",
            "lease_expires_at",
            postgresql_where=text("status IN ('claimed', 'running')"),
        ),
        UniqueConstraint("run_uuid", name="uq_training_runs_run_uuid"),
        Index(
            "ix_training_runs_checkpoints_dirty",
            "id",
            postgresql_where=text("checkpoints_dirty"),
        ),
        Index(
            "ix_training_runs_delete_requested",
            "delete_requested_at",
            postgresql_where=text("delete_requested_at IS NOT NULL"),
        ),
    )


class RunImage(Base):
    """A run's image manifest and split, stored so resume and evaluation see the same images."""

    __tablename__ = "run_images"

    run_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("training_runs.id", ondelete="CASCADE"), primary_key=True
    )
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    split: Mapped[str] = mapped_column(Text, nullable=False)
    product_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    url: Mapped[str] = mapped_column(Text, nullable=False)
    domain: Mapped[str] = mapped_column(Text, nullable=False)
    frame_index: Mapped[int | None] = mapped_column(Integer)
    label: Mapped[str] = mapped_column(Text, nullable=False)
    category: Mapped[str | None] = mapped_column(Text)
    brand: Mapped[str | None] = mapped_column(Text)
    source_key: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint(_in("split", SPLITS), name="ck_run_images_split"),
        CheckConstraint(_in("domain", IMAGE_DOMAINS), name="ck_run_images_domain"),
    )


class TrainingEvent(Base):
    """Append-only outbox; consumers read it with the (txid, id) cursor."""

    __tablename__ = "training_events"

    # the cursor's tie-breaker within a transaction; not indexed alone (revision 0009)
    id: Mapped[int] = mapped_column(BigInteger, Identity(), nullable=False)
    txid: Mapped[int] = mapped_column(
        XID8(), nullable=False, server_default=text("pg_current_xact_id()")
    )
    run_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str] = mapped_column(Text, nullable=False)
    version: Mapped[int] = mapped_column(SmallInteger, nullable=False, server_default="1")
    payload: Mapped[dict] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))
    created_at: Mapped[datetime] = mapped_column(
        TIMESTAMP(timezone=True), nullable=False, server_default=text("clock_timestamp()")
    )

    __table_args__ = (
        PrimaryKeyConstraint("run_id", "attempt", "seq", name="pk_training_events"),
        Index("ix_training_events_cursor", "txid", "id"),
    )


class Checkpoint(Base):
    __tablename__ = "checkpoints"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    run_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("training_runs.id", ondelete="CASCADE"), nullable=False
    )
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    epoch: Mapped[int] = mapped_column(Integer, nullable=False)
    manifest_url: Mapped[str] = mapped_column(Text, nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    shard_count: Mapped[int] = mapped_column(Integer, nullable=False)
    train_loss: Mapped[float | None] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    val_recall_at_1: Mapped[float | None] = mapped_column(Float)
    val_recall_at_5: Mapped[float | None] = mapped_column(Float)
    val_recall_at_10: Mapped[float | None] = mapped_column(Float)
    val_map: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))
    is_best: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
    created_at: Mapped[datetime] = _now()
    # the resume-state manifest saved with this checkpoint (NULL once superseded and dropped)
    resume_state_url: Mapped[str | None] = mapped_column(Text)
    delete_requested_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))

    __table_args__ = (
        # immutable rows: a later attempt saving an epoch again makes a new row
        UniqueConstraint("run_id", "attempt", "epoch", name="uq_checkpoints_run_attempt_epoch"),
        Index(
            "ix_checkpoints_delete_requested",
            "delete_requested_at",
            postgresql_where=text("delete_requested_at IS NOT NULL"),
        ),
        CheckConstraint("epoch >= 1", name="ck_checkpoints_epoch"),
        Index(
            "uq_checkpoints_one_best_per_run",
            "run_id",
            unique=True,
            postgresql_where=text("is_best"),
        ),
    )


class RunLaunch(Base):
    """One launch per (run, attempt): the launcher's job id and what identifies the job
    (local: host, pid, process start time), so liveness survives a dispatcher restart."""

    __tablename__ = "run_launches"

    # no foreign key since revision 0008: the run's delete trigger removes its launches
    run_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    lease_epoch: Mapped[int] = mapped_column(BigInteger, nullable=False)
    launcher: Mapped[str] = mapped_column(Text, nullable=False)
    owner: Mapped[str | None] = mapped_column(Text)
    external_job_id: Mapped[str | None] = mapped_column(Text)
    identity: Mapped[dict] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))
    created_at: Mapped[datetime] = _now()
    launched_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))
    end_reason: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_run_launches_live", "launcher", postgresql_where=text("ended_at IS NULL")),
    )


class DeletedRun(Base):
    """Tombstone of a deleted run row (by request_delete or by hand): the reconciler stops its
    job and removes its stored objects, then sets cleaned_at."""

    __tablename__ = "deleted_runs"

    run_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    run_uuid: Mapped[str] = mapped_column(UUID(as_uuid=False), nullable=False)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    launcher: Mapped[str | None] = mapped_column(Text)
    external_job_id: Mapped[str | None] = mapped_column(Text)
    identity: Mapped[dict | None] = mapped_column(JSONB)
    deleted_at: Mapped[datetime] = _now()
    cleaned_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))

    __table_args__ = (
        Index("ix_deleted_runs_unclean", "deleted_at", postgresql_where=text("cleaned_at IS NULL")),
    )


class TrainedModel(Base):
    __tablename__ = "trained_models"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    checkpoint_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("checkpoints.id", ondelete="RESTRICT"), nullable=False
    )
    test_metrics: Mapped[dict | None] = mapped_column(JSONB)
    cross_domain_metrics: Mapped[dict | None] = mapped_column(JSONB)
    is_default: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    created_at: Mapped[datetime] = _now()
    # revision 0003: the registered evaluation's per-category results and test-split digest
    per_category: Mapped[dict | None] = mapped_column(JSONB)
    test_split_digest: Mapped[str | None] = mapped_column(Text)
    evaluation_id: Mapped[int | None] = mapped_column(
        BigInteger,
        ForeignKey("evaluations.id", ondelete="SET NULL", name="fk_trained_models_evaluation"),
    )

    __table_args__ = (
        Index(
            "uq_trained_models_one_default",
            "is_default",
            unique=True,
            postgresql_where=text("is_default"),
        ),
    )


class Evaluation(Base):
    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    run_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("training_runs.id", ondelete="CASCADE"), nullable=False
    )
    checkpoint_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("checkpoints.id", ondelete="CASCADE"), nullable=False
    )
    split: Mapped[str] = mapped_column(Text, nullable=False, server_default="test")
    overall: Mapped[dict] = mapped_column(JSONB, nullable=False)
    real_to_synthetic: Mapped[dict | None] = mapped_column(JSONB)
    synthetic_to_real: Mapped[dict | None] = mapped_column(JSONB)
    per_category: Mapped[dict | None] = mapped_column(JSONB)
    hard_cases: Mapped[dict | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = _now()
    # revision 0003: every ordered domain pair, and which images were scored (md5 of the
    # split's sorted "product_id url" lines) so different test sets are never compared
    domain_pairs: Mapped[dict | None] = mapped_column(JSONB)
    split_digest: Mapped[str | None] = mapped_column(Text)
    num_images: Mapped[int | None] = mapped_column(Integer)
    on_demand: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))

    __table_args__ = (
        CheckConstraint(_in("split", SPLITS), name="ck_evaluations_split"),
        Index("ix_evaluations_checkpoint", "checkpoint_id", "split", "id"),
    )

"""Environment configuration: the one place environment variables are read.

Everything below the CLI and the service entry points takes explicit arguments.
Secrets are `SecretStr` so they never print by accident.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import psutil
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", populate_by_name=True)

    database_url: SecretStr | None = Field(default=None, validation_alias="DATABASE_URL")
    data_dir: Path = Field(default=Path(".data"), validation_alias="SKUTRAIN_DATA_DIR")

    storage_backend: str = Field(default="local", validation_alias="SKUTRAIN_STORAGE")
    storage_dir: Path | None = Field(default=None, validation_alias="SKUTRAIN_STORAGE_DIR")
    s3_endpoint_url: str | None = Field(default=None, validation_alias="S3_ENDPOINT_URL")
    s3_access_key_id: SecretStr | None = Field(default=None, validation_alias="S3_ACCESS_KEY_ID")
    s3_secret_access_key: SecretStr | None = Field(
        default=None, validation_alias="S3_SECRET_ACCESS_KEY"
    )
    s3_region: str = Field(default="us-east-1", validation_alias="S3_REGION")
    s3_bucket: str | None = Field(default=None, validation_alias="S3_BUCKET")
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="auto", validation_alias="S3_ADDRESSING_STYLE")
    s3_max_attempts: int = Field(default=5, ge=1, validation_alias="S3_MAX_ATTEMPTS")
    s3_multipart_bytes: int = Field(default=8 * 1024 * 1024, ge=5 * 1024 * 1024,
                                    validation_alias="S3_MULTIPART_BYTES")
    storage_max_object_bytes: int | None = Field(
        default=None, ge=1, validation_alias="SKUTRAIN_STORAGE_MAX_OBJECT_BYTES")

    runpod_api_key: SecretStr | None = Field(default=None, validation_alias="RUNPOD_API_KEY")
    runpod_endpoint_id: str | None = Field(default=None, validation_alias="RUNPOD_ENDPOINT_ID")
    runpod_endpoint_base_url: str = Field(default="https://api.runpod.ai/v2",
                                          validation_alias="RUNPOD_ENDPOINT_BASE_URL")
    # Prometheus exposition of the dispatcher and reconciler: off unless a port is set.
    metrics_port: int | None = Field(default=None, ge=0, le=65535,
                                     validation_alias="SKUTRAIN_METRICS_PORT")
    hf_token: SecretStr | None = Field(default=None, validation_alias="HF_TOKEN")
    qdrant_url: str | None = Field(default=None, validation_alias="QDRANT_URL")

    progress_interval: float = Field(default=2.0, ge=0,
                                     validation_alias="SKUTRAIN_PROGRESS_INTERVAL")

    torch_threads: int | None = Field(default=None, ge=1, validation_alias="SKUTRAIN_TORCH_THREADS")

    api_token: SecretStr | None = Field(default=None, validation_alias="SKUTRAIN_API_TOKEN")

    # Memory one training job may use (bytes); unset: 3/4 of this machine's memory. The local
    # trainer runs under it as RLIMIT_DATA; preflight refuses configs planned above it.
    worker_memory_bytes: int | None = Field(default=None, ge=256 * 1024**2,
                                            validation_alias="SKUTRAIN_WORKER_MEMORY_BYTES")
    worker_device: Literal["cpu", "cuda"] = Field(default="cpu",
                                                  validation_alias="SKUTRAIN_WORKER_DEVICE")

    # Lifecycle (dispatcher + reconciler): attempts per run, when a lease counts as hung, how
    # long a cancelled job gets before SIGKILL, how many checkpoints to keep (None: all).
    max_attempts: int = Field(default=3, ge=1, validation_alias="SKUTRAIN_MAX_ATTEMPTS")
    stall_timeout: float = Field(default=600.0, gt=0, validation_alias="SKUTRAIN_STALL_TIMEOUT")
    cancel_grace: float = Field(default=30.0, ge=0, validation_alias="SKUTRAIN_CANCEL_GRACE")
    keep_latest_checkpoints: int | None = Field(
        default=None, ge=1, validation_alias="SKUTRAIN_KEEP_LATEST_CHECKPOINTS")
    reconcile_interval: float = Field(default=5.0, gt=0,
                                      validation_alias="SKUTRAIN_RECONCILE_INTERVAL")
    orphan_grace: float = Field(default=3600.0, ge=0, validation_alias="SKUTRAIN_ORPHAN_GRACE")
    # How long a RunPod worker waits for the dispatcher to record its job's launch before it
    # trains (past that the job fails; the run's lease expires and the reconciler requeues it).
    launch_record_timeout: float = Field(default=120.0, gt=0,
                                         validation_alias="SKUTRAIN_LAUNCH_RECORD_TIMEOUT")
    # Fault injection for the chaos tests: the dispatcher SIGKILLs itself at this point.
    dispatcher_crash_at: Literal["after_claim", "after_start"] | None = Field(
        default=None, validation_alias="SKUTRAIN_DISPATCHER_CRASH_AT")

    log_format: str = Field(default="auto", validation_alias="SKUTRAIN_LOG_FORMAT")
    log_level: str = Field(default="INFO", validation_alias="SKUTRAIN_LOG_LEVEL")

    @property
    def resolved_storage_dir(self) -> Path:
        return self.storage_dir or (self.data_dir / "storage")

    @property
    def worker_memory_budget(self) -> int:
        return self.worker_memory_bytes or psutil.virtual_memory().total * 3 // 4

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()

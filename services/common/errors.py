"""One error hierarchy: every failure that reaches a run carries a stable `error_code`.

The code is what a run row stores in `error_code`; the message is what a person reads in
`error_message`, so it must say what to do.
"""
from __future__ import annotations


class SkutrainError(Exception):
    """Root of every error skutrain raises on purpose."""

    code = "internal_error"

    def __init__(self, message: str, *, details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or {}


class InvalidConfig(SkutrainError):
    code = "invalid_config"


class InsufficientProducts(SkutrainError):
    code = "insufficient_products"


class InsufficientImages(SkutrainError):
    code = "insufficient_images"


class DatasetNotFound(SkutrainError):
    code = "dataset_not_found"


class ModelUnavailable(SkutrainError):
    code = "model_unavailable"


class StorageError(SkutrainError):
    code = "storage_error"


class ChecksumMismatch(StorageError):
    code = "checksum_mismatch"


class ObjectTooLarge(StorageError):
    """An object over the storage's per-object limit (SKUTRAIN_STORAGE_MAX_OBJECT_BYTES)."""

    code = "object_too_large"


class LeaseLost(SkutrainError):
    """The run's lease moved to a newer attempt: this worker must stop writing."""

    code = "lease_lost"


class LaunchFailed(SkutrainError):
    code = "launch_failed"


class TrainingFailed(SkutrainError):
    """An unexpected error inside training (a bug or a library failure)."""

    code = "training_failed"


class NonFiniteLoss(SkutrainError):
    """A NaN or infinite training loss: the weights are ruined, so the run stops at once."""

    code = "non_finite_loss"


class ResumeMismatch(SkutrainError):
    """The resume state was saved for another config, image manifest or label map."""

    code = "resume_mismatch"


class CheckpointUploadFailed(SkutrainError):
    """A checkpoint could not be written and verified; no checkpoint row names its bytes."""

    code = "checkpoint_upload_failed"


class EventRejected(SkutrainError):
    """The database refused an event for its content; retrying would refuse it again."""

    code = "event_rejected"


# Input and resource problems a person can act on (issue 8), known before the launch where they
# can be: preflight raises them, the trainer raises OutOfMemory.
class InsufficientLabels(SkutrainError):
    """The training split has fewer labels than the P-K sampler's p."""

    code = "insufficient_labels"


class ProductsNotFound(SkutrainError):
    """data_source.product_ids names products that do not exist."""

    code = "products_not_found"


class MemoryBudgetExceeded(SkutrainError):
    """The config's planned peak memory does not fit the worker's budget."""

    code = "memory_budget_exceeded"


class OutOfMemory(SkutrainError):
    """The trainer ran out of memory (its own limit or the device's)."""

    code = "out_of_memory"


class SchemaMissing(SkutrainError):
    """The database was never upgraded: `skutrain db upgrade`."""

    code = "schema_missing"


# Lifecycle requests (request_resume, request_delete, request_cancel...): SQLSTATE SK010 and
# P0002 from the database.
class Refused(SkutrainError):
    """The request does not apply to the row's state (or a trained model links to it)."""

    code = "refused"


class NotFound(SkutrainError):
    code = "not_found"


# RunPod launcher (issue 9): what a person fixes when RunPod refuses a launch.
class RunPodUnauthorized(LaunchFailed):
    code = "runpod_unauthorized"


class RunPodEndpointNotFound(LaunchFailed):
    code = "runpod_endpoint_not_found"


class RunPodRateLimited(LaunchFailed):
    code = "runpod_rate_limited"


class RunPodUnreachable(LaunchFailed):
    code = "runpod_unreachable"

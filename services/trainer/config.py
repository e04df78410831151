"""The run config: one pydantic model for `training_runs.config` (JSONB).

Every field has a default (so `'{}'` is a valid config), values are range-checked and unknown keys
are rejected. Defaults follow shared/spec/seed-checklist.en.md and anchor-notes.md: 70/15/15 split
by product with seed 42, P-K sampling 8 x 4, loss weights arcface 1.0 / triplet 0.5 / domain 0.1,
early-stopping patience 5, checkpoint objects of at most 42 MB.
"""
from __future__ import annotations

import json
import math
import os
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from services.common.errors import InvalidConfig
from services.common.logging import cap_text
from services.trainer.memory import CUBIC_MINERS, MAX_CUBIC_MINER_BATCH, gib, miner_bytes

# Every number is checked against the range the column or library that takes it accepts.
BIGINT_MAX = 2**63 - 1  # ids are Postgres bigint
SEED_MAX = 2**32 - 1  # numpy.random.seed and default_rng take 0 .. 2**32 - 1
MAX_PRODUCT_IDS = 30_000
PATH_MAX = os.pathconf("/", "PC_PATH_MAX")  # what open() accepts for model_path
NAME_MAX = os.pathconf("/", "PC_NAME_MAX")

ModelName = Literal[
    "dinov2-small",
    "dinov2-base",
    "dinov2-large",
    "dinov3-small",
    "dinov3-base",
    "dinov3-large",
    "tiny-dinov2",
    "tiny-dinov3",
]
Domain = Literal["synthetic", "real", "augmented", "cutout"]
DOMAINS: tuple[str, ...] = ("synthetic", "real", "augmented", "cutout")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataSourceConfig(_Strict):
    """Which products a run trains on."""

    type: Literal["all_products", "matched_products", "dataset", "selected"] = "all_products"
    dataset_id: int | None = Field(default=None, ge=1, le=BIGINT_MAX)
    product_ids: list[Annotated[int, Field(ge=1, le=BIGINT_MAX)]] | None = Field(
        default=None, max_length=MAX_PRODUCT_IDS)

    @model_validator(mode="after")
    def _needs_ids(self) -> "DataSourceConfig":
        if self.type == "dataset" and self.dataset_id is None:
            raise ValueError("data_source.type 'dataset' needs data_source.dataset_id")
        if self.type == "selected" and not self.product_ids:
            raise ValueError("data_source.type 'selected' needs a non-empty data_source.product_ids")
        return self


class ImageConfig(_Strict):
    """Which images of each product: domains, and which turntable frames."""

    image_types: list[Domain] = Field(
        default_factory=lambda: ["synthetic", "real", "augmented", "cutout"], min_length=1,
        max_length=len(DOMAINS),
    )
    frame_selection: Literal["first", "key_frames", "interval", "all"] = "key_frames"
    frame_interval: int = Field(default=5, ge=1, le=10_000)
    max_frames_per_type: int = Field(default=10, ge=1, le=10_000)


class LabelConfig(_Strict):
    label_field: Literal["product_id", "category", "brand_name"] = "product_id"
    min_samples_per_class: int = Field(default=2, ge=1, le=10_000)


class SplitConfig(_Strict):
    """Split by label, so validation and test products are unseen (open-set retrieval)."""

    train_ratio: float = Field(default=0.70, gt=0, lt=1)
    val_ratio: float = Field(default=0.15, gt=0, lt=1)
    test_ratio: float = Field(default=0.15, gt=0, lt=1)
    seed: int = Field(default=42, ge=0, le=SEED_MAX)

    @model_validator(mode="after")
    def _sum_to_one(self) -> "SplitConfig":
        total = self.train_ratio + self.val_ratio + self.test_ratio
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"split ratios must sum to 1, got {total:g}")
        return self


class EarlyStoppingConfig(_Strict):
    """Stop when validation Recall@1 has not improved by `min_delta` for `patience` epochs."""

    enabled: bool = True
    patience: int = Field(default=5, ge=1, le=1000)
    min_delta: float = Field(default=0.001, ge=0, le=1)


class TrainingConfig(_Strict):
    epochs: int = Field(default=10, ge=1, le=1000)
    batch_size: int = Field(default=32, ge=2, le=4096)
    learning_rate: float = Field(default=5e-5, gt=0, le=1)
    weight_decay: float = Field(default=0.05, ge=0, le=1)
    warmup_epochs: float = Field(default=1.0, ge=0, le=1000)
    min_lr: float = Field(default=1e-7, ge=0, le=1)
    llrd_decay: float = Field(default=0.75, gt=0, le=1)
    head_lr_multiplier: float = Field(default=10.0, gt=0, le=1000)
    arcface_lr_multiplier: float = Field(default=10.0, gt=0, le=1000)
    amp: Literal["auto", "fp16", "bf16", "off"] = "auto"
    grad_clip_norm: float | None = Field(default=1.0, gt=0, le=1e6)
    image_size: int = Field(default=224, ge=28, le=1024)
    embedding_dim: int = Field(default=512, ge=8, le=4096)
    pooling: Literal["cls", "gem", "cls_mean"] = "cls"
    seed: int = Field(default=42, ge=0, le=SEED_MAX)
    num_workers: int = Field(default=2, ge=0, le=64)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)

    @model_validator(mode="after")
    def _lr_order(self) -> "TrainingConfig":
        if self.min_lr >= self.learning_rate:
            raise ValueError(
                f"training.min_lr ({self.min_lr:g}) must be below training.learning_rate "
                f"({self.learning_rate:g})"
            )
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"training.warmup_epochs ({self.warmup_epochs:g}) must be fewer than "
                f"training.epochs ({self.epochs})"
            )
        return self


class LossConfig(_Strict):
    """ArcFace, Triplet or both; a domain-alignment term joins mixed-domain runs."""

    type: Literal["arcface", "triplet", "combined"] = "combined"
    arcface_weight: float = Field(default=1.0, ge=0, le=1000)
    triplet_weight: float = Field(default=0.5, ge=0, le=1000)
    domain_weight: float = Field(default=0.1, ge=0, le=1000)
    arcface_margin_degrees: float = Field(default=16.0, gt=0, lt=90)
    arcface_scale: float = Field(default=30.0, gt=0, le=1000)
    triplet_margin: float = Field(default=0.2, gt=0, le=100)
    miner: Literal["batch_hard", "semihard", "hard", "all", "none"] = "semihard"


class SamplerConfig(_Strict):
    """P labels x K images per batch, or plain random batches."""

    type: Literal["pk", "random"] = "pk"
    p: int = Field(default=8, ge=2, le=4096)
    k: int = Field(default=4, ge=1, le=4096)
    domain_balance: bool = False


class CheckpointConfig(_Strict):
    max_object_bytes: int = Field(default=42_000_000, ge=1_000_000, le=5 * 1024**3)
    keep: Literal["all", "best_and_last"] = "all"


class EvaluationConfig(_Strict):
    k_values: list[Annotated[int, Field(le=1000)]] = Field(
        default_factory=lambda: [1, 5, 10], min_length=1, max_length=20)
    cross_domain: bool = True
    per_category: bool = True
    hard_cases: int = Field(default=10, ge=0, le=1000)

    @field_validator("k_values")
    @classmethod
    def _k_positive(cls, values: list[int]) -> list[int]:
        if any(k < 1 for k in values):
            raise ValueError("evaluation.k_values must all be >= 1")
        return sorted(set(values))


class RunConfig(_Strict):
    model: ModelName = "dinov2-base"
    model_path: str | None = Field(
        default=None, min_length=1, max_length=PATH_MAX,
        description="local directory written by save_pretrained; overrides the hub id",
    )
    data_source: DataSourceConfig = Field(default_factory=DataSourceConfig)
    image_config: ImageConfig = Field(default_factory=ImageConfig)
    label_config: LabelConfig = Field(default_factory=LabelConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    @field_validator("model_path")
    @classmethod
    def _os_accepts_path(cls, path: str | None) -> str | None:
        if path is None:
            return path
        if "\x00" in path:
            raise ValueError("model_path must not contain NUL characters")
        if len(path.encode("utf-8", "replace")) >= PATH_MAX:
            raise ValueError(f"model_path is longer than the OS limit of {PATH_MAX} bytes")
        longest = max(len(part.encode("utf-8", "replace")) for part in path.split("/"))
        if longest > NAME_MAX:
            raise ValueError(
                f"model_path has a name of {longest} bytes; the OS limit is {NAME_MAX}")
        return path

    @model_validator(mode="after")
    def _batch_from_sampler(self) -> "RunConfig":
        """A P-K batch is p*k images: a config that sets the sampler and leaves batch_size out
        gets that, instead of a mismatch with the default batch_size."""
        if self.sampler.type == "pk" and "batch_size" not in self.training.model_fields_set:
            self.training.batch_size = self.sampler.p * self.sampler.k
        return self

    @model_validator(mode="after")
    def _miner_cost_bounded(self) -> "RunConfig":
        batch, miner = self.training.batch_size, self.loss.miner
        if (self.loss.type in ("triplet", "combined") and miner in CUBIC_MINERS
                and batch > MAX_CUBIC_MINER_BATCH):
            p, k = (self.sampler.p, self.sampler.k) if self.sampler.type == "pk" else (batch, 1)
            raise ValueError(
                f"loss.miner '{miner}' enumerates every triplet of a batch, so its memory grows "
                f"as batch_size^3: batch_size {batch} needs {gib(miner_bytes(miner, batch, p, k))} "
                f"for mining alone; use training.batch_size <= {MAX_CUBIC_MINER_BATCH} or "
                "loss.miner 'batch_hard'")
        return self

    @model_validator(mode="after")
    def _batch_matches_sampler(self) -> "RunConfig":
        if self.sampler.type == "pk":
            pk = self.sampler.p * self.sampler.k
            if self.training.batch_size != pk:
                raise ValueError(
                    f"training.batch_size ({self.training.batch_size}) must equal sampler.p * "
                    f"sampler.k ({self.sampler.p}*{self.sampler.k}={pk}) with the P-K sampler"
                )
        return self


_FIELD_TEXT = 300  # characters of one problem's text
_MAX_PROBLEMS = 20


def _location(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
    return loc or "config"


def decode_config(text: str | bytes) -> Any:
    """The JSON text of a config as Python values; a document the decoder cannot read (nested
    past the recursion limit, an integer of thousands of digits, not JSON) is InvalidConfig."""
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidConfig("invalid config: nested too deeply to read") from None
    except ValueError as exc:  # JSONDecodeError, and int() past sys.get_int_max_str_digits()
        raise InvalidConfig(cap_text(f"invalid config: {exc}", _FIELD_TEXT)) from None


def parse_config(raw: Any) -> RunConfig:
    """Validate a raw JSONB config (decoded, or its JSON text); raise InvalidConfig naming every
    bad field (each name and message capped, so a megabyte key cannot make a megabyte error)."""
    if isinstance(raw, (str, bytes)):
        raw = decode_config(raw)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidConfig(f"config must be a JSON object, got {type(raw).__name__}")
    try:
        return RunConfig.model_validate(raw)
    except RecursionError:
        raise InvalidConfig("invalid config: nested too deeply to read") from None
    except ValidationError as exc:
        problems = [
            cap_text(f"{_location(e)}: {e['msg'].removeprefix('Value error, ')}", _FIELD_TEXT)
            for e in exc.errors(include_input=False, include_url=False)[:_MAX_PROBLEMS]
        ]
        if exc.error_count() > _MAX_PROBLEMS:
            problems.append(f"... and {exc.error_count() - _MAX_PROBLEMS} more")
        raise InvalidConfig(
            "invalid config: " + "; ".join(problems), details={"errors": problems}
        ) from exc


def config_json_schema() -> dict[str, Any]:
    return RunConfig.model_json_schema()


def example_config() -> dict[str, Any]:
    """A complete config with every field at its default."""
    return RunConfig().model_dump(mode="json")

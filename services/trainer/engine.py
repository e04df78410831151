"""The training loop: batches, AMP, LLRD + warmup/cosine, validation, early stopping, resume.

No database, storage or network code lives here: everything the outside world needs goes
through a `TrainingHooks` object (progress, cancellation, checkpoint saving), so the loop runs
the same under the RunPod handler, a local subprocess, a test or a benchmark.

Epochs are numbered from 1. Per epoch: `on_epoch_start`, then for every batch `should_stop()`
(before the batch) and `on_batch(progress)` (after it); then `should_stop()` once more,
validation, `save_checkpoint(...)` and `on_epoch_end(summary)`. A NaN or infinite loss raises
NonFiniteLoss naming the epoch and batch. A stop request ends the run
within one batch: the unfinished epoch is neither validated nor checkpointed, and `run()`
returns a result with status "stopped" and the hook's reason (the caller maps it to a cancelled
or lease-lost run).

Exact resume: the resume state saved after each epoch holds the float32 model and loss weights,
optimizer, scheduler, grad scaler, sampler position, early-stopping state, per-epoch history and
the RNG states of Python, NumPy and torch. Each epoch's DataLoader draws its worker seeds from a
generator seeded with (seed, epoch), so a resumed run repeats what the uninterrupted run would
have done (bit-identical on CPU), provided hooks draw no numbers from torch's global RNG (which
main-process augmentation uses).
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Hashable, Protocol, Sequence

import numpy as np
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import reducers as pml_reducers
from torch.utils.data import DataLoader

from services.common.errors import InvalidConfig, NonFiniteLoss, ResumeMismatch
from services.trainer import metrics as M
from services.trainer.best import EarlyStopping, best_of_history
from services.trainer.losses import COMPONENTS, EmbeddingLoss
from services.trainer.model import EmbeddingModel
from services.trainer.sampler import ResumableBatchSampler, batch_plan, pk_batches
from services.trainer.schedule import (
    arcface_param_group,
    build_scheduler,
    llrd_param_groups,
    lr_at,
    warmup_and_total_steps,
)

RESUME_FORMAT = 1


class ItemDataset(Protocol):
    """What the trainer needs from a dataset (the train or val split).

    `__getitem__` returns (image, label, domain): a float CHW tensor already resized and
    normalised for the model, the label's index (0..num_classes-1 within the split) and the
    image's domain string ("synthetic", "real", "augmented" or "cutout"). `labels` and `domains`
    list the same per item without loading images (the sampler plans batches from them).
    Optional, read when present: `sources` (per item; in validation, items sharing a source
    are never retrieved for each other). The test evaluation is services.models.evaluate's.
    """

    labels: Sequence[int]
    domains: Sequence[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]: ...


class TrainingHooks(Protocol):
    """The loop's only way out. Hooks run on the training thread: keep them quick (throttle,
    queue events for a writer thread). `save_checkpoint` gets the live model (for its
    architecture) and the resume state, a CPU snapshot that holds the epoch's weights under
    "model": a hook may hand both to a checkpoints.BackgroundSaver and return at once."""

    def on_epoch_start(self, epoch: int) -> None: ...

    def on_batch(self, progress: dict[str, Any]) -> None:
        """progress: epoch, batch (1-based), num_batches, step, losses {arcface, triplet,
        domain, total}, lr (the base lr of this batch)."""

    def should_stop(self) -> str | None:
        """A reason to stop now (cancel requested, lease lost), or None to go on."""

    def save_checkpoint(
        self,
        epoch: int,
        model: EmbeddingModel,
        summary: dict[str, Any],
        resume_state: dict[str, Any],
    ) -> None: ...

    def on_epoch_end(self, summary: dict[str, Any]) -> None:
        """summary: epoch, num_batches, train_loss {component: mean}, lr {tier: lr}, val
        {recall@k, map, map@r, loss, num_queries, queries_without_relevant}, images_per_second,
        train_seconds, duration_seconds, early_stop, best_epoch (best.best_of_history of every
        epoch so far, earlier attempts' included)."""


@dataclass
class TrainingResult:
    status: str  # "completed" | "early_stopped" | "stopped"
    epochs: list[dict[str, Any]]
    best_epoch: int | None
    stop_reason: str | None = None

    @property
    def best(self) -> dict[str, Any] | None:
        return next((e for e in self.epochs if e["epoch"] == self.best_epoch), None)


@dataclass(frozen=True)
class AmpSettings:
    enabled: bool
    dtype: torch.dtype | None
    use_scaler: bool


def resolve_amp(mode: str, device: torch.device) -> AmpSettings:
    """'auto': fp16 + GradScaler on CUDA, off elsewhere; 'bf16': bf16 autocast, no scaler."""
    cuda = device.type == "cuda"
    if mode == "off" or (mode == "auto" and not cuda):
        return AmpSettings(False, None, False)
    if mode == "bf16":
        return AmpSettings(True, torch.bfloat16, False)
    if not cuda:
        raise InvalidConfig(
            f"training.amp 'fp16' needs a CUDA device, this run is on {device.type}: use 'auto', "
            "'bf16' or 'off'"
        )
    return AmpSettings(True, torch.float16, True)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (call before building the model of a fresh run)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain values (loadable with torch.load(weights_only=True))."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _snapshot(value: Any) -> Any:
    """A deep copy of nested dicts/lists/tuples with every tensor copied to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _snapshot(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_snapshot(v) for v in value)
    return value


def _autocast(device: torch.device, amp: AmpSettings):
    return torch.autocast(device_type=device.type, dtype=amp.dtype, enabled=amp.enabled)


@torch.no_grad()
def embed_dataset(
    model: EmbeddingModel,
    dataset: ItemDataset,
    *,
    batch_size: int,
    device: torch.device,
    amp: AmpSettings,
    num_workers: int = 0,
) -> torch.Tensor:
    """float32 embeddings of every item, in dataset order, on `device`."""
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    out = []
    for images, _, _ in loader:
        with _autocast(device, amp):
            out.append(model(images.to(device, non_blocking=True)).float())
    model.train(was_training)
    dim = model.embedding_dim
    return torch.cat(out) if out else torch.zeros(0, dim, device=device)


@dataclass
class _EpochTotals:
    losses: list[float] = field(default_factory=lambda: [0.0] * len(COMPONENTS))
    batches: int = 0
    images: int = 0


class Trainer:
    """Trains an EmbeddingModel with an EmbeddingLoss on a train split, validating on a val split.

    `device` is where model and loss run. Pass `resume_state` (from
    checkpoints.load_resume_state) to continue a run after its last completed epoch.
    """

    def __init__(
        self,
        model: EmbeddingModel,
        loss: EmbeddingLoss,
        train_data: ItemDataset,
        val_data: ItemDataset,
        config,
        *,
        device: torch.device | str,
        hooks: TrainingHooks,
        resume_state: dict[str, Any] | None = None,
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.loss = loss.to(self.device)
        self.train_data, self.val_data = train_data, val_data
        self.config, self.hooks = config, hooks
        t = config.training
        self.amp = resolve_amp(t.amp, self.device)
        self.sampler = ResumableBatchSampler(self._plan, epoch=1)
        self.steps_per_epoch = len(self._plan(1))
        self.warmup_steps, self.total_steps = warmup_and_total_steps(
            t.epochs, t.warmup_epochs, self.steps_per_epoch
        )
        groups = llrd_param_groups(
            model, base_lr=t.learning_rate, decay=t.llrd_decay, weight_decay=t.weight_decay,
            head_lr_multiplier=t.head_lr_multiplier,
        ) + arcface_param_group(
            loss.arcface_parameters(), base_lr=t.learning_rate, multiplier=t.arcface_lr_multiplier
        )
        # The fused kernel updates every group in one call (CUDA and CPU); with a dozen LLRD
        # groups the default per-tensor loop costs more than the rest of the step's bookkeeping.
        self.optimizer = torch.optim.AdamW(
            groups, lr=t.learning_rate, weight_decay=t.weight_decay,
            fused=self.device.type in ("cuda", "cpu"),
        )
        self.scheduler = build_scheduler(
            self.optimizer, total_steps=self.total_steps, warmup_steps=self.warmup_steps,
            min_ratio=t.min_lr / t.learning_rate,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp.use_scaler)
        self.params = [p for g in groups for p in g["params"]]
        es = t.early_stopping
        self.early_stopping = EarlyStopping(es.patience, es.min_delta) if es.enabled else None
        self.history: list[dict[str, Any]] = []
        self.step = 0
        self.last_epoch = 0
        self._rng_to_restore: dict[str, Any] | None = None
        if resume_state is not None:
            self._load_resume_state(resume_state)

    # --- plans -----------------------------------------------------------------------------

    def _plan(self, epoch: int) -> list[list[int]]:
        t, data = self.config.training, self.train_data
        return batch_plan(self.config.sampler, t.batch_size, data.labels, seed=t.seed, epoch=epoch,
                          domains=data.domains)

    def _loader(self, epoch: int) -> DataLoader:
        generator = torch.Generator().manual_seed(self.config.training.seed * 100_003 + epoch)
        return DataLoader(
            self.train_data, batch_sampler=self.sampler,
            num_workers=self.config.training.num_workers,
            pin_memory=self.device.type == "cuda", generator=generator,
        )

    # --- resume ----------------------------------------------------------------------------

    def resume_state(self) -> dict[str, Any]:
        """Everything needed to continue after `self.last_epoch` exactly, as a snapshot: tensors
        are CPU copies, so a hook may keep it and save it while training goes on."""
        return _snapshot({
            "format": RESUME_FORMAT,
            "epoch": self.last_epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "loss": self.loss.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "early_stopping": self.early_stopping.to_dict() if self.early_stopping else None,
            "history": self.history,
            "rng": rng_state(),
        })

    def _load_resume_state(self, state: dict[str, Any]) -> None:
        if state.get("format") != RESUME_FORMAT:
            raise ResumeMismatch(
                f"the resume state has format {state.get('format')!r}, this trainer reads format "
                f"{RESUME_FORMAT}: resume it with the trainer version that saved it, or queue a "
                "new run")
        self.model.load_state_dict(state["model"])
        self.loss.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        if self.early_stopping is not None and state["early_stopping"] is not None:
            self.early_stopping = EarlyStopping.from_dict(state["early_stopping"])
        self.history = list(state["history"])
        self.step, self.last_epoch = state["step"], state["epoch"]
        self._rng_to_restore = state["rng"]

    # --- loop ------------------------------------------------------------------------------

    def run(self) -> TrainingResult:
        if self._rng_to_restore is not None:
            set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        status = "completed"
        for epoch in range(self.last_epoch + 1, self.config.training.epochs + 1):
            started = time.perf_counter()
            self.hooks.on_epoch_start(epoch)
            totals, reason = self._train_epoch(epoch)
            if reason is None:
                reason = self.hooks.should_stop()
            if reason is not None:
                return self._result("stopped", reason)
            train_seconds = time.perf_counter() - started
            val = self._validate()
            stop_early = (
                self.early_stopping.update(epoch, val.get("recall@1"))
                if self.early_stopping is not None else False
            )
            summary = {
                "epoch": epoch,
                "num_batches": totals.batches,
                "train_loss": {
                    c: v / max(totals.batches, 1) for c, v in zip(COMPONENTS, totals.losses)
                },
                "lr": self._lr_per_tier(self.step - 1),
                "val": val,
                "images_per_second": totals.images / train_seconds if train_seconds > 0 else None,
                "train_seconds": train_seconds,
                "duration_seconds": time.perf_counter() - started,
                "early_stop": stop_early,
            }
            self.history.append(summary)
            summary["best_epoch"] = best_of_history(self.history)
            self.last_epoch = epoch
            self.sampler.next_epoch()
            self.hooks.save_checkpoint(epoch, self.model, summary, self.resume_state())
            self.hooks.on_epoch_end(summary)
            if stop_early:
                status = "early_stopped"
                break
        return self._result(status, None)

    def _result(self, status: str, reason: str | None) -> TrainingResult:
        return TrainingResult(status, list(self.history), best_of_history(self.history), reason)

    def _lr_per_tier(self, step: int) -> dict[str, float]:
        t = self.config.training
        factor = lr_at(
            max(step, 0), self.total_steps, self.warmup_steps, 1.0, t.min_lr / t.learning_rate
        )
        return {g["name"]: g["initial_lr"] * factor for g in self.optimizer.param_groups}

    def _train_epoch(self, epoch: int) -> tuple[_EpochTotals, str | None]:
        self.model.train()
        self.loss.train()
        t = self.config.training
        totals = _EpochTotals()
        num_batches = len(self.sampler.batches())
        for images, labels, domains in self._loader(epoch):
            reason = self.hooks.should_stop()
            if reason is not None:
                return totals, reason
            values = self._train_step(images, labels, domains, t.grad_clip_norm)
            if not all(map(math.isfinite, values)):
                raise NonFiniteLoss(
                    f"the training loss became non-finite at epoch {epoch}, batch "
                    f"{self.sampler.position + 1}: {dict(zip(COMPONENTS, values))}. Lower "
                    "training.learning_rate, keep training.grad_clip_norm set, or use "
                    "training.amp 'bf16' or 'off'.",
                    details={"epoch": epoch, "batch": self.sampler.position + 1})
            base_lr = lr_at(
                self.step, self.total_steps, self.warmup_steps, t.learning_rate, t.min_lr
            )
            self.step += 1
            self.sampler.advance()
            totals.batches += 1
            totals.images += len(labels)
            totals.losses = [a + b for a, b in zip(totals.losses, values)]
            self.hooks.on_batch({
                "epoch": epoch,
                "batch": self.sampler.position,
                "num_batches": num_batches,
                "step": self.step,
                "losses": dict(zip(COMPONENTS, values)),
                "lr": base_lr,
            })
        return totals, None

    def _train_step(self, images, labels, domains, clip: float | None) -> list[float]:
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        with _autocast(self.device, self.amp):
            embeddings = self.model(images)
        parts = self.loss(embeddings.float(), labels, domains)
        self.scaler.scale(parts["total"]).backward()
        if clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return torch.stack([parts[c].detach() for c in COMPONENTS]).tolist()

    # --- validation ------------------------------------------------------------------------

    def _validate(self) -> dict[str, Any]:
        """Leave-one-out retrieval among the val images, plus the val loss (`_val_loss`)."""
        t = self.config.training
        emb = embed_dataset(self.model, self.val_data, batch_size=t.batch_size, device=self.device,
                            amp=self.amp, num_workers=t.num_workers)
        labels = list(self.val_data.labels)
        results = M.rank_and_score(
            emb, labels, emb, labels, k_values=sorted(set(self.config.evaluation.k_values) | {1}),
            leave_one_out=True, query_sources=getattr(self.val_data, "sources", None),
            gallery_sources=getattr(self.val_data, "sources", None),
        )
        return {**M.summarize(results), "loss": self._val_loss(emb, labels)}

    def _val_loss(self, emb: torch.Tensor, labels: list[Hashable]) -> float | None:
        """Mean triplet margin loss over every triplet of fixed P-K batches of val embeddings
        (the run's P and K, or 8 x 4 with a random sampler; P capped at the val label count).

        Val labels are unseen products, so ArcFace (whose class centres are the train labels)
        cannot score them; the triplet loss with the run's margin can, and fixed batches keep it
        comparable across epochs. None when the val set has fewer than two labels.
        """
        n_labels = len(set(labels))
        if n_labels < 2:
            return None
        s = self.config.sampler
        p = min(s.p if s.type == "pk" else 8, n_labels)
        k = s.k if s.type == "pk" else 4
        plan = pk_batches(labels, p, k, seed=self.config.training.seed, epoch=0)
        triplet = pml_losses.TripletMarginLoss(
            margin=self.config.loss.triplet_margin, reducer=pml_reducers.MeanReducer()
        )
        label_tensor = torch.as_tensor(labels, device=emb.device)
        with torch.no_grad():
            values = [float(triplet(emb[b], label_tensor[b])) for b in plan]
        value = sum(values) / len(values)
        return value if math.isfinite(value) else None

"""Peak memory of a run, planned from its config before anything is allocated.

A config that cannot fit the worker is refused with numbers before the launch (preflight) and
again by the trainer against its real device, instead of being discovered by the kernel's
out-of-memory killer. The estimate errs on the high side: weights + gradients + AdamW state, the
activations a ViT keeps for backward (Korthikanti et al. 2022: T*d*34 bytes per image and layer
at 16 bits, plus 2*h*T^2 for attention, less than their 5*h*T^2 because SDPA keeps no dropout
mask; measured: dinov2-small, batch 16, 224 px, fp32 on CPU: 1.45 GiB of step memory, planned
1.59 GiB), the triplet miner's tensors, a few batches of decoded images, and the runtime.

Pytorch-metric-learning's triplet miners (semihard, hard, all) and a triplet loss without a miner
enumerate every (anchor, positive, negative) triplet of a batch: a B x B x B mask plus indices
and distances per triplet, so their memory grows as batch_size^3. `batch_hard` needs B x B.
"""
from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import Any, Callable

from services.common.errors import MemoryBudgetExceeded, OutOfMemory

GIB = 1024**3

# Bytes per enumerated triplet: three int64 indices, then distances and margins in the miner
# and again in TripletMarginLoss.
_TRIPLET_BYTES = 64
CUBIC_MINERS = frozenset({"semihard", "hard", "all", "none"})
# Largest batch a cubic miner may see: its B^3 mask alone is 1 GiB at 1024.
MAX_CUBIC_MINER_BATCH = 1024
_RUNTIME_BYTES = 768 * 1024**2  # interpreter, torch, transformers, CUDA context or BLAS buffers
_PREFETCHED_BATCHES = 2


@dataclass(frozen=True)
class Architecture:
    """The numbers of a ViT backbone the plan needs."""

    hidden: int
    layers: int
    heads: int
    patch: int
    mlp: int
    prefix_tokens: int  # CLS + register tokens

    @classmethod
    def from_arch(cls, arch: dict[str, Any]) -> "Architecture":
        """From a transformers DINOv2/DINOv3 config dict (services.trainer.model.BACKBONES)."""
        hidden = arch["hidden_size"]
        mlp = arch.get("intermediate_size") or hidden * arch.get("mlp_ratio", 4)
        return cls(hidden, arch["num_hidden_layers"], arch["num_attention_heads"],
                   arch.get("patch_size", 14), mlp, 1 + arch.get("num_register_tokens", 0))

    def parameters(self, image_size: int) -> int:
        """Attention (4 d^2) + MLP (2 d mlp) + norms, scales and biases per layer; the patch
        embedding; one position embedding per token."""
        d = self.hidden
        per_layer = 4 * d**2 + 2 * d * self.mlp + 9 * d
        return self.layers * per_layer + 3 * self.patch**2 * d + self.tokens(image_size) * d

    def tokens(self, image_size: int) -> int:
        return (image_size // self.patch) ** 2 + self.prefix_tokens


def triplet_count(p: int, k: int) -> int:
    """(anchor, positive, negative) triplets in a P x K batch."""
    return p * k * (k - 1) * (p - 1) * k


def miner_bytes(miner: str, batch_size: int, p: int, k: int) -> int:
    """Peak bytes of the triplet term's mining for one batch (0 without a triplet term)."""
    if miner == "batch_hard":
        return 4 * batch_size**2 * 4  # distance matrix, two masks, the selected distances
    if miner in CUBIC_MINERS:
        return batch_size**3 + triplet_count(p, k) * _TRIPLET_BYTES
    return 0


# services.trainer.model.BACKBONES in numbers (a test keeps them equal), so the dispatcher plans
# without importing torch and transformers.
ARCHITECTURES: dict[str, Architecture] = {
    "dinov2-small": Architecture(384, 12, 6, 14, 1536, 1),
    "dinov2-base": Architecture(768, 12, 12, 14, 3072, 1),
    "dinov2-large": Architecture(1024, 24, 16, 14, 4096, 1),
    "dinov3-small": Architecture(384, 12, 6, 16, 1536, 5),
    "dinov3-base": Architecture(768, 12, 12, 16, 3072, 5),
    "dinov3-large": Architecture(1024, 24, 16, 16, 4096, 5),
    "tiny-dinov2": Architecture(64, 3, 4, 8, 128, 1),
    "tiny-dinov3": Architecture(64, 3, 4, 8, 128, 3),
}


@dataclass(frozen=True)
class MemoryPlan:
    """Peak bytes of one training step, by part."""

    parameters: int
    weights_and_optimizer: int
    activations: int
    miner: int
    data: int
    runtime: int = _RUNTIME_BYTES

    @property
    def total(self) -> int:
        return (self.weights_and_optimizer + self.activations + self.miner + self.data
                + self.runtime)

    def describe(self) -> str:
        parts = {"weights+optimizer": self.weights_and_optimizer,
                 "activations": self.activations, "triplet miner": self.miner,
                 "image batches": self.data, "runtime": self.runtime}
        listed = ", ".join(f"{name} {gib(value)}" for name, value in parts.items() if value)
        return f"about {gib(self.total)} ({listed}; {self.parameters / 1e6:.1f}M parameters)"


def gib(value: int) -> str:
    return f"{value / GIB:.2f} GiB"


def plan_memory(config, arch: Architecture, *, device: str = "cpu",
                num_classes: int | None = None) -> MemoryPlan:
    """The peak memory of training `config` (a RunConfig) on `device` ('cpu' or 'cuda').

    `num_classes` (labels in the training split) sizes ArcFace's class-centre matrix; unknown,
    it is left out."""
    t = config.training
    batch, size = t.batch_size, t.image_size
    params = arch.parameters(size) + arch.hidden * 2 * t.embedding_dim
    if config.loss.type in ("arcface", "combined") and num_classes:
        params += num_classes * t.embedding_dim
    amp_on = t.amp in ("fp16", "bf16") or (t.amp == "auto" and device == "cuda")
    act_bytes = 2 if amp_on else 4
    tokens = arch.tokens(size)
    per_image_layer = (tokens * arch.hidden * 34 + 2 * arch.heads * tokens**2) * act_bytes // 2
    activations = batch * arch.layers * per_image_layer
    miner = 0
    if config.loss.type in ("triplet", "combined"):
        p, k = (config.sampler.p, config.sampler.k) if config.sampler.type == "pk" else (batch, 1)
        miner = miner_bytes(config.loss.miner, batch, p, k)
    image_batch = batch * 3 * size * size * 4
    data = image_batch * (_PREFETCHED_BATCHES * max(t.num_workers, 1) + 1)
    return MemoryPlan(params, 16 * params, activations, miner, data)


def check_memory(config, budget: int, where: str, *, device: str = "cpu",
                 num_classes: int | None = None) -> MemoryPlan:
    """The plan of `config`; MemoryBudgetExceeded, with the numbers, when it does not fit
    `budget` bytes of `where` (a worker's setting, or a device's memory)."""
    plan = plan_memory(config, ARCHITECTURES[config.model], device=device,
                       num_classes=num_classes)
    if plan.total > budget:
        raise MemoryBudgetExceeded(
            f"this config needs {plan.describe()}, but {where} has {gib(budget)}: lower "
            "training.batch_size or training.image_size, use training.amp, a smaller model or "
            "loss.miner 'batch_hard'",
            details={"planned_bytes": plan.total, "budget_bytes": budget},
        )
    return plan


def as_out_of_memory(exc: BaseException) -> OutOfMemory | None:
    """OutOfMemory when `exc` means an allocation failed: MemoryError (Python, or the trainer's
    RLIMIT_DATA), torch.OutOfMemoryError (CUDA), or torch's CPU allocator refusing (a plain
    RuntimeError); None for anything else."""
    oom = isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))
    if not oom:
        return None
    return OutOfMemory(
        f"the trainer ran out of memory ({type(exc).__name__}: {str(exc)[:300]}): lower "
        "training.batch_size or training.image_size, use training.amp or a smaller model, or "
        "give the worker more memory (SKUTRAIN_WORKER_MEMORY_BYTES)")


def memory_limiter(limit_bytes: int | None) -> Callable[[], None] | None:
    """A subprocess preexec_fn that caps the child's data memory (RLIMIT_DATA: heap and private
    mappings; unlike RLIMIT_AS it leaves CUDA's address-space reservations alone), so a trainer
    that outgrows its plan gets MemoryError instead of waking the kernel's OOM killer."""
    if not limit_bytes:
        return None

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (limit_bytes, limit_bytes))

    return limit

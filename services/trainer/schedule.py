"""Layer-wise lr decay (LLRD) parameter groups and the warmup + cosine lr schedule.

LLRD (BEiT/MAE convention, blocks numbered from 0, depth = number of blocks):
  patch/cls/register/position embeddings   base * decay^(depth + 1)
  block i                                  base * decay^(depth - i)   (last block: base * decay)
  backbone final norm                      base
  head (pooling + projection)              base * head_lr_multiplier
  ArcFace class centres                    base * arcface_lr_multiplier
The head is new and randomly initialised, so it gets `training.head_lr_multiplier` (config
default 10) on top of the base lr that the LLRD ladder ends at; the pretrained final norm stays at
base. Biases, norm weights, layer scales and the cls/register/mask/position tokens get no weight
decay, and neither does ArcFace's matrix (its columns are normalised before use, so decay would
only change their scale). Each tier is named ("embeddings", "block_03", "backbone_norm", "head",
"arcface"); a tier has up to two groups (with and without weight decay) sharing its name and lr,
so `{g["name"]: g["lr"]}` is the lr per tier.

Schedule, stepped per batch (`step` counts from 0, `total_steps` batches in the whole run):
  warmup, step < W:  lr = base * (step + 1) / W           (step W-1 reaches base)
  cosine, step >= W: lr = min + (base - min) * (1 + cos(pi * (step + 1 - W) / (T - W))) / 2
so the last step (T-1) runs at min_lr exactly and steps past the end stay there.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Iterable

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

_NO_DECAY_NAMES = ("cls_token", "register_tokens", "mask_token", "position_embeddings")


def _no_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim <= 1 or name.endswith(".bias") or name.split(".")[-1] in _NO_DECAY_NAMES


def _tier_groups(
    name: str, named: Iterable[tuple[str, nn.Parameter]], lr: float, weight_decay: float
) -> list[dict]:
    decay, no_decay = [], []
    for pname, param in named:
        if param.requires_grad:
            (no_decay if _no_decay(pname, param) else decay).append(param)
    groups = []
    if decay:
        groups.append({"name": name, "params": decay, "lr": lr, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"name": name, "params": no_decay, "lr": lr, "weight_decay": 0.0})
    return groups


def llrd_param_groups(
    model, *, base_lr: float, decay: float, weight_decay: float, head_lr_multiplier: float
) -> list[dict]:
    """Optimizer groups for an EmbeddingModel; every trainable parameter is in exactly one."""
    depth = len(model.blocks)
    groups = _tier_groups(
        "embeddings", model.embeddings.named_parameters(), base_lr * decay ** (depth + 1),
        weight_decay,
    )
    for i, block in enumerate(model.blocks):
        groups += _tier_groups(
            f"block_{i:02d}", block.named_parameters(), base_lr * decay ** (depth - i), weight_decay
        )
    groups += _tier_groups(
        "backbone_norm", model.final_norm.named_parameters(), base_lr, weight_decay
    )
    groups += _tier_groups(
        "head", model.head.named_parameters(), base_lr * head_lr_multiplier, weight_decay
    )
    seen = {id(p) for g in groups for p in g["params"]}
    missed = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missed:
        raise ValueError(f"parameters outside every LLRD tier: {missed[:5]}")
    return groups


def arcface_param_group(
    params: list[nn.Parameter], *, base_lr: float, multiplier: float
) -> list[dict]:
    """ArcFace's class centres in their own group (none when the run has no ArcFace)."""
    if not params:
        return []
    return [{"name": "arcface", "params": params, "lr": base_lr * multiplier, "weight_decay": 0.0}]


def lr_at(step: int, total_steps: int, warmup_steps: int, base: float, min_lr: float) -> float:
    """The learning rate of batch `step` (see the module docstring)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(
            f"warmup_steps must be in [0, total_steps), got {warmup_steps} of {total_steps}"
        )
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    progress = min(1.0, (step + 1 - warmup_steps) / (total_steps - warmup_steps))
    return min_lr + (base - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """`lr_at` as a multiple of the base lr, the form LambdaLR needs."""
    return lr_at(step, total_steps, warmup_steps, 1.0, min_ratio)


def build_scheduler(
    optimizer: Optimizer, *, total_steps: int, warmup_steps: int, min_ratio: float
) -> LambdaLR:
    """Per-batch LambdaLR: each group follows the schedule from its own base lr down to
    base * min_ratio (min_ratio = training.min_lr / training.learning_rate)."""
    fn = partial(lr_factor, total_steps=total_steps, warmup_steps=warmup_steps, min_ratio=min_ratio)
    return LambdaLR(optimizer, lr_lambda=fn)


def warmup_and_total_steps(
    epochs: int, warmup_epochs: float, steps_per_epoch: int
) -> tuple[int, int]:
    """(warmup_steps, total_steps) for a run of `epochs` with `steps_per_epoch` batches each."""
    total = epochs * steps_per_epoch
    return min(total - 1, round(warmup_epochs * steps_per_epoch)), total

"""Metric-learning losses chosen by name: ArcFace, Triplet (with a miner), domain alignment.

`EmbeddingLoss` returns every component separately (`arcface`, `triplet`, `domain`, `total`) so
the loss breakdown can be reported; a component that the run does not use is reported as 0.
Losses always run in float32 outside autocast: pytorch-metric-learning's ArcFace casts its
weight matrix to the embeddings' dtype, and fp16 weights would make GradScaler refuse to unscale
their gradients.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from torch import nn

COMPONENTS = ("arcface", "triplet", "domain", "total")
SYNTHETIC = "synthetic"

MINERS: dict[str, Callable[[float], nn.Module | None]] = {
    "batch_hard": lambda margin: pml_miners.BatchHardMiner(),
    "semihard": lambda margin: pml_miners.TripletMarginMiner(margin, type_of_triplets="semihard"),
    "hard": lambda margin: pml_miners.TripletMarginMiner(margin, type_of_triplets="hard"),
    "all": lambda margin: pml_miners.TripletMarginMiner(margin, type_of_triplets="all"),
    "none": lambda margin: None,
}


def domain_alignment_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, is_synthetic: torch.Tensor
) -> torch.Tensor:
    """Mean over labels of 1 - cos(synthetic centroid, non-synthetic centroid).

    Only labels with both synthetic and non-synthetic (real, cutout, augmented) images in the
    batch count; a batch with no such label gives 0 (with a graph, so backward still works).
    """
    _, label_idx = torch.unique(labels, return_inverse=True)
    n_labels = int(label_idx.max()) + 1 if labels.numel() else 0
    dim = embeddings.shape[1]
    centroids = embeddings.new_zeros(2, n_labels, dim)
    counts = embeddings.new_zeros(2, n_labels)
    domain_idx = (~is_synthetic).long()  # 0: synthetic, 1: the rest
    flat = domain_idx * n_labels + label_idx
    centroids.view(-1, dim).index_add_(0, flat, embeddings)
    counts.view(-1).index_add_(0, flat, torch.ones_like(flat, dtype=embeddings.dtype))
    both = (counts > 0).all(dim=0)
    if not bool(both.any()):
        return embeddings.sum() * 0.0
    cos = F.cosine_similarity(centroids[0, both], centroids[1, both], dim=-1)
    return (1.0 - cos).mean()


class EmbeddingLoss(nn.Module):
    """Weighted sum of the configured terms; `forward` returns every component and the total."""

    def __init__(
        self,
        *,
        arcface: nn.Module | None = None,
        triplet: nn.Module | None = None,
        miner: nn.Module | None = None,
        weights: dict[str, float],
    ):
        super().__init__()
        self.arcface = arcface
        self.triplet = triplet
        self.miner = miner
        self.weights = dict(weights)

    def arcface_parameters(self) -> list[nn.Parameter]:
        """The ArcFace class-centre matrix, for its own optimizer group."""
        return list(self.arcface.parameters()) if self.arcface is not None else []

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, domains: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        device_type = embeddings.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            embeddings = embeddings.float()
            zero = embeddings.sum() * 0.0
            parts = {"arcface": zero, "triplet": zero, "domain": zero}
            if self.arcface is not None:
                parts["arcface"] = self.arcface(embeddings, labels)
            if self.triplet is not None:
                pairs = self.miner(embeddings, labels) if self.miner is not None else None
                parts["triplet"] = self.triplet(embeddings, labels, pairs)
            if self.weights.get("domain", 0.0) > 0 and domains is not None:
                synthetic = torch.tensor(
                    [d == SYNTHETIC for d in domains], dtype=torch.bool, device=embeddings.device
                )
                parts["domain"] = domain_alignment_loss(embeddings, labels, synthetic)
            parts["total"] = sum(self.weights.get(name, 0.0) * parts[name] for name in parts)
        return parts


LOSS_TYPES: dict[str, tuple[str, ...]] = {
    "arcface": ("arcface",),
    "triplet": ("triplet",),
    "combined": ("arcface", "triplet"),
}


def build_loss(loss_config, *, num_classes: int, embedding_dim: int) -> EmbeddingLoss:
    """The loss a run's `loss` config names. ArcFace's margin is in degrees (pml convention);
    the domain term joins whenever `domain_weight` > 0."""
    terms = LOSS_TYPES[loss_config.type]
    arcface = triplet = miner = None
    if "arcface" in terms:
        arcface = pml_losses.ArcFaceLoss(
            num_classes, embedding_dim, margin=loss_config.arcface_margin_degrees,
            scale=loss_config.arcface_scale,
        )
    if "triplet" in terms:
        triplet = pml_losses.TripletMarginLoss(margin=loss_config.triplet_margin)
        miner = MINERS[loss_config.miner](loss_config.triplet_margin)
    weights = {
        "arcface": loss_config.arcface_weight if arcface is not None else 0.0,
        "triplet": loss_config.triplet_weight if triplet is not None else 0.0,
        "domain": loss_config.domain_weight,
    }
    return EmbeddingLoss(arcface=arcface, triplet=triplet, miner=miner, weights=weights)

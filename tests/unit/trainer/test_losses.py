"""losses.py: registry, domain alignment, one ArcFace + Triplet step under bf16 autocast."""
from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import miners

from services.trainer.config import LossConfig
from services.trainer.losses import COMPONENTS, build_loss, domain_alignment_loss
from services.trainer.model import EmbeddingModel, build_backbone


def unit(*rows):
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def test_domain_alignment_hand_cases():
    emb = unit([1, 0], [0, 1], [1, 0], [1, 0])
    labels = torch.tensor([0, 0, 1, 1])
    synthetic = torch.tensor([True, False, True, False])
    # label 0: centroids orthogonal (1 - 0); label 1: identical (1 - 1); mean 0.5
    assert domain_alignment_loss(emb, labels, synthetic).item() == pytest.approx(0.5)


def test_domain_alignment_is_zero_without_a_mixed_label():
    emb = unit([1, 0], [0, 1], [1, 1]).requires_grad_()
    loss = domain_alignment_loss(emb, torch.tensor([0, 0, 1]), torch.tensor([True, True, False]))
    assert loss.item() == 0.0
    loss.backward()
    assert emb.grad is not None


@pytest.mark.parametrize(
    "name, cls, kind",
    [
        ("batch_hard", miners.BatchHardMiner, None),
        ("semihard", miners.TripletMarginMiner, "semihard"),
        ("hard", miners.TripletMarginMiner, "hard"),
        ("all", miners.TripletMarginMiner, "all"),
    ],
)
def test_miner_by_config_name(name, cls, kind):
    loss = build_loss(LossConfig(miner=name), num_classes=3, embedding_dim=4)
    assert isinstance(loss.miner, cls)
    if kind:
        assert loss.miner.type_of_triplets == kind
    assert build_loss(LossConfig(miner="none"), num_classes=3, embedding_dim=4).miner is None


def test_arcface_margin_is_degrees_and_terms_follow_the_type():
    loss = build_loss(LossConfig(arcface_margin_degrees=28.6, arcface_scale=30), num_classes=3,
                      embedding_dim=4)
    assert loss.arcface.margin == pytest.approx(math.radians(28.6))
    assert loss.arcface.scale == 30
    triplet_only = build_loss(LossConfig(type="triplet"), num_classes=3, embedding_dim=4)
    assert triplet_only.arcface is None and triplet_only.arcface_parameters() == []
    assert build_loss(LossConfig(type="arcface"), num_classes=3, embedding_dim=4).triplet is None


def test_components_and_weighted_total():
    torch.manual_seed(0)
    cfg = LossConfig(arcface_weight=1.0, triplet_weight=0.5, domain_weight=0.1, miner="all")
    loss = build_loss(cfg, num_classes=4, embedding_dim=8)
    emb = torch.nn.functional.normalize(torch.randn(8, 8), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    parts = loss(emb, labels, ["synthetic", "real"] * 4)
    assert set(parts) == set(COMPONENTS)
    expect = parts["arcface"] + 0.5 * parts["triplet"] + 0.1 * parts["domain"]
    assert parts["total"].item() == pytest.approx(expect.item())
    assert parts["domain"].item() > 0


def test_one_step_under_bf16_autocast_on_cpu():
    torch.manual_seed(0)
    model = EmbeddingModel(build_backbone("tiny-dinov2"), embedding_dim=16)
    loss = build_loss(LossConfig(type="combined", miner="batch_hard"), num_classes=4,
                      embedding_dim=16)
    opt = torch.optim.AdamW([
        {"params": model.parameters(), "lr": 1e-3},
        {"params": loss.arcface_parameters(), "lr": 1e-2},
    ])
    before = loss.arcface.W.detach().clone()
    images = torch.randn(8, 3, 32, 32)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = model(images)
        parts = loss(emb, labels, ["synthetic", "real"] * 4)
    assert all(torch.isfinite(parts[c]) for c in COMPONENTS)
    assert parts["total"].dtype == torch.float32
    parts["total"].backward()
    opt.step()
    assert loss.arcface.W.dtype == torch.float32
    assert loss.arcface.W.grad.dtype == torch.float32
    assert not torch.equal(loss.arcface.W.detach(), before)

"""schedule.py: documented lr values, the LambdaLR builder, LLRD groups."""
from __future__ import annotations

import math

import pytest
import torch

from services.trainer.model import EmbeddingModel, build_backbone
from services.trainer.schedule import (
    arcface_param_group,
    build_scheduler,
    llrd_param_groups,
    lr_at,
    warmup_and_total_steps,
)

BASE, MIN = 1e-3, 1e-5


def test_lr_at_documented_steps():
    # 10 warmup steps, 110 in all: cosine over the last 100.
    assert lr_at(0, 110, 10, BASE, MIN) == pytest.approx(1e-4)  # first batch: base / W
    assert lr_at(9, 110, 10, BASE, MIN) == pytest.approx(BASE)  # end of warmup
    assert lr_at(59, 110, 10, BASE, MIN) == pytest.approx((BASE + MIN) / 2)  # half-way cosine
    assert lr_at(109, 110, 10, BASE, MIN) == pytest.approx(MIN)  # last step
    assert lr_at(500, 110, 10, BASE, MIN) == pytest.approx(MIN)  # past the end
    quarter = MIN + (BASE - MIN) * 0.5 * (1 + math.cos(math.pi / 4))
    assert lr_at(34, 110, 10, BASE, MIN) == pytest.approx(quarter)


def test_no_warmup_starts_cosine_at_once():
    assert lr_at(0, 4, 0, 1.0, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(3, 4, 0, 1.0, 0.0) == pytest.approx(0.0)


def test_invalid_schedules_raise():
    with pytest.raises(ValueError):
        lr_at(0, 10, 10, BASE, MIN)
    with pytest.raises(ValueError):
        lr_at(0, 0, 0, BASE, MIN)


def test_warmup_and_total_steps():
    assert warmup_and_total_steps(10, 1.5, 20) == (30, 200)
    assert warmup_and_total_steps(2, 0.0, 3) == (0, 6)


def test_scheduler_keeps_each_groups_base_and_min_ratio():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.1}], lr=1.0)
    sched = build_scheduler(opt, total_steps=6, warmup_steps=2, min_ratio=0.01)
    seen = []
    for _ in range(6):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx([0.5, 0.05])
    assert seen[1] == pytest.approx([1.0, 0.1])
    assert seen[5] == pytest.approx([0.01, 0.001])
    for step, (lr_a, lr_b) in enumerate(seen):
        assert lr_a == pytest.approx(lr_at(step, 6, 2, 1.0, 0.01))
        assert lr_b == pytest.approx(lr_at(step, 6, 2, 0.1, 0.001))


def test_llrd_groups_follow_the_documented_ladder():
    model = EmbeddingModel(build_backbone("tiny-dinov3"), embedding_dim=8, pooling="gem")
    groups = llrd_param_groups(model, base_lr=1.0, decay=0.5, weight_decay=0.05,
                               head_lr_multiplier=10)
    arcface = [torch.nn.Parameter(torch.zeros(8, 3))]
    groups += arcface_param_group(arcface, base_lr=1.0, multiplier=4)
    lr = {g["name"]: g["lr"] for g in groups}
    depth = 3
    assert lr == {
        "embeddings": 0.5 ** (depth + 1),
        "block_00": 0.5 ** 3,
        "block_01": 0.5 ** 2,
        "block_02": 0.5 ** 1,
        "backbone_norm": 1.0,
        "head": 10.0,
        "arcface": 4.0,
    }
    params = [p for g in groups[:-1] for p in g["params"]]
    assert len(params) == len({id(p) for p in params}) == len(list(model.parameters()))
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    for name, p in model.named_parameters():
        expect = p.ndim <= 1 or name.endswith(("cls_token", "register_tokens", "mask_token"))
        assert (id(p) in no_decay) == expect, name
    assert groups[-1]["weight_decay"] == 0.0

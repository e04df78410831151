"""Shared fixtures for trainer unit tests: a synthetic image dataset and tiny run configs."""
from __future__ import annotations

import pytest
import torch

from services.trainer.config import RunConfig

DOMAINS = ("synthetic", "real", "cutout")


class TensorItems:
    """Random images around one prototype per label; follows engine.ItemDataset."""

    def __init__(self, n_labels: int, per_label: int, *, size: int = 32, seed: int = 0,
                 noise: float = 0.5):
        g = torch.Generator().manual_seed(seed)
        protos = torch.randn(n_labels, 3, size, size, generator=g)
        n = n_labels * per_label
        self.images = protos.repeat_interleave(per_label, 0) + noise * torch.randn(
            n, 3, size, size, generator=g
        )
        self.labels = [i // per_label for i in range(n)]
        self.domains = [DOMAINS[i % len(DOMAINS)] for i in range(n)]
        self.categories = [f"cat{label % 3}" for label in self.labels]
        self.label_names = [f"product-{label}" for label in range(n_labels)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index], self.domains[index]


def tiny_config(**training) -> RunConfig:
    return RunConfig.model_validate(
        {
            "model": "tiny-dinov2",
            "training": {
                "epochs": 2, "batch_size": 8, "image_size": 32, "embedding_dim": 16,
                "learning_rate": 1e-3, "min_lr": 1e-5, "warmup_epochs": 0.5, "num_workers": 0,
                "llrd_decay": 0.8, **training,
            },
            "sampler": {"p": 4, "k": 2},
            "checkpoint": {"max_object_bytes": 1_000_000},
            "evaluation": {"k_values": [1, 5], "hard_cases": 3},
        }
    )


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine each op's
    thread barrier waits for a descheduled core: one thread keeps these tests fast and steady."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_items():
    return TensorItems


@pytest.fixture
def make_config():
    return tiny_config

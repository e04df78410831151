"""Batch plans: P-K sampling (P labels x K images) or plain random batches.

A plan is a pure function of (labels, settings, seed, epoch) -> list of batches of dataset
indices, so an epoch's batches can be recomputed exactly on resume. `ResumableBatchSampler`
feeds a plan to a torch DataLoader starting at a saved position.

P-K rules: every batch holds exactly P distinct labels x K images. Labels are visited in
shuffled rounds so each appears about equally often. A label with fewer than K images gives all
of them once and fills the rest by drawing its images again (with replacement). An epoch has
round(len(labels) / (P*K)) batches (at least one), so one epoch sees about as many images as the
dataset holds. With `domains`, a label's K images alternate between its domains as evenly as its
images allow (domain balance). Impossible settings raise ValueError saying why.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Hashable, Sequence

import numpy as np
from torch.utils.data import Sampler


def _rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch])


def _interleave_domains(
    indices: list[int], domains: Sequence[str], rng: np.random.Generator
) -> list[int]:
    """The label's indices shuffled, ordered round-robin over its domains (random domain order)."""
    by_domain: dict[str, list[int]] = defaultdict(list)
    for i in indices:
        by_domain[domains[i]].append(i)
    queues = [list(rng.permutation(by_domain[d])) for d in sorted(by_domain)]
    queues = [queues[j] for j in rng.permutation(len(queues))]
    order: list[int] = []
    while any(queues):
        for q in queues:
            if q:
                order.append(int(q.pop(0)))
    return order


def _pick(
    indices: list[int], k: int, rng: np.random.Generator, domains: Sequence[str] | None
) -> list[int]:
    if domains is None:
        order = [int(i) for i in rng.permutation(indices)]
    else:
        order = _interleave_domains(indices, domains, rng)
    if k <= len(order):
        return order[:k]
    # Fewer images than K: all of them once, then draws with replacement, keeping the
    # domain alternation by cycling through the interleaved order from a random offset.
    extra = k - len(order)
    if domains is None:
        return order + [int(i) for i in rng.choice(order, size=extra, replace=True)]
    start = int(rng.integers(len(order)))
    return order + [order[(start + j) % len(order)] for j in range(extra)]


def pk_batches(
    labels: Sequence[Hashable],
    p: int,
    k: int,
    *,
    seed: int,
    epoch: int,
    domains: Sequence[str] | None = None,
) -> list[list[int]]:
    """One epoch's P-K batches over `labels` (one label per dataset item)."""
    if p < 1 or k < 1:
        raise ValueError(f"P-K sampling needs p >= 1 and k >= 1, got p={p}, k={k}")
    if len(labels) == 0:
        raise ValueError("P-K sampling needs a non-empty dataset")
    if domains is not None and len(domains) != len(labels):
        raise ValueError(f"got {len(domains)} domains for {len(labels)} labels")
    by_label: dict[Hashable, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_label[label].append(i)
    label_list = sorted(by_label, key=repr)
    if len(label_list) < p:
        raise ValueError(
            f"P-K sampling needs at least p={p} labels per batch but the data has only "
            f"{len(label_list)}: lower sampler.p or add products"
        )
    rng = _rng(seed, epoch)
    num_batches = max(1, round(len(labels) / (p * k)))
    queue: list[Hashable] = []
    batches: list[list[int]] = []
    for _ in range(num_batches):
        chosen: list[Hashable] = []
        while len(chosen) < p:
            if not queue:
                queue = [label_list[j] for j in rng.permutation(len(label_list))]
            # Take the first queued label not already in this batch (rounds may straddle).
            pos = next((j for j, lab in enumerate(queue) if lab not in chosen), None)
            if pos is None:
                queue += [label_list[j] for j in rng.permutation(len(label_list))]
                continue
            chosen.append(queue.pop(pos))
        batch: list[int] = []
        for label in chosen:
            batch.extend(_pick(by_label[label], k, rng, domains))
        batches.append(batch)
    return batches


def random_batches(num_items: int, batch_size: int, *, seed: int, epoch: int) -> list[list[int]]:
    """A shuffled permutation cut into full batches (the incomplete last batch is dropped)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_items < batch_size:
        raise ValueError(
            f"random batches of {batch_size} need at least {batch_size} images, got {num_items}"
        )
    order = _rng(seed, epoch).permutation(num_items)
    n = num_items // batch_size
    return [[int(i) for i in order[b * batch_size:(b + 1) * batch_size]] for b in range(n)]


def batch_plan(
    sampler_config,
    batch_size: int,
    labels: Sequence[Hashable],
    *,
    seed: int,
    epoch: int,
    domains: Sequence[str] | None = None,
) -> list[list[int]]:
    """The batches a run's `sampler` config gives for one epoch."""
    if sampler_config.type == "random":
        return random_batches(len(labels), batch_size, seed=seed, epoch=epoch)
    p, k = sampler_config.p, sampler_config.k
    if p * k != batch_size:
        raise ValueError(
            f"P-K batches hold p*k={p}*{k}={p * k} images, not batch_size {batch_size}"
        )
    return pk_batches(
        labels, p, k, seed=seed, epoch=epoch,
        domains=domains if sampler_config.domain_balance else None,
    )


class ResumableBatchSampler(Sampler[list[int]]):
    """Yields `plan(epoch)` from `position` on; its state is (epoch, position).

    The training loop calls `advance()` after each batch it has *finished*, so the state stays
    exact even though a DataLoader's workers fetch batches ahead, and `next_epoch()` when an
    epoch ends. A sampler restored with `load_state_dict` yields exactly the remaining batches.
    """

    def __init__(
        self, plan: Callable[[int], list[list[int]]], *, epoch: int = 0, position: int = 0
    ):
        self._plan = plan
        self._cache: tuple[int, list[list[int]]] | None = None
        self.epoch = epoch
        self.position = position

    def batches(self) -> list[list[int]]:
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self._plan(self.epoch))
        return self._cache[1]

    def __len__(self) -> int:
        return len(self.batches()) - self.position

    def __iter__(self):
        yield from self.batches()[self.position:]

    def advance(self, n: int = 1) -> None:
        self.position += n

    def next_epoch(self) -> None:
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

"""sampler.py: P-K plans, random plans, domain balance, the resumable batch sampler."""
from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.trainer.config import SamplerConfig
from services.trainer.sampler import ResumableBatchSampler, batch_plan, pk_batches, random_batches


def _labels(counts: list[int]) -> list[int]:
    return [label for label, n in enumerate(counts) for _ in range(n)]


def test_every_batch_is_p_distinct_labels_times_k():
    labels = _labels([5, 4, 6, 3, 8, 4, 2, 4])
    plan = pk_batches(labels, 4, 3, seed=1, epoch=0)
    assert len(plan) == round(len(labels) / 12)
    for batch in plan:
        assert len(batch) == 12
        per_label = Counter(labels[i] for i in batch)
        assert len(per_label) == 4 and set(per_label.values()) == {3}


def test_k_larger_than_a_labels_images_draws_with_replacement():
    labels = _labels([2, 2, 2, 2])
    plan = pk_batches(labels, 2, 5, seed=0, epoch=0)
    for batch in plan:
        for label in {labels[i] for i in batch}:
            picked = [i for i in batch if labels[i] == label]
            assert len(picked) == 5 and set(picked) == {2 * label, 2 * label + 1}


def test_plans_are_deterministic_per_seed_and_epoch():
    labels = _labels([4] * 10)
    assert pk_batches(labels, 4, 2, seed=3, epoch=1) == pk_batches(labels, 4, 2, seed=3, epoch=1)
    assert pk_batches(labels, 4, 2, seed=3, epoch=1) != pk_batches(labels, 4, 2, seed=3, epoch=2)


def test_labels_are_visited_evenly():
    labels = _labels([3] * 12)
    counts = Counter()
    for epoch in range(10):
        for batch in pk_batches(labels, 4, 3, seed=0, epoch=epoch):
            counts.update({labels[i] for i in batch})
    assert max(counts.values()) - min(counts.values()) <= 1


def test_domain_balance_alternates_domains_within_a_label():
    labels = [0] * 6 + [1] * 6
    domains = ["synthetic"] * 4 + ["real"] * 2 + ["real"] * 3 + ["synthetic"] * 3
    plan = pk_batches(labels, 2, 4, seed=0, epoch=0, domains=domains)
    for batch in plan:
        for label in (0, 1):
            got = Counter(domains[i] for i in batch if labels[i] == label)
            assert got == {"synthetic": 2, "real": 2}


@pytest.mark.parametrize(
    "labels, p, k, message",
    [
        ([], 2, 2, "non-empty"),
        ([0, 0, 1, 1], 3, 2, "at least p=3 labels"),
        ([0, 1], 0, 2, "p >= 1"),
    ],
)
def test_impossible_settings_raise_value_error_saying_why(labels, p, k, message):
    with pytest.raises(ValueError, match=message):
        pk_batches(labels, p, k, seed=0, epoch=0)


def test_batch_size_must_match_p_times_k():
    with pytest.raises(ValueError, match="p\\*k"):
        batch_plan(SamplerConfig(p=4, k=2), 10, _labels([2] * 6), seed=0, epoch=0)


def test_random_plan_drops_the_incomplete_batch():
    plan = batch_plan(SamplerConfig(type="random"), 4, list(range(10)), seed=0, epoch=0)
    assert [len(b) for b in plan] == [4, 4]
    assert len({i for b in plan for i in b}) == 8
    with pytest.raises(ValueError, match="at least 4"):
        random_batches(3, 4, seed=0, epoch=0)


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(1, 7), min_size=2, max_size=12),
    p=st.integers(1, 4),
    k=st.integers(1, 5),
    seed=st.integers(0, 1000),
)
def test_pk_property(counts, p, k, seed):
    labels = _labels(counts)
    if len(counts) < p:
        with pytest.raises(ValueError):
            pk_batches(labels, p, k, seed=seed, epoch=0)
        return
    plan = pk_batches(labels, p, k, seed=seed, epoch=0)
    assert len(plan) == max(1, round(len(labels) / (p * k)))
    for batch in plan:
        assert len(batch) == p * k
        assert all(0 <= i < len(labels) for i in batch)
        assert sorted(Counter(labels[i] for i in batch).values()) == [k] * p


def test_resumable_sampler_continues_exactly():
    labels = _labels([3] * 8)

    def plan(epoch):
        return pk_batches(labels, 2, 3, seed=5, epoch=epoch)

    straight = ResumableBatchSampler(plan, epoch=1)
    first = list(straight)
    interrupted = ResumableBatchSampler(plan, epoch=1)
    taken = []
    for batch in interrupted:
        taken.append(batch)
        interrupted.advance()
        if len(taken) == 2:
            break
    resumed = ResumableBatchSampler(plan)
    resumed.load_state_dict(interrupted.state_dict())
    assert resumed.state_dict() == {"epoch": 1, "position": 2}
    assert len(resumed) == len(first) - 2
    assert taken + list(resumed) == first
    resumed.next_epoch()
    assert resumed.state_dict() == {"epoch": 2, "position": 0} and list(resumed) == plan(2)

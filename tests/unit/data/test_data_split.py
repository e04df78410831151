import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import InsufficientImages, InsufficientProducts
from services.trainer.config import RunConfig
from services.trainer.data.manifest import ImageRecord
from services.trainer.data.split import (
    check_minimums,
    filter_min_samples,
    split_by_label,
    split_for_run,
    split_sizes,
    summarize_splits,
)

RATIOS = [(0.7, 0.15, 0.15), (0.8, 0.1, 0.1), (0.6, 0.2, 0.2), (0.5, 0.25, 0.25),
          (0.34, 0.33, 0.33), (0.9, 0.05, 0.05)]


def make_records(images_per_product: list[int], labels_per_product: int = 1) -> list[ImageRecord]:
    """Product p has images_per_product[p] images; its label groups `labels_per_product`."""
    records = []
    for pid, n in enumerate(images_per_product):
        for i in range(n):
            records.append(
                ImageRecord(
                    product_id=pid,
                    url=f"https://img/{pid}/{i}.png",
                    domain=("synthetic", "real", "augmented", "cutout")[i % 4],
                    frame_index=i if i % 4 == 0 else None,
                    category=f"c{pid % 3}",
                    brand=f"b{pid % 5}",
                    label=str(pid // labels_per_product),
                    source_key=None,
                )
            )
    return records


catalogs = st.lists(st.integers(min_value=1, max_value=8), min_size=0, max_size=60)


@settings(max_examples=300, deadline=None)
@given(
    sizes=catalogs,
    group=st.integers(1, 3),
    ratios=st.sampled_from(RATIOS),
    seed=st.integers(0, 2**31),
    min_samples=st.integers(1, 4),
)
def test_split_properties(sizes, group, ratios, seed, min_samples):
    records = filter_min_samples(make_records(sizes, group), min_samples)
    label_counts = Counter(r.label for r in records)
    assert all(c >= min_samples for c in label_counts.values())

    splits = split_by_label(records, train_ratio=ratios[0], val_ratio=ratios[1],
                            test_ratio=ratios[2], seed=seed)

    # every record lands in exactly one split, and no label is in two splits
    assert sorted(r.url for s in splits.values() for r in s) == sorted(r.url for r in records)
    label_sets = [{r.label for r in splits[name]} for name in ("train", "val", "test")]
    assert sum(len(s) for s in label_sets) == len(label_counts)
    # the filter came first: a label in a split keeps all its images there
    for name, split in splits.items():
        assert Counter(r.label for r in split) == {l: label_counts[l] for l in label_sets[
            ("train", "val", "test").index(name)]}

    # sizes follow the ratios, counted in labels
    n = len(label_counts)
    quotas = [n * r for r in ratios]
    got = [len(s) for s in label_sets]
    if all(q >= 1 for q in quotas):
        assert all(abs(g - q) < 1 for g, q in zip(got, quotas))
    elif n >= 3:
        assert all(g >= 1 for g in got)
        assert all(abs(g - q) < 3 for g, q in zip(got, quotas))
    else:
        assert all(abs(g - q) < 1 for g, q in zip(got, quotas))

    # deterministic per seed, whatever the input order
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    assert split_by_label(shuffled, train_ratio=ratios[0], val_ratio=ratios[1],
                          test_ratio=ratios[2], seed=seed) == splits


@pytest.mark.parametrize(
    ("n", "ratios", "expected"),
    [
        (10, (0.7, 0.15, 0.15), [7, 2, 1]),
        (20, (0.7, 0.15, 0.15), [14, 3, 3]),
        (50, (0.7, 0.15, 0.15), [35, 8, 7]),
        (4, (0.7, 0.15, 0.15), [2, 1, 1]),
        (3, (0.9, 0.05, 0.05), [1, 1, 1]),
        (2, (0.7, 0.15, 0.15), [2, 0, 0]),
        (0, (0.7, 0.15, 0.15), [0, 0, 0]),
    ],
)
def test_split_sizes_worked_by_hand(n, ratios, expected):
    assert split_sizes(n, ratios) == expected


def test_seed_changes_the_split():
    records = make_records([3] * 40)
    a = split_by_label(records, seed=1)
    b = split_by_label(records, seed=2)
    assert {r.label for r in a["test"]} != {r.label for r in b["test"]}


def test_filter_min_samples():
    records = make_records([1, 2, 3])
    assert {r.label for r in filter_min_samples(records, 2)} == {"1", "2"}
    assert filter_min_samples(records, 1) == records


def test_check_minimums_raises_with_counts():
    with pytest.raises(InsufficientProducts) as err:
        check_minimums(make_records([20] * 9))
    assert "only 9 products" in err.value.message
    assert err.value.details == {"products": 9, "images": 180, "min_products": 10,
                                 "min_images": 100}
    assert err.value.code == "insufficient_products"
    with pytest.raises(InsufficientImages) as err:
        check_minimums(make_records([9] * 11))
    assert "only 99 usable images across 11 products" in err.value.message
    assert err.value.details["images"] == 99
    check_minimums(make_records([10] * 10))


def test_split_for_run_filters_checks_then_splits():
    config = RunConfig.model_validate(
        {"label_config": {"min_samples_per_class": 3}, "split": {"seed": 7}}
    )
    records = make_records([2] * 5 + [10] * 20)  # five labels with too few images
    splits = split_for_run(records, config)
    assert splits == split_by_label(filter_min_samples(records, 3), seed=7)
    assert [len({r.label for r in s}) for s in splits.values()] == [14, 3, 3]
    with pytest.raises(InsufficientProducts):  # 10 products, but only 9 keep enough images
        split_for_run(make_records([2] + [20] * 9), config)


def test_summary_counts_domains_products_and_labels():
    records = make_records([4] * 10 + [8] * 10, labels_per_product=2)
    summary = summarize_splits(split_by_label(records, seed=0))
    assert summary["images"] == 120
    assert summary["domains"] == {"augmented": 30, "cutout": 30, "real": 30, "synthetic": 30}
    assert sum(s["labels"] for s in summary["splits"].values()) == 10
    assert sum(s["products"] for s in summary["splits"].values()) == 20
    train = summary["splits"]["train"]
    assert train["labels"] == 7 and train["products"] == 14
    assert sum(train["images_per_domain"].values()) == train["images"]
    assert train["images_per_label"]["min"] >= 8 and train["images_per_label"]["max"] <= 16


def test_train_labels_below_p_is_insufficient_labels_with_numbers():
    from services.common.errors import InsufficientLabels
    from services.trainer.data.split import check_train_labels

    config = RunConfig.model_validate({"sampler": {"p": 8, "k": 4}, "training": {"batch_size": 32}})
    check_train_labels(config, 8, "exactly p")
    with pytest.raises(InsufficientLabels) as err:
        check_train_labels(config, 7, "after downloading")
    assert err.value.code == "insufficient_labels"
    assert "7 labels (after downloading)" in err.value.message and "sampler.p is 8" in err.value.message
    assert err.value.details == {"train_labels": 7, "p": 8}

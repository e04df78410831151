"""metrics.py against hand-worked perfect / imperfect / worst-case fixtures."""
from __future__ import annotations

import math

import pytest
import torch

from services.trainer.metrics import (
    calc_ap,
    calc_cmc,
    calc_map_at_r,
    cross_domain,
    evaluate_embeddings,
    most_confused_pairs,
    per_category_metrics,
    rank_and_score,
    summarize,
    worst_labels,
)


def at(*degrees: float) -> torch.Tensor:
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1).float()


def test_ap_divides_by_the_number_of_relevant_items():
    hits = torch.tensor([[True, False, False, False, False]])
    assert calc_ap(hits, torch.tensor([3])).item() == pytest.approx(1 / 3)
    assert calc_map_at_r(hits, torch.tensor([3])).item() == pytest.approx(1 / 3)


def test_cmc_ap_and_ap_at_r_hand_case():
    hits = torch.tensor([[False, True, False, True, False]])
    n_rel = torch.tensor([2])
    cmc = calc_cmc(hits, [1, 2, 5])
    assert [cmc[k].item() for k in (1, 2, 5)] == [0.0, 1.0, 1.0]
    assert calc_ap(hits, n_rel).item() == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert calc_map_at_r(hits, n_rel).item() == pytest.approx((1 / 2) / 2)
    assert calc_ap(hits[:, :0], torch.tensor([0])).item() == 0.0


def test_imperfect_query_gallery_with_an_unmatched_query_counted():
    gallery = at(10, 20, 30, 40, 50)
    gallery_labels = ["B", "A", "B", "A", "C"]
    queries = at(0, 50, 90)
    res = rank_and_score(queries, ["A", "C", "D"], gallery, gallery_labels, k_values=[1, 2, 5])
    assert res.recall[1].tolist() == [0.0, 1.0, 0.0]
    assert res.recall[2].tolist() == [1.0, 1.0, 0.0]
    assert res.ap.tolist() == pytest.approx([0.5, 1.0, 0.0])
    assert res.ap_at_r.tolist() == pytest.approx([0.25, 1.0, 0.0])
    assert res.top1.tolist() == [0, 4, 4]
    summary = summarize(res)
    assert summary["recall@1"] == pytest.approx(1 / 3)
    assert summary["map"] == pytest.approx(0.5)
    assert summary["num_queries"] == 3 and summary["queries_without_relevant"] == 1


def test_perfect_leave_one_out():
    emb = at(0, 1, 2, 90, 91, 92)
    res = rank_and_score(emb, [0, 0, 0, 1, 1, 1], emb, [0, 0, 0, 1, 1, 1], k_values=[1, 5],
                         leave_one_out=True)
    s = summarize(res)
    assert (s["recall@1"], s["recall@5"], s["map"], s["map@r"]) == (1.0, 1.0, 1.0, 1.0)


def test_worst_case_relevant_items_ranked_last():
    emb = at(0, 180, 1, 181)
    labels = ["A", "A", "B", "B"]
    res = rank_and_score(emb, labels, emb, labels, k_values=[1, 2], leave_one_out=True)
    assert res.recall[1].tolist() == [0.0] * 4
    assert res.recall[2].tolist() == [0.0] * 4
    assert res.ap.tolist() == pytest.approx([1 / 3] * 4)


def test_leave_one_out_never_retrieves_the_query_itself():
    emb = torch.ones(4, 2)  # all tied: without exclusion item i would rank itself first
    res = rank_and_score(emb, [0, 1, 0, 1], emb, [0, 1, 0, 1], k_values=[1], leave_one_out=True)
    assert all(top != i for i, top in enumerate(res.top1.tolist()))
    assert res.n_relevant.tolist() == [1, 1, 1, 1]


def test_same_source_items_are_excluded():
    emb = at(0, 0.5, 30, 90)
    labels = ["A", "A", "A", "B"]
    sources = ["photo1", "photo1", "photo2", "photo3"]
    res = rank_and_score(emb, labels, emb, labels, k_values=[1], leave_one_out=True,
                         query_sources=sources, gallery_sources=sources)
    assert res.top1.tolist()[:2] == [2, 2]
    assert res.n_relevant.tolist() == [1, 1, 2, 0]


def test_chunked_ranking_matches_one_chunk():
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(37, 8), dim=1)
    labels = torch.randint(0, 5, (37,))
    a = rank_and_score(emb, labels, emb, labels, k_values=[1, 5], leave_one_out=True,
                       memory_budget=1)
    b = rank_and_score(emb, labels, emb, labels, k_values=[1, 5], leave_one_out=True)
    assert summarize(a) == summarize(b)
    assert torch.equal(a.top1, b.top1)


def test_cross_domain_uses_domain_strings():
    emb = at(0, 2, 90, 92, 45)
    labels = [7, 7, 8, 8, 8]
    domains = ["synthetic", "real", "synthetic", "cutout", "augmented"]
    out = cross_domain(emb, labels, domains, k_values=[1])
    assert out["real_to_synth"]["num_queries"] == 3
    assert out["synth_to_real"]["num_queries"] == 2
    assert out["synth_to_real"]["recall@1"] == 1.0
    # the augmented item at 45 degrees is equidistant; ties go to the earlier gallery item (7)
    assert out["real_to_synth"]["recall@1"] == pytest.approx(2 / 3)


def test_cross_domain_without_synthetic_images():
    out = cross_domain(at(0, 1), ["A", "A"], ["real", "real"], k_values=[1])
    # real queries are counted with nothing to find; no synthetic queries at all -> None
    assert out["real_to_synth"]["recall@1"] == 0.0
    assert out["real_to_synth"]["queries_without_relevant"] == 2
    assert out["synth_to_real"]["num_queries"] == 0
    assert out["synth_to_real"]["recall@1"] is None


def test_per_category_count_weighted_mean_is_overall_recall():
    torch.manual_seed(1)
    emb = torch.nn.functional.normalize(torch.randn(60, 4), dim=1)
    labels = torch.randint(0, 12, (60,)).tolist()
    categories = [["drinks", "snacks", None][label % 3] for label in labels]
    out = evaluate_embeddings(emb, labels, k_values=[1, 5], categories=categories, hard_cases=0)
    per = out["per_category"]
    assert set(per) == {"drinks", "snacks", "unknown"}
    total = sum(c["count"] for c in per.values())
    weighted = sum(c["recall@1"] * c["count"] for c in per.values()) / total
    assert weighted == pytest.approx(out["overall"]["recall@1"])


def test_per_category_hand_case():
    emb = at(0, 1, 46, 91, 45)
    res = rank_and_score(emb, ["a", "a", "b", "c", "b"], emb, ["a", "a", "b", "c", "b"],
                         k_values=[1], leave_one_out=True)
    per = per_category_metrics(res, ["x", "x", "y", "y", None])
    assert {c: (v["recall@1"], v["count"]) for c, v in per.items()} == {
        "x": (1.0, 2), "y": (0.5, 2), "unknown": (1.0, 1)}
    assert per["y"]["queries_without_relevant"] == 1


def test_hard_cases_hand_case():
    recall = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0])
    labels = ["a", "a", "b", "b", "c"]
    assert worst_labels(recall, labels, 2) == [
        {"label": "b", "recall@1": 0.0, "count": 2},
        {"label": "a", "recall@1": 0.5, "count": 2},
    ]
    pairs = most_confused_pairs(["a", "b", "b", "c", "a"], ["a", "a", "c", "b", None], 5)
    assert pairs == [{"labels": ["b", "c"], "count": 2}, {"labels": ["a", "b"], "count": 1}]


def test_evaluate_embeddings_reports_every_section():
    emb = at(0, 1, 90, 91, 180, 181)
    labels = ["p1", "p1", "p2", "p2", "p3", "p3"]
    domains = ["synthetic", "real"] * 3
    out = evaluate_embeddings(emb, labels, k_values=[5], domains=domains,
                              categories=["c"] * 6, hard_cases=2)
    assert out["overall"]["recall@1"] == 1.0 and "recall@5" in out["overall"]
    assert out["cross_domain"]["real_to_synth"]["recall@1"] == 1.0
    assert out["per_category"]["c"]["recall@1"] == 1.0 and out["per_category"]["c"]["count"] == 6
    assert len(out["worst_products"]) == 2 and out["most_confused_pairs"] == []
    assert set(out["domain_pairs"]) == {"real->synthetic", "synthetic->real"}

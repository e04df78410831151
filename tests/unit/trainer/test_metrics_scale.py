"""rank_and_score at scale: against a brute-force full-sort reference (sizes, ties, queries
without matches, exclusions), chunked == unchunked for any memory budget, and against
pytorch-metric-learning's AccuracyCalculator where the definitions coincide."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from services.trainer.metrics import evaluate_embeddings, rank_and_score, summarize

K_VALUES = (1, 5, 10)


def brute_force(q, ql, g, gl, *, leave_one_out=False, qs=None, gs=None):
    """Per query: sort the whole gallery (stable, descending), drop exclusions, score."""
    sims = (q.double() @ g.double().T).numpy()
    recall = {k: [] for k in K_VALUES}
    ap, ap_r, top1 = [], [], []
    for i in range(len(ql)):
        order = np.argsort(-sims[i], kind="stable")
        keep = [j for j in order if not (leave_one_out and j == i)
                and not (qs is not None and qs[i] == gs[j])]
        hits = np.array([gl[j] == ql[i] for j in keep], dtype=bool)
        r = int(hits.sum())
        for k in K_VALUES:
            recall[k].append(float(hits[:k].any()))
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        ap.append(float((precision * hits).sum() / r) if r else 0.0)
        ap_r.append(float((precision * hits)[:r].sum() / r) if r else 0.0)
        top1.append(keep[0] if keep else -1)
    return recall, ap, ap_r, top1


def assert_matches(res, reference):
    recall, ap, ap_r, top1 = reference
    for k in K_VALUES:
        assert res.recall[k].tolist() == recall[k], k
    assert res.ap.tolist() == pytest.approx(ap, abs=1e-5)
    assert res.ap_at_r.tolist() == pytest.approx(ap_r, abs=1e-5)
    assert res.top1.tolist() == top1


def random_set(n, dim, n_labels, seed, *, quantized=False):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, n_labels, (n,), generator=g).tolist()
    if quantized:  # small integer vectors: exact dot products in any summation order, so
        # many scores tie exactly however the work is chunked
        return torch.randint(-1, 2, (n, dim), generator=g).float(), labels
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1), labels


@pytest.mark.parametrize("n_query,n_gallery,n_labels,quantized", [
    (1, 1, 1, False), (7, 30, 4, False), (50, 300, 12, False), (40, 500, 200, False),
    (60, 400, 8, True), (33, 90, 5, True),
])
def test_query_gallery_matches_brute_force(n_query, n_gallery, n_labels, quantized):
    q, ql = random_set(n_query, 6, n_labels, seed=n_query, quantized=quantized)
    g, gl = random_set(n_gallery, 6, n_labels, seed=n_gallery + 1, quantized=quantized)
    ql = [label + (1000 if i % 5 == 4 else 0) for i, label in enumerate(ql)]  # without matches
    res = rank_and_score(q, ql, g, gl, k_values=K_VALUES)
    assert_matches(res, brute_force(q, ql, g, gl))
    assert int((res.n_relevant == 0).sum()) >= n_query // 5


@pytest.mark.parametrize("n,quantized", [(120, False), (300, True), (700, False)])
def test_leave_one_out_with_sources_matches_brute_force(n, quantized):
    emb, labels = random_set(n, 5, n // 6, seed=n, quantized=quantized)
    sources = [f"s{i // 3}" for i in range(n)]
    res = rank_and_score(emb, labels, emb, labels, k_values=K_VALUES, leave_one_out=True,
                         query_sources=sources, gallery_sources=sources)
    assert_matches(res, brute_force(emb, labels, emb, labels, leave_one_out=True,
                                    qs=sources, gs=sources))


def test_clustered_data_is_scored_from_the_shortlist_exactly():
    """Relevant items near the top (a trained model): the shortlist covers every query."""
    g = torch.Generator().manual_seed(5)
    protos = torch.randn(40, 16, generator=g)
    labels = [i // 10 for i in range(400)]
    emb = torch.nn.functional.normalize(protos[labels] + 0.3 * torch.randn(400, 16, generator=g))
    res = rank_and_score(emb, labels, emb, labels, k_values=K_VALUES, leave_one_out=True)
    assert_matches(res, brute_force(emb, labels, emb, labels, leave_one_out=True))


@pytest.mark.parametrize("budget", [1, 4_000, 50_000, 1 << 20, 1 << 40])
def test_chunked_equals_unchunked_for_any_budget(budget):
    emb, labels = random_set(257, 8, 20, seed=11, quantized=True)
    sources = [i // 4 for i in range(257)]
    whole = rank_and_score(emb, labels, emb, labels, leave_one_out=True, query_sources=sources,
                           gallery_sources=sources, memory_budget=1 << 40)
    chunked = rank_and_score(emb, labels, emb, labels, leave_one_out=True, query_sources=sources,
                             gallery_sources=sources, memory_budget=budget)
    for k in K_VALUES:
        assert torch.equal(whole.recall[k], chunked.recall[k])
    for name in ("n_relevant", "topk", "first_rank"):
        assert torch.equal(getattr(whole, name), getattr(chunked, name)), name
    for name in ("ap", "ap_at_r"):  # float sums over lists of another length: last-bit equal
        assert torch.allclose(getattr(whole, name), getattr(chunked, name), atol=1e-6), name


def test_against_pytorch_metric_learning():
    """precision_at_1 = Recall@1 and mean_average_precision_at_r = mAP@R (every query has a
    match, no ties); leave-one-out = PML's ref_includes_query."""
    emb, labels = random_set(300, 12, 25, seed=3)
    g = torch.Generator().manual_seed(4)
    emb = torch.nn.functional.normalize(emb + 0.8 * torch.randn(25, 12, generator=g)[labels])
    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"),
                              avg_of_avgs=False, device=torch.device("cpu"))
    label_tensor = torch.tensor(labels)
    pml = calc.get_accuracy(emb, label_tensor, emb, label_tensor, ref_includes_query=True)
    ours = summarize(rank_and_score(emb, labels, emb, labels, leave_one_out=True))
    assert ours["queries_without_relevant"] == 0
    assert ours["recall@1"] == pytest.approx(pml["precision_at_1"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-5)


def test_cross_domain_pairs_restrict_the_gallery_to_the_other_domain():
    """Each ordered pair equals a plain query/gallery evaluation of the two domains' items."""
    emb, labels = random_set(90, 4, 9, seed=8)
    domains = ["real", "synthetic", "cutout"] * 30
    out = evaluate_embeddings(emb, labels, k_values=[1, 5], domains=domains, hard_cases=0)
    pairs = out["domain_pairs"]
    assert len(pairs) == 6
    for pair, summary in pairs.items():
        a, b = pair.split("->")
        qi = [i for i, d in enumerate(domains) if d == a]
        gi = [i for i, d in enumerate(domains) if d == b]
        expected = summarize(rank_and_score(emb[qi], [labels[i] for i in qi], emb[gi],
                                            [labels[i] for i in gi], k_values=[1, 5]))
        assert summary == expected
    real_to_synth = out["cross_domain"]["real_to_synth"]
    assert real_to_synth["num_queries"] == 60  # real + cutout against synthetic


def test_per_category_metrics_weight_back_to_overall():
    emb, labels = random_set(200, 4, 30, seed=9)
    categories = [["drinks", "snacks", None][label % 3] for label in labels]
    out = evaluate_embeddings(emb, labels, k_values=[1, 5], categories=categories, hard_cases=0)
    per = out["per_category"]
    total = sum(c["count"] for c in per.values())
    assert total == 200
    for metric in ("recall@1", "recall@5", "map", "map@r"):
        weighted = sum(c[metric] * c["count"] for c in per.values()) / total
        assert weighted == pytest.approx(out["overall"][metric], abs=1e-6), metric


def test_hard_cases_name_products_and_list_top_k_and_missed_ground_truths():
    emb, labels = random_set(60, 4, 6, seed=12)
    labels = [f"p{label}" for label in labels]
    items = [{"image_id": 100 + i, "domain": "real"} for i in range(60)]
    info = {f"p{i}": {"name": f"Product {i}", "category": f"cat{i % 2}"} for i in range(6)}
    out = evaluate_embeddings(emb, labels, k_values=[1, 5], items=items, label_info=info,
                              hard_cases=3)
    worst = out["worst_queries"]
    assert len(worst) == 3
    assert worst[0]["ap"] <= worst[1]["ap"] <= worst[2]["ap"]
    for row in worst:
        assert row["label_info"]["name"] == f"Product {row['label'][1:]}"
        assert len(row["top"]) == 5 and row["image_id"] == 100 + row["index"]
        assert [t["rank"] for t in row["top"]] == [1, 2, 3, 4, 5]
        n_rel = sum(1 for i, lab in enumerate(labels) if lab == row["label"] and i != row["index"])
        found = sum(t["correct"] for t in row["top"])
        assert len(row["missed"]) == n_rel - found
        assert all(m["rank"] > 5 and m["label"] == row["label"] for m in row["missed"])
        assert all("name" in t["label_info"] for t in row["top"])
    assert out["worst_products"][0]["label_info"]["category"].startswith("cat")

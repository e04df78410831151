"""Retrieval metrics on embeddings (open-metric-learning style: pure tensor functions).

Definitions (a query's ranking is the whole gallery sorted by cosine similarity, ties broken by
gallery order; excluded items are removed from it):
- Recall@k = CMC@k: 1 if any relevant item is in the top k, else 0; averaged over queries.
- AP (the pytorch-metric-learning / standard definition): sum over ranks i holding a relevant
  item of precision@i, divided by the number of relevant gallery items R. A query with R=3
  and the ranked list [hit, miss, miss, miss, miss] (its other two relevant items not in it)
  scores 1/3, where OML's "divide by the hits in the top k" would give 1.0. mAP is the mean AP
  over the full ranking; mAP@R only counts ranks 1..R.
- Exclusions: leave-one-out never retrieves a query for itself; with source ids, items from
  the same source as the query (augmented copies of one photo) are excluded too.
- Queries with no relevant gallery item are kept: they score 0 on every metric and their number
  is reported as `queries_without_relevant`, instead of being dropped silently.
- Cross-domain: queries of the non-synthetic domains (real, cutout, augmented) against a gallery
  of the synthetic ones (`real_to_synth`), and the reverse (`synth_to_real`). Domains are
  compared as strings, never as positions.
- Per-category Recall@1 comes with its query count, so the count-weighted mean of the categories
  equals the overall Recall@1.
Metrics of an empty query set are None (JSON-friendly, never NaN).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Hashable, Sequence

import torch

SYNTHETIC_DOMAINS = ("synthetic",)


def calc_cmc(hits: torch.Tensor, k_values: Sequence[int]) -> dict[int, torch.Tensor]:
    """Per-query CMC@k (0/1 floats) from a [Q, N] boolean matrix of ranked hits."""
    return {k: hits[:, :k].any(dim=1).float() for k in k_values}


def _precision_hits(hits: torch.Tensor) -> torch.Tensor:
    ranks = torch.arange(1, hits.shape[1] + 1, device=hits.device, dtype=torch.float32)
    return hits.float().cumsum(dim=1) / ranks * hits.float()


def calc_ap(hits: torch.Tensor, n_relevant: torch.Tensor) -> torch.Tensor:
    """Per-query AP: sum of precision@i at the hits, divided by the number of relevant items."""
    total = _precision_hits(hits).sum(dim=1)
    return torch.where(n_relevant > 0, total / n_relevant.clamp(min=1), torch.zeros_like(total))


def calc_map_at_r(hits: torch.Tensor, n_relevant: torch.Tensor) -> torch.Tensor:
    """Per-query AP@R: like AP but only ranks 1..R count (R = number of relevant items)."""
    ranks = torch.arange(1, hits.shape[1] + 1, device=hits.device)
    within_r = ranks[None, :] <= n_relevant[:, None]
    total = (_precision_hits(hits) * within_r).sum(dim=1)
    return torch.where(n_relevant > 0, total / n_relevant.clamp(min=1), torch.zeros_like(total))


@dataclass
class QueryResults:
    """Per-query results; `top1` is the gallery index ranked first (-1 when nothing is left)."""

    recall: dict[int, torch.Tensor]
    ap: torch.Tensor
    ap_at_r: torch.Tensor
    n_relevant: torch.Tensor
    top1: torch.Tensor


def _codes(*columns: Sequence[Hashable] | torch.Tensor) -> list[torch.Tensor]:
    """Integer codes with one vocabulary across columns (labels may be ints or strings)."""
    if all(isinstance(c, torch.Tensor) for c in columns):
        return [c.long() for c in columns]
    vocab: dict[Any, int] = {}
    out = []
    for col in columns:
        values = col.tolist() if isinstance(col, torch.Tensor) else list(col)
        codes = [vocab.setdefault(v, len(vocab)) for v in values]
        out.append(torch.tensor(codes, dtype=torch.long))
    return out


def rank_and_score(
    query_emb: torch.Tensor,
    query_labels: Sequence[Hashable] | torch.Tensor,
    gallery_emb: torch.Tensor,
    gallery_labels: Sequence[Hashable] | torch.Tensor,
    *,
    k_values: Sequence[int] = (1, 5, 10),
    leave_one_out: bool = False,
    query_sources: Sequence[Hashable] | None = None,
    gallery_sources: Sequence[Hashable] | None = None,
    chunk_size: int = 1024,
) -> QueryResults:
    """Batched kNN: rank the gallery for each query (cosine, in chunks of queries) and score it.

    `leave_one_out` means the query set *is* the gallery: item i is never retrieved for query i.
    """
    q, g = query_emb.float(), gallery_emb.float()
    if leave_one_out and q.shape[0] != g.shape[0]:
        raise ValueError("leave_one_out needs the query set to be the gallery")
    device = g.device
    ql, gl = (c.to(device) for c in _codes(query_labels, gallery_labels))
    sources = query_sources is not None and gallery_sources is not None
    if sources:
        qs, gs = (c.to(device) for c in _codes(query_sources, gallery_sources))
    parts: dict[str, list[torch.Tensor]] = {"ap": [], "ap_at_r": [], "n_relevant": [], "top1": []}
    recall: dict[int, list[torch.Tensor]] = {k: [] for k in k_values}
    for start in range(0, q.shape[0], chunk_size):
        stop = min(start + chunk_size, q.shape[0])
        sims = q[start:stop] @ g.T
        excluded = torch.zeros_like(sims, dtype=torch.bool)
        if leave_one_out:
            rows = torch.arange(stop - start, device=device)
            excluded[rows, rows + start] = True
        if sources:
            excluded |= qs[start:stop, None] == gs[None, :]
        sims = sims.masked_fill(excluded, float("-inf"))
        order = torch.sort(sims, dim=1, descending=True, stable=True).indices
        relevant = (ql[start:stop, None] == gl[None, :]) & ~excluded
        hits = relevant.gather(1, order)
        n_relevant = relevant.sum(dim=1)
        for k, values in calc_cmc(hits, k_values).items():
            recall[k].append(values)
        parts["ap"].append(calc_ap(hits, n_relevant))
        parts["ap_at_r"].append(calc_map_at_r(hits, n_relevant))
        parts["n_relevant"].append(n_relevant)
        if order.shape[1]:
            has_any, first = (~excluded).any(dim=1), order[:, 0]
        else:  # empty gallery
            has_any = torch.zeros_like(n_relevant, dtype=torch.bool)
            first = torch.zeros_like(n_relevant)
        parts["top1"].append(torch.where(has_any, first, torch.full_like(first, -1)))

    def cat(values: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        return torch.cat(values).cpu() if values else torch.zeros(0, dtype=dtype)

    return QueryResults(
        recall={k: cat(v, torch.float32) for k, v in recall.items()},
        ap=cat(parts["ap"], torch.float32),
        ap_at_r=cat(parts["ap_at_r"], torch.float32),
        n_relevant=cat(parts["n_relevant"], torch.long),
        top1=cat(parts["top1"], torch.long),
    )


def summarize(results: QueryResults) -> dict[str, Any]:
    """Mean metrics over queries, plus the query count and the count without relevant items."""
    n = int(results.ap.shape[0])

    def mean(t: torch.Tensor) -> float | None:
        return float(t.mean()) if n else None

    out: dict[str, Any] = {f"recall@{k}": mean(v) for k, v in results.recall.items()}
    out.update(
        {
            "map": mean(results.ap),
            "map@r": mean(results.ap_at_r),
            "num_queries": n,
            "queries_without_relevant": int((results.n_relevant == 0).sum()),
        }
    )
    return out


def per_category_recall(
    recall_at_1: torch.Tensor, categories: Sequence[Hashable]
) -> dict[str, dict[str, Any]]:
    """Recall@1 and query count per category (None counts as "unknown")."""
    names = ["unknown" if c is None else str(c) for c in categories]
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(set(names)):
        mask = torch.tensor([n == name for n in names], dtype=torch.bool)
        out[name] = {"recall@1": float(recall_at_1[mask].mean()), "count": int(mask.sum())}
    return out


def worst_labels(
    recall_at_1: torch.Tensor, labels: Sequence[Hashable], n: int
) -> list[dict[str, Any]]:
    """The `n` labels with the lowest per-label Recall@1 (ties: more queries first)."""
    totals: dict[Hashable, list[float]] = {}
    for label, hit in zip(labels, recall_at_1.tolist()):
        totals.setdefault(label, []).append(hit)
    rows = [
        {"label": label, "recall@1": sum(h) / len(h), "count": len(h)}
        for label, h in totals.items()
    ]
    rows.sort(key=lambda r: (r["recall@1"], -r["count"], repr(r["label"])))
    return rows[:n]


def most_confused_pairs(
    query_labels: Sequence[Hashable], predicted_labels: Sequence[Hashable | None], n: int
) -> list[dict[str, Any]]:
    """The `n` unordered label pairs most often confused at rank 1 (both directions counted)."""
    counts: Counter = Counter()
    for true, pred in zip(query_labels, predicted_labels):
        if pred is not None and pred != true:
            counts[tuple(sorted((true, pred), key=repr))] += 1
    ranked = sorted(counts.items(), key=lambda item: (-item[1], repr(item[0])))
    return [{"labels": list(pair), "count": c} for pair, c in ranked[:n]]


def _subset(values: Sequence | None, mask: list[bool]) -> list | None:
    return None if values is None else [v for v, m in zip(values, mask) if m]


def cross_domain(
    embeddings: torch.Tensor,
    labels: Sequence[Hashable],
    domains: Sequence[str],
    *,
    k_values: Sequence[int],
    sources: Sequence[Hashable] | None = None,
    synthetic_domains: Sequence[str] = SYNTHETIC_DOMAINS,
    chunk_size: int = 1024,
) -> dict[str, dict[str, Any]]:
    """`real_to_synth` and `synth_to_real` summaries (string domains; see module docstring)."""
    synthetic = [str(d) in synthetic_domains for d in domains]
    real = [not s for s in synthetic]
    out = {}
    directions = (("real_to_synth", real, synthetic), ("synth_to_real", synthetic, real))
    for name, qmask, gmask in directions:
        qi = [i for i, m in enumerate(qmask) if m]
        gi = [i for i, m in enumerate(gmask) if m]
        res = rank_and_score(
            embeddings[qi], _subset(labels, qmask), embeddings[gi], _subset(labels, gmask),
            k_values=k_values, query_sources=_subset(sources, qmask),
            gallery_sources=_subset(sources, gmask), chunk_size=chunk_size,
        )
        out[name] = summarize(res)
    return out


def evaluate_embeddings(
    embeddings: torch.Tensor,
    labels: Sequence[Hashable],
    *,
    k_values: Sequence[int] = (1, 5, 10),
    domains: Sequence[str] | None = None,
    categories: Sequence[Hashable] | None = None,
    sources: Sequence[Hashable] | None = None,
    with_cross_domain: bool = True,
    with_per_category: bool = True,
    hard_cases: int = 10,
    chunk_size: int = 1024,
) -> dict[str, Any]:
    """Every metric of one embedded set, evaluated leave-one-out among its own items.

    Returns {"overall", "cross_domain"?, "per_category"?, "worst_products", "most_confused_pairs"};
    labels are reported as given (pass product ids to get product ids back).
    """
    labels = list(labels.tolist() if isinstance(labels, torch.Tensor) else labels)
    k_values = sorted(set(k_values) | {1})
    res = rank_and_score(
        embeddings, labels, embeddings, labels, k_values=k_values, leave_one_out=True,
        query_sources=sources, gallery_sources=sources, chunk_size=chunk_size,
    )
    out: dict[str, Any] = {"overall": summarize(res)}
    if with_cross_domain and domains is not None:
        out["cross_domain"] = cross_domain(
            embeddings, labels, domains, k_values=k_values, sources=sources, chunk_size=chunk_size
        )
    if with_per_category and categories is not None:
        out["per_category"] = per_category_recall(res.recall[1], categories)
    if hard_cases:
        predicted = [labels[i] if i >= 0 else None for i in res.top1.tolist()]
        out["worst_products"] = worst_labels(res.recall[1], labels, hard_cases)
        out["most_confused_pairs"] = most_confused_pairs(labels, predicted, hard_cases)
    return out

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
- Cross-domain: `real_to_synth` (queries of the non-synthetic domains against a gallery of the
  synthetic ones) and `synth_to_real`, and every ordered pair of domains present
  (`domain_pairs`: "real->synthetic" = real queries, gallery of the synthetic items only).
  Domains are compared as strings, never as positions.
- Per-category metrics come with their query count, so the count-weighted mean of the
  categories equals the overall value.
Metrics of an empty query set are None (JSON-friendly, never NaN).

At scale (`rank_and_score`): queries go in chunks sized by a memory budget in bytes, and the
whole gallery is never sorted when it need not be. Every metric depends only on the ranks of
the relevant items, so a chunk takes a small `torch.topk` list and checks, per query, that it
holds every relevant item (the lowest relevant score is above the list's last score); only the
queries it does not cover get a longer top-k (as long as the count of items scoring at least
their lowest relevant score) or, failing that, a full stable sort. Relevant and same-source
items are listed from gallery groups (items sorted by label / source), not from a [Q, G]
comparison. The computation runs on the embeddings' device (the GPU when there is one).
"""
from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from threadpoolctl import threadpool_limits

SYNTHETIC_DOMAINS = ("synthetic",)
DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of temporaries one rank_and_score call may hold
CHUNK_BYTES_PER_PAIR = 8  # a chunk's float32 similarity plus transient masks, per (query, item)
SORT_BYTES_PER_PAIR = 48  # a full-row fallback: copy, sorted values + indices, hits, cumsums
MIN_SHORTLIST = 64  # measured on 100k galleries: longer shortlists cost more than the fallbacks


def calc_cmc(hits: torch.Tensor, k_values: Sequence[int]) -> dict[int, torch.Tensor]:
    """Per-query CMC@k (0/1 floats) from a [Q, N] boolean matrix of ranked hits."""
    return {k: hits[:, :k].any(dim=1).float() for k in k_values}


def _precision_hits(hits: torch.Tensor) -> torch.Tensor:
    ranks = torch.arange(1, hits.shape[1] + 1, device=hits.device, dtype=torch.float32)
    return hits.float().cumsum(dim=1) / ranks * hits.float()


def average_precisions(hits: torch.Tensor, n_relevant: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query (AP, AP@R) from one precision pass: AP sums precision@i at the hits over the
    whole list, AP@R only over ranks 1..R; both divide by R, the number of relevant items."""
    precision = _precision_hits(hits)
    ranks = torch.arange(1, hits.shape[1] + 1, device=hits.device)
    within_r = ranks[None, :] <= n_relevant[:, None]
    denominator = n_relevant.clamp(min=1)
    zero = torch.zeros(hits.shape[0], device=hits.device)
    return (torch.where(n_relevant > 0, precision.sum(dim=1) / denominator, zero),
            torch.where(n_relevant > 0, (precision * within_r).sum(dim=1) / denominator, zero))


def calc_ap(hits: torch.Tensor, n_relevant: torch.Tensor) -> torch.Tensor:
    """Per-query AP: sum of precision@i at the hits, divided by the number of relevant items."""
    return average_precisions(hits, n_relevant)[0]


def calc_map_at_r(hits: torch.Tensor, n_relevant: torch.Tensor) -> torch.Tensor:
    """Per-query AP@R: like AP but only ranks 1..R count (R = number of relevant items)."""
    return average_precisions(hits, n_relevant)[1]


@dataclass
class QueryResults:
    """Per-query results. `top1` is the gallery index ranked first (-1 when nothing is left);
    `topk` the first max(k_values) gallery indices (-1 padded); `first_rank` the 1-based rank
    of the best relevant item (0 when there is none)."""

    recall: dict[int, torch.Tensor]
    ap: torch.Tensor
    ap_at_r: torch.Tensor
    n_relevant: torch.Tensor
    top1: torch.Tensor
    topk: torch.Tensor
    first_rank: torch.Tensor


def _codes(*columns: Sequence[Hashable] | torch.Tensor) -> tuple[list[torch.Tensor], int]:
    """Dense integer codes with one vocabulary across columns (labels may be ints or strings),
    and the vocabulary size."""
    if all(isinstance(c, torch.Tensor) for c in columns):
        flat = torch.cat([c.long().reshape(-1).cpu() for c in columns])
        if flat.numel() and 0 <= int(flat.min()) and int(flat.max()) < 2 * flat.numel():
            return [c.long().reshape(-1).cpu() for c in columns], int(flat.max()) + 1  # dense
        vocab, inverse = torch.unique(flat, return_inverse=True)
        return list(inverse.split([len(c) for c in columns])), len(vocab)
    vocab: dict[Any, int] = {}
    out = []
    for col in columns:
        values = col.tolist() if isinstance(col, torch.Tensor) else list(col)
        codes = [vocab.setdefault(v, len(vocab)) for v in values]
        out.append(torch.tensor(codes, dtype=torch.long))
    return out, len(vocab)


class _Groups:
    """Gallery items grouped by code, so a query's relevant (or same-source) items are listed
    directly instead of comparing the query's code with every gallery item."""

    def __init__(self, gallery_codes: torch.Tensor, n_codes: int):
        self.order = torch.argsort(gallery_codes, stable=True)
        self.counts = torch.bincount(gallery_codes, minlength=n_codes)
        self.starts = torch.cumsum(self.counts, 0) - self.counts

    def members(self, query_codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[c, M] gallery indices of each query's group (padding: index 0) and their mask."""
        counts = self.counts[query_codes]
        width = int(counts.max()) if counts.numel() else 0
        offsets = torch.arange(width, device=counts.device)
        valid = offsets[None, :] < counts[:, None]
        pos = (self.starts[query_codes][:, None] + offsets[None, :]).clamp(
            max=max(len(self.order) - 1, 0))
        return torch.where(valid, self.order[pos], 0), valid


def _stable_order(vals: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder a top-k list so equal scores go by gallery index (the full sort's tie-break)."""
    if vals.shape[1] < 2 or not bool((vals[:, 1:] == vals[:, :-1]).any()):
        return vals, idx  # no ties: topk's order is already the ranking
    by_index = torch.argsort(idx, dim=1)
    vals, idx = vals.gather(1, by_index), idx.gather(1, by_index)
    by_score = torch.sort(vals, dim=1, descending=True, stable=True).indices
    return vals.gather(1, by_score), idx.gather(1, by_score)


@dataclass
class _Scored:
    recall: dict[int, torch.Tensor]
    ap: torch.Tensor
    ap_at_r: torch.Tensor
    topk: torch.Tensor
    first_rank: torch.Tensor


def _score_ranked(vals: torch.Tensor, idx: torch.Tensor, query_codes: torch.Tensor,
                  gallery_codes: torch.Tensor, n_relevant: torch.Tensor,
                  k_values: Sequence[int]) -> _Scored:
    """Metrics from ranked lists holding every relevant item (excluded items score -inf)."""
    kept = vals != float("-inf")
    hits = (gallery_codes[idx] == query_codes[:, None]) & kept
    kmax = max(k_values)
    top = torch.where(kept, idx, -1)[:, :kmax]
    if top.shape[1] < kmax:
        top = torch.cat([top, top.new_full((top.shape[0], kmax - top.shape[1]), -1)], dim=1)
    first = torch.zeros_like(n_relevant)
    if hits.shape[1]:
        first = torch.where(hits.any(dim=1), hits.int().argmax(dim=1) + 1, 0)
    return _Scored(calc_cmc(hits, k_values), *average_precisions(hits, n_relevant), top, first)


def _fallback(sims: torch.Tensor, lowest: torch.Tensor, query_codes: torch.Tensor,
              gallery_codes: torch.Tensor, n_relevant: torch.Tensor, k_values: Sequence[int],
              rows_per_batch: int) -> list[tuple[torch.Tensor, _Scored]]:
    """Queries whose relevant items lie beyond the shortlist. Each needs the items scoring at
    least its lowest relevant score (`above` of them): queries are grouped by that count in
    powers of 4, and a group takes a top-k of its largest count, or a stable sort (cut to that
    count) when it reaches a quarter of the gallery."""
    rows = torch.arange(sims.shape[0], device=sims.device)
    out = []
    n_gallery, kmax = sims.shape[1], max(k_values)
    for start in range(0, len(rows), rows_per_batch):
        batch = rows[start:start + rows_per_batch]
        sub = sims[batch]
        above = (sub >= lowest[batch, None]).sum(dim=1).clamp(min=1)
        tiers = torch.ceil(torch.log2(above.float()) / 2)
        for tier in tiers.unique().tolist():
            part = tiers == tier
            width = int(above[part].max())
            if 4 * width <= n_gallery:
                vals, idx = _stable_order(*torch.topk(sub[part], width, dim=1))
            else:
                vals, idx = (t[:, :max(width, kmax)] for t in torch.sort(
                    sub[part], dim=1, descending=True, stable=True))
            members = batch[part]
            out.append((members, _score_ranked(vals, idx, query_codes[members], gallery_codes,
                                               n_relevant[members], k_values)))
        del sub
    return out


def chunk_rows(n_gallery: int, memory_budget: int, bytes_per_pair: int) -> int:
    """Queries per chunk so that a chunk's [rows, gallery] temporaries fit half the budget."""
    return max(1, (memory_budget // 2) // max(1, n_gallery * bytes_per_pair))


@dataclass
class _RowSplitMatmul:
    """A CPU matrix product through numpy's BLAS, its rows split over a pool of threads that
    each run a single-threaded BLAS (`rank_and_score` limits it to one thread meanwhile)."""

    pool: ThreadPoolExecutor
    parts: int

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = np.empty((a.shape[0], b.shape[1]), a.dtype)
        bounds = np.linspace(0, a.shape[0], self.parts + 1).astype(int)
        rows = [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
        list(self.pool.map(lambda r: np.matmul(a[r], b, out=out[r]), rows))
        return out


def similarities(queries: torch.Tensor, gallery: torch.Tensor,
                 cpu_matmul: _RowSplitMatmul | None = None) -> torch.Tensor:
    """queries @ gallery.T, a chunk's [rows, gallery] scores.

    On CPU through `cpu_matmul`, numpy's BLAS (OpenBLAS, which picks its kernels per CPU at run
    time): torch's CPU build links MKL, whose sgemm took 1.4x as long for this product on the
    AMD machines here. Single-threaded BLAS calls on a thread pool rather than OpenBLAS's own
    threads, which spin for a while after each product and starved the torch ops that follow
    (the top-k took twice as long)."""
    if cpu_matmul is None:
        return queries @ gallery.T
    return torch.from_numpy(cpu_matmul(queries.detach().numpy(), gallery.detach().numpy().T))


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
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> QueryResults:
    """Batched kNN: rank the gallery for each query (cosine, in memory-budgeted chunks of
    queries) and score it. `leave_one_out` means the query set *is* the gallery: item i is
    never retrieved for query i. See the module docstring for how sorting is avoided."""
    q, g = query_emb.float(), gallery_emb.float()
    if leave_one_out and q.shape[0] != g.shape[0]:
        raise ValueError("leave_one_out needs the query set to be the gallery")
    k_values = sorted(set(k_values))
    device, n_gallery = g.device, g.shape[0]
    (ql, gl), n_labels = _codes(query_labels, gallery_labels)
    ql, gl = ql.to(device), gl.to(device)
    labels = _Groups(gl, n_labels)
    sources = None
    if query_sources is not None and gallery_sources is not None:
        (qs, gs), n_sources = _codes(query_sources, gallery_sources)
        qs, sources = qs.to(device), _Groups(gs.to(device), n_sources)
    step = chunk_rows(n_gallery, memory_budget, CHUNK_BYTES_PER_PAIR)
    fallback_rows = chunk_rows(n_gallery, memory_budget, SORT_BYTES_PER_PAIR)
    parts: list[tuple[torch.Tensor, _Scored]] = []
    n_relevant_parts = []
    neg_inf = float("-inf")
    with ExitStack() as cpu:
        matmul = None
        if device.type == "cpu":  # see `similarities`
            cpu.enter_context(threadpool_limits(1, user_api="blas"))
            threads = torch.get_num_threads()
            matmul = _RowSplitMatmul(cpu.enter_context(ThreadPoolExecutor(threads)), threads)
        for start in range(0, q.shape[0], step):
            stop = min(start + step, q.shape[0])
            sims = similarities(q[start:stop], g, matmul)
            rows = torch.arange(stop - start, device=device)
            if leave_one_out:
                sims[rows, rows + start] = neg_inf
            if sources is not None:
                same, valid = sources.members(qs[start:stop])
                sims[rows[:, None].expand_as(same)[valid], same[valid]] = neg_inf
            relevant, valid = labels.members(ql[start:stop])
            rel_scores = sims.gather(1, relevant)
            valid &= rel_scores != neg_inf
            n_relevant = valid.sum(dim=1)
            n_relevant_parts.append(n_relevant)
            lowest = torch.where(valid, rel_scores, float("inf")).amin(dim=1) if valid.shape[1] \
                else torch.full((stop - start,), float("inf"), device=device)
            shortlist = min(n_gallery, max(k_values[-1], 2 * valid.shape[1], MIN_SHORTLIST))
            vals, idx = _stable_order(*torch.topk(sims, shortlist, dim=1))
            chunk = _score_ranked(vals, idx, ql[start:stop], gl, n_relevant, k_values)
            if shortlist < n_gallery:
                uncovered = (n_relevant > 0) & (lowest <= vals[:, -1])
                if bool(uncovered.any()):
                    rows_left = uncovered.nonzero().squeeze(1)
                    for batch, scored in _fallback(
                            sims[rows_left], lowest[rows_left], ql[start:stop][rows_left], gl,
                            n_relevant[rows_left], k_values, fallback_rows):
                        _assign(chunk, rows_left[batch], scored)
            del sims
            parts.append((torch.arange(start, stop), chunk))

    def cat(values: list[torch.Tensor], dtype: torch.dtype, width: int | None = None):
        if values:
            return torch.cat(values).cpu()
        return torch.zeros((0,) if width is None else (0, width), dtype=dtype)

    chunks = [c for _, c in parts]
    topk = cat([c.topk for c in chunks], torch.long, k_values[-1])
    return QueryResults(
        recall={k: cat([c.recall[k] for c in chunks], torch.float32) for k in k_values},
        ap=cat([c.ap for c in chunks], torch.float32),
        ap_at_r=cat([c.ap_at_r for c in chunks], torch.float32),
        n_relevant=cat(n_relevant_parts, torch.long),
        top1=topk[:, 0] if topk.shape[1] else torch.zeros(0, dtype=torch.long),
        topk=topk,
        first_rank=cat([c.first_rank for c in chunks], torch.long),
    )


def _assign(target: _Scored, rows: torch.Tensor, source: _Scored) -> None:
    for k in target.recall:
        target.recall[k][rows] = source.recall[k]
    target.ap[rows] = source.ap
    target.ap_at_r[rows] = source.ap_at_r
    target.topk[rows] = source.topk
    target.first_rank[rows] = source.first_rank


def summarize(results: QueryResults, mask: torch.Tensor | None = None) -> dict[str, Any]:
    """Mean metrics over queries (those in `mask` when given), plus the query count and the
    count without relevant items."""
    def pick(t: torch.Tensor) -> torch.Tensor:
        return t if mask is None else t[mask]

    ap = pick(results.ap)
    n = int(ap.shape[0])

    def mean(t: torch.Tensor) -> float | None:
        return float(t.mean()) if n else None

    out: dict[str, Any] = {f"recall@{k}": mean(pick(v)) for k, v in results.recall.items()}
    out.update(
        {
            "map": mean(ap),
            "map@r": mean(pick(results.ap_at_r)),
            "num_queries": n,
            "queries_without_relevant": int((pick(results.n_relevant) == 0).sum()),
        }
    )
    return out


def _category_names(categories: Sequence[Hashable]) -> list[str]:
    return ["unknown" if c is None else str(c) for c in categories]


def per_category_metrics(
    results: QueryResults, categories: Sequence[Hashable]
) -> dict[str, dict[str, Any]]:
    """Every metric per query category (None counts as "unknown"), with its query count."""
    names = _category_names(categories)
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(set(names)):
        mask = torch.tensor([n == name for n in names], dtype=torch.bool)
        summary = summarize(results, mask)
        summary["count"] = summary.pop("num_queries")
        out[name] = summary
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


def _positions(mask: Sequence[bool]) -> list[int]:
    return [i for i, m in enumerate(mask) if m]


def _subset(values: Sequence | None, index: list[int]) -> list | None:
    return None if values is None else [values[i] for i in index]


def _ranked_pair(embeddings, labels, sources, k_values, memory_budget, qi, gi):
    return rank_and_score(
        embeddings[qi], _subset(labels, qi), embeddings[gi], _subset(labels, gi),
        k_values=k_values, query_sources=_subset(sources, qi),
        gallery_sources=_subset(sources, gi), memory_budget=memory_budget,
    )


def cross_domain(
    embeddings: torch.Tensor,
    labels: Sequence[Hashable],
    domains: Sequence[str],
    *,
    k_values: Sequence[int],
    sources: Sequence[Hashable] | None = None,
    synthetic_domains: Sequence[str] = SYNTHETIC_DOMAINS,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> dict[str, dict[str, Any]]:
    """`real_to_synth` and `synth_to_real` summaries (string domains; see module docstring)."""
    synthetic = [str(d) in synthetic_domains for d in domains]
    real = [not s for s in synthetic]
    return {
        name: summarize(_ranked_pair(embeddings, labels, sources, k_values, memory_budget,
                                     _positions(qmask), _positions(gmask)))
        for name, qmask, gmask in (("real_to_synth", real, synthetic),
                                   ("synth_to_real", synthetic, real))
    }


def domain_pairs(
    embeddings: torch.Tensor,
    labels: Sequence[Hashable],
    domains: Sequence[str],
    *,
    k_values: Sequence[int],
    sources: Sequence[Hashable] | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> dict[str, dict[str, Any]]:
    """One summary per ordered pair of domains present: "real->synthetic" is real queries
    against a gallery of the synthetic items only."""
    names = [str(d) for d in domains]
    present = sorted(set(names))
    return {
        f"{a}->{b}": summarize(_ranked_pair(
            embeddings, labels, sources, k_values, memory_budget,
            _positions([d == a for d in names]), _positions([d == b for d in names])))
        for a in present for b in present if a != b
    }


def query_report(
    embeddings: torch.Tensor,
    labels: Sequence[Hashable],
    query: int,
    *,
    k: int,
    sources: Sequence[Hashable] | None = None,
    items: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """One query's leave-one-out top-k results and the relevant items missing from them, with
    their ranks (1-based, after exclusions)."""
    sims = (embeddings.float() @ embeddings[query].float()).cpu()
    excluded = torch.zeros_like(sims, dtype=torch.bool)
    excluded[query] = True
    if sources is not None:
        excluded |= torch.tensor([s == sources[query] for s in sources], dtype=torch.bool)
    order = torch.sort(sims.masked_fill(excluded, float("-inf")), descending=True,
                       stable=True).indices
    order = order[~excluded[order]].tolist()
    scores = sims.tolist()

    def describe(i: int, rank: int) -> dict[str, Any]:
        row = {"index": i, "label": labels[i], "rank": rank, "score": scores[i],
               "correct": labels[i] == labels[query]}
        if items is not None:
            row.update(items[i])
        return row

    top = [describe(i, r) for r, i in enumerate(order[:k], start=1)]
    missed = [describe(i, r) for r, i in enumerate(order, start=1)
              if r > k and labels[i] == labels[query]]
    return {"top": top, "missed": missed}


def worst_queries(
    embeddings: torch.Tensor,
    labels: Sequence[Hashable],
    results: QueryResults,
    n: int,
    *,
    k: int,
    sources: Sequence[Hashable] | None = None,
    items: Sequence[Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The `n` queries with relevant items that scored worst (lowest AP, then the latest first
    hit), each with its top-k results and missed ground truths."""
    candidates = [i for i in range(len(labels)) if int(results.n_relevant[i]) > 0]
    candidates.sort(key=lambda i: (float(results.ap[i]), -int(results.first_rank[i]), i))
    out = []
    for i in candidates[:n]:
        row = {"index": i, "label": labels[i], "ap": float(results.ap[i]),
               "first_relevant_rank": int(results.first_rank[i])}
        if items is not None:
            row.update(items[i])
        row.update(query_report(embeddings, labels, i, k=k, sources=sources, items=items))
        out.append(row)
    return out


def _with_info(rows: list[dict[str, Any]], label_info: Mapping[Hashable, Mapping] | None,
               *keys: str) -> list[dict[str, Any]]:
    """Add each label's name and category (from `label_info`) to report rows."""
    if label_info is None:
        return rows
    for row in rows:
        for key in keys:
            value = row[key]
            row[key + "_info"] = ([dict(label_info.get(v, {})) for v in value]
                                  if isinstance(value, list) else dict(label_info.get(value, {})))
    return rows


def evaluate_embeddings(
    embeddings: torch.Tensor,
    labels: Sequence[Hashable],
    *,
    k_values: Sequence[int] = (1, 5, 10),
    domains: Sequence[str] | None = None,
    categories: Sequence[Hashable] | None = None,
    sources: Sequence[Hashable] | None = None,
    items: Sequence[Mapping[str, Any]] | None = None,
    label_info: Mapping[Hashable, Mapping[str, Any]] | None = None,
    with_cross_domain: bool = True,
    with_per_category: bool = True,
    hard_cases: int = 10,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> dict[str, Any]:
    """Every metric of one embedded set, evaluated leave-one-out among its own items.

    Returns {"overall", "cross_domain"?, "domain_pairs"?, "per_category"?, "worst_products",
    "most_confused_pairs", "worst_queries"}; labels are reported as given (pass product ids to
    get product ids back), `items` (per item: image id, url, domain...) and `label_info` (per
    label: product name, category) enrich the hard cases.
    """
    labels = list(labels.tolist() if isinstance(labels, torch.Tensor) else labels)
    k_values = sorted(set(k_values) | {1})
    res = rank_and_score(
        embeddings, labels, embeddings, labels, k_values=k_values, leave_one_out=True,
        query_sources=sources, gallery_sources=sources, memory_budget=memory_budget,
    )
    out: dict[str, Any] = {"overall": summarize(res)}
    if with_cross_domain and domains is not None:
        out["cross_domain"] = cross_domain(
            embeddings, labels, domains, k_values=k_values, sources=sources,
            memory_budget=memory_budget,
        )
        out["domain_pairs"] = domain_pairs(
            embeddings, labels, domains, k_values=k_values, sources=sources,
            memory_budget=memory_budget,
        )
    if with_per_category and categories is not None:
        out["per_category"] = per_category_metrics(res, categories)
    if hard_cases:
        predicted = [labels[i] if i >= 0 else None for i in res.top1.tolist()]
        out["worst_products"] = _with_info(worst_labels(res.recall[1], labels, hard_cases),
                                           label_info, "label")
        out["most_confused_pairs"] = _with_info(
            most_confused_pairs(labels, predicted, hard_cases), label_info, "labels")
        worst = worst_queries(embeddings, labels, res, hard_cases, k=k_values[-1],
                              sources=sources, items=items)
        for row in worst:
            _with_info([row], label_info, "label")
            _with_info(row["top"] + row["missed"], label_info, "label")
        out["worst_queries"] = worst
    return out

"""Retrieval metrics and evaluation runs: how well an index names pictures it has never seen."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .backbones import Backbone
from .build import embed_items
from .catalog import Skip, read_catalog
from .errors import CatalogError
from .index import Index

RECALL_AT = (1, 5, 10)
MAP_AT = 5


@dataclass(frozen=True)
class QueryResult:
    """One evaluated query: its picture, true label, the predicted label and the true label's rank."""

    path: Path
    label: str
    predicted: str | None
    score: float
    rank: int | None  # 1 = named right; None = the true label is not in the index
    ap: float


@dataclass
class Evaluation:
    """Recall@k of naming (labels ranked by their best item), mAP@5 of the retrieved items, and details."""

    index: str
    queries: int
    recall: dict[int, float]
    map_at_5: float
    results: list[QueryResult]
    unknown_labels: list[str] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    seconds_per_query: float = 0.0
    index_mb: float = 0.0
    ann_recall: float | None = None  # recall@10 of an ANN store's search against exact search, same queries

    def to_dict(self) -> dict[str, Any]:
        extra = {} if self.ann_recall is None else {"ann_recall@10": round(self.ann_recall, 4)}
        return {
            "index": self.index,
            "queries": self.queries,
            **{f"recall@{k}": round(v, 4) for k, v in self.recall.items()},
            f"mAP@{MAP_AT}": round(self.map_at_5, 4),
            "unknown_labels": self.unknown_labels,
            "skipped": [str(s) for s in self.skipped],
            "ms_per_query": round(1000 * self.seconds_per_query, 2),
            "index_mb": round(self.index_mb, 3),
            **extra,
        }

    def worst(self, n: int = 10) -> list[QueryResult]:
        """The n queries named worst: true label ranked lowest (or absent), then lowest score."""
        return sorted(self.results, key=lambda r: (-(r.rank or 10**9), r.score))[:n]


def evaluate_queries(
    index: Index,
    queries: str | Path,
    *,
    backbone: Backbone | None = None,
    progress: bool = True,
) -> Evaluation:
    """Query an index with a folder of class sub-folders named by label and score the naming.

    recall@k: the fraction of queries whose true label is among the k best labels, labels ranked
    by their best-matching item. mAP@5: mean over queries of the average precision of the five
    best items, an item being relevant when it has the query's label (normalised by
    min(5, items of that label)), as in the fashion seed.
    """
    catalog = read_catalog(queries)
    if catalog.kind != "folders":
        raise CatalogError(f"{queries}: queries must be class sub-folders named by label (found a {catalog.kind} "
                           "folder)")
    if not index.labeled:
        raise CatalogError(f"index {index.name!r} has no labels: naming cannot be evaluated against it")
    backbone = backbone or index.backbone()
    index.check_backbone(backbone)
    started = time.perf_counter()
    embedded = embed_items(catalog.items, catalog.root, backbone, progress=progress, desc="evaluating")
    if not embedded.items:
        raise CatalogError(f"{queries}: none of the query pictures could be read ({embedded.skipped[0]})")
    true = [item.label or "" for item in embedded.items]
    results = []
    for start in range(0, len(true), 256):  # bounded memory: (256, N) scores at a time
        vectors = embedded.vectors[start : start + 256]
        results += _score_batch(index, index.scores(vectors), true[start : start + 256],
                                [catalog.root / i.path for i in embedded.items[start : start + 256]])
    seconds = (time.perf_counter() - started) / len(results)
    ann = None if index.store.exact else index.ann_recall(embedded.vectors, 10)
    named = [r.rank for r in results]
    recall = {k: float(np.mean([r is not None and r <= k for r in named])) for k in RECALL_AT}
    known = set(index.label_names)
    return Evaluation(
        index=index.name, queries=len(results), recall=recall, map_at_5=float(np.mean([r.ap for r in results])),
        results=results, unknown_labels=sorted({t for t in true if t not in known}),
        skipped=catalog.skipped + embedded.skipped, seconds_per_query=seconds, index_mb=index.size_bytes / 1e6,
        ann_recall=ann,
    )


def _score_batch(index: Index, scores: np.ndarray, true: list[str], paths: list[Path]) -> list[QueryResult]:
    names = index.label_names
    position = {name: i for i, name in enumerate(names)}
    per_label = index.label_scores(scores)  # (B, L)
    counts = np.bincount(index.label_codes[index.label_codes >= 0], minlength=len(names))
    top_items = np.argsort(-scores, axis=1, kind="stable")[:, :MAP_AT]  # (B, 5)
    out = []
    for row, label, path in zip(range(len(true)), true, paths):
        best = int(np.argmax(per_label[row]))
        code = position.get(label)
        rank = None if code is None else 1 + int((per_label[row] > per_label[row, code]).sum())
        relevant = index.label_codes[top_items[row]] == (code if code is not None else -2)
        hits = np.cumsum(relevant)
        denominator = min(MAP_AT, int(counts[code])) if code is not None else 0
        ap = float((hits / np.arange(1, relevant.size + 1) * relevant).sum() / denominator) if denominator else 0.0
        out.append(QueryResult(path=path, label=label, predicted=names[best], score=float(per_label[row, best]),
                               rank=rank, ap=ap))
    return out

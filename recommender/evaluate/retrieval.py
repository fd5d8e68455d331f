"""Protocols 1 and 2: labeled query sets against a gallery, and leave-one-out within one (recall@k, mAP@k)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..backbones import Backbone
from ..catalog import Catalog, Item, Skip, quoted, read_catalog
from ..errors import CatalogError
from ..index import Index
from ..ranking import top_k
from .metrics import MAP_AT, RECALL_AT, average_precision, label_ranks, recall_at, rounded
from .sheet import SheetRow
from .vectors import Vectors, embed_catalog

_BLOCK = 256  # queries scored at a time: (256, N) float32 scores bound the memory


@dataclass(frozen=True)
class QueryResult:
    """One evaluated query: its picture, true label, the predicted label, the true label's rank, its AP@k."""

    path: Path
    label: str
    predicted: str | None
    score: float  # the predicted label's score (its best item's)
    rank: int | None  # 1 = named right; None = the true label is not in the gallery
    ap: float
    top: Path | None = None  # the best-matching gallery picture
    correct: Path | None = None  # the gallery picture of the true label that matches best
    correct_score: float | None = None
    group: str | None = None
    set: str | None = None  # the query set's name

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "label": self.label,
            "predicted": self.predicted,
            "score": round(self.score, 4),
            "rank": self.rank,
            "ap": round(self.ap, 4),
            "top": None if self.top is None else str(self.top),
            "correct": None if self.correct is None else str(self.correct),
            "correct_score": rounded(self.correct_score, 4),
            "group": self.group,
            "set": self.set,
        }


@dataclass
class Evaluation:
    """Recall@k of naming (labels ranked by their best item), mAP@k of the retrieved items, per-group tables."""

    index: str
    results: list[QueryResult]
    map_at: int = MAP_AT
    protocol: str = "queries"
    unknown_labels: list[str] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    seconds_per_query: float = 0.0
    index_mb: float = 0.0
    ms_per_image: float | None = None
    group_by: str | None = None
    distribution: dict[str, int] = field(default_factory=dict)  # gallery items per group
    left_out: int = 0  # queries that cannot be answered: alone in their label (leave-one-out), unknown (reverse)
    ann_recall: float | None = None  # recall@10 of an ANN store's search against exact search, same queries

    @property
    def queries(self) -> int:
        return len(self.results)

    @property
    def ranks(self) -> np.ndarray:
        return np.array([r.rank or 0 for r in self.results], dtype=np.int64)

    @property
    def recall(self) -> dict[int, float]:
        ranks = self.ranks
        return {k: recall_at(ranks, k) for k in RECALL_AT}

    @property
    def mean_ap(self) -> float:
        return float(np.mean([r.ap for r in self.results])) if self.results else 0.0

    map_at_5 = mean_ap  # the name earlier versions used (mAP at `map_at`, 5 unless asked otherwise)

    def groups(self) -> list[dict[str, Any]]:
        """One row per group of queries: the group's share of the gallery beside its metrics, largest first."""
        if self.group_by is None:
            return []
        members: dict[str, list[QueryResult]] = defaultdict(list)
        for r in self.results:
            members[r.group if r.group is not None else "(none)"].append(r)
        total = sum(self.distribution.values())
        rows = []
        for group in sorted(members, key=lambda g: (-self.distribution.get(g, 0), -len(members[g]), g)):
            part = Evaluation(self.index, members[group], map_at=self.map_at)
            items = self.distribution.get(group, 0)
            rows.append(
                {
                    "group": group,
                    "items": items,
                    "share": round(items / total, 4) if total else None,
                    "queries": part.queries,
                    **part.metrics(),
                }
            )
        return rows

    def metrics(self) -> dict[str, float]:
        return {
            **{f"recall@{k}": round(v, 4) for k, v in self.recall.items()},
            f"mAP@{self.map_at}": round(self.mean_ap, 4),
        }

    def to_dict(self, *, worst: int = 0) -> dict[str, Any]:
        """The metrics, counts and skips as JSON; `worst` adds the `worst` queries (see `worst`)."""
        extra = {} if self.ann_recall is None else {"ann_recall@10": round(self.ann_recall, 4)}
        out = {
            "index": self.index,
            "protocol": self.protocol,
            "queries": self.queries,
            **self.metrics(),
            "unknown_labels": self.unknown_labels,
            "skipped": [str(s) for s in self.skipped],
            "ms_per_query": round(1000 * self.seconds_per_query, 2),
            "ms_per_image": rounded(self.ms_per_image, 2),
            "index_mb": round(self.index_mb, 3),
            **extra,
        }
        if self.protocol in ("leave-one-out", "reverse"):
            out["left_out"] = self.left_out
        if self.group_by is not None:
            out["group_by"] = self.group_by
            out["groups"] = self.groups()
        if worst:
            out["worst"] = [r.to_dict() for r in self.worst(worst)]
        return out

    def worst(self, n: int = 10) -> list[QueryResult]:
        """The n queries named worst: true label ranked lowest (or absent), then lowest score."""
        return sorted(self.results, key=lambda r: (-(r.rank or 10**9), r.score))[:n]

    def sheet_rows(self, n: int, title: str) -> list[SheetRow]:
        rows = []
        for r in self.worst(n):
            rank = f"rank {r.rank}" if r.rank else "not in the index"
            where = r.group if r.group and r.group != r.label else r.set if self.protocol == "queries" else None
            rows.append(
                SheetRow(
                    title,
                    (
                        (r.path, f"{where}: {r.label}" if where else r.label),
                        (r.top, f"{r.predicted} {r.score:.2f}"),
                        (r.correct, f"{rank}, {r.correct_score:.2f}" if r.correct_score is not None else rank),
                    ),
                )
            )
        return rows

    @classmethod
    def pooled(cls, parts: Sequence[Evaluation], protocol: str = "queries") -> Evaluation:
        """All queries of several evaluations against one gallery, as one evaluation."""
        first = parts[0]
        results = [r for p in parts for r in p.results]
        seconds = sum(p.seconds_per_query * p.queries for p in parts) / max(1, len(results))
        return cls(
            first.index,
            results,
            map_at=first.map_at,
            protocol=protocol,
            unknown_labels=sorted({u for p in parts for u in p.unknown_labels}),
            skipped=[s for p in parts for s in p.skipped],
            seconds_per_query=seconds,
            index_mb=first.index_mb,
            ms_per_image=first.ms_per_image,
            group_by=first.group_by,
            distribution=first.distribution,
        )


def retrieve(
    queries: Vectors,
    gallery: Vectors,
    *,
    map_at: int = MAP_AT,
    leave_one_out: bool = False,
    group_by: str | None = None,
    protocol: str = "queries",
) -> Evaluation:
    """Score labeled queries against a labeled gallery: the core of the query-set and leave-one-out protocols.

    `leave_one_out`: queries and gallery are the same pictures; each leaves itself out, and items
    alone in their label (nothing to find) are left out of the metrics and counted. The reverse
    protocol leaves out queries whose label the gallery lacks: a held-out set rarely covers every
    catalog label, and those queries would only measure its coverage.
    """
    if not gallery.labeled:
        raise CatalogError(f"index {gallery.name!r} has no labels: naming cannot be evaluated against it")
    if not queries.labeled:
        raise CatalogError(
            f"{queries.name}: the queries have no labels (use class sub-folders named by label "
            "or a CSV with a label column)"
        )
    started = time.perf_counter()
    labels = gallery.labels
    names, g_codes, counts = labels.names, labels.codes, labels.counts
    q_codes = labels.code_of([item.label for item in queries.items])
    rows = np.arange(len(queries.items))
    left: list[Skip] = []
    if leave_one_out or protocol == "reverse":
        alone = (q_codes < 0) | (counts[np.maximum(q_codes, 0)] < (2 if leave_one_out else 1))
        left = [_left_out(queries.items[row], leave_one_out=leave_one_out) for row in rows[alone]]
        rows = rows[~alone]
    groups = [_group_value(item, group_by) for item in queries.items]
    k = max(1, min(map_at, len(gallery.items) - int(leave_one_out)))
    results: list[QueryResult] = []
    for start in range(0, len(rows), _BLOCK):
        block = rows[start : start + _BLOCK]
        scores = gallery.scores(queries.block(block))  # (b, N)
        if leave_one_out:
            scores[np.arange(len(block)), block] = -np.inf  # not itself
        per_label = labels.best(scores)  # (b, L) best item per label
        qc = q_codes[block]
        ranks = label_ranks(per_label, qc)
        top = top_k(scores, k)  # (b, k) best first
        relevant = (g_codes[top] == qc[:, None]) & (qc[:, None] >= 0)
        n_relevant = np.where(qc >= 0, counts[np.maximum(qc, 0)] - int(leave_one_out), 0)
        aps = average_precision(relevant, n_relevant)
        best = np.argmax(per_label, axis=1)
        for i, row in enumerate(block):
            correct = correct_score = None
            if qc[i] >= 0:
                own = labels.members(qc[i])
                j = int(own[np.argmax(scores[i, own])])
                correct, correct_score = gallery.path(j), float(scores[i, j])
            results.append(
                QueryResult(
                    path=queries.path(row),
                    label=queries.items[row].label or "",
                    predicted=names[best[i]],
                    score=float(per_label[i, best[i]]),
                    rank=int(ranks[i]) or None,
                    ap=float(aps[i]),
                    top=gallery.path(int(top[i, 0])),
                    correct=correct,
                    correct_score=correct_score,
                    group=groups[row],
                    set=queries.name,
                )
            )
    # Search only (scoring, label ranking, top-k): embedding the queries is `ms_per_image`'s, on both paths.
    seconds = (time.perf_counter() - started) / max(1, len(results))
    known = set(names)
    unknown = sorted({item.label for item in queries.items if item.label is not None and item.label not in known})
    distribution = _distribution(gallery.items, group_by) if group_by else {}
    index_mb = gallery.index.size_bytes / 1e6 if gallery.index is not None else 0.0
    ms = 1000 * queries.seconds / len(queries.items) if queries.seconds else None
    ann = None
    if gallery.index is not None and not gallery.index.store.exact and len(rows):
        # An approximate store (Milvus): how much of exact search its own top 10 finds, on these queries.
        ann = gallery.index.ann_recall(queries.block(rows[:_BLOCK]), 10)
    return Evaluation(
        index=gallery.name,
        results=results,
        map_at=map_at,
        protocol=protocol,
        unknown_labels=unknown,
        skipped=[*queries.skipped, *left],
        seconds_per_query=seconds,
        index_mb=index_mb,
        ms_per_image=ms,
        group_by=group_by,
        distribution=distribution,
        left_out=len(left),
        ann_recall=ann,
    )


def evaluate_queries(
    index: Index,
    queries: str | Path,
    *,
    backbone: Backbone | None = None,
    map_at: int = MAP_AT,
    group_by: str | None = None,
    progress: bool = True,
) -> Evaluation:
    """Query an index with labeled pictures (class sub-folders named by label) and score the naming.

    recall@k: the fraction of queries whose true label is among the k best labels, labels ranked
    by their best-matching item. mAP@k: mean over queries of the average precision of the k
    best items, an item being relevant when it has the query's label (normalised by
    min(k, items of that label)), as in the fashion seed.
    """
    catalog = read_query_set(queries)
    if not index.labeled:
        raise CatalogError(f"index {index.name!r} has no labels: naming cannot be evaluated against it")
    check_group_by(index.items, group_by, index.name)
    backbone = backbone or index.backbone()
    index.check_backbone(backbone)
    return retrieve(
        embed_catalog(catalog, backbone, progress=progress), Vectors.of_index(index), map_at=map_at, group_by=group_by
    )


def evaluate_leave_one_out(index: Index, *, map_at: int = MAP_AT, group_by: str | None = None) -> Evaluation:
    """Each labeled item queries the rest of its own index (the fashion seed's mAP@5, per group if asked)."""
    check_group_by(index.items, group_by, index.name)
    gallery = Vectors.of_index(index)
    return retrieve(gallery, gallery, map_at=map_at, leave_one_out=True, group_by=group_by, protocol="leave-one-out")


def read_query_set(source: str | Path) -> Catalog:
    """A labeled set of query pictures: class sub-folders named by label, or a CSV with a label column."""
    catalog = read_catalog(source)
    if catalog.kind == "flat" or not catalog.labeled:
        raise CatalogError(
            f"{source}: queries must be class sub-folders named by label (or a CSV with a label "
            f"column); found a {'flat folder' if catalog.kind == 'flat' else 'CSV without labels'}"
        )
    return catalog


def check_group_by(items: Sequence[Item], group_by: str | None, name: str) -> None:
    """A clear error unless the items can be grouped so: by `label`, or by a metadata column they have."""
    if group_by is None or group_by == "label":
        return
    columns = sorted({key for item in items[:1000] for key in item.metadata})
    if group_by not in columns:
        have = f"label or one of: {', '.join(columns)}" if columns else "only label (it has no metadata columns)"
        raise CatalogError(f"cannot group by {group_by!r}: {name} has {have}")


def _left_out(item: Item, *, leave_one_out: bool) -> Skip:
    """Why a query of leave-one-out or of the reverse protocol cannot be used."""
    if item.label is None:
        return Skip(item.path, "no label")
    if leave_one_out:
        return Skip(item.path, f"the only picture of {quoted(item.label)}: nothing else to find", item.label)
    return Skip(item.path, f"{quoted(item.label)} is no label of the query set", item.label)


def _group_value(item: Item, group_by: str | None) -> str | None:
    if group_by is None:
        return None
    return item.label if group_by == "label" else item.metadata.get(group_by)


def _distribution(items: Sequence[Item], group_by: str) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for item in items:
        value = _group_value(item, group_by)
        counts[value if value is not None else "(none)"] += 1
    return dict(counts)

"""Retrieval evaluation on any catalog: query sets, leave-one-out, pairs top-k of 20, the another-universe decision."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import settings
from .backbones import Backbone, Hybrid, load_backbone, normalise, parse_weights
from .build import build_index, embed_items
from .catalog import Catalog, Item, Skip, read_catalog
from .errors import CatalogError, ImageError, IndexLoadError, IndexMismatchError, ModelError, RecommenderError
from .images import read_bytes
from .index import Index

RECALL_AT = (1, 5, 10)
MAP_AT = 5
#: The look-alike challenge: the true right picture among 19 random foils.
PAIR_FOILS = 19
#: Other another-universe rules measured beside the index's own (quantiles of `recommend.calibrate`).
RULE_QUANTILES = (0.01, 0.02, 0.10)
#: Pictures embedded to time a backbone when every vector came from a cache.
TIMING_SAMPLE = 32
_BLOCK = 256  # queries scored at a time: (256, N) float32 scores bound the memory
_SHEET_CELL = 128


# ================================================================================ metric definitions


def label_ranks(label_scores: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(Q,) rank of each query's true label among (Q, L) label scores (1 = named right); 0 where `true` is -1.

    Ties count in the query's favour: the rank is one plus the number of labels scoring strictly higher.
    """
    known = true >= 0
    own = label_scores[np.arange(len(true)), np.where(known, true, 0)]
    return np.where(known, 1 + (label_scores > own[:, None]).sum(axis=1), 0)


def average_precision(relevant: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """(Q,) AP@k from the (Q, k) relevance of each query's k best items, best first.

    The sum of precision@i over the ranks i that hit, divided by min(k, relevant items in the
    gallery), as in the fashion seed; 0 when the gallery holds nothing relevant.
    """
    relevant = np.asarray(relevant, dtype=bool)
    k = relevant.shape[1]
    precision = np.cumsum(relevant, axis=1) / np.arange(1, k + 1)
    denominator = np.minimum(k, np.asarray(n_relevant))
    total = (precision * relevant).sum(axis=1)
    return np.divide(total, denominator, out=np.zeros(len(total)), where=denominator > 0)


def recall_at(ranks: np.ndarray, k: int) -> float:
    """The fraction of queries whose true label ranks within the k best (rank 0, unknown, never does)."""
    ranks = np.asarray(ranks)
    return float(np.mean((ranks >= 1) & (ranks <= k))) if ranks.size else 0.0


def pair_ranks(true_scores: np.ndarray, foil_scores: np.ndarray) -> np.ndarray:
    """(P,) rank of the true right picture among itself and its (P, F) foils; ties go to the true one."""
    return 1 + (np.asarray(foil_scores) > np.asarray(true_scores)[:, None]).sum(axis=1)


def decision_metrics(inside: np.ndarray, outside: np.ndarray, threshold: float) -> dict[str, Any]:
    """How a threshold on the best score sorts pictures of the catalog's universe from the others.

    A picture scoring below the threshold is refused ("another universe"), the decision's positive:
    precision = refused pictures that are truly outside, recall = outside pictures refused.
    `kept` is the fraction of in-catalog pictures accepted; accuracy counts every picture once,
    balanced accuracy weighs both sides equally (the outside set is usually small).
    """
    inside, outside = np.asarray(inside, dtype=np.float64), np.asarray(outside, dtype=np.float64)
    refused_out, refused_in = int((outside < threshold).sum()), int((inside < threshold).sum())
    kept = 1 - refused_in / len(inside) if len(inside) else None
    refused = refused_out / len(outside) if len(outside) else None
    right = (len(inside) - refused_in) + refused_out
    return {
        "threshold": round(float(threshold), 4),
        "kept": _round(kept),
        "refused": _round(refused),
        "precision": _round(refused_out / (refused_out + refused_in) if refused_out + refused_in else None),
        "recall": _round(refused),
        "accuracy": _round(right / (len(inside) + len(outside)) if len(inside) + len(outside) else None),
        "balanced_accuracy": _round((kept + refused) / 2 if kept is not None and refused is not None else None),
    }


def best_cut(inside: np.ndarray, outside: np.ndarray) -> float:
    """The threshold with the best balanced accuracy on these very pictures (an oracle, for reference)."""
    inside, outside = np.sort(inside), np.sort(outside)
    candidates = np.unique(np.concatenate([inside, outside, [np.inf]]))
    kept = 1 - np.searchsorted(inside, candidates, side="left") / max(1, len(inside))
    refused = np.searchsorted(outside, candidates, side="left") / max(1, len(outside))
    return float(candidates[int(np.argmax(kept + refused))])


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


# ================================================================================ vectors of pictures


@dataclass
class Vectors:
    """Pictures with their unit vectors: an index's, or embedded now. Both sides of every protocol are these."""

    name: str
    items: list[Item]
    vectors: np.ndarray  # (N, D), float16 when memory-mapped from an index
    root: Path
    skipped: list[Skip] = field(default_factory=list)
    seconds: float = 0.0  # spent reading and embedding now (0 when the vectors came from an index)
    index: Index | None = None

    @classmethod
    def of_index(cls, index: Index, name: str | None = None) -> Vectors:
        return cls(name=name or index.name, items=index.items, vectors=index.embeddings, root=index.root, index=index)

    def path(self, row: int) -> Path:
        return (self.root / self.items[row].path).resolve()

    @property
    def labeled(self) -> bool:
        return any(item.label is not None for item in self.items)

    def block(self, rows: np.ndarray) -> np.ndarray:
        """(b, D) float32 vectors of these rows."""
        return np.asarray(self.vectors[rows], dtype=np.float32)

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """(Q, N) cosine scores of (Q, D) query vectors against every picture."""
        if self.index is not None:
            return self.index.scores(queries)
        return normalise(queries) @ np.asarray(self.vectors, dtype=np.float32).T


def embed_catalog(catalog: Catalog, backbone: Backbone, *, name: str | None = None, progress: bool = True) -> Vectors:
    """Read and embed every picture of a catalog now (nothing cached); unreadable ones are skipped."""
    started = time.perf_counter()
    embedded = embed_items(catalog.items, catalog.root, backbone, progress=progress,
                           desc=f"embedding {name or catalog.source}")
    if not embedded.items:
        first = f" ({embedded.skipped[0]})" if embedded.skipped else ""
        raise CatalogError(f"{catalog.source}: none of its pictures could be read{first}")
    return Vectors(name=name or _source_name(catalog.source), items=embedded.items, vectors=embedded.vectors,
                   root=catalog.root, skipped=catalog.skipped + embedded.skipped,
                   seconds=time.perf_counter() - started)


# ================================================================================ protocol 1 and 2: retrieval


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
            rows.append({"group": group, "items": items, "share": round(items / total, 4) if total else None,
                         "queries": part.queries, **part.metrics()})
        return rows

    def metrics(self) -> dict[str, float]:
        return {**{f"recall@{k}": round(v, 4) for k, v in self.recall.items()},
                f"mAP@{self.map_at}": round(self.mean_ap, 4)}

    def to_dict(self) -> dict[str, Any]:
        extra = {} if self.ann_recall is None else {"ann_recall@10": round(self.ann_recall, 4)}
        out = {
            "index": self.index,
            "protocol": self.protocol,
            "queries": self.queries,
            **self.metrics(),
            "unknown_labels": self.unknown_labels,
            "skipped": [str(s) for s in self.skipped],
            "ms_per_query": round(1000 * self.seconds_per_query, 2),
            "ms_per_image": _round(self.ms_per_image, 2),
            "index_mb": round(self.index_mb, 3),
            **extra,
        }
        if self.protocol in ("leave-one-out", "reverse"):
            out["left_out"] = self.left_out
        if self.group_by is not None:
            out["group_by"] = self.group_by
            out["groups"] = self.groups()
        return out

    def worst(self, n: int = 10) -> list[QueryResult]:
        """The n queries named worst: true label ranked lowest (or absent), then lowest score."""
        return sorted(self.results, key=lambda r: (-(r.rank or 10**9), r.score))[:n]

    def sheet_rows(self, n: int, title: str) -> list[SheetRow]:
        rows = []
        for r in self.worst(n):
            rank = f"rank {r.rank}" if r.rank else "not in the index"
            where = r.group if r.group and r.group != r.label else r.set if self.protocol == "queries" else None
            rows.append(SheetRow(title, (
                (r.path, f"{where}: {r.label}" if where else r.label),
                (r.top, f"{r.predicted} {r.score:.2f}"),
                (r.correct, f"{rank}, {r.correct_score:.2f}" if r.correct_score is not None else rank),
            )))
        return rows

    @classmethod
    def pooled(cls, parts: Sequence[Evaluation], protocol: str = "queries") -> Evaluation:
        """All queries of several evaluations against one gallery, as one evaluation."""
        first = parts[0]
        results = [r for p in parts for r in p.results]
        seconds = sum(p.seconds_per_query * p.queries for p in parts) / max(1, len(results))
        return cls(first.index, results, map_at=first.map_at, protocol=protocol,
                   unknown_labels=sorted({u for p in parts for u in p.unknown_labels}),
                   skipped=[s for p in parts for s in p.skipped], seconds_per_query=seconds,
                   index_mb=first.index_mb, ms_per_image=first.ms_per_image, group_by=first.group_by,
                   distribution=first.distribution)


def retrieve(queries: Vectors, gallery: Vectors, *, map_at: int = MAP_AT, leave_one_out: bool = False,
             group_by: str | None = None, protocol: str = "queries") -> Evaluation:
    """Score labeled queries against a labeled gallery: the core of the query-set and leave-one-out protocols.

    `leave_one_out`: queries and gallery are the same pictures; each leaves itself out, and items
    alone in their label (nothing to find) are left out of the metrics and counted. The reverse
    protocol leaves out queries whose label the gallery lacks: a held-out set rarely covers every
    catalog label, and those queries would only measure its coverage.
    """
    if not gallery.labeled:
        raise CatalogError(f"index {gallery.name!r} has no labels: naming cannot be evaluated against it")
    if not queries.labeled:
        raise CatalogError(f"{queries.name}: the queries have no labels (use class sub-folders named by label "
                           "or a CSV with a label column)")
    started = time.perf_counter()
    names = sorted({item.label for item in gallery.items if item.label is not None})
    code = {name: i for i, name in enumerate(names)}
    g_codes = np.array([code.get(item.label, -1) if item.label is not None else -1 for item in gallery.items])
    order = np.argsort(g_codes, kind="stable")
    order = order[g_codes[order] >= 0]  # labeled gallery items grouped by label
    starts = np.searchsorted(g_codes[order], np.arange(len(names)))
    members = np.split(order, starts[1:])  # gallery rows of each label
    counts = np.bincount(g_codes[g_codes >= 0], minlength=len(names))
    q_codes = np.array([code.get(item.label, -1) if item.label is not None else -1 for item in queries.items])
    rows = np.arange(len(queries.items))
    left_out = 0
    if leave_one_out or protocol == "reverse":
        alone = (q_codes < 0) | (counts[np.maximum(q_codes, 0)] < (2 if leave_one_out else 1))
        left_out, rows = int(alone.sum()), rows[~alone]
    groups = [_group_value(item, group_by) for item in queries.items]
    k = max(1, min(map_at, len(gallery.items) - int(leave_one_out)))
    results: list[QueryResult] = []
    for start in range(0, len(rows), _BLOCK):
        block = rows[start : start + _BLOCK]
        scores = gallery.scores(queries.block(block))  # (b, N)
        if leave_one_out:
            scores[np.arange(len(block)), block] = -np.inf  # not itself
        per_label = np.maximum.reduceat(scores[:, order], starts, axis=1)  # (b, L) best item per label
        qc = q_codes[block]
        ranks = label_ranks(per_label, qc)
        top = _top_k(scores, k)  # (b, k) best first
        relevant = (g_codes[top] == qc[:, None]) & (qc[:, None] >= 0)
        n_relevant = np.where(qc >= 0, counts[np.maximum(qc, 0)] - int(leave_one_out), 0)
        aps = average_precision(relevant, n_relevant)
        best = np.argmax(per_label, axis=1)
        for i, row in enumerate(block):
            correct = correct_score = None
            if qc[i] >= 0:
                own = members[qc[i]]
                j = int(own[np.argmax(scores[i, own])])
                correct, correct_score = gallery.path(j), float(scores[i, j])
            results.append(QueryResult(
                path=queries.path(row), label=queries.items[row].label or "", predicted=names[best[i]],
                score=float(per_label[i, best[i]]), rank=int(ranks[i]) or None, ap=float(aps[i]),
                top=gallery.path(int(top[i, 0])), correct=correct, correct_score=correct_score, group=groups[row],
                set=queries.name))
    seconds = (time.perf_counter() - started + queries.seconds) / max(1, len(results))
    unknown = sorted({item.label for item in queries.items if item.label is not None and item.label not in code})
    distribution = _distribution(gallery.items, group_by) if group_by else {}
    index_mb = gallery.index.size_bytes / 1e6 if gallery.index is not None else 0.0
    ms = 1000 * queries.seconds / len(queries.items) if queries.seconds else None
    ann = None
    if gallery.index is not None and not gallery.index.store.exact and len(rows):
        # An approximate store (Milvus): how much of exact search its own top 10 finds, on these queries.
        ann = gallery.index.ann_recall(queries.block(rows[:_BLOCK]), 10)
    return Evaluation(index=gallery.name, results=results, map_at=map_at, protocol=protocol, unknown_labels=unknown,
                      skipped=list(queries.skipped), seconds_per_query=seconds, index_mb=index_mb, ms_per_image=ms,
                      group_by=group_by, distribution=distribution, left_out=left_out, ann_recall=ann)


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
    return retrieve(embed_catalog(catalog, backbone, progress=progress), Vectors.of_index(index), map_at=map_at,
                    group_by=group_by)


def evaluate_leave_one_out(index: Index, *, map_at: int = MAP_AT, group_by: str | None = None) -> Evaluation:
    """Each labeled item queries the rest of its own index (the fashion seed's mAP@5, per group if asked)."""
    check_group_by(index.items, group_by, index.name)
    gallery = Vectors.of_index(index)
    return retrieve(gallery, gallery, map_at=map_at, leave_one_out=True, group_by=group_by, protocol="leave-one-out")


def read_query_set(source: str | Path) -> Catalog:
    """A labeled set of query pictures: class sub-folders named by label, or a CSV with a label column."""
    catalog = read_catalog(source)
    if catalog.kind == "flat" or not catalog.labeled:
        raise CatalogError(f"{source}: queries must be class sub-folders named by label (or a CSV with a label "
                           f"column); found a {'flat folder' if catalog.kind == 'flat' else 'CSV without labels'}")
    return catalog


def check_group_by(items: Sequence[Item], group_by: str | None, name: str) -> None:
    """A clear error unless the items can be grouped so: by `label`, or by a metadata column they have."""
    if group_by is None or group_by == "label":
        return
    columns = sorted({key for item in items[:1000] for key in item.metadata})
    if group_by not in columns:
        have = f"label or one of: {', '.join(columns)}" if columns else "only label (it has no metadata columns)"
        raise CatalogError(f"cannot group by {group_by!r}: {name} has {have}")


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


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) column indices of each row's k highest scores, best first."""
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.tile(np.arange(scores.shape[1]), (scores.shape[0], 1))
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


# ================================================================================ protocol 3: pairs, top-k of 20


@dataclass(frozen=True)
class PairResult:
    """One left picture: the rank of its true right among the candidates, and the best foil."""

    left: Path
    right: Path
    rank: int
    score: float
    foil: Path
    foil_score: float


@dataclass
class PairsEvaluation:
    """Top-1 and top-2 accuracy of finding each left picture's right one among itself and random foils."""

    source: str
    results: list[PairResult]
    candidates: int
    seed: int
    skipped: list[Skip] = field(default_factory=list)
    ms_per_image: float | None = None
    index_mb: float | None = None

    def top(self, k: int) -> float:
        return float(np.mean([r.rank <= k for r in self.results])) if self.results else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": "pairs", "source": self.source, "pairs": len(self.results), "candidates": self.candidates,
            "seed": self.seed, "top-1": round(self.top(1), 4), "top-2": round(self.top(2), 4),
            "chance_top-1": round(1 / self.candidates, 4), "chance_top-2": round(min(1.0, 2 / self.candidates), 4),
            "skipped": [str(s) for s in self.skipped], "ms_per_image": _round(self.ms_per_image, 2),
            "index_mb": _round(self.index_mb, 3),
        }

    def worst(self, n: int = 10) -> list[PairResult]:
        """The pairs whose true right ranked lowest, then by how far the best foil beat it."""
        return sorted(self.results, key=lambda r: (-r.rank, r.score - r.foil_score))[:n]

    def sheet_rows(self, n: int, title: str) -> list[SheetRow]:
        return [SheetRow(title, ((r.left, "left"), (r.foil, f"foil {r.foil_score:.2f}"),
                                 (r.right, f"rank {r.rank}, {r.score:.2f}"))) for r in self.worst(n)]


@dataclass(frozen=True)
class Pairs:
    """A pairs CSV read: the pictures as an unlabeled catalog, and the pairs as content hashes."""

    catalog: Catalog
    pairs: list[tuple[str, str]]  # (left sha256, right sha256)
    paths: dict[str, str]  # sha256 -> a path relative to the catalog root


def read_pairs(source: str | Path, *, left_column: str = "left", right_column: str = "right") -> Pairs:
    """A CSV with one left/right pair of picture paths (relative to the CSV) a row; bad rows are skipped."""
    import csv

    path = Path(source).expanduser()
    if not path.is_file():
        raise CatalogError(f"{path}: no such CSV file")
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{path}: cannot be read as UTF-8 text ({exc})") from None
    header = [h.strip().lower() for h in rows[0]] if rows else []
    if left_column not in header or right_column not in header:
        raise CatalogError(f"{path}: a pairs CSV needs the columns {left_column!r} and {right_column!r} (one "
                           f"picture pair a row); found: {', '.join(header) or 'nothing'}")
    li, ri = header.index(left_column), header.index(right_column)
    root = path.resolve().parent
    skipped: list[Skip] = []
    hashes: dict[str, str] = {}  # relative path -> sha256
    pairs = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path.name} row {number}"
        if len(row) <= max(li, ri):
            skipped.append(Skip(where, "too few fields"))
            continue
        shas = []
        for cell in (row[li].strip(), row[ri].strip()):
            if cell not in hashes:
                try:
                    hashes[cell] = hashlib.sha256(read_bytes(root / cell, name=cell)).hexdigest()
                except ImageError as exc:
                    hashes[cell] = ""
                    skipped.append(Skip(where, str(exc)))
            shas.append(hashes[cell])
        if all(shas):
            pairs.append((shas[0], shas[1]))
    if len({right for _, right in pairs}) < 2:
        raise CatalogError(f"{path}: fewer than two usable pairs with different right pictures; nothing to rank")
    paths = {sha: rel for rel, sha in reversed(hashes.items()) if sha}  # the first path of each picture
    items = [Item(id=rel, path=rel) for sha, rel in paths.items()]
    return Pairs(Catalog(source=path, root=root, kind="csv", items=items, skipped=skipped), pairs, paths)


def evaluate_pairs(pairs: Pairs, vectors: Vectors, *, seed: int = 0, foils: int = PAIR_FOILS) -> PairsEvaluation:
    """For each left picture, rank its true right among `foils` right pictures of other pairs drawn at random.

    Foils are drawn per pair with a seeded generator, without repeats and never the true right
    picture itself (by content), so that a run is reproducible and every candidate is different.
    """
    row_of = {item.sha256: i for i, item in enumerate(vectors.items)}
    usable = [(left, right) for left, right in pairs.pairs if left in row_of and right in row_of]
    rights = list(dict.fromkeys(right for _, right in usable))
    if len(rights) < 2:
        raise CatalogError(f"{pairs.catalog.source}: fewer than two pairs could be embedded; nothing to rank")
    n_foils = min(foils, len(rights) - 1)
    rng = np.random.default_rng(seed)
    position = {sha: i for i, sha in enumerate(rights)}
    left_vecs = vectors.block(np.array([row_of[left] for left, _ in usable]))  # (P, D)
    right_vecs = vectors.block(np.array([row_of[sha] for sha in rights]))  # (U, D)
    scores = normalise(left_vecs) @ normalise(right_vecs).T  # (P, U)
    results = []
    for p, (left, right) in enumerate(usable):
        own = position[right]
        drawn = rng.choice(len(rights) - 1, size=n_foils, replace=False)
        drawn = drawn + (drawn >= own)  # skip the true right picture
        foil_scores = scores[p, drawn]
        rank = int(pair_ranks(scores[p, [own]], foil_scores[None, :])[0])
        best = int(drawn[np.argmax(foil_scores)])
        results.append(PairResult(left=vectors.path(row_of[left]), right=vectors.path(row_of[right]), rank=rank,
                                  score=float(scores[p, own]), foil=vectors.path(row_of[rights[best]]),
                                  foil_score=float(scores[p, best])))
    missing = len(pairs.pairs) - len(usable)
    skipped = pairs.catalog.skipped + ([Skip(str(pairs.catalog.source), f"{missing} pairs with a picture that "
                                             "could not be embedded")] if missing else [])
    ms = 1000 * vectors.seconds / len(vectors.items) if vectors.seconds else None
    return PairsEvaluation(source=str(pairs.catalog.source), results=results, candidates=n_foils + 1, seed=seed,
                           skipped=skipped, ms_per_image=ms,
                           index_mb=vectors.index.size_bytes / 1e6 if vectors.index is not None else None)


# ================================================================================ protocol 4: another universe


@dataclass(frozen=True)
class Decision:
    """One picture of the another-universe protocol: its best score, best match, and which side it is from."""

    path: Path
    inside: bool
    score: float
    top: Path
    label: str | None
    set: str = ""


@dataclass
class UniverseEvaluation:
    """The index's calibrated in-catalog decision on pictures known to be inside or outside its universe."""

    index: str
    threshold: float
    decisions: list[Decision]
    rules: list[dict[str, Any]]  # the calibrated rule first, then other quantiles and the best cut
    skipped: list[Skip] = field(default_factory=list)
    ms_per_image: float | None = None
    index_mb: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": "another-universe", "index": self.index,
            "inside": sum(d.inside for d in self.decisions), "outside": sum(not d.inside for d in self.decisions),
            **self.rules[0], "rules": self.rules, "skipped": [str(s) for s in self.skipped],
            "ms_per_image": _round(self.ms_per_image, 2), "index_mb": round(self.index_mb, 3),
        }

    def worst(self, n: int = 10) -> list[Decision]:
        """Wrong decisions first, the most confident first: refused catalog pictures, accepted outsiders."""
        return sorted(self.decisions, key=lambda d: -((self.threshold - d.score) if d.inside
                                                      else (d.score - self.threshold)))[:n]

    def sheet_rows(self, n: int, title: str) -> list[SheetRow]:
        rows = []
        for d in self.worst(n):
            verdict = "kept" if d.score >= self.threshold else "refused"
            sign = ">=" if d.score >= self.threshold else "<"
            rows.append(SheetRow(title, ((d.path, f"{d.set}: {verdict}"),
                                         (d.top, f"{d.label or ''} {d.score:.2f} {sign} {self.threshold:.2f}"))))
        return rows


def evaluate_universe(index: Index, inside: Sequence[Vectors], outside: Sequence[Vectors]) -> UniverseEvaluation:
    """Precision, recall and accuracy of "another universe" with the index's calibrated threshold.

    Beside the calibrated rule, the same calibration at other quantiles and the best cut on these
    very pictures (an oracle) show whether the rule is well placed.
    """
    if not inside or not outside:
        raise CatalogError("the another-universe decision needs pictures from inside the catalog and from outside")
    gallery = Vectors.of_index(index)
    decisions = []
    for sets, is_inside in ((inside, True), (outside, False)):
        for vectors in sets:
            for start in range(0, len(vectors.items), _BLOCK):
                rows = np.arange(start, min(start + _BLOCK, len(vectors.items)))
                scores = gallery.scores(vectors.block(rows))
                best = scores.argmax(axis=1)
                decisions += [Decision(vectors.path(r), is_inside, float(scores[i, best[i]]), gallery.path(best[i]),
                                       index.items[best[i]].label, vectors.name) for i, r in enumerate(rows)]
    ins = np.array([d.score for d in decisions if d.inside])
    outs = np.array([d.score for d in decisions if not d.inside])
    calibration = index.calibration
    threshold = float(calibration["threshold"])
    rules = [{"rule": f"index calibration ({calibration.get('method', 'stored threshold')})",
              **decision_metrics(ins, outs, threshold)}]
    from .recommend import calibrate  # the same rule at other quantiles

    embeddings, labels = np.asarray(index.embeddings), [item.label for item in index.items]
    for q in RULE_QUANTILES:
        other = calibrate(embeddings, labels, quantile=q)
        rules.append({"rule": f"{q:.0%} quantile", **decision_metrics(ins, outs, other["threshold"])})
    rules.append({"rule": "best cut on these pictures (oracle)", **decision_metrics(ins, outs, best_cut(ins, outs))})
    embedded = [v for v in (*inside, *outside) if v.seconds]
    ms = 1000 * sum(v.seconds for v in embedded) / sum(len(v.items) for v in embedded) if embedded else None
    return UniverseEvaluation(index=index.name, threshold=threshold, decisions=decisions, rules=rules,
                              skipped=[s for v in (*inside, *outside) for s in v.skipped], ms_per_image=ms,
                              index_mb=index.size_bytes / 1e6)


# ================================================================================ several backbones: cached indexes


@dataclass(frozen=True)
class ModelSpec:
    """One backbone of a comparison: how it was written, and what `load_backbone` takes."""

    label: str
    model: str
    weights: tuple[float, ...] | None = None

    def load(self) -> Backbone:
        return load_backbone(self.model, weights=list(self.weights) if self.weights else None)


_INLINE_WEIGHT = re.compile(r"^(.+)@(\d*\.?\d+)$")


def parse_models(text: str, weights: str | Sequence[float] | None = None) -> list[ModelSpec]:
    """`"a,b,c+d@0.9,0.1"`-style lists: comma-separated models; hybrid parts joined by `+`.

    A hybrid's weights are written inline after each part (`efficientnet-lite0@0.9+colour-histogram@0.1`)
    or, for every hybrid written without them, given once by `weights` (`--weights 0.9,0.1`).
    Hybrids without either weigh their parts equally.
    """
    specs = []
    default = tuple(parse_weights(weights)) if weights else None
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        if re.fullmatch(r"\d*\.?\d+", entry):
            raise ModelError(f"{entry!r} in --models is a number, not a model: write hybrid weights inline "
                             "(efficientnet-lite0@0.9+colour-histogram@0.1) or with --weights")
        parts = [p.strip() for p in entry.split("+")]
        found = [_INLINE_WEIGHT.match(p) for p in parts]
        if any(found) and not all(found):
            raise ModelError(f"bad model {entry!r}: give every part of a hybrid a weight (A@0.9+B@0.1) or none")
        if all(found):
            names = [m.group(1) for m in found if m]
            spec = ModelSpec(entry, "+".join(names), tuple(float(m.group(2)) for m in found if m))
        elif len(parts) > 1 and default:
            spec = ModelSpec("+".join(f"{p}@{w:g}" for p, w in zip(parts, default)), entry, default)
        else:
            spec = ModelSpec(entry, entry)
        specs.append(spec)
    if not specs:
        raise ModelError("--models names no model; list them with commas, e.g. colour-histogram,efficientnet-lite0")
    return specs


def evaluation_cache(cache_dir: str | Path | None = None) -> Path:
    """Where the indexes built for evaluations live: the cache folder, away from the indexes users search."""
    return settings.cache_dir(cache_dir) / "evaluation"


def cached_index(catalog: Catalog, backbone: Backbone, *, directory: Path, progress: bool = True) -> Index:
    """The index of `catalog` with `backbone`, built once and re-used while the catalog's files are unchanged.

    A hybrid is assembled from its parts' cached indexes (each vector scaled by the square root
    of its weight, as `Hybrid` does), so that trying several weights embeds every picture once.
    """
    name = _cache_name(catalog, backbone)
    fingerprint = _fingerprint(catalog)
    try:
        index = Index.load(name, index_dir=directory)
        if index.manifest["catalog"].get("fingerprint") == fingerprint:
            index.check_backbone(backbone)
            return index
    except IndexLoadError:
        pass  # absent, stale or built otherwise: (re)build below, re-using what still matches
    if isinstance(backbone, Hybrid):
        reuse = _assemble(catalog, backbone, directory, progress)
    else:  # the same pictures in another source (pairs of catalog pictures) are not embedded twice
        reuse = _known_vectors(directory, backbone, {item.path for item in catalog.items}, catalog.root)
    build_index(catalog, name=name, backbone=backbone, index_dir=directory, fingerprint=fingerprint, reuse=reuse,
                progress=progress)
    return Index.load(name, index_dir=directory)


def _assemble(catalog: Catalog, hybrid: Hybrid, directory: Path, progress: bool) -> dict[str, np.ndarray]:
    parts = [cached_index(catalog, part, directory=directory, progress=progress) for part in hybrid.parts]
    rows = [{item.sha256: i for i, item in enumerate(p.items)} for p in parts]
    common = [sha for sha in rows[0] if all(sha in r for r in rows[1:])]
    pieces = [np.asarray(p.embeddings[[r[sha] for sha in common]], dtype=np.float32) * np.sqrt(w)
              for p, r, w in zip(parts, rows, hybrid.weights)]
    vectors = normalise(np.concatenate(pieces, axis=1))  # re-normalised: the parts were stored in float16
    return dict(zip(common, vectors))


def _known_vectors(directory: Path, backbone: Backbone, paths: set[str], root: Path) -> dict[str, np.ndarray]:
    """Vectors by content hash from the other cached indexes of this backbone that hold these very files."""
    wanted = {str((root / p).resolve()) for p in paths}
    known: dict[str, np.ndarray] = {}
    for manifest in sorted(directory.glob("*/manifest.json")) if directory.is_dir() else []:
        try:
            head = json.loads(manifest.read_text())
            if head.get("backbone") != backbone.spec or head.get("weights") != backbone.identity:
                continue
            index = Index.load(manifest.parent)
        except (OSError, ValueError, IndexLoadError):
            continue  # a broken cache entry is rebuilt when its own turn comes
        for row, item in enumerate(index.items):
            if item.sha256 and str(index.path_of(item)) in wanted:
                known[item.sha256] = np.asarray(index.embeddings[row], dtype=np.float32)
    return known


def _cache_name(catalog: Catalog, backbone: Backbone) -> str:
    source = Path(catalog.source).resolve()
    digest = hashlib.sha256(json.dumps([str(source), catalog.columns, backbone.spec], sort_keys=True,
                                       default=str).encode()).hexdigest()[:10]
    model = Path(backbone.name).name if "/" in backbone.name else backbone.name
    return f"{_slug(source.stem or source.name)}-{_slug(model.replace('+', '_'))}-{digest}"


def _slug(text: str, size: int = 24) -> str:
    slug = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")[:size].strip("-._")
    return slug or "x"


def _fingerprint(catalog: Catalog) -> str:
    """What the catalog lists and each file's size and modification time: cheap, and changes when a file does."""
    digest = hashlib.sha256(f"{catalog.kind}\0{catalog.root}".encode())
    for item in catalog.items:
        try:
            stat = (catalog.root / item.path).stat()
            when = f"{stat.st_size}:{stat.st_mtime_ns}"
        except OSError:
            when = "missing"
        digest.update(json.dumps([item.id, item.path, item.label, dict(item.metadata), when]).encode())
    return digest.hexdigest()


def time_embedding(backbone: Backbone, items: Sequence[Item], root: Path, *, sample: int = TIMING_SAMPLE,
                   repeats: int = 3) -> float:
    """Milliseconds to read, decode and embed one picture, in batches, on a spread sample of the catalog.

    After a warm-up batch (first calls allocate and pick kernels), the best of a few repeats: on a
    shared machine the fastest run is the one least disturbed by other work.
    """
    picked = list(items[:: max(1, len(items) // sample)][:sample])
    embed_items(picked[: backbone.batch_size], root, backbone, progress=False)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        embedded = embed_items(picked, root, backbone, progress=False)
        best = min(best, (time.perf_counter() - started) / max(1, len(embedded.items)))
    return 1000 * best


def _ms_per_image(catalog: Catalog, backbone: Backbone, directory: Path) -> float:
    """Reading, decoding and embedding time per picture: from the cached builds of the catalog where they
    embedded enough pictures to say (a hybrid costs the sum of its parts), else from a fresh sample."""
    rates = []
    for part in backbone.parts if isinstance(backbone, Hybrid) else [backbone]:
        stats = cached_index(catalog, part, directory=directory, progress=False).manifest.get("stats") or {}
        if stats.get("embedded", 0) < TIMING_SAMPLE:
            return time_embedding(backbone, catalog.items, catalog.root)
        rates.append(1000 * stats["seconds"] / stats["embedded"])
    return sum(rates)


# ================================================================================ runs and reports


@dataclass
class Plan:
    """What to evaluate: any of the four protocols, with their options."""

    queries: list[Path] = field(default_factory=list)
    query_index: Index | None = None  # an index of labeled query pictures, built with the gallery's backbone
    reverse: bool = False
    leave_one_out: bool = False
    group_by: str | None = None
    pairs: Path | None = None
    seed: int = 0
    inside: list[Path] = field(default_factory=list)
    outside: list[Path] = field(default_factory=list)
    map_at: int = MAP_AT

    def check(self, *, has_gallery: bool) -> None:
        if self.reverse and not (self.queries or self.query_index):
            raise RecommenderError("--reverse swaps query set and gallery: it needs --queries or --query-index")
        if self.inside and not self.outside:
            raise RecommenderError("--inside needs --outside: the decision is judged on both kinds of pictures")
        if self.outside and not (self.inside or self.queries):
            raise RecommenderError("--outside needs pictures from inside the catalog too: --inside or --queries")
        if not (self.queries or self.query_index or self.leave_one_out or self.pairs or self.outside):
            raise RecommenderError("nothing to evaluate: give --queries, --leave-one-out, --pairs or --outside")
        needs = self.queries or self.query_index or self.leave_one_out or self.outside
        if needs and not has_gallery:
            raise RecommenderError("this protocol needs a gallery: --index NAME or --catalog SOURCE")


@dataclass
class ModelRun:
    """Every protocol's result for one backbone (or why it could not run here)."""

    model: str
    status: str = "ok"
    index: str | None = None
    index_mb: float | None = None
    ms_per_image: float | None = None
    sets: dict[str, Evaluation] = field(default_factory=dict)
    pooled: Evaluation | None = None
    reverse: dict[str, Evaluation] = field(default_factory=dict)
    leave_one_out: Evaluation | None = None
    pairs: PairsEvaluation | None = None
    universe: UniverseEvaluation | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "status": self.status}
        if not self.ok:
            return out
        if self.pooled is not None:
            out |= self.pooled.to_dict()
            if len(self.sets) > 1:
                out["sets"] = {name: e.to_dict() for name, e in self.sets.items()}
        out |= {"index": self.index, "index_mb": _round(self.index_mb, 3), "ms_per_image": _round(self.ms_per_image, 2)}
        if self.reverse:
            out["reverse"] = {name: e.to_dict() for name, e in self.reverse.items()}
        if self.leave_one_out is not None:
            out["leave_one_out"] = self.leave_one_out.to_dict()
        if self.pairs is not None:
            out["pairs"] = self.pairs.to_dict()
        if self.universe is not None:
            out["universe"] = self.universe.to_dict()
        return out

    def sheet_rows(self, n: int) -> list[SheetRow]:
        rows: list[SheetRow] = []
        if self.pooled is not None:
            rows += self.pooled.sheet_rows(n, f"{self.model}: worst queries (query | top match | a correct item)")
        if self.leave_one_out is not None:
            rows += self.leave_one_out.sheet_rows(n, f"{self.model}: leave-one-out (query | top match | a correct "
                                                     "item)")
        if self.pairs is not None:
            rows += self.pairs.sheet_rows(n, f"{self.model}: pairs (left | best foil | true right)")
        if self.universe is not None:
            rows += self.universe.sheet_rows(n, f"{self.model}: another universe, worst decisions (query | top "
                                                "match)")
        return rows


@dataclass
class Report:
    """One run of `evaluate`: a `ModelRun` per backbone, printable as JSON, Markdown or a contact sheet."""

    gallery: str | None
    runs: list[ModelRun]
    plan: Plan

    def to_dict(self) -> dict[str, Any]:
        if len(self.runs) == 1:
            return self.runs[0].to_dict()
        return {"gallery": self.gallery, "models": [run.to_dict() for run in self.runs]}

    def to_markdown(self, *, worst: int = 0) -> str:
        return _markdown(self, worst)

    def to_text(self, *, worst: int = 0) -> str:
        """Plain lines for the simplest run (one index, one query set), else the Markdown tables."""
        run = self.runs[0]
        simple = len(self.runs) == 1 and len(run.sets) == 1 and not (
            run.reverse or run.leave_one_out or run.pairs or run.universe)
        if not simple or run.pooled is None:
            return self.to_markdown(worst=worst)
        e = run.pooled
        lines = [f"{e.queries} queries against {run.index!r} ({run.model})"]
        lines += [f"  {key:<10} {value:.3f}" for key, value in e.metrics().items()]
        ms = f"{run.ms_per_image:.1f} ms an image, " if run.ms_per_image is not None else ""
        lines.append(f"  {ms}{1000 * e.seconds_per_query:.1f} ms a query, index {run.index_mb or 0:.1f} MB")
        lines += [f"{r.path}: {r.label}, named {r.predicted} ({r.score:.2f}), rank {r.rank or '-'}"
                  for r in e.worst(worst)] if worst else []
        return "\n".join(lines)

    def write_sheet(self, path: str | Path, *, worst: int = 10) -> list[Path]:
        """The worst queries of every protocol as a PNG contact sheet; one file per model when there are several."""
        path = Path(path)
        done = [run for run in self.runs if run.ok]
        written = []
        for run in done:
            target = path if len(done) == 1 else path.with_name(f"{path.stem}-{_slug(run.model, 40)}{path.suffix}")
            written.append(contact_sheet(run.sheet_rows(worst), target))
        return written


def evaluate_index(index: Index, plan: Plan, *, backbone: Backbone | None = None, progress: bool = True) -> Report:
    """Every protocol of `plan` against one built index; query pictures are embedded now with its backbone."""
    plan.check(has_gallery=True)
    sources = _read_sources(plan)
    if (plan.queries or plan.leave_one_out) and not index.labeled:
        raise CatalogError(f"index {index.name!r} has no labels: naming cannot be evaluated against it")
    check_group_by(index.items, plan.group_by, f"index {index.name!r}")
    needs_model = bool(plan.queries or plan.pairs or plan.inside or plan.outside)
    if needs_model:
        backbone = backbone or index.backbone()
        index.check_backbone(backbone)
    embedded: list[Vectors] = []

    def vectors_of(catalog: Catalog, name: str) -> Vectors:
        assert backbone is not None
        vectors = embed_catalog(catalog, backbone, name=name, progress=progress)
        embedded.append(vectors)
        return vectors

    run = ModelRun(index.manifest.get("backbone_name", "?"), index=index.name, index_mb=index.size_bytes / 1e6)
    _run_protocols(run, index, vectors_of, sources, plan)
    if embedded:
        run.ms_per_image = 1000 * sum(v.seconds for v in embedded) / sum(len(v.items) for v in embedded)
    else:
        try:
            run.ms_per_image = time_embedding(backbone or index.backbone(), index.items, index.root)
        except ModelError:
            run.ms_per_image = None  # the index's model cannot be loaded here: its other numbers still stand
    _stamp(run)
    return Report(index.name, [run], plan)


def compare_models(
    source: str | Path | None,
    models: Sequence[ModelSpec],
    plan: Plan,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    strict: bool = False,
) -> Report:
    """Every protocol of `plan` for each backbone, indexing `source` and the query pictures once per backbone.

    Indexes are cached in the evaluation cache and re-used while their pictures are unchanged. A
    backbone that cannot be loaded here gives a row "not run here: <reason>" unless `strict`.
    """
    plan.check(has_gallery=source is not None)
    if plan.query_index:
        raise RecommenderError("--query-index is built with one backbone; compare models with --queries FOLDER")
    catalog = read_catalog(source, image_column=image_column, label_column=label_column) if source else None
    if catalog is not None:
        if (plan.queries or plan.leave_one_out) and not catalog.labeled:
            raise CatalogError(f"{source}: the catalog has no labels: naming cannot be evaluated against it")
        check_group_by(catalog.items, plan.group_by, str(source))
    sources = _read_sources(plan)
    directory = evaluation_cache(cache_dir)
    runs = []
    for spec in models:
        try:
            backbone = spec.load()
        except ModelError as exc:
            if strict:
                raise
            reason = str(exc).splitlines()[0].split("; ")[0]  # the cause; the remedies are in the docs
            runs.append(ModelRun(spec.label, status=f"not run here: {reason}"))
            continue

        def vectors_of(catalog: Catalog, name: str, backbone: Backbone = backbone) -> Vectors:
            return Vectors.of_index(cached_index(catalog, backbone, directory=directory, progress=progress), name)

        gallery = cached_index(catalog, backbone, directory=directory, progress=progress) if catalog else None
        run = ModelRun(spec.label)
        if gallery is not None:
            run.index, run.index_mb = gallery.name, gallery.size_bytes / 1e6
        _run_protocols(run, gallery, vectors_of, sources, plan)
        timing = catalog or sources["pairs"].catalog  # type: ignore[union-attr]
        run.ms_per_image = _ms_per_image(timing, backbone, directory)
        if gallery is None and run.pairs is not None:
            run.index_mb = run.pairs.index_mb
        _stamp(run)
        runs.append(run)
    return Report(str(source) if source else None, runs, plan)


def _read_sources(plan: Plan) -> dict[str, Any]:
    """Every picture source of the plan read up front, so that bad input fails before any heavy work."""
    queries = {_unique_name(p, plan.queries): read_query_set(p) for p in plan.queries}
    inside = (plan.inside or plan.queries) if plan.outside else []
    return {
        "queries": queries,
        "inside": {_unique_name(p, inside): read_catalog(p) for p in inside},
        "outside": {_unique_name(p, plan.outside): read_catalog(p) for p in plan.outside},
        "pairs": read_pairs(plan.pairs) if plan.pairs else None,
    }


def _run_protocols(run: ModelRun, gallery: Index | None, vectors_of: Callable[[Catalog, str], Vectors],
                   sources: dict[str, Any], plan: Plan) -> None:
    embedded: dict[str, Vectors] = {}

    def get(catalog: Catalog, name: str) -> Vectors:
        key = str(Path(catalog.source).resolve())
        if key not in embedded:  # a folder both queried and judged inside is embedded once
            embedded[key] = vectors_of(catalog, name)
        return embedded[key]

    g = Vectors.of_index(gallery) if gallery is not None else None
    if gallery is not None and (sources["queries"] or plan.query_index):
        query_sets = {name: get(c, name) for name, c in sources["queries"].items()}
        if plan.query_index is not None:
            other = plan.query_index
            if other.manifest["backbone"] != gallery.manifest["backbone"] or other.manifest["weights"] != \
                    gallery.manifest["weights"]:
                raise IndexMismatchError(f"index {other.name!r} and {gallery.name!r} were built with different "
                                         "backbones; their vectors cannot be compared")
            query_sets[other.name] = Vectors.of_index(other)
        assert g is not None
        # Folders of queries have no metadata: beyond labels, their sets are the groups.
        group_by = plan.group_by if plan.group_by == "label" or all(
            plan.group_by in item.metadata for v in query_sets.values() for item in v.items[:1]) else None
        run.sets = {name: retrieve(v, g, map_at=plan.map_at, group_by=group_by) for name, v in query_sets.items()}
        run.pooled = Evaluation.pooled(list(run.sets.values()))
        if plan.reverse:
            run.reverse = {name: retrieve(g, v, map_at=plan.map_at, protocol="reverse")
                           for name, v in query_sets.items()}
    if gallery is not None and plan.leave_one_out:
        run.leave_one_out = evaluate_leave_one_out(gallery, map_at=plan.map_at, group_by=plan.group_by)
    if sources["pairs"] is not None:
        run.pairs = evaluate_pairs(sources["pairs"], get(sources["pairs"].catalog, "pairs"), seed=plan.seed)
    if gallery is not None and sources["outside"]:
        run.universe = evaluate_universe(gallery, [get(c, n) for n, c in sources["inside"].items()],
                                         [get(c, n) for n, c in sources["outside"].items()])


def _stamp(run: ModelRun) -> None:
    """Index size and embedding time belong to every report of the run."""
    for e in (*run.sets.values(), run.pooled, *run.reverse.values(), run.leave_one_out, run.pairs, run.universe):
        if e is not None:
            e.ms_per_image = run.ms_per_image
            if run.index_mb is not None:
                e.index_mb = run.index_mb


def _unique_name(path: Path, all_paths: Sequence[Path]) -> str:
    names = [Path(p).name for p in all_paths]
    return Path(path).name if names.count(Path(path).name) == 1 else str(path)


def _source_name(source: str | Path) -> str:
    return Path(source).name or str(source)


# ================================================================================ Markdown


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:.3f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in [*row, *[""] * (len(header) - len(row))]) + " |" for row in rows]
    return "\n".join(lines)


def _cost(run: ModelRun) -> list[Any]:
    return [None if run.index_mb is None else f"{run.index_mb:.2f}",
            None if run.ms_per_image is None else f"{run.ms_per_image:.1f}"]


def _markdown(report: Report, worst: int) -> str:
    runs, plan, k = report.runs, report.plan, report.plan.map_at
    single = len(runs) == 1
    out: list[str] = []
    if single:
        run = runs[0]
        size = f"{run.index_mb:.2f} MB" if run.index_mb is not None else "no index"
        ms = f"{run.ms_per_image:.1f} ms an image" if run.ms_per_image is not None else "embedding time unknown"
        out.append(f"## `{run.index or report.gallery}` ({run.model}): index {size}, {ms}")
    else:
        out.append(f"## {len(runs)} backbones on `{report.gallery or plan.pairs}`")
        out.append("MB: the gallery index on disk; ms/img: reading, decoding and embedding one picture here.")
    cost = ["MB", "ms/img"]
    metrics = [*(f"recall@{r}" for r in RECALL_AT), f"mAP@{k}"]

    def model_rows(pick: Callable[[ModelRun], list[Any]], width: int) -> list[list[Any]]:
        return [[run.model, *_cost(run), *pick(run)] if run.ok else [run.model, run.status, *[""] * (width + 1)]
                for run in runs]

    done = [run for run in runs if run.ok]
    if any(run.pooled for run in done):
        names = list(next(run for run in done if run.pooled).sets)
        out.append(f"### Query sets vs `{report.gallery or done[0].index}`: naming recall and mAP@{k}")
        if single:
            run = done[0]
            rows = [[name, e.queries, *e.metrics().values()] for name, e in run.sets.items()]
            if len(run.sets) > 1 and run.pooled:
                rows.append(["all", run.pooled.queries, *run.pooled.metrics().values()])
            out.append(_md_table(["query set", "queries", *metrics], rows))
        else:
            # "mean": every set weighs the same; "all": every query does (large sets dominate).
            mean = ["mean R@1"] if len(names) > 1 else []
            header = ["model", *cost, *(f"{n} R@1" for n in names), *mean, "all R@1", f"all mAP@{k}"]
            def sets_row(r: ModelRun) -> list[Any]:
                if r.pooled is None:
                    return []
                recalls = [r.sets[n].recall[1] for n in names]
                return [*recalls, *([float(np.mean(recalls))] if mean else []), r.pooled.recall[1], r.pooled.mean_ap]

            out.append(_md_table(header, model_rows(sets_row, len(names) + len(mean) + 2)))
        if any(run.pooled.group_by for run in done if run.pooled):
            out += _group_tables(runs, lambda r: r.pooled, f"Query sets by {plan.group_by}", k)
    if any(run.reverse for run in done):
        out.append("### Reverse: gallery items as queries against each query set (items whose label the set "
                   "lacks are left out)")
        names = list(next(run.reverse for run in done if run.reverse))
        if single:
            out.append(_md_table(["gallery", "queries", *metrics],
                                 [[n, e.queries, *e.metrics().values()] for n, e in done[0].reverse.items()]))
        else:
            out.append(_md_table(["model", *cost, *(f"{n} R@1" for n in names)],
                                 model_rows(lambda r: [r.reverse[n].recall[1] for n in names], len(names))))
    if any(run.leave_one_out for run in done):
        e0 = next(run.leave_one_out for run in done if run.leave_one_out)
        title = (f"Leave-one-out{f' by {plan.group_by}' if plan.group_by else ''}: each item queries the rest "
                 f"({e0.queries} queries; {e0.left_out} items alone in their label left out)")
        if plan.group_by:
            out += _group_tables(runs, lambda r: r.leave_one_out, title, k)
        elif single:
            out += [f"### {title}", _md_table(["queries", *metrics], [[e0.queries, *e0.metrics().values()]])]
        else:
            out += [f"### {title}"]
            out.append(_md_table(["model", *cost, *metrics], model_rows(
                lambda r: list(r.leave_one_out.metrics().values()) if r.leave_one_out else [], len(metrics))))
    if any(run.pairs for run in done):
        p0 = next(run.pairs for run in done if run.pairs)
        out.append(f"### Pairs: the true right picture among {p0.candidates} ({len(p0.results)} pairs, seed "
                   f"{p0.seed}; chance top-1 {1 / p0.candidates:.3f}, top-2 {min(1, 2 / p0.candidates):.3f})")
        out.append(_md_table(["model", *cost, "top-1", "top-2"], model_rows(
            lambda r: [r.pairs.top(1), r.pairs.top(2)] if r.pairs else [], 2)))
    if any(run.universe for run in done):
        u0 = next(run.universe for run in done if run.universe)
        n_in = sum(d.inside for d in u0.decisions)
        out.append(f"### Another universe: {n_in} pictures from the catalog's universe vs {len(u0.decisions) - n_in} "
                   "from outside (positive: refused as another universe)")
        columns = ["threshold", "kept", "refused", "precision", "recall", "accuracy", "balanced_accuracy"]
        if single:
            out.append(_md_table(["rule", *columns], [[rule["rule"], *(rule[c] for c in columns)]
                                                      for rule in done[0].universe.rules]))
        else:
            out.append(_md_table(["model", *cost, *columns, "best cut", "its balanced acc."], model_rows(
                lambda r: [*(r.universe.rules[0][c] for c in columns), r.universe.rules[-1]["threshold"],
                           r.universe.rules[-1]["balanced_accuracy"]] if r.universe else [], len(columns) + 2)))
    if worst:
        for run in done:
            rows = run.sheet_rows(worst)
            if rows:
                out.append(f"### Worst {worst}: {run.model}")
                out.append(_md_table(["protocol", "picture", "top match", "correct"], [
                    [r.section.split(": ", 1)[-1].split(" (")[0], *(f"{_short(p)} {c}".strip() for p, c in r.cells)]
                    for r in rows]))
    return "\n\n".join(out) + "\n"


def _group_tables(runs: list[ModelRun], pick: Callable[[ModelRun], Evaluation | None], title: str,
                  k: int) -> list[str]:
    done = [r for r in runs if r.ok and pick(r) is not None]
    if not done:
        return []
    first = pick(done[0])
    assert first is not None
    if len(runs) == 1:
        rows = [[g["group"], g["items"], f"{100 * g['share']:.1f}%" if g["share"] is not None else None,
                 g["queries"], g["recall@1"], g[f"mAP@{k}"]] for g in first.groups()]
        rows.append(["all", sum(first.distribution.values()), "100%", first.queries, first.recall[1], first.mean_ap])
        return [f"### {title}", _md_table(["group", "items", "share", "queries", "recall@1", f"mAP@{k}"], rows)]
    groups = [g["group"] for g in first.groups()][:12]  # the largest; every group is in --json
    shares = {g["group"]: g for g in first.groups()}
    header = ["model", "MB", "ms/img", "all R@1", f"all mAP@{k}", *(f"{g} mAP@{k}" for g in groups)]
    rows = [["items (share)", "", "", "", sum(first.distribution.values()),
             *(f"{shares[g]['items']} ({100 * (shares[g]['share'] or 0):.0f}%)" for g in groups)]]
    for run in runs:
        e = pick(run) if run.ok else None
        if e is None:
            rows.append([run.model, run.status])
            continue
        mine = {g["group"]: g for g in e.groups()}
        rows.append([run.model, *_cost(run), e.recall[1], e.mean_ap,
                     *(mine.get(g, {}).get(f"mAP@{k}") for g in groups)])
    more = f" ({len(shares) - len(groups)} more groups in --json)" if len(shares) > len(groups) else ""
    return [f"### {title}{more}", _md_table(header, rows)]


def _short(path: Path | None) -> str:
    return "" if path is None else "/".join(Path(path).parts[-2:])


# ================================================================================ contact sheet


@dataclass(frozen=True)
class SheetRow:
    """One row of a contact sheet: its section title, and (picture, caption) cells left to right."""

    section: str
    cells: tuple[tuple[Path | None, str], ...]


def contact_sheet(rows: Sequence[SheetRow], path: str | Path, *, cell: int = _SHEET_CELL) -> Path:
    """Draw rows of pictures with captions under section titles, as the retrieval blog shows its failures.

    Saved as a palette PNG: small enough to commit, and the pictures are flat colours anyway.
    """
    from PIL import Image, ImageDraw, ImageFont

    from .images import fit_square, load_image

    path = Path(path)
    if not rows:
        raise RecommenderError("no results to draw on a contact sheet")
    font = ImageFont.load_default(size=11)
    title_font = ImageFont.load_default(size=13)
    columns = max(len(r.cells) for r in rows)
    caption, title_h, pad = 16, 22, 6
    sections = list(dict.fromkeys(r.section for r in rows))
    width = pad + columns * (cell + pad)
    height = pad + len(sections) * title_h + len(rows) * (cell + caption + pad)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = pad
    for section in sections:
        draw.text((pad, y + 3), section, fill=(0, 0, 0), font=title_font)
        y += title_h
        for row in (r for r in rows if r.section == section):
            for c, (picture, text) in enumerate(row.cells):
                x = pad + c * (cell + pad)
                box = (x, y, x + cell - 1, y + cell - 1)
                try:
                    if picture is None:
                        raise ImageError("no picture")
                    sheet.paste(fit_square(load_image(picture), cell), (x, y))
                except (ImageError, OSError):
                    draw.rectangle(box, fill=(235, 235, 235))
                draw.rectangle(box, outline=(200, 200, 200))
                draw.text((x, y + cell + 2), _fit_text(draw, text, font, cell), fill=(40, 40, 40), font=font)
            y += cell + caption + pad
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path


def _fit_text(draw: Any, text: str, font: Any, width: int) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…"
    return text


__all__ = [
    "MAP_AT",
    "PAIR_FOILS",
    "RECALL_AT",
    "Evaluation",
    "ModelRun",
    "ModelSpec",
    "PairsEvaluation",
    "Plan",
    "QueryResult",
    "Report",
    "UniverseEvaluation",
    "Vectors",
    "average_precision",
    "best_cut",
    "cached_index",
    "compare_models",
    "contact_sheet",
    "decision_metrics",
    "embed_catalog",
    "evaluate_index",
    "evaluate_leave_one_out",
    "evaluate_pairs",
    "evaluate_queries",
    "evaluate_universe",
    "label_ranks",
    "pair_ranks",
    "parse_models",
    "read_pairs",
    "recall_at",
    "retrieve",
]

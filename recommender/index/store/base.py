"""What every vector store is: the `Store` interface, where a build puts vectors, filters, and NaN checks."""

from __future__ import annotations

import json
import re
import sys
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...catalog import Item
from ...errors import IndexLoadError, RecommenderError

#: What `--store` / RECOMMENDER_STORE accept.
STORE_FORMS = ("local", "milvus-lite", "milvus-lite:PATH.db", "milvus://HOST:PORT")
#: Milvus index types a build can ask for (`...?index=IVF_FLAT`); both exist in Milvus Lite and in servers.
MILVUS_INDEXES = ("HNSW", "IVF_FLAT")
#: The Milvus Lite database of `--store milvus-lite`, inside the index folder.
LITE_DB = "vectors.db"
# Score or check this many rows at a time so that a memory-mapped float16 index is never copied whole.
CHUNK_ROWS = 1 << 16
_COLLECTION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


# --------------------------------------------------------------------------------- choosing a store


@dataclass(frozen=True)
class StoreConfig:
    """Where a build puts the vectors, parsed from `--store` / RECOMMENDER_STORE (see `STORE_FORMS`).

    `uri` is the Milvus Lite database (None: `vectors.db` inside the index folder) or the server's
    `http://HOST:PORT`; `index` is the Milvus index type.
    """

    kind: str = "local"
    uri: str | None = None
    index: str = "HNSW"

    @classmethod
    def parse(cls, text: str | StoreConfig | None) -> StoreConfig:
        if isinstance(text, StoreConfig):
            return text
        text = (text or "local").strip()
        base, _, query = text.partition("?")
        options = dict(part.partition("=")[::2] for part in query.split("&") if part)
        index = options.pop("index", "HNSW").upper()
        if options or index not in MILVUS_INDEXES:
            raise RecommenderError(f"bad store option in {text!r}: only ?index={'|'.join(MILVUS_INDEXES)} exists")
        if base == "local" and not query:
            return cls()
        if base == "milvus-lite":
            return cls("milvus-lite", None, index)
        if base.startswith("milvus-lite:"):
            path = base.removeprefix("milvus-lite:")
            if not path.endswith(".db"):
                raise RecommenderError(f"a Milvus Lite database is a path ending in .db, not {path!r}")
            return cls("milvus-lite", str(Path(path).expanduser().resolve()), index)
        match = re.fullmatch(r"milvus://([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:]+\])(?::(\d{1,5}))?/?", base)
        if match:
            return cls("milvus", f"http://{match[1]}:{match[2] or 19530}", index)
        raise RecommenderError(f"unknown store {text!r}; use one of: {', '.join(STORE_FORMS)}")

    def __str__(self) -> str:
        if self.kind == "local":
            return "local"
        where = self.uri or f"<index folder>/{LITE_DB}"
        return f"{self.kind} {where} ({self.index})"


@dataclass(frozen=True)
class StoreLocation:
    """Where an index's vectors live, as its manifest's `store` records it.

    `local`: the index folder's safetensors file (every other field empty). `milvus-lite`: `uri`
    is `vectors.db` (inside the index folder) or an absolute `.db` path; `milvus`: the server's
    `http://HOST:PORT`. Both name the `collection`, its vector `index`, the `search_params` and the
    filterable `columns`.
    """

    kind: str = "local"
    uri: str | None = None
    collection: str | None = None
    index: Mapping[str, Any] = field(default_factory=dict)
    search_params: Mapping[str, int] = field(default_factory=dict)
    columns: tuple[str, ...] = ()

    @property
    def local(self) -> bool:
        return self.kind == "local"

    def to_json(self) -> dict[str, Any]:
        if self.local:
            return {"kind": "local"}
        return {
            "kind": self.kind,
            "uri": self.uri,
            "collection": self.collection,
            "index": dict(self.index),
            "search_params": dict(self.search_params),
            "columns": list(self.columns),
        }

    @classmethod
    def from_json(cls, data: Any) -> StoreLocation:
        """Parse a manifest's `store` (None: local); `ValueError` for anything malformed."""
        if data is None:
            return cls()
        if not isinstance(data, dict) or data.get("kind") not in ("local", "milvus-lite", "milvus"):
            raise ValueError("unknown vector store")
        if data["kind"] == "local":
            return cls()
        uri, params, columns = data.get("uri"), data.get("search_params") or {}, data.get("columns")
        if not (
            isinstance(uri, str)
            and "\0" not in uri
            and isinstance(data.get("collection"), str)
            and _COLLECTION.match(data["collection"])
            and isinstance(columns, list)
            and all(isinstance(c, str) for c in columns)
            and isinstance(data.get("index", {}), dict)
            and isinstance(params, dict)
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1 << 20 for v in params.values())
        ):
            raise ValueError("malformed store")
        return cls(data["kind"], uri, data["collection"], dict(data.get("index") or {}), dict(params), tuple(columns))

    def describe(self) -> str:
        """One line for `info`: where the vectors live and how they are searched."""
        if self.local:
            return "local (memory-mapped safetensors, exact search)"
        return (
            f"{self.kind} {self.uri} collection {self.collection} ({self.index.get('index_type')}, "
            f"{self.index.get('metric_type')}, search {dict(self.search_params)})"
        )


# --------------------------------------------------------------------------------- filters


@dataclass(frozen=True)
class Filters:
    """`where` filters, checked and case-folded: (key, accepted values) pairs, keys AND-ed, values OR-ed.

    Keys are `label`, `id` or metadata columns; a missing value matches the empty string.
    """

    terms: tuple[tuple[str, frozenset[str]], ...]

    @classmethod
    def of(cls, where: Mapping[str, str | Sequence[str]] | None, keys: set[str], index_name: str) -> Filters | None:
        if not where:
            return None
        terms = []
        for key, wanted in where.items():
            if key not in keys:
                raise RecommenderError(f"cannot filter on {key!r}: index {index_name!r} has {', '.join(sorted(keys))}")
            values = [wanted] if isinstance(wanted, str) else list(wanted)
            terms.append((key, frozenset(v.casefold() for v in values)))
        return cls(tuple(terms))

    def mask(self, items: Sequence[Item]) -> np.ndarray:
        """(N,) bool: the items that pass every filter."""
        mask = np.ones(len(items), dtype=bool)
        for key, values in self.terms:
            column = (field_value(item, key) for item in items)
            mask &= np.fromiter(((v or "").casefold() in values for v in column), dtype=bool, count=len(items))
        return mask

    def expression(self, columns: Sequence[str]) -> str:
        """The same filters as a Milvus boolean expression over the `tags` field (see `_tags`)."""
        position = {c: i for i, c in enumerate(columns)}
        parts = []
        for key, values in self.terms:
            tags = [f"{position[key]}={v}" for v in sorted(values)]
            parts.append(f"array_contains_any(tags, [{', '.join(_literal(t) for t in tags)}])")
        return " and ".join(parts)


def field_value(item: Item, key: str) -> str | None:
    """An item's value of a filter key: its label, id or a metadata column (None when it has none)."""
    if key == "label":
        return item.label
    if key == "id":
        return item.id
    return item.metadata.get(key)


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a double-quoted string with \" and \\ escaped, as Milvus parses


# --------------------------------------------------------------------------------- the interface


Found = list[tuple[np.ndarray, np.ndarray]]  # per query: (rows, scores), best first


class Store(ABC):
    """The (N, D) unit vectors of an index, row i belonging to item i, and top-k search over them."""

    kind: str
    #: True when `search` and `scores` are exact (brute force); False for approximate (ANN) stores.
    exact: bool

    def __init__(self, count: int, dim: int) -> None:
        self.count = count
        self.dim = dim

    @property
    @abstractmethod
    def location(self) -> StoreLocation:
        """Where the vectors live, as recorded in the manifest's `store`."""

    @abstractmethod
    def vectors(self, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(n, D) stored vectors of these rows (all rows when None), in the stored precision or float32."""

    @abstractmethod
    def scores(self, queries: np.ndarray) -> np.ndarray:
        """(Q, N) float32 cosine of (Q, D) unit queries to every item (ANN stores: candidates only, others -inf)."""

    @abstractmethod
    def search(
        self, queries: np.ndarray, k: int, *, where: Filters | None = None, exclude: Sequence[int] = ()
    ) -> Found:
        """The k best rows for each of (Q, D) unit queries that pass `where`, leaving out `exclude`d rows."""

    def recall(self, queries: np.ndarray, k: int = 10) -> float:
        """Recall@k of `search` against exact search over the same stored vectors (1.0 for exact stores).

        An item found counts when its exact score reaches the exact k-th best, so that ties at the
        k-th place (identical pictures, colour histograms) do not count as misses.
        """
        if self.exact or not len(queries):
            return 1.0
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        k = min(k, self.count)
        exact = scores_of(q, self.vectors())  # (Q, N)
        kth = -np.partition(-exact, k - 1, axis=1)[:, k - 1]  # (Q,)
        hits = sum(
            min(k, int((row[rows] >= bar - 1e-6).sum())) for row, bar, (rows, _) in zip(exact, kth, self.search(q, k))
        )
        return hits / (k * len(q))


# --------------------------------------------------------------------------------- vectors that are not numbers


def check_scores(scores: np.ndarray, label: str) -> np.ndarray:
    """(Q, N) scores of finite queries, checked: a NaN or infinite stored vector makes its score non-finite.

    Far cheaper than checking the vectors themselves (Q*N values, not N*D), and it catches a
    damaged or hand-made index whose rows would otherwise never match, silently.
    """
    if not np.isfinite(scores).all():
        row = int(np.flatnonzero(~np.isfinite(scores).all(axis=0))[0])
        raise not_a_number(label, row)
    return scores


def check_finite(vectors: np.ndarray, label: str, *, first_row: int = 0) -> None:
    """Raise `IndexLoadError` naming the first row of (N, D) `vectors` that holds a NaN or an infinity."""
    for start in range(0, len(vectors), CHUNK_ROWS):  # blocks: a memory-mapped file is never copied whole
        block = np.asarray(vectors[start : start + CHUNK_ROWS])
        if not np.isfinite(block).all():
            row = first_row + start + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
            raise not_a_number(label, row)


def not_a_number(label: str, row: int) -> IndexLoadError:
    """The error for an index whose vector `row` holds a NaN or an infinity."""
    return IndexLoadError(
        f"index {label!r} is corrupt: its vector {row} is not a number (NaN or infinite); "
        f"rebuild it with `python -m recommender index SOURCE --name {label}`"
    )


def product(queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(Q, D) float32 @ (N, D).T float32 -> (Q, N) scores.

    In a process that embeds with torch, torch's own thread pool computes it: numpy's OpenBLAS
    threads keep spinning after a call, beside torch's, and the next query's embedding then ran at
    half speed (measured: 141 -> 71 ms a query at 100k items on 2 cores).
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return queries @ rows.T
    with warnings.catch_warnings():  # memory-mapped rows are read-only; torch only reads them here
        warnings.simplefilter("ignore", UserWarning)
        return (torch.from_numpy(queries) @ torch.from_numpy(rows).T).numpy()


def scores_of(queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """(Q, N) float32 scores of (Q, D) queries against (N, D) stored vectors, `CHUNK_ROWS` rows at a time."""
    q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    out = np.empty((q.shape[0], len(vectors)), dtype=np.float32)
    for start in range(0, len(vectors), CHUNK_ROWS):
        block = np.asarray(vectors[start : start + CHUNK_ROWS], dtype=np.float32)  # (B, D)
        out[:, start : start + len(block)] = product(q, block)
    return out

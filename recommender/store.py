"""Where an index's vectors live and how they are searched: memory-mapped files (exact) or Milvus (ANN)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import sys
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .catalog import Item
from .errors import IndexLoadError, RecommenderError

#: What `--store` / RECOMMENDER_STORE accept.
STORE_FORMS = ("local", "milvus-lite", "milvus-lite:PATH.db", "milvus://HOST:PORT")
#: Milvus index types a build can ask for (`...?index=IVF_FLAT`); both exist in Milvus Lite and in servers.
MILVUS_INDEXES = ("HNSW", "IVF_FLAT")
#: An ANN store asked for every item's score (label ranking in `identify` and `evaluate`) scores this
#: many nearest candidates and gives every other item -inf: exact whenever the catalog is this small.
SCORE_CANDIDATES = 1024
#: Milvus refuses a larger `limit` in one search.
MILVUS_TOPK_LIMIT = 16384
#: The Milvus Lite database of `--store milvus-lite`, inside the index folder.
LITE_DB = "vectors.db"
# Score this many rows at a time so that a memory-mapped float16 index is never copied whole.
_CHUNK_ROWS = 1 << 16
# A first pass in bf16 rounds each factor to 8 significant bits (relative error <= 2**-8), so a
# product is off by at most 2 * 2**-8 of |q_i x_i| and a cosine of unit vectors by at most 2**-7.
# Every item whose bf16 score is within twice that of the k-th bf16 score is re-scored exactly
# (1% slack for float16 rows whose norm is not exactly 1): the result is the exact top k.
_BF16_MARGIN = 2 * 2**-7 * 1.01
# Rows per insert and per fetch: a few MB a message, far below gRPC's 64 MB limit even at 1536-d.
_MILVUS_ROWS = 4096
# HNSW as Milvus documents it for ~1M vectors; ef is raised to k when k is larger.
_HNSW = {"M": 16, "efConstruction": 200}
_HNSW_EF = 128
_PIP = "pip install pymilvus milvus-lite  (or: pip install -r requirements-scale.txt)"


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


def describe_location(location: Mapping[str, Any] | None) -> str:
    """One line for `info`: where the vectors of an index live."""
    if not location or location.get("kind", "local") == "local":
        return "local (memory-mapped safetensors, exact search)"
    index = location.get("index", {})
    return (f"{location['kind']} {location['uri']} collection {location['collection']} "
            f"({index.get('index_type')}, {index.get('metric_type')}, search {location.get('search_params')})")


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
            column = (_field(item, key) for item in items)
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


def _field(item: Item, key: str) -> str | None:
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
    def location(self) -> dict[str, Any]:
        """Where the vectors live, as recorded in the manifest's `store`."""

    @abstractmethod
    def vectors(self, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(n, D) stored vectors of these rows (all rows when None), in the stored precision or float32."""

    @abstractmethod
    def scores(self, queries: np.ndarray) -> np.ndarray:
        """(Q, N) float32 cosine of (Q, D) unit queries to every item (ANN stores: candidates only, others -inf)."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int, *, where: Filters | None = None,
               exclude: Sequence[int] = ()) -> Found:
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
        exact = LocalStore(self.vectors(), []).scores(q)  # (Q, N)
        kth = -np.partition(-exact, k - 1, axis=1)[:, k - 1]  # (Q,)
        hits = sum(min(k, int((row[rows] >= bar - 1e-6).sum()))
                   for row, bar, (rows, _) in zip(exact, kth, self.search(q, k)))
        return hits / (k * len(q))


# --------------------------------------------------------------------------------- vectors that are not numbers


def check_scores(scores: np.ndarray, label: str) -> np.ndarray:
    """(Q, N) scores of finite queries, checked: a NaN or infinite stored vector makes its score non-finite.

    Far cheaper than checking the vectors themselves (Q*N values, not N*D), and it catches a
    damaged or hand-made index whose rows would otherwise never match, silently.
    """
    if not np.isfinite(scores).all():
        row = int(np.flatnonzero(~np.isfinite(scores).all(axis=0))[0])
        raise IndexLoadError(_not_numbers(label, row))
    return scores


def check_finite(vectors: np.ndarray, label: str, *, first_row: int = 0) -> None:
    """Raise `IndexLoadError` naming the first row of (N, D) `vectors` that holds a NaN or an infinity."""
    for start in range(0, len(vectors), _CHUNK_ROWS):  # blocks: a memory-mapped file is never copied whole
        block = np.asarray(vectors[start : start + _CHUNK_ROWS])
        if not np.isfinite(block).all():
            row = first_row + start + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
            raise IndexLoadError(_not_numbers(label, row))


def _not_numbers(label: str, row: int) -> str:
    return (f"index {label!r} is corrupt: its vector {row} is not a number (NaN or infinite); rebuild it with "
            f"`python -m recommender index SOURCE --name {label}`")


# --------------------------------------------------------------------------------- local: exact, memory-mapped


def _product(queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
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


class LocalStore(Store):
    """Today's embedded default: a memory-mapped (N, D) float16/float32 array searched exactly with BLAS."""

    kind = "local"
    exact = True

    def __init__(self, embeddings: np.ndarray, items: Sequence[Item] | Callable[[], Sequence[Item]], *,
                 label: str = "") -> None:
        super().__init__(*embeddings.shape)
        self.embeddings = embeddings  # (N, D), memory-mapped, unit rows
        # For filters, evaluated on the items themselves; a function when the index reads them lazily.
        self._items = items
        self.label = label  # the index's name, for errors

    @property
    def items(self) -> Sequence[Item]:
        return self._items() if callable(self._items) else self._items

    @property
    def location(self) -> dict[str, Any]:
        return {"kind": "local"}

    def vectors(self, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        return self.embeddings if rows is None else self.embeddings[np.asarray(rows, dtype=np.int64)]

    @cached_property
    def _dense(self) -> np.ndarray | None:
        # Small indexes are kept as one float32 matrix: a single BLAS call per query.
        if self.embeddings.size * 4 <= 256 << 20:
            return np.ascontiguousarray(self.embeddings, dtype=np.float32)
        return None

    def scores(self, queries: np.ndarray) -> np.ndarray:
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if self._dense is not None:
            return check_scores(_product(q, self._dense), self.label)
        out = np.empty((q.shape[0], self.count), dtype=np.float32)
        for start in range(0, self.count, _CHUNK_ROWS):
            block = np.asarray(self.embeddings[start : start + _CHUNK_ROWS], dtype=np.float32)  # (B, D)
            out[:, start : start + len(block)] = _product(q, block)
        return check_scores(out, self.label)

    @cached_property
    def _coarse(self) -> Any:
        """(N, D) bf16 torch copy of a large index for a fast first pass, where the CPU computes bf16 natively.

        None for small indexes (one float32 matrix is faster) and for CPUs that would emulate bf16.
        """
        from .hardware import cpu_has_native_bf16

        if self._dense is not None or not cpu_has_native_bf16():
            return None
        import torch

        coarse = torch.empty((self.count, self.dim), dtype=torch.bfloat16)
        for start in range(0, self.count, _CHUNK_ROWS):
            block = np.asarray(self.embeddings[start : start + _CHUNK_ROWS], dtype=np.float32)  # (B, D)
            coarse[start : start + len(block)] = torch.from_numpy(block).to(torch.bfloat16)
        return coarse

    def search(self, queries: np.ndarray, k: int, *, where: Filters | None = None,
               exclude: Sequence[int] = ()) -> Found:
        if self._coarse is not None:
            return self._search_two_pass(np.atleast_2d(np.asarray(queries, dtype=np.float32)), k, where, exclude)
        scores = self.scores(queries)  # (Q, N)
        if where is not None:
            scores[:, ~where.mask(self.items)] = -np.inf
        if len(exclude):
            scores[:, np.asarray(exclude, dtype=np.int64)] = -np.inf
        k = min(k, scores.shape[1])
        if k < scores.shape[1]:
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        else:
            top = np.tile(np.arange(scores.shape[1]), (scores.shape[0], 1))
        found = []
        for row, candidates in zip(scores, top):
            order = candidates[np.argsort(-row[candidates], kind="stable")]
            order = order[np.isfinite(row[order])]
            found.append((order, row[order]))
        return found

    def _search_two_pass(self, queries: np.ndarray, k: int, where: Filters | None, exclude: Sequence[int]) -> Found:
        """Exact top k of a large index: bf16 scores for everything, exact float32 ones near the top."""
        import torch

        coarse = check_scores((torch.from_numpy(queries).to(torch.bfloat16) @ self._coarse.T).float().numpy(),
                              self.label)  # (Q, N)
        if where is not None:
            coarse[:, ~where.mask(self.items)] = -np.inf
        if len(exclude):
            coarse[:, np.asarray(exclude, dtype=np.int64)] = -np.inf
        k = min(k, self.count)
        found = []
        for q, row in zip(queries, coarse):
            kth = np.partition(row, self.count - k)[self.count - k]  # the k-th best first-pass score
            cutoff = kth - _BF16_MARGIN if np.isfinite(kth) else -np.inf
            candidates = np.flatnonzero((row >= cutoff) & np.isfinite(row))  # sorted: friendly to the memory map
            exact = np.asarray(self.embeddings[candidates], dtype=np.float32) @ q  # (C,)
            best = np.argsort(-exact, kind="stable")[:k]
            found.append((candidates[best], exact[best]))
        return found


# --------------------------------------------------------------------------------- Milvus: ANN, filters pushed down


def _pymilvus(what: str) -> Any:
    """The pymilvus module, or a clear error saying what to install."""
    try:
        import pymilvus
    except ImportError:
        raise RecommenderError(f"{what} needs Milvus's client, which is not installed: {_PIP}") from None
    return pymilvus


_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def _client(kind: str, uri: str, *, create: bool = False) -> Any:
    """One client per database or server per process (Milvus Lite allows one process per database).

    Only a build (`create`) may make a new Milvus Lite database; opening names an existing one.
    """
    with _clients_lock:
        if uri in _clients:
            return _clients[uri]
        pymilvus = _pymilvus(f"the {kind} store")
        # Failed calls become one-line RecommenderErrors here; pymilvus would also log each with a traceback.
        logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
        if kind == "milvus-lite":
            try:
                import milvus_lite  # noqa: F401  # pymilvus opens .db paths through it
            except ImportError:
                raise RecommenderError(f"the Milvus Lite store needs milvus-lite, which is not installed: {_PIP}") \
                    from None
            if create:
                Path(uri).parent.mkdir(parents=True, exist_ok=True)
        token = os.environ.get("RECOMMENDER_MILVUS_TOKEN", "") if kind == "milvus" else ""
        try:
            client = pymilvus.MilvusClient(uri=uri, token=token)
        except Exception as exc:
            hint = " (Milvus Lite lets one process open a database at a time)" if kind == "milvus-lite" else ""
            raise RecommenderError(f"cannot open {kind} at {uri}: {_first_line(exc)}{hint}") from None
        _clients[uri] = client
        return client


def close_clients() -> None:
    """Close every Milvus connection of this process and stop its Milvus Lite engines (tests, shutdown)."""
    with _clients_lock:
        clients = dict(_clients)
        _clients.clear()
    for uri, client in clients.items():
        with contextlib.suppress(Exception):
            client.close()
        if uri.endswith(".db"):
            with contextlib.suppress(Exception):
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(uri)


@contextlib.contextmanager
def _milvus_errors(what: str, error: type[RecommenderError] = RecommenderError) -> Iterator[None]:
    try:
        yield
    except RecommenderError:
        raise
    except Exception as exc:
        if type(exc).__module__.startswith(("pymilvus", "grpc", "milvus_lite")):
            text = _first_line(exc)
            # A rebuild drops the previous collection: indexes loaded before it must be loaded again.
            hint = "; was the index rebuilt since it was loaded? load it again" if "not exist" in text else ""
            raise error(f"Milvus failed to {what}: {text}{hint}") from None
        raise


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def collection_prefix(folder: Path) -> str:
    """Names of this index folder's collections start with this: its name, and a hash of where it is."""
    slug = re.sub(r"[^A-Za-z0-9_]", "_", folder.name)[:40]
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:8]
    return f"rec_{slug}_{digest}_"


def _resolve_uri(location: Mapping[str, Any], folder: Path) -> str:
    uri = str(location["uri"])
    return str(folder / uri) if location["kind"] == "milvus-lite" and not os.path.isabs(uri) else uri


_COLLECTION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


def trusted_uri(location: Any, folder: Path, label: str) -> str:
    """Where a manifest's vectors live, once checked to be a place this machine may open; else `IndexLoadError`.

    An index folder may come from elsewhere, so its manifest cannot make us create files or contact
    servers: a Milvus Lite database must already exist, and be in the index folder when named by a
    relative path (a build records `vectors.db`, or the absolute path given to `--store`); a
    Milvus server is contacted (with RECOMMENDER_MILVUS_TOKEN) only when it is the one that
    RECOMMENDER_STORE names.
    """
    from . import settings

    rebuild = f"rebuild it with `python -m recommender index SOURCE --name {label}`"

    def refuse(why: str) -> IndexLoadError:
        return IndexLoadError(f"index {label!r} is refused: {why}; {rebuild}")

    if not isinstance(location, Mapping) or location.get("kind") not in ("milvus-lite", "milvus"):
        raise refuse("its manifest names no known vector store")
    uri, params = location.get("uri"), location.get("search_params") or {}
    if not (isinstance(uri, str) and "\0" not in uri and isinstance(location.get("collection"), str)
            and _COLLECTION.match(location["collection"]) and isinstance(location.get("columns"), list)
            and all(isinstance(c, str) for c in location["columns"]) and isinstance(location.get("index", {}), dict)
            and isinstance(params, dict)
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1 << 20 for v in params.values())):
        raise refuse("its manifest has a malformed 'store'")
    if location["kind"] == "milvus-lite":
        if not uri.endswith(".db"):
            raise refuse(f"its Milvus Lite database {uri[:120]!r} is not a path ending in .db")
        if not os.path.isabs(uri):
            path = os.path.realpath(folder / uri)
            if "/" in uri or "\\" in uri or not path.startswith(os.path.realpath(folder) + os.sep):
                raise refuse(f"its Milvus Lite database {uri[:120]!r} lies outside the index folder")
        else:
            path = uri
        if not os.path.exists(path):
            raise refuse(f"its Milvus Lite database {uri[:120]!r} does not exist here")
        return path
    configured = StoreConfig.parse(settings.store())
    if not (configured.kind == "milvus" and configured.uri == uri):
        server = uri.replace("http://", "milvus://", 1)[:120]
        raise refuse(f"it keeps its vectors on the Milvus server {server}, which is not the store this machine is "
                     f"set to use ({settings.ENV_STORE}={str(configured)[:60]}), and an index does not choose which "
                     f"servers we contact: set {settings.ENV_STORE}={server} to trust it")
    return uri


def _tags(item: Item, columns: Sequence[str]) -> list[str]:
    # One ARRAY<VARCHAR> field of "column position=case-folded value" pushes every filter down as
    # array_contains_any(...), whatever the catalog's columns are (a position cannot contain '=').
    return [f"{i}={(_field(item, c) or '').casefold()}" for i, c in enumerate(columns)]


class MilvusStore(Store):
    """Vectors in a Milvus collection (Milvus Lite or a server): HNSW or IVF search, filters pushed down.

    The collection holds `row` (primary key: the item's position), `vector` (the stored-precision
    vector as float32, so that scores equal the local store's) and `tags` (see `_tags`). The
    metric is inner product, which is the cosine for the unit vectors stored.
    """

    exact = False

    def __init__(self, client: Any, location: Mapping[str, Any], count: int, dim: int, label: str = "") -> None:
        super().__init__(count, dim)
        self.client = client
        self.kind = location["kind"]
        self._location = dict(location)
        self.collection = location["collection"]
        self.columns: list[str] = list(location["columns"])
        self._vectors: np.ndarray | None = None
        self._label = label

    @property
    def location(self) -> dict[str, Any]:
        return dict(self._location)

    @classmethod
    def open(cls, location: Mapping[str, Any], *, uri: str, count: int, dim: int, label: str) -> MilvusStore:
        """The store a manifest points at (at `uri`, see `trusted_uri`), checked to hold the manifest's vectors."""
        client = _client(location["kind"], uri)
        collection = location["collection"]
        rebuild = f"rebuild it with `python -m recommender index SOURCE --name {label} --store ...`"
        with _milvus_errors(f"open collection {collection}", IndexLoadError):
            if not client.has_collection(collection):
                raise IndexLoadError(f"index {label!r} is incomplete: its collection {collection} is missing from "
                                     f"{location['kind']} {location['uri']}; {rebuild}")
            rows = int(client.get_collection_stats(collection)["row_count"])
            if rows != count:
                raise IndexLoadError(f"index {label!r} is corrupt: its collection {collection} holds {rows} vectors "
                                     f"but the manifest says {count}; {rebuild}")
            client.load_collection(collection)
        return cls(client, location, count, dim, label)

    @classmethod
    def write(cls, config: StoreConfig, *, folder: Path, tag: str, vectors: np.ndarray,
              items: Sequence[Item]) -> dict[str, Any]:
        """Create a new collection holding `vectors` and the items' filter tags; return its location."""
        pymilvus = _pymilvus(f"the {config.kind} store")
        if config.kind == "milvus-lite":
            uri, recorded = (str(folder / LITE_DB), LITE_DB) if config.uri is None else (config.uri, config.uri)
        else:
            uri = recorded = str(config.uri)
        client = _client(config.kind, uri, create=True)
        collection = collection_prefix(folder) + re.sub(r"\W", "_", tag)
        count, dim = vectors.shape
        columns = ["label", "id", *sorted({k for item in items for k in item.metadata})]
        tags = [_tags(item, columns) for item in items]
        longest = max((len(t.encode()) for row in tags for t in row), default=1)
        index = _index_params(config.index, count)
        with _milvus_errors(f"write collection {collection}"):
            schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("row", pymilvus.DataType.INT64, is_primary=True)
            schema.add_field("vector", pymilvus.DataType.FLOAT_VECTOR, dim=dim)
            schema.add_field("tags", pymilvus.DataType.ARRAY, element_type=pymilvus.DataType.VARCHAR,
                             max_capacity=len(columns), max_length=min(65535, max(64, longest)))
            client.create_collection(collection, schema=schema)
            for start in range(0, count, _MILVUS_ROWS):
                block = np.asarray(vectors[start : start + _MILVUS_ROWS], dtype=np.float32)
                client.insert(collection, [{"row": start + i, "vector": v, "tags": tags[start + i]}
                                           for i, v in enumerate(block)])
            client.flush(collection)  # sealed segments get the ANN index; growing ones are brute-forced
            params = client.prepare_index_params()
            params.add_index(field_name="vector", index_type=index["index_type"], metric_type="IP",
                             params=index["params"])
            _create_index(client, collection, params, index["index_type"], sync=config.kind == "milvus")
            client.load_collection(collection)
        return {
            "kind": config.kind,
            "uri": recorded,
            "collection": collection,
            "index": {"index_type": index["index_type"], "metric_type": "IP", "params": index["params"]},
            "search_params": index["search"],
            "columns": columns,
        }

    def vectors(self, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        if rows is None:
            if self._vectors is None:  # every vector, fetched once: for calibration and incremental rebuilds
                self._vectors = self._fetch(range(0, self.count, _MILVUS_ROWS))
            return self._vectors
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        for start in range(0, len(rows), _MILVUS_ROWS):
            chunk = rows[start : start + _MILVUS_ROWS]
            with _milvus_errors("fetch vectors"):
                got = self.client.query(self.collection, filter=f"row in [{', '.join(map(str, chunk))}]",
                                        output_fields=["row", "vector"])
            by_row = {int(r["row"]): r["vector"] for r in got}
            missing = [int(r) for r in chunk if int(r) not in by_row]
            if missing:
                raise RecommenderError(f"collection {self.collection} has no row {missing[0]}")
            out[start : start + len(chunk)] = [by_row[int(r)] for r in chunk]
        return out

    def _fetch(self, starts: range) -> np.ndarray:
        out = np.empty((self.count, self.dim), dtype=np.float32)
        seen = 0
        for start in starts:
            with _milvus_errors("fetch vectors"):
                got = self.client.query(self.collection, filter=f"row >= {start} and row < {start + starts.step}",
                                        output_fields=["row", "vector"])
            for r in got:
                out[int(r["row"])] = r["vector"]
            seen += len(got)
        if seen != self.count:
            raise RecommenderError(f"collection {self.collection} returned {seen} of {self.count} vectors")
        check_finite(out, self._label)
        return out

    def scores(self, queries: np.ndarray) -> np.ndarray:
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        out = np.full((q.shape[0], self.count), -np.inf, dtype=np.float32)
        for i, (rows, scores) in enumerate(self.search(q, min(self.count, SCORE_CANDIDATES))):
            out[i, rows] = scores
        return out

    def search(self, queries: np.ndarray, k: int, *, where: Filters | None = None,
               exclude: Sequence[int] = ()) -> Found:
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        limit = min(k, self.count, MILVUS_TOPK_LIMIT)
        conditions = [where.expression(self.columns)] if where is not None else []
        if len(exclude):
            conditions.append(f"row not in [{', '.join(str(int(r)) for r in exclude)}]")
        expression = " and ".join(c for c in conditions if c)
        params = dict(self._location.get("search_params") or {})
        if "ef" in params:  # HNSW returns at most ef neighbours
            params["ef"] = max(int(params["ef"]), limit)
        with _milvus_errors("search"):
            hits = self.client.search(self.collection, data=list(q), limit=limit, filter=expression,
                                      search_params={"metric_type": "IP", "params": params}, output_fields=["row"])
        found = []
        for per_query in hits:
            rows = np.fromiter((h["entity"]["row"] for h in per_query), dtype=np.int64, count=len(per_query))
            scores = np.fromiter((h["distance"] for h in per_query), dtype=np.float32, count=len(per_query))
            if not np.isfinite(scores).all():  # a hand-made collection: refused, as the local store refuses it
                raise IndexLoadError(_not_numbers(self._label, int(rows[~np.isfinite(scores)][0])))
            order = np.argsort(-scores, kind="stable")  # Milvus returns them sorted; ties kept in its order
            found.append((rows[order], scores[order]))
        return found

    def drop(self) -> None:
        with _milvus_errors(f"drop collection {self.collection}"):
            self.client.drop_collection(self.collection)


def _create_index(client: Any, collection: str, params: Any, index_type: str, *, sync: bool) -> None:
    """Create the vector index, tolerating pymilvus's retry of a long build that had in fact succeeded.

    Milvus Lite builds the index within the call (and lacks the RPC that waiting uses, hence
    `sync` only for servers); a build of minutes can outlive the gRPC keepalive, and pymilvus
    then sends the request again, which fails with "index already exists".
    """
    try:
        client.create_index(collection, params, sync=sync)
    except Exception as exc:
        if "already exists" not in str(exc) or client.describe_index(collection, "vector").get(
                "index_type") != index_type:
            raise


def _index_params(kind: str, count: int) -> dict[str, Any]:
    if kind == "HNSW":
        return {"index_type": "HNSW", "params": dict(_HNSW), "search": {"ef": _HNSW_EF}}
    # IVF: about 4 sqrt(N) lists (Milvus's guidance), at least 39 training points a list (faiss's).
    nlist = max(1, min(int(4 * math.sqrt(count)), count // 39))
    return {"index_type": "IVF_FLAT", "params": {"nlist": nlist}, "search": {"nprobe": max(1, min(nlist, 32))}}


# --------------------------------------------------------------------------------- opening and cleaning up


def open_store(location: Mapping[str, Any], *, folder: Path, count: int, dim: int, label: str) -> Store:
    """The non-local store a manifest points at (the local one is opened by `index`, which owns the files)."""
    kind = location.get("kind")
    if kind not in ("milvus-lite", "milvus"):
        raise IndexLoadError(f"index {label!r} keeps its vectors in an unknown store {str(kind)[:40]!r}; rebuild it "
                             f"with `python -m recommender index SOURCE --name {label}`")
    uri = trusted_uri(location, folder, label)  # before anything is imported, opened or contacted
    if kind == "milvus-lite":
        try:
            import milvus_lite  # noqa: F401
        except ImportError:
            _pymilvus(f"index {label!r} (vectors in Milvus Lite)")
            raise RecommenderError(f"index {label!r} keeps its vectors in Milvus Lite, which is not installed: "
                                   f"{_PIP}") from None
    _pymilvus(f"index {label!r} (vectors in {kind})")
    return MilvusStore.open(location, uri=uri, count=count, dim=dim, label=label)


def drop_stale(folder: Path, current: Mapping[str, Any], previous: Mapping[str, Any] | None) -> None:
    """After a commit: drop the previous build's collection and those of builds that crashed before theirs.

    Best effort: a server that cannot be reached now only keeps an unused collection.
    """
    keep = current.get("collection")
    places: list[tuple[str, str]] = []
    if current.get("kind") in ("milvus-lite", "milvus"):
        places.append((current["kind"], _resolve_uri(current, folder)))  # where this build has just written
    if previous and previous.get("kind") in ("milvus-lite", "milvus"):
        # The previous manifest is as untrusted as any: a place it may not name is left alone.
        with contextlib.suppress(IndexLoadError, RecommenderError):
            place = (previous["kind"], trusted_uri(previous, folder, folder.name))
            if place not in places:
                places.append(place)
    prefix = collection_prefix(folder)
    for kind, uri in places:
        with contextlib.suppress(Exception):
            client = _client(kind, uri)
            for name in client.list_collections():
                if name.startswith(prefix) and name != keep:
                    client.drop_collection(name)

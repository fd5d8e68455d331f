"""Vectors in Milvus (Milvus Lite or a server): HNSW or IVF search with every filter pushed down.

Optional (`pip install -r requirements-scale.txt`): nothing here is imported until an index asks
for Milvus. Clients live in the runtime (one per database or server per process: Milvus Lite lets
one process open a database at a time). A manifest may come from elsewhere, so it cannot make us
create files or contact servers (see `opened_uri`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ... import settings
from ...catalog import Item
from ...errors import IndexLoadError, RecommenderError
from ...runtime import Runtime, default_runtime
from .base import LITE_DB, Filters, Found, Store, StoreConfig, StoreLocation, check_finite, field_value, not_a_number

#: An ANN store asked for every item's score (label ranking in `identify` and `evaluate`) scores this
#: many nearest candidates and gives every other item -inf: exact whenever the catalog is this small.
SCORE_CANDIDATES = 1024
#: Milvus refuses a larger `limit` in one search.
MILVUS_TOPK_LIMIT = 16384
# Rows per insert and per fetch: a few MB a message, far below gRPC's 64 MB limit even at 1536-d.
_MILVUS_ROWS = 4096
# HNSW as Milvus documents it for ~1M vectors; ef is raised to k when k is larger.
_HNSW = {"M": 16, "efConstruction": 200}
_HNSW_EF = 128
_PIP = "pip install pymilvus milvus-lite  (or: pip install -r requirements-scale.txt)"


def _pymilvus(what: str) -> Any:
    """The pymilvus module, or a clear error saying what to install."""
    try:
        import pymilvus
    except ImportError:
        raise RecommenderError(f"{what} needs Milvus's client, which is not installed: {_PIP}") from None
    return pymilvus


def _client(kind: str, uri: str, *, create: bool = False, runtime: Runtime | None = None) -> Any:
    """The runtime's client of this database or server, connected on first use.

    Only a build (`create`) may make a new Milvus Lite database; opening names an existing one.
    """
    return (runtime or default_runtime()).one(("milvus", uri), lambda: _connect(kind, uri, create))


def _connect(kind: str, uri: str, create: bool) -> Any:
    pymilvus = _pymilvus(f"the {kind} store")
    # Failed calls become one-line RecommenderErrors here; pymilvus would also log each with a traceback.
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    if kind == "milvus-lite":
        try:
            import milvus_lite  # noqa: F401  # pymilvus opens .db paths through it
        except ImportError:
            raise RecommenderError(f"the Milvus Lite store needs milvus-lite, which is not installed: {_PIP}") from None
        if create:
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
    token = os.environ.get("RECOMMENDER_MILVUS_TOKEN", "") if kind == "milvus" else ""
    try:
        return pymilvus.MilvusClient(uri=uri, token=token)
    except Exception as exc:
        hint = " (Milvus Lite lets one process open a database at a time)" if kind == "milvus-lite" else ""
        raise RecommenderError(f"cannot open {kind} at {uri}: {_first_line(exc)}{hint}") from None


def close_clients(runtime: Runtime | None = None) -> None:
    """Close every Milvus connection of the runtime and stop its Milvus Lite engines (tests, shutdown)."""
    for (_, uri), client in (runtime or default_runtime()).pop_all("milvus").items():
        with contextlib.suppress(Exception):
            client.close()
        if str(uri).endswith(".db"):
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


def _tags(item: Item, columns: Sequence[str]) -> list[str]:
    # One ARRAY<VARCHAR> field of "column position=case-folded value" pushes every filter down as
    # array_contains_any(...), whatever the catalog's columns are (a position cannot contain '=').
    return [f"{i}={(field_value(item, c) or '').casefold()}" for i, c in enumerate(columns)]


class MilvusStore(Store):
    """Vectors in a Milvus collection (Milvus Lite or a server): HNSW or IVF search, filters pushed down.

    The collection holds `row` (primary key: the item's position), `vector` (the stored-precision
    vector as float32, so that scores equal the local store's) and `tags` (see `_tags`). The
    metric is inner product, which is the cosine for the unit vectors stored.
    """

    exact = False

    def __init__(self, client: Any, location: StoreLocation, count: int, dim: int, label: str = "") -> None:
        super().__init__(count, dim)
        self.client = client
        self.kind = location.kind
        self._location = location
        self.collection = str(location.collection)
        self.columns: list[str] = list(location.columns)
        self._vectors: np.ndarray | None = None
        self._label = label

    @property
    def location(self) -> StoreLocation:
        return self._location

    @classmethod
    def open(
        cls, location: StoreLocation, *, uri: str, count: int, dim: int, label: str, runtime: Runtime | None = None
    ) -> MilvusStore:
        """The store a manifest points at (at `uri`, see `opened_uri`), checked to hold the manifest's vectors."""
        client = _client(location.kind, uri, runtime=runtime)
        collection = str(location.collection)
        rebuild = f"rebuild it with `python -m recommender index SOURCE --name {label} --store ...`"
        with _milvus_errors(f"open collection {collection}", IndexLoadError):
            if not client.has_collection(collection):
                raise IndexLoadError(
                    f"index {label!r} is incomplete: its collection {collection} is missing from "
                    f"{location.kind} {location.uri}; {rebuild}"
                )
            rows = int(client.get_collection_stats(collection)["row_count"])
            if rows != count:
                raise IndexLoadError(
                    f"index {label!r} is corrupt: its collection {collection} holds {rows} vectors "
                    f"but the manifest says {count}; {rebuild}"
                )
            client.load_collection(collection)
        return cls(client, location, count, dim, label)

    @classmethod
    def write(
        cls, config: StoreConfig, *, folder: Path, tag: str, vectors: np.ndarray, items: Sequence[Item]
    ) -> StoreLocation:
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
            schema.add_field(
                "tags",
                pymilvus.DataType.ARRAY,
                element_type=pymilvus.DataType.VARCHAR,
                max_capacity=len(columns),
                max_length=min(65535, max(64, longest)),
            )
            client.create_collection(collection, schema=schema)
            for start in range(0, count, _MILVUS_ROWS):
                block = np.asarray(vectors[start : start + _MILVUS_ROWS], dtype=np.float32)
                client.insert(
                    collection, [{"row": start + i, "vector": v, "tags": tags[start + i]} for i, v in enumerate(block)]
                )
            client.flush(collection)  # sealed segments get the ANN index; growing ones are brute-forced
            params = client.prepare_index_params()
            params.add_index(
                field_name="vector", index_type=index["index_type"], metric_type="IP", params=index["params"]
            )
            _create_index(client, collection, params, index["index_type"], sync=config.kind == "milvus")
            client.load_collection(collection)
        return StoreLocation(
            kind=config.kind,
            uri=recorded,
            collection=collection,
            index={"index_type": index["index_type"], "metric_type": "IP", "params": index["params"]},
            search_params=index["search"],
            columns=tuple(columns),
        )

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
                got = self.client.query(
                    self.collection, filter=f"row in [{', '.join(map(str, chunk))}]", output_fields=["row", "vector"]
                )
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
                got = self.client.query(
                    self.collection,
                    filter=f"row >= {start} and row < {start + starts.step}",
                    output_fields=["row", "vector"],
                )
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

    def search(
        self, queries: np.ndarray, k: int, *, where: Filters | None = None, exclude: Sequence[int] = ()
    ) -> Found:
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        limit = min(k, self.count, MILVUS_TOPK_LIMIT)
        conditions = [where.expression(self.columns)] if where is not None else []
        if len(exclude):
            conditions.append(f"row not in [{', '.join(str(int(r)) for r in exclude)}]")
        expression = " and ".join(c for c in conditions if c)
        params = dict(self._location.search_params)
        if "ef" in params:  # HNSW returns at most ef neighbours
            params["ef"] = max(int(params["ef"]), limit)
        with _milvus_errors("search"):
            hits = self.client.search(
                self.collection,
                data=list(q),
                limit=limit,
                filter=expression,
                search_params={"metric_type": "IP", "params": params},
                output_fields=["row"],
            )
        found = []
        for per_query in hits:
            rows = np.fromiter((h["entity"]["row"] for h in per_query), dtype=np.int64, count=len(per_query))
            scores = np.fromiter((h["distance"] for h in per_query), dtype=np.float32, count=len(per_query))
            if not np.isfinite(scores).all():  # a hand-made collection: refused, as the local store refuses it
                raise not_a_number(self._label, int(rows[~np.isfinite(scores)][0]))
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
        if (
            "already exists" not in str(exc)
            or client.describe_index(collection, "vector").get("index_type") != index_type
        ):
            raise


def _index_params(kind: str, count: int) -> dict[str, Any]:
    if kind == "HNSW":
        return {"index_type": "HNSW", "params": dict(_HNSW), "search": {"ef": _HNSW_EF}}
    # IVF: about 4 sqrt(N) lists (Milvus's guidance), at least 39 training points a list (faiss's).
    nlist = max(1, min(int(4 * math.sqrt(count)), count // 39))
    return {"index_type": "IVF_FLAT", "params": {"nlist": nlist}, "search": {"nprobe": max(1, min(nlist, 32))}}


# --------------------------------------------------------------------------------- opening and cleaning up


def open_store(
    location: StoreLocation, *, folder: Path, count: int, dim: int, label: str, runtime: Runtime | None = None
) -> Store:
    """The Milvus store a manifest points at (the local one is opened by `index`, which owns the files)."""
    uri = opened_uri(location, folder, label)  # before anything is imported, opened or contacted
    if location.kind == "milvus-lite":
        try:
            import milvus_lite  # noqa: F401
        except ImportError:
            _pymilvus(f"index {label!r} (vectors in Milvus Lite)")
            raise RecommenderError(
                f"index {label!r} keeps its vectors in Milvus Lite, which is not installed: {_PIP}"
            ) from None
    _pymilvus(f"index {label!r} (vectors in {location.kind})")
    return MilvusStore.open(location, uri=uri, count=count, dim=dim, label=label, runtime=runtime)


def opened_uri(location: StoreLocation, folder: Path, label: str) -> str:
    """Where a manifest's vectors are opened, once checked; else `IndexLoadError`.

    An index folder may come from elsewhere, so its manifest cannot make us create files or contact
    servers: a Milvus Lite database must already exist, and lie in the index folder when named by a
    relative path (a build records `vectors.db`, or the absolute path given to `--store`); a
    Milvus server is contacted (with RECOMMENDER_MILVUS_TOKEN) only when it is the one that
    RECOMMENDER_STORE names.
    """
    uri = str(location.uri)

    def refuse(why: str) -> IndexLoadError:
        return IndexLoadError(
            f"index {label!r} is refused: {why}; rebuild it with `python -m recommender index SOURCE --name {label}`"
        )

    if location.kind == "milvus":
        configured = StoreConfig.parse(settings.store())
        if not (configured.kind == "milvus" and configured.uri == uri):
            server = uri.replace("http://", "milvus://", 1)[:120]
            raise refuse(
                f"it keeps its vectors on the Milvus server {server}, which is not the store this machine "
                f"is set to use ({settings.ENV_STORE}={str(configured)[:60]}), and an index does not choose "
                f"which servers we contact: set {settings.ENV_STORE}={server} to trust it"
            )
        return uri
    uri_text = f"its Milvus Lite database {uri[:120]!r}"

    if not uri.endswith(".db"):
        raise refuse(f"{uri_text} is not a path ending in .db")
    path = uri
    if not os.path.isabs(uri):
        path = os.path.realpath(folder / uri)
        if "/" in uri or "\\" in uri or not path.startswith(os.path.realpath(folder) + os.sep):
            raise refuse(f"{uri_text} lies outside the index folder")
    if not os.path.exists(path):
        raise refuse(f"{uri_text} does not exist here")
    return path


def drop_stale(
    folder: Path, current: StoreLocation, previous: StoreLocation | None, runtime: Runtime | None = None
) -> None:
    """After a commit: drop the previous build's collection and those of builds that crashed before theirs.

    Best effort: a server that cannot be reached now only keeps an unused collection.
    """
    places: list[tuple[str, str]] = []
    if not current.local:  # where this build has just written
        uri = str(current.uri)
        places.append(
            (current.kind, str(folder / uri) if current.kind == "milvus-lite" and not os.path.isabs(uri) else uri)
        )
    if previous is not None and not previous.local:
        # The previous manifest is as untrusted as any: a place it may not name is left alone.
        with contextlib.suppress(IndexLoadError, RecommenderError):
            place = (previous.kind, opened_uri(previous, folder, folder.name))
            if place not in places:
                places.append(place)
    prefix = collection_prefix(folder)
    for kind, uri in places:
        with contextlib.suppress(Exception):
            client = _client(kind, uri, runtime=runtime)
            for name in client.list_collections():
                if name.startswith(prefix) and name != current.collection:
                    client.drop_collection(name)

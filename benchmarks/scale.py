"""Search at scale: the local exact store, faiss-cpu and Milvus Lite over the same random vectors, same run.

    python benchmarks/scale.py [--items 1000000] [--dim 384] [--queries 200] [--engines ...]

Items are random unit vectors drawn around `items / 100` random centres (a catalog of groups of
look-alikes; uniformly random vectors in 384-d have no meaningful neighbours, which no catalog
has), stored as float16 like our indexes; queries are noisy copies of random items. For each
engine: build seconds (writing or inserting plus indexing), memory added to this process (RSS,
MB), p50 / p95 of one query at a time (ms, top-10), and recall@10 against exact search. The
local store and Milvus Lite run through the library (`write_index`, `Index.load`,
`Index.search`); faiss is called directly. The naive baseline is a Python loop over items (what
the retrieval seed does), timed on a subsample and extrapolated linearly, as labeled.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import heapq
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import table

ENGINES = ("local", "faiss-flat", "faiss-ivf", "faiss-hnsw", "milvus-lite-ivf", "milvus-lite-hnsw")
K = 10


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def release_memory() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the next engine's RSS is its own


def make_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """(n, dim) float16 unit rows around n/100 centres, made in chunks to keep memory low."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 100), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float16)
    for start in range(0, n, 1 << 16):
        m = min(1 << 16, n - start)
        rows = centres[rng.integers(0, len(centres), m)] + rng.standard_normal((m, dim)).astype(np.float32) * (
            0.8 / np.sqrt(dim)
        )  # noise of norm ~0.8: neighbours within a group score ~0.6, others ~0
        out[start : start + m] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def latencies(search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """(Q, K) ids found and per-query milliseconds, one query at a time, after a warm-up."""
    search(queries[0])
    found, times = [], []
    for q in queries:
        started = time.perf_counter()
        found.append(search(q))
        times.append(1000 * (time.perf_counter() - started))
    return np.array([np.pad(f[:K], (0, K - len(f[:K])), constant_values=-1) for f in found]), times


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))


def run_local(vectors: np.ndarray, queries: np.ndarray, folder: Path) -> tuple[float, Callable]:
    from recommender.catalog import Item
    from recommender.index import Index, write_index

    return _through_library(vectors, folder, "local", Item, Index, write_index)


def run_milvus(vectors: np.ndarray, queries: np.ndarray, folder: Path, kind: str) -> tuple[float, Callable]:
    from recommender.catalog import Item
    from recommender.index import Index, write_index

    return _through_library(vectors, folder, f"milvus-lite?index={kind}", Item, Index, write_index)


def _through_library(vectors, folder, store, Item, Index, write_index):
    from recommender.index import CatalogInfo

    """Write an index the way `build_index` does (store included), load it, and search it with `Index.search`."""
    backbone = SimpleNamespace(spec={"model": "random"}, name="random", identity="random", dim=vectors.shape[1])
    items = [Item(id=str(i), path=f"{i}.jpg", label=None) for i in range(len(vectors))]
    started = time.perf_counter()
    write_index(
        folder, embeddings=vectors, items=items, backbone=backbone, catalog=CatalogInfo(root=str(folder)), store=store
    )
    del items
    opening = time.perf_counter()
    index = Index.load(folder)
    _through_library.open_seconds = time.perf_counter() - opening  # type: ignore[attr-defined]  # for search.py
    seconds = time.perf_counter() - started
    position = {item.id: i for i, item in enumerate(index.items)}
    return seconds, lambda q: np.array([position[m.id] for m in index.search(q, k=K)])


def run_faiss(vectors: np.ndarray, queries: np.ndarray, kind: str) -> tuple[float, Callable]:
    import faiss

    data = np.asarray(vectors, dtype=np.float32)
    started = time.perf_counter()
    dim = data.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        nlist = max(1, min(int(4 * np.sqrt(len(data))), len(data) // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(data[np.random.default_rng(1).choice(len(data), min(len(data), 64 * nlist), replace=False)])
        index.nprobe = 32
    else:
        index = faiss.IndexHNSWFlat(dim, 16, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 40  # faiss's default: a quick build; efSearch below sets recall
        index.hnsw.efSearch = 128
    index.add(data)
    seconds = time.perf_counter() - started
    del data
    return seconds, lambda q: index.search(q[None, :].astype(np.float32), K)[1][0]


def naive_ms(vectors: np.ndarray, queries: np.ndarray, n: int) -> float:
    """ms per query of a Python loop over the first n items (dot product each, heap of the best)."""
    rows = [np.asarray(v, dtype=np.float32) for v in vectors[:n]]
    started = time.perf_counter()
    for q in queries:
        heapq.nlargest(K, ((float(np.dot(q, v)), i) for i, v in enumerate(rows)))
    return 1000 * (time.perf_counter() - started) / len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--naive-items", type=int, default=20_000, help="subsample the naive loop is timed on")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, from: {', '.join(ENGINES)}")
    args = parser.parse_args()
    engines = [e for e in args.engines.split(",") if e]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engines: {', '.join(sorted(unknown))}")

    t0 = time.perf_counter()
    vectors = make_vectors(args.items, args.dim)
    rng = np.random.default_rng(2)
    queries = vectors[rng.integers(0, args.items, args.queries)].astype(np.float32)
    queries += rng.standard_normal(queries.shape).astype(np.float32) * (0.3 / np.sqrt(args.dim))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    print(
        f"{args.items} x {args.dim} float16 vectors ({vectors.nbytes / 1e6:.0f} MB) and {args.queries} queries "
        f"made in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )

    from recommender.index.store import LocalStore

    truth = np.stack([rows[:K] for rows, _ in LocalStore(vectors, []).search(queries, K)])  # exact top-10
    rows: list[dict[str, object]] = []
    naive = (
        naive_ms(vectors, queries[:5], min(args.naive_items, args.items))
        * args.items
        / min(args.naive_items, args.items)
    )
    rows.append(
        {
            "engine": f"naive Python loop (timed on {min(args.naive_items, args.items)} items, "
            f"extrapolated x{args.items / min(args.naive_items, args.items):.0f})",
            "build s": "-",
            "memory MB": "-",
            "p50 ms": f"{naive:.0f}",
            "p95 ms": "-",
            "recall@10": "1.000",
        }
    )
    with tempfile.TemporaryDirectory(prefix="recommender-scale-") as tmp:
        for engine in engines:
            release_memory()
            before = rss_mb()
            started = time.perf_counter()
            print(f"{engine}: building ...", file=sys.stderr)
            if engine == "local":
                seconds, search = run_local(vectors, queries, Path(tmp) / "local")
            elif engine.startswith("faiss-"):
                seconds, search = run_faiss(vectors, queries, engine.removeprefix("faiss-"))
            else:
                kind = {"milvus-lite-ivf": "IVF_FLAT", "milvus-lite-hnsw": "HNSW"}[engine]
                seconds, search = run_milvus(vectors, queries, Path(tmp) / engine, kind)
            found, times = latencies(search, queries)
            memory = rss_mb() - before
            rows.append(
                {
                    "engine": engine,
                    "build s": f"{seconds:.1f}",
                    "memory MB": f"{memory:.0f}",
                    "p50 ms": f"{np.percentile(times, 50):.2f}",
                    "p95 ms": f"{np.percentile(times, 95):.2f}",
                    "recall@10": f"{recall(found, truth):.3f}",
                }
            )
            print(f"{engine}: done in {time.perf_counter() - started:.0f} s: {rows[-1]}", file=sys.stderr)
            del search, found
            if engine.startswith("milvus"):
                from recommender.index.store.milvus import close_clients

                close_clients()
    print(
        f"{args.items} items x {args.dim}-d (float16), {args.queries} single queries, top-{K}; "
        f"{os.cpu_count()} CPU cores"
    )
    print()
    print(table(rows))


if __name__ == "__main__":
    main()

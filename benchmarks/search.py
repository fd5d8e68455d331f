"""Search scaling: exact top-10 over 10k, 100k and 1M items, 384-d and 768-d, beside a naive loop and faiss.

    python benchmarks/search.py [--sizes 10000,100000,1000000] [--dims 384,768] [--queries 100]

For each size and dimension (float16 storage, the index's own format): ours is the library's
local store (`write_index`, `Index.load`, `Index.search`; exact: float32 BLAS for small
indexes, a bf16 first pass re-scored exactly near the top for large ones); faiss-cpu's exact
`IndexFlatIP` is the well-known reference; the naive baseline is a Python loop over items
(timed on a subsample, extrapolated). ms per single query (p50/p95), memory added (RSS, MB), and
the seconds to open the index (memory-mapped). The vectors come from `scale.make_vectors`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import machine, table
from scale import K, _through_library, latencies, make_vectors, naive_ms, recall, release_memory, rss_mb, run_faiss


def brute_force(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(Q, K) exact top-K ids in float32, block by block (the reference every engine is checked against)."""
    best = np.full((len(queries), 0), 0, dtype=np.int64)
    scores = np.full((len(queries), 0), 0, dtype=np.float32)
    for start in range(0, len(vectors), 1 << 16):
        block = np.asarray(vectors[start : start + (1 << 16)], dtype=np.float32) @ queries.T  # (B, Q)
        ids = np.concatenate([best, np.arange(start, start + len(block))[None, :].repeat(len(queries), 0)], 1)
        vals = np.concatenate([scores, block.T], 1)
        keep = np.argsort(-vals, axis=1, kind="stable")[:, :K]
        best, scores = np.take_along_axis(ids, keep, 1), np.take_along_axis(vals, keep, 1)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dims", default="384,768")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--naive-items", type=int, default=10_000)
    args = parser.parse_args()
    os.environ.setdefault("RECOMMENDER_CACHE_DIR", str(Path(tempfile.gettempdir()) / "recommender-bench-cache"))
    rows = []
    for dim in (int(d) for d in args.dims.split(",")):
        for n in (int(s) for s in args.sizes.split(",")):
            vectors = make_vectors(n, dim)
            rng = np.random.default_rng(2)
            queries = vectors[rng.integers(0, n, args.queries)].astype(np.float32)
            queries += rng.standard_normal(queries.shape).astype(np.float32) * (0.3 / np.sqrt(dim))
            queries /= np.linalg.norm(queries, axis=1, keepdims=True)
            truth = brute_force(vectors, queries)
            naive = naive_ms(vectors, queries[:3], min(args.naive_items, n)) * n / min(args.naive_items, n)
            size = f"{n:,} x {dim}"
            label = "naive Python loop" + (" (extrapolated)" if n > args.naive_items else "")
            rows.append(
                {
                    "items x dim": size,
                    "engine": label,
                    "p50 ms": f"{naive:.1f}",
                    "p95 ms": "-",
                    "memory MB": "-",
                    "open s": "-",
                    "recall@10": "1.000",
                }
            )
            with tempfile.TemporaryDirectory(prefix="recommender-search-") as tmp:
                for engine in ("recommender", "faiss IndexFlatIP"):
                    release_memory()
                    before = rss_mb()
                    if engine == "recommender":
                        from recommender.catalog import Item
                        from recommender.index import Index, write_index

                        _, search = _through_library(vectors, Path(tmp) / "local", "local", Item, Index, write_index)
                        opened = f"{_through_library.open_seconds:.3f}"  # type: ignore[attr-defined]
                    else:
                        _, search = run_faiss(vectors, queries, "flat")
                        opened = "-"
                    found, times = latencies(search, queries)
                    p50, p95 = np.percentile(times, [50, 95])
                    rows.append(
                        {
                            "items x dim": size,
                            "engine": engine,
                            "p50 ms": f"{p50:.2f}",
                            "p95 ms": f"{p95:.2f}",
                            "memory MB": f"{rss_mb() - before:.0f}",
                            "open s": opened,
                            "recall@10": f"{recall(found, truth):.3f}",
                        }
                    )
                    print(f"{size} {engine}: {rows[-1]}", file=sys.stderr)
                    del search, found
            del vectors
    print(f"machine: {machine()}")
    print(
        f"{args.queries} single queries, top-{K}, float16 storage; memory = RSS added while the engine is loaded "
        "and searched\n"
    )
    print(table(rows))


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"\n({time.perf_counter() - started:.0f} s)", file=sys.stderr)

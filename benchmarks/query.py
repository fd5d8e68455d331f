"""Query latency: upload bytes -> ranked answer, in-process and warm, beside a naive per-query pipeline.

    python benchmarks/query.py [--sizes 649,100000] [--queries 30]

Ours: `recommend.look_alikes(jpeg_bytes, index)` with the model loaded once and the index opened
once (memory-mapped): decode, pad, embed (bf16 where the CPU has it), exact top-10 search.
Naive (the retrieval seeds): every query re-reads the index from disk, runs the image processor
and the model in fp32, and scores items in a Python loop. DINOv2-small shape, random weights;
the indexes hold random unit vectors (search cost does not depend on what they are).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import machine, make_catalog, make_model, table


def random_index(folder: Path, n: int, backbone: object) -> object:
    """An index of n random unit vectors with the backbone's spec, written through the library."""
    from recommender.calibration import Calibration
    from recommender.catalog import Item
    from recommender.index import CatalogInfo, Index, write_index

    if not (folder / "manifest.json").exists():
        rng = np.random.default_rng(n)
        vectors = rng.normal(size=(n, backbone.dim)).astype(np.float32)  # type: ignore[attr-defined]
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        items = [Item(id=f"item{i}", path=f"item{i}.jpg", label=f"label{i % 500}") for i in range(n)]
        write_index(
            folder,
            embeddings=vectors,
            items=items,
            backbone=backbone,  # type: ignore[arg-type]
            catalog=CatalogInfo(root=str(folder), labeled=True),
            calibration=Calibration(0.5),
        )
    return Index.load(folder)


def percentiles(samples: list[float]) -> tuple[float, float]:
    p50, p95 = np.percentile(np.array(samples) * 1000, [50, 95])
    return float(p50), float(p95)


def ours(index: object, backbone: object, queries: list[bytes]) -> list[float]:
    from recommender.recommend import look_alikes

    look_alikes(queries[0], index, k=10, backbone=backbone)  # type: ignore[arg-type]  # warm-up
    times = []
    for data in queries:
        started = time.perf_counter()
        look_alikes(data, index, k=10, backbone=backbone)  # type: ignore[arg-type]
        times.append(time.perf_counter() - started)
    return times


def naive(model_dir: Path, index_folder: Path, queries: list[bytes], limit: int) -> list[float]:
    import torch
    from PIL import Image
    from safetensors.numpy import load_file
    from transformers import AutoImageProcessor, AutoModel

    processor = AutoImageProcessor.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    emb_file = next(index_folder.glob("embeddings-*.safetensors"))
    times = []
    for data in queries[:limit]:
        started = time.perf_counter()
        matrix = load_file(emb_file)["embeddings"].astype(np.float32)  # re-read every query
        image = Image.open(io.BytesIO(data)).convert("RGB")
        with torch.no_grad():
            q = model(**processor(images=image, return_tensors="pt")).last_hidden_state[0, 0].numpy()
        q = q / np.linalg.norm(q)
        scores = [(float(np.dot(q, row)), i) for i, row in enumerate(matrix)]  # one item at a time
        sorted(scores, reverse=True)[:10]
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="649,100000")
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--naive-queries", type=int, default=8, help="the naive pipeline is slow: fewer runs")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "recommender-bench")
    args = parser.parse_args()
    os.environ.setdefault("RECOMMENDER_CACHE_DIR", str(args.work / "cache"))
    from recommender.backbones import load_backbone
    from recommender.index import Index

    model_dir = make_model("small", args.work / "dinov2-small-random")
    catalog = make_catalog(max(args.queries, 48), args.work / f"catalog-{max(args.queries, 48)}")
    queries = [p.read_bytes() for p in sorted(catalog.glob("*/*.jpg"))[: args.queries]]
    backbone = load_backbone(str(model_dir))
    print(f"machine: {machine()}")
    precision = getattr(backbone, "precision", "fp32")
    print(f"{len(queries)} JPEG queries of 500x375, DINOv2-small shape (random weights), {precision}, top-10\n")
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        folder = args.work / f"index-random-{n}"
        random_index(folder, n, backbone)
        started = time.perf_counter()
        index = Index.load(folder)
        opened = time.perf_counter() - started
        p50, p95 = percentiles(ours(index, backbone, queries))
        rows.append(
            {
                "index": f"{n:,} items",
                "pipeline": "recommender (warm, mmap, batched search)",
                "p50 ms": f"{p50:.1f}",
                "p95 ms": f"{p95:.1f}",
                "open s": f"{opened:.2f}",
            }
        )
        p50n, p95n = percentiles(naive(model_dir, folder, queries, args.naive_queries))
        rows.append(
            {
                "index": f"{n:,} items",
                "pipeline": "naive (re-read index, fp32, Python loop)",
                "p50 ms": f"{p50n:.1f}",
                "p95 ms": f"{p95n:.1f}",
                "open s": "-",
            }
        )
    print(table(rows))


if __name__ == "__main__":
    main()

"""Index-build speed: the library's `index` path beside the seed's naive per-image loop, same run, same pictures.

    python benchmarks/embed.py [--images 192] [--shape small]

The naive loop is what the seeds do: for each picture, open it, run the model's image processor,
run the model in fp32, keep the CLS token. Ours is `build_index` (what `python -m recommender
index` runs): pictures read and prepared in worker threads while the model embeds batches, in
bf16 where the CPU has it, and once more with `--precision fp32`, the exact path, to print how
closely the two agree. Random weights of the real DINOv2 shape: speed is honest, quality is not
measured here.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import machine, make_catalog, make_model, table

ROOT = Path(__file__).resolve().parent.parent


def naive(model_dir: Path, paths: list[Path]) -> float:
    """Images/s of the per-image loop: processor + model per picture, fp32."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel

    processor = AutoImageProcessor.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    model(**processor(images=Image.open(paths[0]).convert("RGB"), return_tensors="pt"))  # warm-up
    started = time.perf_counter()
    for path in paths:
        inputs = processor(images=Image.open(path).convert("RGB"), return_tensors="pt")
        with torch.no_grad():
            cls = model(**inputs).last_hidden_state[:, 0]
        torch.nn.functional.normalize(cls, dim=-1).numpy()
    return len(paths) / (time.perf_counter() - started)


def ours(
    model_dir: Path, catalog: Path, work: Path, batch_size: int | None, precision: str
) -> tuple[float, float, np.ndarray]:
    """Images/s of the library's build (embedding only, and the whole build with writing the index),
    and the (N, D) vectors it stored."""
    from PIL import Image

    from recommender.backbones import load_backbone
    from recommender.build import build_index
    from recommender.index import Index
    from recommender.memory import keep_freed_buffers

    keep_freed_buffers()  # as the CLI and the app opt in
    backbone = load_backbone(str(model_dir), precision=precision)
    # Warm-up at the batch size the build uses, as the naive loop is warmed at its own (one picture):
    # the first call of a shape builds oneDNN kernels, a cost a real catalog pays once.
    backbone.embed([Image.new("RGB", (64, 64))] * (batch_size or backbone.batch_size), batch_size=batch_size)
    with tempfile.TemporaryDirectory(dir=work) as fresh:  # nothing reused from an earlier run
        started = time.perf_counter()
        report = build_index(
            catalog,
            name="bench",
            backbone=backbone,
            index_dir=fresh,
            dtype="float32",
            batch_size=batch_size,
            progress=False,
        )
        wall = time.perf_counter() - started
        vectors = np.array(Index.load("bench", index_dir=fresh).embeddings, dtype=np.float32)
    assert report.reused == 0, "the benchmark must embed every picture"
    return report.images_per_second, report.count / wall, vectors


def command(model_dir: Path, catalog: Path, work: Path) -> tuple[float, float]:
    """`python -m recommender index` in a fresh process: the images/s it prints, and pictures per
    second of the whole process (Python start, imports and model load included)."""
    with tempfile.TemporaryDirectory(dir=work) as fresh:
        env = {**os.environ, "RECOMMENDER_INDEX_DIR": fresh}
        started = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "recommender",
                "index",
                str(catalog),
                "--name",
                "bench",
                "--model",
                str(model_dir),
                "-q",
            ],
            env=env,
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        )
        wall = time.perf_counter() - started
    found = re.search(r"(\d+) embedded.*\(([\d.]+) images/s\)", done.stdout)
    assert found, done.stdout
    return float(found[2]), int(found[1]) / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--shape", choices=["small", "base", "large"], default="small")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "recommender-bench")
    args = parser.parse_args()
    os.environ.setdefault("RECOMMENDER_CACHE_DIR", str(args.work / "cache"))

    model_dir = make_model(args.shape, args.work / f"dinov2-{args.shape}-random")
    catalog = make_catalog(args.images, args.work / f"catalog-{args.images}")
    paths = sorted(catalog.glob("*/*.jpg"))[: args.images]
    print(f"machine: {machine()}")
    print(f"{len(paths)} JPEGs of 500x375, DINOv2-{args.shape} shape (random weights), 224 px\n")

    naive_rate = naive(model_dir, paths)
    fast, fast_wall, fast_vectors = ours(model_dir, catalog, args.work, args.batch_size, "bf16")
    exact, _, exact_vectors = ours(model_dir, catalog, args.work, args.batch_size, "fp32")
    printed, process = command(model_dir, catalog, args.work)
    rows = [{"path": "naive per-image loop (processor + model, fp32)", "images/s": naive_rate}]
    rows += [
        {"path": "build_index, bf16 (embedding)", "images/s": fast},
        {"path": "build_index, bf16 (writing the index included)", "images/s": fast_wall},
        {"path": "build_index, --precision fp32 (embedding)", "images/s": exact},
        {"path": "python -m recommender index (the rate it prints)", "images/s": printed},
        {"path": "python -m recommender index (whole process, start-up included)", "images/s": process},
    ]
    for row in rows:
        row["speed-up"] = f"{row['images/s'] / naive_rate:.1f}x"
        row["images/s"] = f"{row['images/s']:.1f}"
    cosine = (fast_vectors * exact_vectors).sum(axis=1)  # rows are unit length
    print(table(rows))
    print(f"\nbf16 against fp32, same pictures: cosine min {cosine.min():.5f}, mean {cosine.mean():.5f}")


if __name__ == "__main__":
    main()

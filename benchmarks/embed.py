"""Index-build speed: the library's `index` path beside the seed's naive per-image loop, same run, same pictures.

    python benchmarks/embed.py [--images 192] [--shape small]

The naive loop is what the seeds do: for each picture, open it, run the model's image processor,
run the model in fp32, keep the CLS token. Ours is `build_index` (what `python -m recommender
index` runs): pictures read and prepared in worker threads while the model embeds batches.
Random weights of the real DINOv2 shape: speed is honest, quality is not measured here.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import machine, make_catalog, make_model, table


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


def ours(model_dir: Path, catalog: Path, index_dir: Path, batch_size: int | None) -> tuple[float, float]:
    """Images/s of the library's build (embedding only) and of the whole command (model load included)."""
    from PIL import Image

    from recommender.backbones import load_backbone
    from recommender.build import build_index

    backbone = load_backbone(str(model_dir))
    # Warm-up at the batch size the build uses, as the naive loop is warmed at its own (one picture):
    # the first call of a shape builds oneDNN kernels, a cost a real catalog pays once.
    backbone.embed([Image.new("RGB", (64, 64))] * (batch_size or backbone.batch_size), batch_size=batch_size)
    started = time.perf_counter()
    report = build_index(catalog, name="bench", model=str(model_dir), index_dir=index_dir, batch_size=batch_size,
                         progress=False)
    wall = time.perf_counter() - started
    assert report.reused == 0, "the benchmark must embed every picture"
    return report.images_per_second, report.count / wall


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
    with tempfile.TemporaryDirectory(dir=args.work) as fresh:  # nothing reused from an earlier run
        ours_rate, ours_wall = ours(model_dir, catalog, Path(fresh), args.batch_size)
    rows = [
        {"path": "naive per-image loop (processor + model, fp32)", "images/s": f"{naive_rate:.1f}", "speed-up": "1.0x"},
        {"path": "recommender index (embedding)", "images/s": f"{ours_rate:.1f}",
         "speed-up": f"{ours_rate / naive_rate:.1f}x"},
        {"path": "recommender index (whole command, model load included)", "images/s": f"{ours_wall:.1f}",
         "speed-up": f"{ours_wall / naive_rate:.1f}x"},
    ]
    print(table(rows))


if __name__ == "__main__":
    main()

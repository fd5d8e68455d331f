"""Shared by the benchmarks: random models of real shapes, synthetic catalogs, and table printing."""

from __future__ import annotations

import json
import os
import platform
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
#: The held-out Pokémon sets (`scripts/build_pokemon_catalog.py --heldout-only`), one folder of class folders each.
HELDOUT = ROOT / ".cache" / "pokemon-heldout"
KINDS = ("shiny", "back", "back-shiny", "female", "forms", "artwork-forms")
#: Pictures from outside the Pokémon universe: the held-out script's drawings, then `scripts/build_outside_sets.py`'s.
OUTSIDE_SETS = {
    "other": HELDOUT / "other",
    **{name: ROOT / ".cache" / "outside" / name for name in ("icons", "logos", "flags", "photos")},
}

#: DINOv2 sizes (hidden, layers, heads) as published; random weights cost exactly what real ones do.
SHAPES = {"small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}


def make_model(shape: str, folder: Path) -> Path:
    """Save a randomly initialised DINOv2 of the given size, with the hub's preprocessor config, once."""
    if (folder / "model.safetensors").exists():
        return folder
    import torch
    from transformers import Dinov2Config, Dinov2Model

    hidden, layers, heads = SHAPES[shape]
    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        patch_size=14,
        image_size=518,
    )
    Dinov2Model(config).save_pretrained(folder)
    # What facebook/dinov2-small ships: resize the short side to 256, centre-crop 224, ImageNet statistics.
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "BitImageProcessor",
                "do_resize": True,
                "size": {"shortest_edge": 256},
                "resample": 3,
                "do_center_crop": True,
                "crop_size": {"height": 224, "width": 224},
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "image_mean": [0.485, 0.456, 0.406],
                "image_std": [0.229, 0.224, 0.225],
                "do_convert_rgb": True,
            }
        )
    )
    return folder


def make_catalog(n: int, folder: Path, *, size: tuple[int, int] = (500, 375)) -> Path:
    """n photo-like JPEGs (shapes, gradients and noise) in class folders, written once."""
    if len(list(folder.glob("*/*.jpg"))) >= n:
        return folder
    rng = random.Random(0)
    noise = np.random.default_rng(0)
    for i in range(n):
        label = folder / f"class{i % 10}"
        label.mkdir(parents=True, exist_ok=True)
        img = Image.new("RGB", size, tuple(rng.randint(150, 255) for _ in range(3)))
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x, y = rng.randint(0, size[0] - 60), rng.randint(0, size[1] - 60)
            w, h = rng.randint(30, 200), rng.randint(30, 200)
            draw.ellipse([x, y, x + w, y + h], fill=tuple(rng.randint(0, 255) for _ in range(3)))
        grain = noise.integers(-12, 12, (size[1], size[0], 3))
        pixels = np.clip(np.asarray(img, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).filter(ImageFilter.SMOOTH).save(label / f"{i:05d}.jpg", quality=90)
    return folder


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def table(rows: list[dict[str, object]]) -> str:
    """A Markdown table of rows (dicts with the same keys)."""
    keys = list(rows[0])
    cells = [[str(row[k]) for k in keys] for row in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
    return "\n".join([line(keys), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])

"""Which offline features name held-out Pokémon best: EfficientNet-Lite0 stages, pooling, mirror TTA, colour.

    python benchmarks/offline_features.py extract      # embeds catalog, held-out and outside sets once
    python benchmarks/offline_features.py compare      # recall@1 per set and the decision, per recipe

Every picture is read and fitted as the library does (`load_image`, `fit_square`, pad, 224 px) and run
once through the CNN (and once mirrored); the pooled maps of several stages are cached under
`.cache/features/` so that recipes are compared in NumPy. Needs the held-out set
(`scripts/build_pokemon_catalog.py --heldout-only`) and the outside sets (`scripts/build_outside_sets.py`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import HELDOUT, KINDS, OUTSIDE_SETS  # noqa: E402

from recommender.backbones.cnn import load_efficientnet  # noqa: E402
from recommender.backbones.histogram import ColourHistogram  # noqa: E402
from recommender.catalog import read_catalog  # noqa: E402
from recommender.images import fit_square, load_image  # noqa: E402

CACHE = ROOT / ".cache" / "features"


def sources() -> dict[str, Path]:
    return {"catalog": ROOT / "assets" / "pokemon" / "catalog.csv", **{k: HELDOUT / k for k in KINDS}, **OUTSIDE_SETS}


def raw_features(pixels: np.ndarray, model) -> dict[str, np.ndarray]:
    """(N, S, S, 3) uint8 -> pooled maps of stages 5, 6 and the final 1280-d head, average and GeM (p=3)."""
    import torch

    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
    x = ((x - 127.0) / 128.0).contiguous(memory_format=torch.channels_last)
    out = {}
    with torch.inference_mode():
        h = model._swish(model._bn0(model._conv_stem(x)))
        for i, block in enumerate(model._blocks):
            h = block(h)
            if i == 10:
                out["s5avg"] = h.mean(dim=(2, 3))
                out["s5gem"] = h.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)
            if i == 14:
                out["s6avg"] = h.mean(dim=(2, 3))
        f = model._swish(model._bn1(model._conv_head(h)))
        out["avg"] = f.mean(dim=(2, 3))
        out["gem"] = f.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)
    return {k: v.numpy() for k, v in out.items()}


#: Every n-th picture of the large sets (a subset, on a busy 2-core machine); the small sets whole.
STRIDE = {"shiny": 2, "back": 2, "back-shiny": 2, "icons": 2, "logos": 2, "flags": 2}


def extract(name: str, source: Path, *, views: int = 0) -> None:
    """Pooled features of a set (or, with `views`, of that many augmented views of each picture, as `adapt` makes)."""
    import torch

    from recommender.adapt import augment

    torch.set_num_threads(1)  # on a shared 2-core machine two threads spin against each other: 7x the CPU time
    path = CACHE / f"{name}.npz"
    if path.exists():
        return
    catalog = read_catalog(source)
    catalog.items[:] = catalog.items[:: STRIDE.get(name, 1)]
    rng = np.random.default_rng(0)
    model, _ = load_efficientnet(224, "cpu")
    hist = ColourHistogram()
    feats: dict[str, list[np.ndarray]] = {}
    labels, hists = [], []
    started = time.perf_counter()
    batch: list[np.ndarray] = []

    def flush() -> None:
        px = np.stack(batch)
        for suffix, arr in (("", px), ("_m", px[:, :, ::-1].copy())):
            for key, value in raw_features(arr, model).items():
                feats.setdefault(key + suffix, []).append(value)
        batch.clear()

    rows = []
    for row, item in enumerate(catalog.items):
        original = load_image(catalog.root / item.path, max_side=512)
        for image in [augment(original, rng) for _ in range(views)] if views else [original]:
            batch.append(np.asarray(fit_square(image, 224, fit="pad"), dtype=np.uint8))
            hists.append(hist.prepare(image))
            labels.append(item.label or "")
            rows.append(row)
            if len(batch) == 8:
                flush()
    if batch:
        flush()
    arrays = {k: np.concatenate(v).astype(np.float32) for k, v in feats.items()}
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, labels=np.array(labels), rows=np.array(rows), hist=np.stack(hists), **arrays)
    print(f"{name}: {len(labels)} pictures in {time.perf_counter() - started:.0f} s", flush=True)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def vectors(data, recipe: dict[str, float], mirror: bool) -> np.ndarray:
    """A recipe {feature: weight} -> concatenated unit parts scaled by sqrt(weight)."""
    parts = []
    for name, weight in recipe.items():
        key = name.rstrip("^")
        x = data[key] if key == "hist" else (data[key] + data[key + "_m"] if mirror else data[key])
        if name.endswith("^"):
            x = np.sign(x) * np.sqrt(np.abs(x))  # signed square root: tames a few dominant channels
        parts.append(unit(x) * np.sqrt(weight))
    return np.concatenate(parts, axis=1)


RECIPES = {
    "offline (lite0 avg 0.85 + hist 0.15)": ({"avg": 0.85, "hist": 0.15}, False),
    "A: gem 0.60 + s5 0.25 + hist 0.15": ({"gem": 0.60, "s5avg": 0.25, "hist": 0.15}, False),
    "A + mirror": ({"gem": 0.60, "s5avg": 0.25, "hist": 0.15}, True),
    "gem 0.85 + hist 0.15": ({"gem": 0.85, "hist": 0.15}, False),
    "A, s5 signed-sqrt": ({"gem": 0.60, "s5avg^": 0.25, "hist": 0.15}, False),
    "A, s5 signed-sqrt + mirror": ({"gem": 0.60, "s5avg^": 0.25, "hist": 0.15}, True),
    "gem 0.5 + s5 0.2 + s6 0.15 + hist 0.15": ({"gem": 0.5, "s5avg": 0.2, "s6avg": 0.15, "hist": 0.15}, False),
    "gem 0.55 + s5 0.3 + hist 0.15, mirror": ({"gem": 0.55, "s5avg": 0.3, "hist": 0.15}, True),
    "gem 0.6 + s5gem 0.25 + hist 0.15, mirror": ({"gem": 0.6, "s5gem": 0.25, "hist": 0.15}, True),
    "gem 0.65 + s5 0.25 + hist 0.10, mirror": ({"gem": 0.65, "s5avg": 0.25, "hist": 0.10}, True),
    "gem 0.55 + s5 0.25 + hist 0.20, mirror": ({"gem": 0.55, "s5avg": 0.25, "hist": 0.20}, True),
}


def compare() -> None:
    from recommender.calibration import calibrate

    data = {name: dict(np.load(CACHE / f"{name}.npz")) for name in sources() if (CACHE / f"{name}.npz").exists()}
    cat_labels = data["catalog"]["labels"]
    names = sorted(set(cat_labels))
    code = {n: i for i, n in enumerate(names)}
    cat_codes = np.array([code[n] for n in cat_labels])
    header = ["recipe", *KINDS, "all", "thr", "kept", *[s for s in OUTSIDE_SETS if s in data], "refused"]
    print("| " + " | ".join(header) + " |")
    for title, (recipe, mirror) in RECIPES.items():
        gallery = vectors(data["catalog"], recipe, mirror)
        cal = calibrate(gallery, list(cat_labels))
        row, hits, total, best_in = [title], 0, 0, []
        for kind in KINDS:
            q = vectors(data[kind], recipe, mirror)
            s = q @ gallery.T
            label_best = np.full((len(q), len(names)), -np.inf)
            np.maximum.at(label_best.T, cat_codes, s.T)
            truth = np.array([code.get(n, -1) for n in data[kind]["labels"]])
            ok = label_best.argmax(1) == truth
            row.append(f"{ok.mean():.3f}")
            hits, total = hits + ok.sum(), total + len(ok)
            best_in.append(s.max(1))
        thr = cal.threshold
        best_in = np.concatenate(best_in)
        row += [f"{hits / total:.3f}", f"{thr:.3f}", f"{(best_in >= thr).mean():.3f}"]
        refused = []
        for name in OUTSIDE_SETS:
            if name in data:
                best = (vectors(data[name], recipe, mirror) @ gallery.T).max(1)
                refused.append(best < thr)
                row.append(f"{refused[-1].mean():.3f}")
        row.append(f"{np.concatenate(refused).mean():.3f}" if refused else "")
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["extract"]:
        for name, source in sources().items():
            extract(name, source)
        extract("catalog-views", sources()["catalog"], views=2)
    else:
        compare()

"""What catalog adaptation buys on held-out Pokémon and outside pictures, per setting, beside the plain index.

    python benchmarks/adapt.py extract --index-dir DIR   # embeds views, held-out and outside sets once
    python benchmarks/adapt.py sweep --index-dir DIR     # trains heads, prints recall@1 and the decision

Needs the plain offline Pokémon index in DIR (`python -m recommender index assets/pokemon/catalog.csv
--name pokemon --model offline --index-dir DIR`), the held-out set (`scripts/build_pokemon_catalog.py
--heldout-only`) and the outside sets (`scripts/build_outside_sets.py`). Every picture is embedded once
with the index's backbone (cached under `.cache/adapt/`); each head is trained with `recommender.adapt`
from the catalog's own pictures only, and applied in NumPy to the cached query vectors, so that a
setting costs its training time, not a re-embedding. The plain index is the baseline of the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import HELDOUT, KINDS, OUTSIDE_SETS  # noqa: E402

from recommender.adapt import embed_views, train_head  # noqa: E402
from recommender.calibration import calibrate  # noqa: E402
from recommender.catalog import read_catalog  # noqa: E402
from recommender.images import load_image  # noqa: E402
from recommender.index import Index  # noqa: E402

CACHE = ROOT / ".cache" / "adapt"


def embed_paths(paths: list[Path], backbone) -> np.ndarray:
    """(N, D) vectors of pictures read as queries are (`load_image`), 64 at a time."""
    out = []
    for start in range(0, len(paths), 64):
        out.append(backbone.embed([load_image(p, max_side=512) for p in paths[start : start + 64]]))
    return np.concatenate(out)


def extract(index: Index) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    backbone = index.backbone()
    started = time.perf_counter()
    if not (CACHE / "views.npz").exists():
        views, rows = embed_views([index.path_of(item) for item in index.items], backbone, views=2, seed=0)
        np.savez(CACHE / "views.npz", vectors=views, rows=rows)
    for kind in KINDS:
        if not (CACHE / f"{kind}.npz").exists():
            catalog = read_catalog(HELDOUT / kind)
            items = catalog.items
            vectors = embed_paths([catalog.root / item.path for item in items], backbone)
            np.savez(CACHE / f"{kind}.npz", vectors=vectors, labels=np.array([item.label for item in items]))
    for name, folder in OUTSIDE_SETS.items():
        if not (CACHE / f"{name}.npz").exists():
            paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
            np.savez(CACHE / f"{name}.npz", vectors=embed_paths(paths, backbone))
    print(f"extracted in {time.perf_counter() - started:.0f} s")


def measure(name: str, catalog: np.ndarray, labels: np.ndarray, threshold: float, seconds: float, through=None) -> dict:
    """recall@1 per held-out set and all, and the decision at `threshold` (kept inside, refused outside).

    `through` maps the cached (Q, D) query vectors as the index's backbone would (an adapter head).
    """
    through = through or (lambda v: v)
    row: dict[str, object] = {"setting": name}
    hits, inside = [], []
    for kind in KINDS:
        data = np.load(CACHE / f"{kind}.npz")
        scores = through(data["vectors"]) @ catalog.T  # (Q, N)
        best = scores.argmax(axis=1)
        hit = labels[best] == data["labels"]
        row[kind] = f"{hit.mean():.3f}"
        hits.append(hit)
        inside.append(scores.max(axis=1))
    outside = through(np.concatenate([np.load(CACHE / f"{n}.npz")["vectors"] for n in OUTSIDE_SETS])) @ catalog.T
    row["all"] = f"{np.concatenate(hits).mean():.3f}"
    row["threshold"] = f"{threshold:.3f}"
    row["kept"] = f"{(np.concatenate(inside) >= threshold).mean():.3f}"
    row["refused"] = f"{(outside.max(axis=1) < threshold).mean():.3f}"
    # The best cut on these very pictures (an oracle, for how well the features separate the two worlds).
    ins, outs = np.concatenate(inside), outside.max(axis=1)
    cuts = np.quantile(np.concatenate([ins, outs]), np.linspace(0, 1, 401))
    balanced = [((ins >= c).mean() + (outs < c).mean()) / 2 for c in cuts]
    best = cuts[int(np.argmax(balanced))]
    row["oracle kept/refused"] = f"{(ins >= best).mean():.3f}/{(outs < best).mean():.3f}"
    row["seconds"] = f"{seconds:.0f}"
    return row


def sweep(index: Index, settings: list[tuple[int, int, float, float, bool]]) -> None:
    anchors = np.asarray(index.embeddings, dtype=np.float32)  # (N, D)
    labels = np.array([item.label for item in index.items])
    data = np.load(CACHE / "views.npz")
    prior = index.backbone().threshold_prior
    rows = [measure("plain index (baseline)", anchors, labels, index.calibration.threshold, 0)]
    print(rows[-1], flush=True)
    for epochs, rank, temperature, decay, use_labels in settings:
        started = time.perf_counter()
        head, _ = train_head(
            anchors,
            data["vectors"],
            data["rows"],
            index.label_codes if use_labels else np.full(len(anchors), -1),
            epochs=epochs,
            rank=rank,
            temperature=temperature,
            weight_decay=decay,
        )
        seconds = time.perf_counter() - started
        adapted = head.apply(anchors)
        threshold = calibrate(adapted, list(labels), prior=prior).threshold
        name = f"head e{epochs} r{rank} t{temperature} wd{decay} {'labels' if use_labels else 'views only'}"
        rows.append(measure(name, adapted, labels, threshold, seconds, through=head.apply))
        print(rows[-1], flush=True)
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n| " + " | ".join("---" for _ in keys) + " |")
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=("extract", "sweep"))
    parser.add_argument("--index-dir", type=Path, required=True)
    parser.add_argument("--index", default="pokemon")
    parser.add_argument(
        "--settings",
        default="30:256:0.05:0.01:1,5:256:0.05:0.01:1,5:256:0.05:0.01:0,10:256:0.1:0.01:0",
        help="epochs:rank:temperature:weight_decay:labels(1/0), comma-separated",
    )
    args = parser.parse_args()
    index = Index.load(args.index, index_dir=args.index_dir)
    if args.step == "extract":
        extract(index)
    else:
        settings = [tuple(float(v) for v in s.split(":")) for s in args.settings.split(",")]
        sweep(index, [(int(e), int(r), t, d, bool(labels)) for e, r, t, d, labels in settings])


if __name__ == "__main__":
    main()

"""Write docs/explain-example.png and docs/heatmap-example.png with the offline CNN (no download).

    python docs/make_examples.py [--pokemon assets/pokemon]

The explain example uses pictures drawn here (CC0, like the rest of this script's output): a
small catalog of toy cars, houses, trees, cups and boats on white, and a query car not in it.
The heatmap example shows the first 151 Pokémon of the default catalog (artwork view, names
only in the figure) when `--pokemon` points at it, else the drawn catalog.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, when run as a script

from recommender.build import build_index
from recommender.explain import catalog_heatmap, explain
from recommender.index import Index
from recommender.recommend import look_alikes

DOCS = Path(__file__).resolve().parent
SUPERSAMPLE = 4  # drawn 4x larger, then shrunk: smooth edges


def _canvas(w: int, h: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (w * SUPERSAMPLE, h * SUPERSAMPLE), "white")
    return img, ImageDraw.Draw(img)


def _done(img: Image.Image) -> Image.Image:
    return img.resize((img.width // SUPERSAMPLE, img.height // SUPERSAMPLE), Image.Resampling.LANCZOS)


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randint(20, 230) for _ in range(3))  # type: ignore[return-value]


def draw_car(rng: random.Random, *, mirror: bool = False) -> Image.Image:
    s = SUPERSAMPLE
    w, h = rng.randint(220, 280), rng.randint(140, 170)
    img, d = _canvas(w, h)
    body, glass = _colour(rng), (170, 215, 240)
    top = int(h * rng.uniform(0.12, 0.25))
    d.rounded_rectangle([8 * s, int(h * 0.45) * s, (w - 8) * s, int(h * 0.78) * s], radius=14 * s, fill=body)
    cab = (int(w * rng.uniform(0.22, 0.3)), int(w * rng.uniform(0.65, 0.75)))
    d.polygon(
        [
            (cab[0] * s, int(h * 0.46) * s),
            ((cab[0] + 25) * s, top * s),
            ((cab[1] - 20) * s, top * s),
            (cab[1] * s, int(h * 0.46) * s),
        ],
        fill=body,
    )
    mid = (cab[0] + cab[1]) // 2
    sill, head = int(h * 0.44) * s, (top + 8) * s
    d.polygon(
        [((cab[0] + 12) * s, sill), ((cab[0] + 30) * s, head), ((mid - 4) * s, head), ((mid - 4) * s, sill)], fill=glass
    )
    d.polygon(
        [((mid + 4) * s, sill), ((mid + 4) * s, head), ((cab[1] - 24) * s, head), ((cab[1] - 10) * s, sill)], fill=glass
    )
    r = int(h * 0.14)
    for cx in (int(w * 0.24), int(w * 0.76)):
        cy = int(h * 0.78)
        d.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], fill=(30, 30, 30))
        d.ellipse([(cx - r // 2) * s, (cy - r // 2) * s, (cx + r // 2) * s, (cy + r // 2) * s], fill=(180, 180, 180))
    out = _done(img)
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirror else out


def draw_house(rng: random.Random) -> Image.Image:
    s = SUPERSAMPLE
    w, h = rng.randint(190, 240), rng.randint(200, 240)
    img, d = _canvas(w, h)
    wall, roof = _colour(rng), _colour(rng)
    eave = int(h * rng.uniform(0.35, 0.45))
    d.rectangle([20 * s, eave * s, (w - 20) * s, (h - 8) * s], fill=wall)
    d.polygon([(6 * s, eave * s), (w // 2 * s, 10 * s), ((w - 6) * s, eave * s)], fill=roof)
    d.rectangle([int(w * 0.7) * s, 22 * s, int(w * 0.8) * s, int(eave * 0.7) * s], fill=roof)
    d.rectangle([int(w * 0.42) * s, int(h * 0.65) * s, int(w * 0.58) * s, (h - 8) * s], fill=(90, 60, 40))
    for x in (0.22, 0.66):
        d.rectangle(
            [int(w * x) * s, int(h * 0.52) * s, int(w * (x + 0.12)) * s, int(h * 0.64) * s],
            fill=(170, 215, 240),
            outline=(60, 60, 60),
            width=2 * s,
        )
    return _done(img)


def draw_tree(rng: random.Random) -> Image.Image:
    s = SUPERSAMPLE
    w, h = rng.randint(170, 220), rng.randint(220, 260)
    img, d = _canvas(w, h)
    leaves = (rng.randint(30, 90), rng.randint(120, 190), rng.randint(30, 90))
    d.rectangle([int(w * 0.44) * s, int(h * 0.55) * s, int(w * 0.56) * s, (h - 6) * s], fill=(120, 80, 40))
    for _ in range(6):
        cx, cy = rng.randint(int(w * 0.3), int(w * 0.7)), rng.randint(int(h * 0.2), int(h * 0.45))
        r = rng.randint(int(w * 0.18), int(w * 0.26))
        d.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], fill=leaves)
    return _done(img)


def draw_cup(rng: random.Random) -> Image.Image:
    s = SUPERSAMPLE
    w, h = rng.randint(200, 240), rng.randint(180, 210)
    img, d = _canvas(w, h)
    colour = _colour(rng)
    d.ellipse([10 * s, int(h * 0.8) * s, (w - 10) * s, (h - 6) * s], fill=colour)  # saucer
    d.ellipse(
        [int(w * 0.68) * s, int(h * 0.3) * s, int(w * 0.92) * s, int(h * 0.62) * s], outline=colour, width=9 * s
    )  # handle
    d.polygon(
        [
            (int(w * 0.18) * s, int(h * 0.2) * s),
            (int(w * 0.78) * s, int(h * 0.2) * s),
            (int(w * 0.7) * s, int(h * 0.84) * s),
            (int(w * 0.26) * s, int(h * 0.84) * s),
        ],
        fill=colour,
    )
    d.ellipse([int(w * 0.18) * s, int(h * 0.14) * s, int(w * 0.78) * s, int(h * 0.26) * s], fill=(90, 50, 25))
    return _done(img)


def draw_boat(rng: random.Random) -> Image.Image:
    s = SUPERSAMPLE
    w, h = rng.randint(210, 250), rng.randint(200, 240)
    img, d = _canvas(w, h)
    hull, sail = _colour(rng), (250, 250, 240)
    d.polygon(
        [
            (8 * s, int(h * 0.7) * s),
            ((w - 8) * s, int(h * 0.7) * s),
            (int(w * 0.8) * s, (h - 10) * s),
            (int(w * 0.2) * s, (h - 10) * s),
        ],
        fill=hull,
    )
    d.rectangle([int(w * 0.49) * s, 10 * s, int(w * 0.52) * s, int(h * 0.7) * s], fill=(90, 60, 40))
    d.polygon(
        [(int(w * 0.53) * s, 14 * s), (int(w * 0.53) * s, int(h * 0.64) * s), (int(w * 0.9) * s, int(h * 0.64) * s)],
        fill=sail,
        outline=(120, 120, 120),
        width=2 * s,
    )
    d.polygon(
        [(int(w * 0.47) * s, 30 * s), (int(w * 0.47) * s, int(h * 0.64) * s), (int(w * 0.15) * s, int(h * 0.64) * s)],
        fill=_colour(rng),
    )
    return _done(img)


def scene(*parts: Image.Image, gap: int = 24) -> Image.Image:
    """Drawings side by side on one white picture, bottoms aligned."""
    width = sum(p.width for p in parts) + gap * (len(parts) + 1)
    height = max(p.height for p in parts) + 2 * gap
    out = Image.new("RGB", (width, height), "white")
    x = gap
    for part in parts:
        out.paste(part, (x, height - gap - part.height))
        x += part.width + gap
    return out


DRAWINGS = {"car": draw_car, "house": draw_house, "tree": draw_tree, "cup": draw_cup, "boat": draw_boat}


def drawn_catalog(root: Path, per_label: int = 6) -> Path:
    """root/<label>/<i>.png: toy drawings on white, varied by seed."""
    for n, (label, draw) in enumerate(DRAWINGS.items()):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_label):
            draw(random.Random(1000 * n + i)).save(root / label / f"{i}.png")
    return root


def pokemon_artwork(pokemon: Path, root: Path, count: int = 151) -> Path:
    """A CSV of the first `count` artwork pictures of the Pokémon catalog (absolute paths, no copies)."""
    with open(pokemon / "catalog.csv", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["view"] == "artwork"][:count]
    target = root / "artwork.csv"
    with open(target, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["image", "label"])
        out.writerows([str((pokemon / r["image"]).resolve()), r["label"]] for r in rows)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pokemon",
        type=Path,
        default=Path("assets/pokemon"),
        help="the Pokémon catalog folder, for the heatmap (default: assets/pokemon)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        indexes = work / "index"
        build_index(
            drawn_catalog(work / "drawn"), name="drawn", model="efficientnet-lite0", index_dir=indexes, progress=False
        )
        drawn = Index.load("drawn", index_dir=indexes)
        # A scene the catalog does not hold: a tree and a car side by side. Explained against the
        # best-matching car, the overlay should light up the car and leave the tree dark.
        query = scene(draw_tree(random.Random(11)), draw_car(random.Random(7), mirror=True))
        match = next(m for m in look_alikes(query, drawn, k=len(drawn)) if m.label == "car")
        explain(query, match, drawn, out=DOCS / "explain-example.png")
        print(f"explain-example.png: tree + car scene vs #{match.rank} {match.label} ({match.score:.3f})")

        if (args.pokemon / "catalog.csv").is_file():
            source = pokemon_artwork(args.pokemon, work)
            build_index(source, name="pokemon-151", model="efficientnet-lite0", index_dir=indexes, progress=False)
            index = Index.load("pokemon-151", index_dir=indexes)
            title = "First 151 Pokémon (artwork), EfficientNet-Lite0: groups of look-alikes"
        else:
            index, title = drawn, "Toy drawings, EfficientNet-Lite0"
        sim = catalog_heatmap(index, title=title, out=DOCS / "heatmap-example.png")
        print(f"heatmap-example.png: {len(sim.labels)} items, {sim.description}")


if __name__ == "__main__":
    main()

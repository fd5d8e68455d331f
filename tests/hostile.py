"""Hostile and odd inputs built at test time: broken pictures, valid oddities, and the bytes they are made of."""

from __future__ import annotations

import functools
import io
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png(seed: int, colour: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    """A small PNG of a circle, different for every seed."""
    from conftest import draw_shape

    return encode(draw_shape("circle", colour, seed=seed), "PNG")


def make_zip(
    path: Path, members: dict[str, bytes], *, links: dict[str, str] | None = None, level: int | None = None
) -> Path:
    """A zip of `members` (name -> bytes) and symbolic `links` (name -> target), deflated at `level`."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as z:
        for name, data in members.items():
            z.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, target)
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_with_header(
    width: int, height: int, *, depth: int = 8, colour: int = 2, rows: bytes = b"", extra: bytes = b""
) -> bytes:
    """A PNG whose IHDR says width x height, with whatever pixel rows are given (possibly too few)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + extra
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def blank_png(width: int, height: int, *, depth: int = 8, colour: int = 2, ink: int = 0) -> bytes:
    """A valid PNG of `width` x `height` black pixels but for `ink` in its first byte, compressed row by row.

    Rows of zeros deflate about 1000:1, so a 16-bit grey 9400x9400 picture is 172 KB, made in half
    a second without ever holding its pixels: the picture bomb that fits under Pillow's pixel limit.
    """
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    row = bytes(1 + (width * channels * depth + 7) // 8)  # filter byte 0, then the pixels
    packer = zlib.compressobj(6)  # as small as level 9 on zeros, in two thirds of the time
    parts = [packer.compress(row[:1] + bytes([ink]) + row[2:])]
    parts += [packer.compress(row) for _ in range(height - 1)]
    parts.append(packer.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"".join(parts)) + png_chunk(b"IEND", b"")
    )


def lossless_webp(width: int, height: int) -> bytes:
    """A 34-byte lossless WebP of one colour whose header says `width` x `height`: libwebp decodes all of it."""
    data = bytearray(encode(Image.new("RGB", (16, 16), (90, 30, 160)), "WEBP", lossless=True))
    at = data.index(b"VP8L") + 8
    assert data[at] == 0x2F  # the lossless signature, then 14 bits of width - 1 and 14 of height - 1
    bits = int.from_bytes(data[at + 1 : at + 5], "little") & ~((1 << 28) - 1)
    data[at + 1 : at + 5] = (bits | (width - 1) | ((height - 1) << 14)).to_bytes(4, "little")
    return bytes(data)


@functools.cache
def picture_bombs() -> dict[str, bytes]:
    """Small files that decode to about 88 million pixels, just under Pillow's limit: name -> bytes.

    The 16-bit grey PNG took 31 s and 3.4 GB in one request to the app before decoding was bounded
    by memory; the RGBA PNG is the most bytes a pixel takes (4); the WebP also needs libwebp's own
    buffers (1.4 GB in all).
    """
    return {
        "grey16-9400.png": blank_png(9400, 9400, depth=16, colour=0),
        "rgba-9400.png": blank_png(9400, 9400, depth=8, colour=6),
        "lossless-9400.webp": lossless_webp(9400, 9400),
    }


def bomb_zip(path: Path, count: int = 3) -> Path:
    """A zip of `count` different 16-bit grey 9400x9400 PNGs, stored (about 516 KB for three, ratio 1)."""
    return make_zip(
        path, {f"bomb-{i}.png": blank_png(9400, 9400, depth=16, colour=0, ink=i + 1) for i in range(count)}, level=0
    )


def picture(size: tuple[int, int] = (48, 40), mode: str = "RGB", *, seed: int = 0) -> Image.Image:
    """A small picture with some structure (a disc and a bar on noise), so that codecs have work to do."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    draw = ImageDraw.Draw(base)
    w, h = size
    if min(w, h) >= 8:
        draw.ellipse([w // 5, h // 5, w // 2, h // 2], fill=(220, 40, 40))
        draw.rectangle([w // 2, h // 2, w - 2, h - 2], fill=(30, 60, 200))
    return base.convert(mode) if mode != "RGB" else base


def _jpeg_with_size(width: int, height: int) -> bytes:
    """A real 16x16 JPEG whose frame header (SOF0) claims another size: the data runs out long before the rows."""
    data = bytearray(encode(picture((16, 16)), "JPEG", quality=80))
    at = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, at + 5, height, width)
    return bytes(data)


def _gif_with_screen(width: int, height: int) -> bytes:
    data = bytearray(encode(picture((8, 8)).convert("P"), "GIF"))
    struct.pack_into("<HH", data, 6, width, height)  # the logical screen size, right after "GIF89a"
    return bytes(data)


def _png_text_bomb() -> bytes:
    # 64 MB of zeros in a compressed text chunk before the pixels: Pillow caps text chunks.
    bomb = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"\0" * (64 << 20), 9))
    row = b"\x00" + b"\x80" * 12
    return png_with_header(4, 4, rows=row * 4, extra=bomb)


def _animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (24, 24), c) for c in ((240, 20, 20), (20, 20, 240), (20, 240, 20))]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=80, loop=0)


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90° clockwise
    return encode(picture((60, 30)), "JPEG", exif=exif.tobytes(), quality=90)


def _palette_transparency() -> bytes:
    img = picture((32, 32)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(img, "PNG", transparency=0)


def _sixteen_bit() -> bytes:
    ramp = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60).astype(np.uint16)
    return encode(Image.fromarray(ramp), "PNG")


@functools.cache  # the text bomb costs most of a second to compress; callers only read
def broken_pictures() -> dict[str, tuple[bytes, str]]:
    """Broken files: name -> (bytes, regular expression the one-line reason must match)."""
    noise_png = encode(picture((64, 64)), "PNG")
    noise_jpg = encode(picture((64, 64)), "JPEG", quality=90)
    noise_gif = encode(picture((64, 64)).convert("P"), "GIF")
    return {
        "empty.jpg": (b"", "empty file"),
        "notes.jpg": (b"Dear diary, this is not a picture.\n" * 20, "not a recognised image format"),
        "page.jpg": (b"<!DOCTYPE html>\n<html><body><img src=x onerror=alert(1)></body></html>", "HTML page"),
        "truncated.png": (noise_png[: len(noise_png) // 2], "truncated|broken"),
        "truncated.jpg": (noise_jpg[: len(noise_jpg) // 2], "truncated|broken"),
        "truncated.gif": (noise_gif[: len(noise_gif) // 2], "truncated|broken"),
        "bomb.png": (png_with_header(30000, 30000), "decompression bomb"),
        "bomb.gif": (_gif_with_screen(60000, 60000), "decompression bomb"),
        "liar.png": (png_with_header(2000, 2000, rows=b"\x00" * 6001), "truncated|broken"),
        "liar.jpg": (_jpeg_with_size(4000, 4000), "truncated|broken"),
        "text-bomb.png": (_png_text_bomb(), "broken|too large|decompressed"),
        "drawing.svg": (
            b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
            b'<rect width="10" height="10"/></svg>',
            "SVG",
        ),
        "vector.png": (b"<svg xmlns='http://www.w3.org/2000/svg'><circle r='4'/></svg>", "SVG"),
        "archive.jpg": (_zip_bytes(), "not a recognised image format"),
    }


def _zip_bytes() -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.txt", "hello")
    return buf.getvalue()


@functools.cache
def odd_pictures() -> dict[str, bytes]:
    """Odd but valid pictures: name -> bytes; each must be searched like any other."""
    return {
        "strip-wide.png": encode(picture((30000, 2)), "PNG"),
        "strip-tall.png": encode(picture((2, 30000)), "PNG"),
        "one-pixel.png": encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"),
        "animated.gif": _animated("GIF"),
        "animated.webp": _animated("WEBP"),
        "cmyk.jpg": encode(picture((40, 40), "CMYK"), "JPEG", quality=90),
        "sixteen-bit.png": _sixteen_bit(),
        "palette-transparent.png": _palette_transparency(),
        "alpha.png": encode(picture((40, 40), "RGBA"), "PNG"),
        "exif-rotated.jpg": _exif_rotated(),
        "grey.jpg": encode(picture((40, 40), "L"), "JPEG"),
        "one-bit.png": encode(picture((40, 40), "1"), "PNG"),
        "plain.bmp": encode(picture((20, 20)), "BMP"),
        "plain.tiff": encode(picture((20, 20)), "TIFF"),
    }


def write_all(folder: Path, pictures: dict[str, bytes]) -> dict[str, Path]:
    """Write each picture under its name in `folder`; returns name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, data in pictures.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    return paths


def seed_corpus() -> dict[str, bytes]:
    """Tiny real files of each format the loader meets, for mutation by the fuzzer."""
    small = picture((12, 10), seed=3)
    frames = [small, small.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return {
        "png": encode(small, "PNG"),
        "png-interlaced-palette": encode(
            small.convert("P", palette=Image.Palette.ADAPTIVE, colors=8), "PNG", interlace=1, transparency=2
        ),
        "png-16bit": encode(Image.fromarray((np.arange(48, dtype=np.uint16) * 999).reshape(6, 8)), "PNG"),
        "jpeg": encode(small, "JPEG", quality=70),
        "jpeg-progressive-exif": encode(small, "JPEG", progressive=True, exif=_exif_block()),
        "jpeg-cmyk": encode(small.convert("CMYK"), "JPEG"),
        "gif-animated": encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50),
        "webp-lossy": encode(small, "WEBP", quality=50),
        "webp-animated": encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True),
        "bmp": encode(small, "BMP"),
        "tiff": encode(small, "TIFF", compression="tiff_deflate"),
    }


def _exif_block() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 8
    return exif.tobytes()


def tiny_pngs(count: int, seed: int = 0, *, side: int = 8) -> dict[str, bytes]:
    """`count` different side x side PNGs: cheap to zip, each one real work for a build."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(count):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
        out[f"p{i:05d}.png"] = buf.getvalue()
    return out


def names_only(path: Path, count: int) -> Path:
    """A zip of `count` empty members named like pictures: tiny, and over any picture limit below `count`."""
    with zipfile.ZipFile(path, "w") as bundle:
        for i in range(count):
            bundle.writestr(f"p{i:05d}.png", b"")
    return path


def high_ratio(path: Path, megabytes: int, *, keep: bytes | None = None) -> Path:
    """A zip whose junk 'picture' unpacks about 185 times larger than it is packed (under the 200 zip-bomb cap)."""
    rng = np.random.default_rng(7)
    junk = np.zeros(megabytes << 20, dtype=np.uint8)
    at = rng.integers(0, junk.size, junk.size // 900)  # sparse noise: deflate packs it about 185:1
    junk[at] = rng.integers(1, 255, at.size, dtype=np.uint8)
    members = {"junk.png": junk.tobytes()}
    if keep is not None:
        members["ok.png"] = keep
    return make_zip(path, members)

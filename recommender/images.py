"""Turning paths, bytes or PIL images into clean RGB pictures, or a clear `ImageError`."""

from __future__ import annotations

import contextlib
import io
import math
import os
import struct
import threading
import warnings
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from . import settings
from .errors import ImageError

ImageSource = str | os.PathLike | bytes | Image.Image
Fit = Literal["pad", "crop"]

#: Catalog and query pictures are shrunk to this size when decoded: enough for any backbone input, and
#: a huge photo costs a fraction of a second instead of seconds and gigabytes.
DECODE_MAX_SIDE = 1024
#: Everything is composited and padded onto this colour: catalog sprites and products sit on white.
BACKGROUND = (255, 255, 255)

# Pillow raises these (and more) for broken files; we turn each into an ImageError with the reason.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError, ZeroDivisionError)
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_MB = 1 << 20

if not os.environ.get("PILLOW_BLOCK_SIZE"):
    # Pillow keeps pictures in blocks of 16 MB; glibc serves those from its heaps (it maps only 32 MB
    # and more), where freed blocks stay with the process. In 64 MB blocks a large picture is mapped
    # and unmapped whole: indexing three 16-bit 9400x9400 PNGs in 8 threads peaked at 355-400 MB
    # above the model's memory instead of 452-458, and took 7.4 s instead of 10.
    Image.core.set_block_size(64 * _MB)


def describe(source: ImageSource) -> str:
    """A short name for a source, used at the front of error messages."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, Image.Image):
        return getattr(source, "filename", "") or "image"
    return "upload"


def read_bytes(source: str | os.PathLike, *, name: str | None = None) -> bytes:
    """The bytes of a file, or an ImageError saying why it cannot be read."""
    label = name or str(source)
    path = Path(source)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{label}: is a folder, not an image file") from None
    except PermissionError:
        raise ImageError(f"{label}: permission denied") from None
    except OSError as exc:
        raise ImageError(f"{label}: cannot be read ({exc.strerror or exc})") from None


def check_image(source: str | os.PathLike, *, name: str | None = None) -> bytes:
    """The bytes of a picture file once its header and length say it can be decoded (no pixels decoded yet).

    For refusing a bad file before anything expensive happens (loading a model, building an index):
    the caller decodes the bytes it gets back, so the file is read once.
    """
    label = name or str(source)
    data = read_bytes(source, name=label)
    _check_pixels(_open(data, label), label)
    return data


def load_image(
    source: ImageSource, *, name: str | None = None, max_side: int | None = None, fit_to: tuple[int, Fit] | None = None
) -> Image.Image:
    """Open `source` fully and return it as an RGB image.

    Alpha is composited on white; palette, grayscale, 16-bit, float and CMYK pictures are
    converted; EXIF orientation is applied; animated pictures give their first frame.
    Decompression bombs (Pillow's own pixel limit, or more memory than `DECODE_BUDGET` allows),
    truncated data and non-images raise `ImageError` naming the file and the reason. `max_side`
    shrinks large pictures on the way (JPEGs and JPEG 2000 are decoded at reduced scale, which is
    much faster; other pictures are reduced band by band before they are converted). `fit_to=(size,
    fit)` says the picture will only fill a `size` square that way (`fit_square`, a backbone's
    `decode_size`): JPEGs are then decoded at the smallest scale, 1/2 to 1/8, that still covers it.
    """
    label = name or describe(source)
    data = None
    if isinstance(source, Image.Image):
        img = source
    else:
        data = source if isinstance(source, bytes) else read_bytes(source, name=label)
        img = _open(data, label)
    _check_pixels(img, label)
    _decode_smaller(img, data, max_side, fit_to)
    with DECODE_BUDGET.reserve(memory_needed(img, max_side=max_side, data=data), label=label, what=_what(img)):
        _decode(img, label)
        turn = _orientation(img)
        rgb = to_rgb(img, label, reduce=reduce_factor(img.size, max_side))
        img = None  # type: ignore[assignment]  # the decoded picture is freed before the budget is given back
        if turn is not None:
            rgb = rgb.transpose(turn)
        if max_side and max(rgb.size) > max_side:
            rgb.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return rgb


def _open(data: bytes, label: str) -> Image.Image:
    """The picture in `data`, opened but not decoded, once its header and length are known to be sound."""
    if not data:
        raise ImageError(f"{label}: empty file")
    head = data[:1024].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        raise ImageError(f"{label}: SVG is a vector format and is not supported; convert it to PNG first")
    if head.startswith((b"<!doctype html", b"<html")):
        raise ImageError(f"{label}: this is an HTML page, not an image")
    with warnings.catch_warnings():
        # Pillow only warns between 1x and 2x its pixel limit; we refuse there too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageError(f"{label}: not a recognised image format") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb(label, exc) from None
        except _DECODE_ERRORS as exc:
            raise ImageError(f"{label}: broken image header ({_reason(exc)})") from None
    short = png_shortfall(data) if img.format == "PNG" else jpeg_shortfall(data) if img.format in _JPEGS else None
    if short:
        raise ImageError(f"{label}: broken or truncated image ({short})")
    return img


# (x start, y start, x step, y step) of the seven Adam7 interlacing passes
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def png_shortfall(data: bytes) -> str | None:
    """Why a PNG's pixel data is shorter than its header promises, or None when it is complete.

    Pillow fills missing rows with black when the compressed stream ends early (a header that
    lies about the size); counting the inflated bytes is the only way to notice.
    """
    pos, header, inflater, produced = 8, None, zlib.decompressobj(), 0
    expected = None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR" and len(body) >= 13:
            header = struct.unpack(">IIBBBBB", body[:13])
            expected = _png_raw_size(header)
        elif kind == b"IDAT" and expected is not None:
            try:
                while body and produced < expected:
                    produced += len(inflater.decompress(body, 1 << 20))
                    body = inflater.unconsumed_tail
            except zlib.error as exc:
                return f"corrupt pixel data: {exc}"
            if produced >= expected:
                return None
        elif kind == b"IEND":
            break
    if expected is None:
        return None  # not a PNG we can reason about; Pillow's own checks apply
    return f"pixel data ends after {produced:,} of {expected:,} bytes"


# JPEG frames coded with Huffman tables (baseline, extended, progressive); arithmetic coding has no such bound.
_HUFFMAN_FRAMES = {0xC0, 0xC1, 0xC2}
_OTHER_FRAMES = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEGS = ("JPEG", "MPO")


def jpeg_shortfall(data: bytes) -> str | None:
    """Why a JPEG's coded data is too short for the size its header claims, or None when it may be complete.

    libjpeg pads missing data with grey and Pillow reports nothing, so a 1 KB file whose header
    claims 4000x4000 would pass as a grey picture. Huffman coding spends at least one bit on the DC
    value of every 8x8 block, so a complete picture has at least blocks/8 bytes after its first scan.
    """
    frame = None
    for marker, end, body in _jpeg_segments(data):
        if marker in _OTHER_FRAMES:
            return None
        if marker in _HUFFMAN_FRAMES and len(body) >= 6:
            height, width, count = struct.unpack(">HHB", body[1:6])
            sampling = [(b >> 4, b & 15) for b in body[7 : 6 + 3 * count : 3]]
            frame = (width, height, sampling)
        elif marker == 0xDA:
            if frame is None:
                return None
            width, height, sampling = frame
            need = _jpeg_min_coded_bytes(width, height, sampling)
            coded = len(data) - end
            if need is not None and coded < need:
                return f"{coded:,} bytes of coded data, but {width}x{height} pixels need at least {need:,}"
    return None


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(marker, where the segment ends, its body) of a JPEG's header segments, up to its first scan (SOS).

    Stops early where no marker is where one should be: Pillow's own checks apply there.
    """
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        yield marker, pos + 2 + length, data[pos + 4 : pos + 2 + length]
        if marker == 0xDA:
            return
        pos += 2 + length


def _jpeg_min_coded_bytes(width: int, height: int, sampling: list[tuple[int, int]]) -> int | None:
    if not (width and height and sampling) or any(h < 1 or v < 1 for h, v in sampling):
        return None
    hmax, vmax = max(h for h, _ in sampling), max(v for _, v in sampling)
    blocks = sum(
        _ceil_div(_ceil_div(width * h, hmax), 8) * _ceil_div(_ceil_div(height * v, vmax), 8) for h, v in sampling
    )  # 8x8 blocks of every component, each subsampled by its factors
    return blocks // 8


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _png_raw_size(header: tuple[int, ...]) -> int | None:
    width, height, depth, colour, _, _, interlace = header
    if colour not in _PNG_CHANNELS:
        return None
    bits = _PNG_CHANNELS[colour] * depth

    def rows(w: int, h: int) -> int:
        return h * (1 + (w * bits + 7) // 8) if w and h else 0  # one filter byte a row

    if not interlace:
        return rows(width, height)
    return sum(rows(max(0, -(-(width - xs) // dx)), max(0, -(-(height - ys) // dy))) for xs, ys, dx, dy in _ADAM7)


def _check_pixels(img: Image.Image, label: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            Image._decompression_bomb_check(img.size)  # also for PIL images handed to us
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb(label, exc) from None


def _decode_smaller(img: Image.Image, data: bytes | None, max_side: int | None, fit_to: tuple[int, Fit] | None) -> None:
    """Ask the decoder for a smaller picture where the format can decode at a reduced scale."""
    target = _draft_size(img.size, max_side, fit_to)
    if not target or not _needs_decoding(img):
        return
    if img.format == "JPEG":
        img.draft("RGB", target)  # decodes at the largest 1/1 to 1/8 scale still at least `target`
    elif img.format == "JPEG2000" and data is not None:
        levels = _j2k_levels(data)  # asking for more than the file's wavelet levels fails to decode
        steps = 0
        while steps < levels and all(_halved(side, steps + 1) >= need for side, need in zip(img.size, target)):
            steps += 1
        if steps:
            img.reduce = steps  # type: ignore[assignment, method-assign]  # Pillow's JPEG 2000 decodes at 1/2**steps


def _halved(side: int, steps: int) -> int:
    """A side length after `steps` JPEG 2000 reductions, rounded as Pillow rounds it."""
    power = 1 << steps
    return (side + (power >> 1)) // power


def _j2k_levels(data: bytes) -> int:
    """The wavelet decomposition levels in a JPEG 2000 codestream's main header (COD, COC): 0 when unknown."""
    pos = data.find(b"\xff\x4f\xff\x51")  # SOC, then SIZ: where the codestream starts, in a JP2 box or bare
    if pos < 0 or pos + 42 > len(data):
        return 0
    wide = struct.unpack(">H", data[pos + 40 : pos + 42])[0] > 256  # components numbered in 2 bytes, not 1
    pos, levels = pos + 2, []
    while pos + 4 <= len(data):
        marker, length = struct.unpack(">HH", data[pos : pos + 4])
        if marker == 0xFF52 and pos + 9 < len(data):  # COD: length, Scod, SGcod (4 bytes), then the levels
            levels.append(data[pos + 9])
        elif marker == 0xFF53 and pos + 6 + wide < len(data):  # COC: length, component, Scoc, then the levels
            levels.append(data[pos + 6 + wide])
        elif marker == 0xFF90 or length < 2:  # the first tile starts: the main header is over
            break
        pos += 2 + length
    return min(levels, default=0)


def _needs_decoding(img: Image.Image) -> bool:
    # Pillow makes a picture's pixel store when it decodes it (WebP keeps no tile list until then).
    return getattr(img, "_im", None) is None or bool(getattr(img, "tile", None))


def _decode(img: Image.Image, label: str) -> None:
    """Decode every pixel now, so that truncated data fails here and not half-way through later work."""
    try:
        img.load()
    except _DECODE_ERRORS as exc:
        raise ImageError(f"{label}: broken or truncated image ({_reason(exc)})") from None
    if img.width < 1 or img.height < 1:
        raise ImageError(f"{label}: image has no pixels ({img.width}x{img.height})")


_TURNS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(img: Image.Image) -> Image.Transpose | None:
    """How to turn the picture as its EXIF orientation says (as `ImageOps.exif_transpose`), or None."""
    with contextlib.suppress(*_DECODE_ERRORS):  # a broken EXIF block is no reason to refuse the pixels
        return _TURNS.get(img.getexif().get(ExifTags.Base.Orientation, 1))
    return None


def _draft_size(size: tuple[int, int], max_side: int | None, fit_to: tuple[int, Fit] | None) -> tuple[int, int] | None:
    """The smallest (w, h) a JPEG (or JPEG 2000) of `size` may be decoded at, or None for its full size.

    Decoding a 500x375 photo at half scale for a 224 px square took its decode and resize from
    3.6 to 1.3 ms; the pixels differ from full decoding then resizing by 0.7 of 255 on average.
    """
    w, h = size
    if fit_to:
        side, fit = fit_to
        scale = side / (max(w, h) if fit == "pad" else min(w, h))  # as `fit_square` resizes
        return (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale)))
    return (max_side, max_side) if max_side else None


def _bomb(label: str, exc: Exception) -> ImageError:
    return ImageError(
        f"{label}: too many pixels for a picture (limit {Image.MAX_IMAGE_PIXELS:,}); refused as a possible "
        f"decompression bomb ({_reason(exc)})"
    )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


# --- Memory: what decoding a picture holds, and a budget that all threads decoding at once share ---

#: Pixels in one band of a large picture converted band by band (`to_rgb`): about 2 MB of RGB.
BAND_PIXELS = 1 << 19
#: Bytes per pixel of one band's temporary copies while it is converted: the crop, its array,
#: integer maths on it, its grey and RGB versions (alpha: RGBA, the white canvas, the composite).
_BAND_BYTES = 32
#: Bytes one decoded pixel takes in Pillow's memory, by mode: 1-bit and palette pixels take a byte,
#: 16-bit grey two; every other mode (LA, RGB, RGBA, CMYK, 32-bit I and F...) four.
_MODE_BYTES = {
    "1": 1,
    "L": 1,
    "P": 1,
    "I;16": 2,
    "I;16B": 2,
    "I;16L": 2,
    "I;16N": 2,
    "BGR;15": 2,
    "BGR;16": 2,
    "BGR;24": 3,
}
#: What a format's decoder holds beside the decoded picture, in bytes per pixel of it (peak memory
#: measured decoding 6000x6000 pictures): libwebp decodes into buffers of its own that Pillow copies
#: (16 B/px in all), OpenJPEG works on 32-bit planes (20 B/px, plus about 16 MB), libavif decodes
#: to YUV first (9.4 B/px). Formats not named here are charged the picture's size once more.
_DECODER_BYTES = {
    "PNG": 0.25,
    "JPEG": 0.25,
    "MPO": 0.25,
    "GIF": 0.25,
    "BMP": 0.25,
    "DIB": 0.25,
    "PPM": 0.25,
    "TGA": 0.25,
    "WEBP": 12.5,
    "JPEG2000": 16.0,
    "AVIF": 6.0,
}
_DECODER_FIXED = {"JPEG2000": 16 * _MB}


def pixel_bytes(mode: str) -> int:
    """Bytes one pixel of `mode` takes in Pillow's memory."""
    return _MODE_BYTES.get(mode, 4)


def reduce_factor(size: tuple[int, int], max_side: int | None) -> int:
    """The integer factor a picture of `size` is reduced by while it is converted, for `max_side`.

    As in Pillow's own `thumbnail` (reducing_gap 2): blocks are averaged down to no less than twice
    `max_side`, and the last step is a smooth resize.
    """
    return max(1, int(max(size) / max_side / 2)) if max_side else 1


def band_rows(width: int, reduce: int = 1) -> int:
    """Rows in one band of a picture `width` wide converted band by band: a multiple of `reduce`."""
    rows = max(1, BAND_PIXELS // max(1, width))
    return max(reduce, rows // reduce * reduce)


def memory_needed(img: Image.Image, *, max_side: int | None = None, data: bytes | None = None) -> int:
    """Bytes that `load_image` holds at most while it decodes `img` and turns it into RGB.

    `img` is opened at the size it will be decoded at (after a JPEG draft); pixels already decoded
    are not counted again. The decoded picture (its mode's bytes per pixel, and what its format's
    decoder holds beside it), the RGB picture, `reduce_factor` times smaller, with one band's
    temporaries, and a turned copy of it for EXIF orientation. `data`, the file, tells JPEGs whose
    several scans make libjpeg keep every DCT coefficient of the full-size picture.
    """
    width, height = img.size
    pixels = width * height
    need = 0.0
    if _needs_decoding(img):
        fmt = img.format or ""
        extra = _DECODER_BYTES.get(fmt, _tiff_raw_bytes(img) if fmt == "TIFF" else pixel_bytes(img.mode))
        need += pixels * (pixel_bytes(img.mode) + extra) + _DECODER_FIXED.get(fmt, 0)
        if fmt in _JPEGS and _several_scans(img, data):
            need += _jpeg_coefficient_bytes(img)
    factor = reduce_factor(img.size, max_side)
    out = -(-width // factor) * -(-height // factor)
    if img.mode != "RGB" or factor > 1:
        need += out * 4 + min(height, band_rows(width, factor)) * width * _BAND_BYTES
    need += out * 4  # turned for its EXIF orientation, or shrunk to max_side
    return int(need)


def _tiff_raw_bytes(img: Image.Image) -> float:
    """Bytes per pixel of a TIFF as stored: libtiff may read a whole strip, the whole picture, at once."""
    tags = getattr(img, "tag_v2", {})
    bits = tags.get(258, (8,))
    bits = bits if isinstance(bits, tuple) else (bits,)
    samples = tags.get(277, len(bits))
    try:
        return max(1.0, float(sum(bits) if len(bits) == samples else bits[0] * samples) / 8)
    except (TypeError, IndexError):
        return float(pixel_bytes(img.mode))


def _several_scans(img: Image.Image, data: bytes | None) -> bool:
    """Whether a JPEG is progressive or has more than one scan (then libjpeg buffers the whole picture)."""
    if img.info.get("progressive"):
        return True
    if data is None:
        return False
    first = next((end for marker, end, _ in _jpeg_segments(data) if marker == 0xDA), None)
    if first is None:
        return False
    # Coded data never holds 0xFF 0xDA or 0xFF 0xD9 (it stuffs 0xFF 0x00): another start of scan
    # before the end of this picture (an MPO's next picture follows it) is a scan of its own.
    end = data.find(b"\xff\xd9", first)
    return data.find(b"\xff\xda", first, end if end >= 0 else len(data)) >= 0


def _jpeg_coefficient_bytes(img: Image.Image) -> int:
    """Bytes of the DCT coefficients libjpeg keeps for a multi-scan JPEG: 2 per sample, at full size."""
    config = getattr(img, "decoderconfig", ())
    scale = config[0] if config and config[0] else 1  # a draft decodes at 1/scale, but buffers the full picture
    width, height = img.width * scale, img.height * scale
    layers = getattr(img, "layer", None) or [(0, 1, 1, 0)] * len(img.getbands())
    hmax, vmax = max(h for _, h, _, _ in layers) or 1, max(v for _, _, v, _ in layers) or 1
    # Each component in 8x8 blocks, padded to whole MCUs of 8*hmax x 8*vmax pixels.
    blocks = sum(_ceil_div(width, 8 * hmax) * h * _ceil_div(height, 8 * vmax) * v for _, h, v, _ in layers)
    return blocks * 64 * 2


def _what(img: Image.Image) -> str:
    return f"{img.width}x{img.height} {img.mode} {img.format or 'image'}"


class DecodeBudget:
    """Memory that the pictures being decoded at once may hold together, shared by every thread.

    A decode reserves what `memory_needed` says before it starts and waits, first come first
    served, while others hold too much; one that needs more than the whole budget is refused at
    once. The budget is `RECOMMENDER_MAX_DECODE_MB` megabytes (default
    `settings.DEFAULT_MAX_DECODE_MB`) unless `set_max_decode_mb` chose another; `peak` is the most
    reserved at once so far, in bytes.
    """

    def __init__(self, megabytes: float | None = None, *, wait: float = 120.0) -> None:
        self.megabytes = megabytes
        self.wait = wait
        self.used = 0
        self.peak = 0
        self._queue: deque[object] = deque()
        self._changed = threading.Condition()

    @property
    def capacity(self) -> int:
        """The budget in bytes."""
        return int(settings.max_decode_mb(self.megabytes) * _MB)

    def set_megabytes(self, megabytes: float | None) -> None:
        """Change the budget (None: the environment variable or the default again)."""
        if megabytes is not None:
            settings.max_decode_mb(megabytes)  # a bad value fails here, not at the next picture
        with self._changed:
            self.megabytes = megabytes
            self._changed.notify_all()

    @contextlib.contextmanager
    def reserve(self, nbytes: int, *, label: str = "image", what: str = "picture") -> Iterator[None]:
        """Hold `nbytes` of the budget while the block runs; `ImageError` if they can never or not soon be had."""
        capacity = self.capacity
        if nbytes > capacity:
            raise ImageError(
                f"{label}: decoding this {what} needs about {_ceil_div(nbytes, _MB):,} MB of memory, more than "
                f"the {capacity // _MB:,} MB allowed ({settings.ENV_MAX_DECODE_MB}); refused as a possible "
                "decompression bomb"
            )
        ticket = object()
        with self._changed:
            self._queue.append(ticket)
            try:
                granted = self._changed.wait_for(
                    lambda: self._queue[0] is ticket and self.used + nbytes <= self.capacity, timeout=self.wait
                )
            finally:
                self._queue.remove(ticket)
                self._changed.notify_all()  # the next in line may go now
            if not granted:
                raise ImageError(f"{label}: too many large pictures are being decoded at once; try again in a moment")
            self.used += nbytes
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._changed:
                self.used -= nbytes
                self._changed.notify_all()


#: The one budget of this process: every `load_image` call reserves its memory here.
DECODE_BUDGET = DecodeBudget()


def set_max_decode_mb(megabytes: float | None) -> None:
    """Set the memory, in MB, that all pictures being decoded at once may hold (a CLI flag); None: env or default."""
    DECODE_BUDGET.set_megabytes(megabytes)


def to_rgb(img: Image.Image, label: str = "image", *, reduce: int = 1) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency onto white, `reduce` times smaller.

    Large pictures are converted (and reduced, averaging `reduce` x `reduce` blocks) band by band
    into the result, so that no whole-picture copy is made in any other mode on the way.
    """
    try:
        if img.mode == "RGB":  # no copy in any other mode: reduced, or as it is
            return Image.Image.reduce(img, reduce) if reduce > 1 else img
        top = _grey_top(img) if img.mode.startswith("I") or img.mode == "F" else None
        width, height = img.size
        rows = band_rows(width, reduce)
        if rows >= height:
            return _piece_to_rgb(img, top, reduce)
        out = Image.new("RGB", (-(-width // reduce), -(-height // reduce)))
        for y in range(0, height, rows):
            piece = img.crop((0, y, width, min(height, y + rows)))  # keeps the palette and transparency
            out.paste(_piece_to_rgb(piece, top, reduce), (0, y // reduce))
        return out
    except _DECODE_ERRORS as exc:
        raise ImageError(f"{label}: cannot convert {img.mode} pixels to RGB ({_reason(exc)})") from None


def _piece_to_rgb(img: Image.Image, top: float | None, reduce: int) -> Image.Image:
    if top is not None:
        img = _high_bit_depth_to_l(img, top)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        img = Image.alpha_composite(canvas, rgba).convert("RGB")
    elif img.mode != "RGB":
        img = img.convert("RGB")
    return Image.Image.reduce(img, reduce) if reduce > 1 else img  # JPEG 2000 files shadow `reduce`


def _grey_top(img: Image.Image) -> float:
    """The value that 16-bit, 32-bit and float grey pictures show as white, decided on the whole picture.

    Pillow's own convert() clips at 255, which turns most 16-bit pictures white, so they are
    scaled by their real range instead: floats up to 1.0 are fractions of white.
    """
    if img.mode == "F":
        peak, rows = -math.inf, band_rows(img.width)
        for y in range(0, img.height, rows):
            band = np.asarray(img.crop((0, y, img.width, min(img.height, y + rows))))  # (rows, W) float32
            peak = float(np.fmax(peak, np.fmax.reduce(band, axis=None)))  # NaN pixels are ignored
        return 1.0 if peak <= 1.0 else 255.0
    if img.mode.startswith("I;16"):
        return 65535.0
    return 65535.0 if img.getextrema()[1] > 255 else 255.0  # type: ignore[operator]


def _high_bit_depth_to_l(img: Image.Image, top: float) -> Image.Image:
    arr = np.asarray(img)  # (H, W) uint16, int32 or float32
    if img.mode == "F":
        scaled = np.nan_to_num(arr.astype(np.float64) / top * 255.0, nan=0.0)
        grey = np.clip(scaled, 0, 255).round().astype(np.uint8)
    else:  # integers: exactly the rounding of the float formula above, in a quarter of the memory
        whole = int(top)
        grey = ((np.clip(arr, 0, whole).astype(np.uint32) * 255 + whole // 2) // whole).astype(np.uint8)
    out = Image.fromarray(grey)  # (H, W) uint8: mode L
    if "transparency" in img.info:
        out.info["transparency"] = img.info["transparency"]
    return out


def pixel_upscale_factor(img: Image.Image) -> int:
    """k when the picture is pixel art enlarged k times with nearest-neighbour (k x k blocks), else 1.

    Every run of repeated rows and of repeated columns is then a multiple of k, so k is the
    greatest common divisor of the run lengths.
    """
    if min(img.size) < 2:
        return 1
    # The first run each way is at least k >= 2 long: a photo fails this on its first two rows or
    # columns, and costs nothing more (the full pass below took 1.4 ms of a 500x375 picture's 4).
    top, left = np.asarray(img.crop((0, 0, img.width, 2))), np.asarray(img.crop((0, 0, 2, img.height)))
    if not (np.array_equal(top[0], top[1]) and np.array_equal(left[:, 0], left[:, 1])):
        return 1
    arr = np.asarray(img)
    factor = 0
    for axis in (0, 1):
        rows = np.moveaxis(arr, axis, 0)  # (len, other, [channels])
        same = (rows[1:] == rows[:-1]).reshape(rows.shape[0] - 1, -1).all(axis=1)  # (len-1,)
        breaks = np.flatnonzero(~same)
        runs = np.diff(np.concatenate([[-1], breaks, [arr.shape[axis] - 1]]))
        factor = math.gcd(factor, *map(int, runs))
        if factor == 1:
            return 1
    return factor


@dataclass(frozen=True)
class Placement:
    """Where a picture lands in the model's square: resized to `resized`, its top-left corner at `offset`.

    With `pad` the offset is inside the square (white around the picture); with `crop` it is
    negative (the square cuts the centre out of the resized picture). `fit_square` draws it;
    explanations map patches back onto the picture with it.
    """

    resized: tuple[int, int]
    offset: tuple[int, int]


def placement(width: int, height: int, size: int, fit: Fit = "pad") -> Placement:
    """How `fit_square` places a `width` x `height` picture in a `size` square."""
    if fit == "pad":
        scale = size / max(width, height)
        new = (max(1, round(width * scale)), max(1, round(height * scale)))
        return Placement(new, ((size - new[0]) // 2, (size - new[1]) // 2))
    if fit == "crop":
        scale = size / min(width, height)
        new = (max(size, round(width * scale)), max(size, round(height * scale)))
        return Placement(new, (-((new[0] - size) // 2), -((new[1] - size) // 2)))
    raise ValueError(f"unknown fit {fit!r}; use 'pad' or 'crop'")


def fit_square(img: Image.Image, size: int, *, fit: Fit = "pad") -> Image.Image:
    """Resize to `size` x `size`: `pad` keeps the whole picture on a white square, `crop` cuts the centre.

    Pixel art enlarged by an integer factor (a sprite screenshot at 3x) is first shrunk back, so
    that it is enlarged smoothly like the original: measured on a 3x shiny Pikachu, the CNN's
    best score rose from 0.65 to 0.86.
    """
    k = pixel_upscale_factor(img)
    if k > 1 and min(img.size) // k >= 1:
        img = img.resize((img.width // k, img.height // k), Image.Resampling.NEAREST)
    where = placement(*img.size, size, fit)
    resized = img.resize(where.resized, Image.Resampling.BICUBIC)
    if fit == "pad":
        canvas = Image.new("RGB", (size, size), BACKGROUND)
        canvas.paste(resized, where.offset)
        return canvas
    left, top = -where.offset[0], -where.offset[1]
    return resized.crop((left, top, left + size, top + size))

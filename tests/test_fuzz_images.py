"""Fuzzing the picture loader: mutated real PNG/JPEG/GIF/WebP/BMP/TIFF bytes give RGB or ImageError, quickly.

The seed corpus is a dozen tiny files made here. `FUZZ_EXAMPLES=20000 pytest tests/test_fuzz_images.py`
runs a long campaign; CI runs a few hundred examples.
"""

from __future__ import annotations

import functools
import os
import signal
import struct
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hostile import seed_corpus
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from recommender.errors import ImageError
from recommender.images import load_image

# Pillow warns (and goes on) about corrupt EXIF and short TIFF reads; what matters is the outcome.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
#: Seconds one example may take: the largest picture a mutated header can ask for under Pillow's
#: pixel limit decodes in about a second here; a hang is caught long before pytest's own timeout.
PER_EXAMPLE = 8.0
# Values that size and offset fields are most often broken with.
EXTREMES = (0, 1, 2, 7, 8, 255, 256, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


@functools.cache
def corpus() -> dict[str, bytes]:
    return seed_corpus()


class Hung(Exception):
    """An example ran past PER_EXAMPLE seconds."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise Hung in this (main) thread after `seconds`: Pillow decodes in Python-level loops, so it fires."""

    def alarm(signum: int, frame: object) -> None:
        raise Hung(f"no answer after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def fix_png_crcs(data: bytearray) -> bytearray:
    """Recompute every PNG chunk's CRC, so that a mutation gets past the checksum into the decoder."""
    pos = 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        end = pos + 8 + length
        if end + 4 > len(data):
            break
        data[end : end + 4] = struct.pack(">I", zlib.crc32(data[pos + 4 : end]) & 0xFFFFFFFF)
        pos = end + 4
    return data


def segments(data: bytes) -> tuple[bytes, list[bytes], bytes] | None:
    """(signature, chunks or marker segments, the rest) of a PNG or a JPEG (up to its first scan), else None."""
    out = []
    if data.startswith(b"\x89PNG"):
        pos = 8
        while pos + 12 <= len(data):
            (length,) = struct.unpack(">I", data[pos : pos + 4])
            if pos + 12 + length > len(data):
                break
            out.append(data[pos : pos + 12 + length])
            pos += 12 + length
        return data[:8], out, data[pos:]
    if data.startswith(b"\xff\xd8"):
        pos = 2
        while pos + 4 <= len(data) and data[pos] == 0xFF and data[pos + 1] != 0xDA:
            length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            out.append(data[pos : pos + 2 + length])
            pos += 2 + length
        return data[:2], out, data[pos:]
    return None


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    """A seed file with 1-4 mutations: bit flips, byte and integer overwrites, truncation, splices of bytes
    and of whole PNG chunks or JPEG segments."""
    seeds = corpus()
    name = draw(st.sampled_from(sorted(seeds)))
    data = bytearray(seeds[name])
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "byte", "int", "truncate", "splice", "repeat", "delete", "chunks"]))
        at = draw(st.integers(0, len(data) - 1))
        parts = segments(bytes(data)) if op == "chunks" else None
        if parts and parts[1]:  # whole PNG chunks or JPEG segments moved, dropped, doubled or taken from a donor
            head, chunks, tail = parts
            donor = segments(seeds[draw(st.sampled_from(sorted(seeds)))])
            pool = chunks + (donor[1] if donor else [])
            where = draw(st.integers(0, len(chunks) - 1))
            how = draw(st.sampled_from(["insert", "replace", "drop", "swap"]))
            if how == "insert":
                chunks.insert(where, draw(st.sampled_from(pool)))
            elif how == "replace":
                chunks[where] = draw(st.sampled_from(pool))
            elif how == "drop":
                del chunks[where]
            else:
                other = draw(st.integers(0, len(chunks) - 1))
                chunks[where], chunks[other] = chunks[other], chunks[where]
            data = bytearray(head + b"".join(chunks) + tail)
        elif op == "flip" or op == "chunks":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[at] = draw(st.integers(0, 255))
        elif op == "int":  # size and offset fields, either byte order
            width = draw(st.sampled_from([2, 4]))
            value = draw(st.sampled_from(EXTREMES)) & ((1 << (8 * width)) - 1)
            data[at : at + width] = value.to_bytes(width, draw(st.sampled_from(["big", "little"])))
        elif op == "truncate":
            del data[at:]
        elif op == "splice":  # a piece of another file (maybe of another format) dropped in
            donor = seeds[draw(st.sampled_from(sorted(seeds)))]
            start = draw(st.integers(0, len(donor) - 1))
            piece = donor[start : start + draw(st.integers(1, 64))]
            end = at + draw(st.integers(0, 64))
            data[at:end] = piece
        elif op == "repeat":  # a chunk or segment duplicated
            data[at:at] = data[at : at + draw(st.integers(1, 128))]
        else:
            del data[at : at + draw(st.integers(1, 64))]
    if name.startswith("png") and draw(st.booleans()):
        fix_png_crcs(data)
    return name, bytes(data)


@pytest.mark.timeout(600)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=mutated(), max_side=st.sampled_from([None, 64]))
def test_mutated_pictures_give_rgb_or_image_error(case, max_side):
    name, data = case
    started = time.perf_counter()
    try:
        with time_limit(PER_EXAMPLE):
            out = load_image(data, name="fuzz.bin", max_side=max_side)
            out.tobytes()  # every pixel is really there
    except ImageError as exc:
        message = str(exc)
        assert message.startswith("fuzz.bin: ") and "\n" not in message, message
    else:
        assert isinstance(out, Image.Image) and out.mode == "RGB", (name, out.mode)
        assert out.width >= 1 and out.height >= 1
        if max_side:
            assert max(out.size) <= max_side
    assert time.perf_counter() - started < PER_EXAMPLE


def test_every_seed_loads_unmutated():
    for name, data in corpus().items():
        assert load_image(data, name=name).mode == "RGB"

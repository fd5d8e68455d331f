"""images: every odd but valid picture becomes clean RGB; every broken one a clear ImageError."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hostile import encode, png_chunk
from PIL import Image

from recommender.errors import ImageError
from recommender.images import fit_square, load_image


def png_with_header(width: int, height: int, *, depth: int = 8, colour: int = 2, rows: bytes = b"") -> bytes:
    """A PNG whose IHDR says width x height, with whatever pixel rows are given (possibly too few)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def test_accepts_path_bytes_and_pil(tmp_path):
    img = Image.new("RGB", (5, 4), (10, 20, 30))
    path = tmp_path / "a.png"
    img.save(path)
    for source in (path, str(path), path.read_bytes(), img):
        out = load_image(source)
        assert out.mode == "RGB" and out.size == (5, 4) and out.getpixel((0, 0)) == (10, 20, 30)


def test_alpha_is_composited_on_white():
    img = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    img.putpixel((1, 0), (255, 0, 0, 128))
    out = load_image(encode(img, "PNG"))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    r, g, b = out.getpixel((1, 0))
    assert r == 255 and 120 <= g <= 135 and g == b


def test_palette_with_transparency_and_la():
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    out = load_image(encode(pal, "PNG", transparency=0))
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 0)) == (0, 0, 255)
    gif = load_image(encode(pal, "GIF", transparency=0))
    assert gif.getpixel((0, 0)) == (255, 255, 255) and gif.getpixel((1, 0)) == (0, 0, 255)
    la = Image.new("LA", (1, 1), (0, 0))
    assert load_image(encode(la, "PNG")).getpixel((0, 0)) == (255, 255, 255)


def test_grayscale_one_bit_and_16_bit():
    assert load_image(encode(Image.new("L", (1, 1), 77), "PNG")).getpixel((0, 0)) == (77, 77, 77)
    assert load_image(encode(Image.new("1", (1, 1), 1), "PNG")).getpixel((0, 0)) == (255, 255, 255)
    sixteen = Image.fromarray(np.full((2, 2), 32768, dtype=np.uint16))
    data = encode(sixteen, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    value = load_image(data).getpixel((0, 0))
    assert value[0] == value[1] == value[2] and 126 <= value[0] <= 129  # half of full scale, not clipped white


def test_16_bit_rgb_png():
    row = b"\x00" + np.full((3, 3), 40000, dtype=">u2").tobytes()
    out = load_image(png_with_header(3, 2, depth=16, colour=2, rows=row * 2))
    assert out.getpixel((0, 0)) == (156, 156, 156)


def test_float_and_int32_modes():
    f = Image.fromarray(np.full((1, 1), 0.5, dtype=np.float32), mode="F")
    assert load_image(f).getpixel((0, 0))[0] in (127, 128)
    i = Image.fromarray(np.full((1, 1), 200, dtype=np.int32), mode="I")
    assert load_image(i).getpixel((0, 0)) == (200, 200, 200)


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (8, 8), (255, 0, 0, 0))  # pure cyan
    r, g, b = load_image(encode(cmyk, "JPEG", quality=95)).getpixel((4, 4))
    assert r < 40 and g > 215 and b > 215


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    img.paste((255, 0, 0), (0, 0, 4, 4))  # a red corner, top left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = load_image(encode(img, "JPEG", exif=exif.tobytes(), quality=100, subsampling=0))
    assert out.size == (10, 20)
    assert out.getpixel((8, 1))[0] > 200 and out.getpixel((1, 1))[0] < 60  # now top right, as displayed


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animated_pictures_give_their_first_frame(fmt):
    frames = [Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    r, _, b = load_image(data).getpixel((1, 1))
    assert r > 200 and b < 50


def test_tiny_and_strip_pictures_fit_a_square():
    for size in [(1, 1), (4000, 1), (1, 3000)]:
        img = load_image(encode(Image.new("RGB", size, (0, 0, 0)), "PNG"))
        for fit in ("pad", "crop"):
            assert fit_square(img, 224, fit=fit).size == (224, 224)


def test_pad_keeps_the_whole_picture_on_white_and_crop_cuts():
    tall = Image.new("RGB", (10, 100), (0, 0, 0))
    padded = fit_square(tall, 50, fit="pad")
    assert padded.getpixel((0, 25)) == (255, 255, 255) and padded.getpixel((25, 0)) == (0, 0, 0)
    cropped = fit_square(tall, 50, fit="crop")
    assert cropped.getpixel((0, 25)) == (0, 0, 0)
    with pytest.raises(ValueError):
        fit_square(tall, 50, fit="stretch")  # type: ignore[arg-type]


def test_max_side_shrinks_large_pictures():
    big = encode(Image.new("RGB", (3000, 2000), (5, 5, 5)), "JPEG")
    assert max(load_image(big, max_side=500).size) == 500


@pytest.mark.parametrize(
    ("size", "fit_to", "decoded"),
    [
        ((500, 375), (224, "pad"), (250, 188)),  # half scale still holds a 224 x 168 picture
        ((500, 375), (224, "crop"), (500, 375)),  # a crop needs the short side: no smaller scale covers it
        ((3000, 2000), (224, "crop"), (375, 250)),  # 1/8 scale, the smallest there is
        ((100, 80), (224, "pad"), (100, 80)),  # never enlarged
    ],
)
def test_jpegs_decode_no_larger_than_the_square_they_will_fill(size, fit_to, decoded):
    gradient = Image.linear_gradient("L").resize(size).convert("RGB")
    data = encode(gradient, "JPEG")
    img = load_image(data, max_side=1024, fit_to=fit_to)
    assert img.size == decoded
    full = fit_square(load_image(data), fit_to[0], fit=fit_to[1])
    # The same square as full decoding, to within JPEG's own rounding.
    assert np.abs(np.asarray(fit_square(img, fit_to[0], fit=fit_to[1]), float) - np.asarray(full, float)).mean() < 2
    assert load_image(encode(gradient, "PNG"), fit_to=fit_to).size == size  # only JPEGs decode at a scale


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"just some text, not a picture\n", "not a recognised image format"),
        (b"<!DOCTYPE html><html><body>hi</body></html>", "HTML page"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "SVG"),
    ],
)
def test_non_images_are_refused_with_a_reason(data, reason):
    with pytest.raises(ImageError, match=reason):
        load_image(data, name="query.jpg")
    with pytest.raises(ImageError, match=r"^query\.jpg: "):
        load_image(data, name="query.jpg")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_are_refused(fmt):
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), fmt)
    with pytest.raises(ImageError, match="truncated|broken"):
        load_image(data[: len(data) // 2])


def test_header_that_lies_about_its_size_is_refused():
    with pytest.raises(ImageError, match="truncated|broken"):
        load_image(png_with_header(2000, 2000, rows=b"\x00" + b"\x00" * 6000))


@pytest.mark.parametrize("side", [30000, 10000])  # far above, and between 1x and 2x, Pillow's limit
def test_decompression_bombs_are_refused(side):
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(png_with_header(side, side))
    assert Image.MAX_IMAGE_PIXELS == 89478485  # Pillow's own limit, never disabled


def test_bomb_handed_over_as_a_pil_image_is_refused():
    with pytest.warns(Image.DecompressionBombWarning):  # Pillow's open() only warns at this size
        img = Image.open(io.BytesIO(png_with_header(9500, 9500, rows=b"")))
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(img)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)


def test_pixel_art_enlarged_with_nearest_neighbour_is_shrunk_back():
    from recommender.images import pixel_upscale_factor

    rng = np.random.default_rng(0)
    sprite = Image.fromarray(rng.integers(0, 255, (13, 9, 3), dtype=np.uint8))
    for k in (2, 3, 5):
        big = sprite.resize((9 * k, 13 * k), Image.Resampling.NEAREST)
        assert pixel_upscale_factor(big) == k
        assert np.array_equal(np.asarray(fit_square(big, 56)), np.asarray(fit_square(sprite, 56)))
    smooth = sprite.resize((27, 39), Image.Resampling.BICUBIC)
    assert pixel_upscale_factor(smooth) == 1
    assert pixel_upscale_factor(Image.new("RGB", (1, 5))) == 1


# --- Large pictures are converted band by band: the same pixels as converting them whole -------------


def old_grey(arr: np.ndarray, top: float) -> np.ndarray:
    """The former whole-picture float64 formula for 16-bit, 32-bit and float grey."""
    return np.clip(np.nan_to_num(arr.astype(np.float64) / top * 255.0, nan=0.0), 0, 255).round().astype(np.uint8)


def test_16_and_32_bit_grey_in_bands_match_the_float_formula():
    from recommender.images import BAND_PIXELS, to_rgb

    rng = np.random.default_rng(1)
    height = 3 * BAND_PIXELS // 700 + 5  # four bands
    sixteen = rng.integers(0, 65536, (height, 700), dtype=np.uint16)
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray(sixteen)))[..., 0], old_grey(sixteen, 65535.0))
    wide = rng.integers(-500, 70000, (height, 700), dtype=np.int32)  # over 255 somewhere: a 16-bit range
    out = np.asarray(to_rgb(Image.fromarray(wide, mode="I")))[..., 1]
    assert np.array_equal(out, old_grey(wide, 65535.0))
    narrow = rng.integers(0, 256, (height, 700), dtype=np.int32)
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray(narrow, mode="I")))[..., 2], narrow.astype(np.uint8))


def test_float_grey_in_bands_decides_its_range_on_the_whole_picture():
    from recommender.images import BAND_PIXELS, to_rgb

    height = 2 * BAND_PIXELS // 500 + 3
    fractions = np.random.default_rng(2).random((height, 500), dtype=np.float32)
    fractions[: BAND_PIXELS // 500] = np.nan  # the whole first band is NaN: black, and no say in the range
    out = np.asarray(to_rgb(Image.fromarray(fractions, mode="F")))[..., 0]
    assert np.array_equal(out, old_grey(fractions, 1.0))
    fractions[-1, -1] = 7.5  # one value over 1.0, in the last band: the picture is 0-255 throughout
    out = np.asarray(to_rgb(Image.fromarray(fractions, mode="F")))[..., 0]
    assert np.array_equal(out, old_grey(fractions, 255.0))


def test_alpha_and_palette_in_bands_match_compositing_whole():
    from recommender.images import BAND_PIXELS, to_rgb

    height = 2 * BAND_PIXELS // 600 + 7
    rgba = Image.fromarray(np.random.default_rng(3).integers(0, 256, (height, 600, 4), dtype=np.uint8))
    whole = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    assert np.array_equal(np.asarray(to_rgb(rgba)), np.asarray(whole))
    palette = rgba.convert("RGB").quantize(16)
    palette.info["transparency"] = 3
    expected = Image.alpha_composite(
        Image.new("RGBA", palette.size, (255, 255, 255, 255)), palette.convert("RGBA")
    ).convert("RGB")
    assert np.array_equal(np.asarray(to_rgb(palette)), np.asarray(expected))


def test_large_pictures_are_reduced_before_they_are_converted_like_a_thumbnail():
    rgba = Image.fromarray(np.random.default_rng(4).integers(0, 256, (900, 4600, 4), dtype=np.uint8))
    rgba = rgba.resize((4600, 900), Image.Resampling.BICUBIC, box=(0, 0, 460, 90))  # smooth, like a photo
    data = encode(rgba, "PNG")
    out = load_image(data, max_side=1024)
    before = load_image(data)  # composited whole, then shrunk as before
    before.thumbnail((1024, 1024), Image.Resampling.BICUBIC)
    assert out.size == before.size == (1024, 200)
    assert np.abs(np.asarray(out, float) - np.asarray(before, float)).mean() < 1.0


@pytest.mark.parametrize(("resolutions", "decoded"), [(6, (64, 48)), (3, (128, 96)), (1, (512, 384))])
def test_jpeg_2000_decodes_at_reduced_scale_within_its_levels(resolutions, decoded):
    gradient = Image.linear_gradient("L").resize((512, 384)).convert("RGB")
    data = encode(gradient, "JPEG2000", num_resolutions=resolutions)
    img = load_image(data, fit_to=(64, "pad"))
    assert img.size == decoded  # 1/2**levels at most, never below the square it will fill
    assert np.abs(np.asarray(fit_square(img, 64), float) - np.asarray(fit_square(gradient, 64), float)).mean() < 4

"""Bad and odd pictures through the library and the CLI: odd ones are searched, broken ones get one line, fast."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_labeled_catalog
from hostile import broken_pictures, odd_pictures, write_all

from recommender import build_index, look_alikes
from recommender.cli import cli
from recommender.errors import ImageError
from recommender.index import Index

BROKEN = broken_pictures()
ODD = odd_pictures()
#: "Within a few seconds": generous for a shared 2-core machine; each takes milliseconds alone.
FEW_SECONDS = 5.0


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> tuple[Path, Index]:
    """A small labeled index in its own folder, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("bad-input")
    index_dir = root / "index"
    build_index(
        make_labeled_catalog(root / "shapes", per_label=2),
        name="shapes",
        model=str(tiny_model),
        index_dir=index_dir,
        progress=False,
    )
    return index_dir, Index.load("shapes", index_dir=index_dir)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pictures")
    return write_all(folder, {**{k: v for k, (v, _) in BROKEN.items()}, **ODD})


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_pictures_are_refused_by_the_library_with_one_line(name, files, shapes):
    _, index = shapes
    reason = BROKEN[name][1]
    started = time.perf_counter()
    with pytest.raises(ImageError, match=reason) as caught:
        look_alikes(files[name], index, k=3)
    assert time.perf_counter() - started < FEW_SECONDS
    message = str(caught.value)
    assert message.startswith(f"{files[name]}: ") and "\n" not in message and len(message) < 300


@pytest.mark.parametrize("name", sorted(ODD))
def test_odd_but_valid_pictures_are_searched(name, files, shapes):
    _, index = shapes
    started = time.perf_counter()
    matches = look_alikes(files[name], index, k=3)
    assert time.perf_counter() - started < FEW_SECONDS
    assert len(matches) == 3 and matches[0].score >= matches[1].score >= matches[2].score


def test_the_cli_refuses_each_broken_picture_with_one_line_and_searches_the_odd_ones(files, shapes):
    index_dir, _ = shapes
    runner = CliRunner()
    for name in sorted(BROKEN):
        started = time.perf_counter()
        result = runner.invoke(cli, ["--index-dir", str(index_dir), "search", str(files[name]), "--index", "shapes"])
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        assert result.exit_code == 1 and len(lines) == 1, (name, result.stderr)
        assert lines[0].startswith(f"Error: {files[name]}: ") and "Traceback" not in result.output + result.stderr
        assert time.perf_counter() - started < FEW_SECONDS
    for name in sorted(ODD):
        result = runner.invoke(
            cli, ["--index-dir", str(index_dir), "search", str(files[name]), "--index", "shapes", "-k", "2"]
        )
        assert result.exit_code == 0, (name, result.stderr)
        assert len(result.stdout.strip().splitlines()) == 1 + 2  # the header row, then the matches


def test_a_huge_query_is_shrunk_on_decoding_like_catalog_pictures(shapes, tmp_path, monkeypatch):
    # Measured on an 9000x9000 PNG of 260 KB (well under the app's 10 MB upload limit): 10 s and
    # 1.9 GB at full size, 2 s once shrunk while decoding, as catalog pictures already were.
    from PIL import Image

    import recommender.recommend as recommend
    from recommender.images import DECODE_MAX_SIDE

    _, index = shapes
    path = tmp_path / "big.jpg"
    Image.new("RGB", (3000, 2000), (90, 140, 200)).save(path)
    seen = []

    def spy(*args, **kwargs):
        out = recommend_load(*args, **kwargs)
        seen.append(out.size)
        return out

    recommend_load = recommend.load_image
    monkeypatch.setattr(recommend, "load_image", spy)
    assert len(look_alikes(path, index, k=2)) == 2
    side, _ = index.backbone().decode_size
    # A JPEG decodes at 1/8 scale, as small as it goes while still covering the model's square.
    assert seen and seen[0] == (375, 250) and side <= 250 < DECODE_MAX_SIDE


@pytest.mark.parametrize(
    "options", [{}, {"progressive": True, "optimize": True}, {"subsampling": 0}, {"quality": 1, "optimize": True}]
)
@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_the_jpeg_size_check_passes_complete_pictures_that_compress_best(mode, options):
    # Flat pictures are the smallest JPEGs there are for their size: the bound must still hold.
    from hostile import encode
    from PIL import Image

    from recommender.images import jpeg_shortfall

    for size in [(1, 1), (9, 7), (2000, 1500), (4000, 3)]:
        data = encode(Image.new(mode, size), "JPEG", **options)
        assert jpeg_shortfall(data) is None, (size, len(data))

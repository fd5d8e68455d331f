"""Picture bombs under Pillow's pixel limit: decoding is bounded by memory, per picture and per process.

A 172 KB 16-bit grey PNG of 9400x9400 took 31 s and 3.4 GB in one request to the app, and a 516 KB
zip of three of them 7.9 GB when indexed. Peak memory is measured in fresh processes (VmHWM, which
starts again at exec, unlike ru_maxrss), watched from outside so that a regression is killed at
its limit instead of filling the machine.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hostile import bomb_zip, encode, lossless_webp, picture_bombs, png_with_header, write_all
from PIL import Image

from recommender import settings
from recommender.errors import ImageError, RecommenderError
from recommender.images import DECODE_BUDGET, DecodeBudget, load_image, memory_needed, pixel_bytes, set_max_decode_mb

ROOT = Path(__file__).resolve().parent.parent
MB = 1 << 20
#: Where peak memory is read in a child process, and how long it ran.
_MEASURE = """
import json, resource, sys, time

def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
"""


@pytest.fixture(autouse=True)
def default_budget():
    """Every test starts and ends with the budget the environment gives (no flag left set)."""
    set_max_decode_mb(None)
    yield
    set_max_decode_mb(None)


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Watch:
    """The highest resident memory of a process, sampled every 10 ms in a thread, while in a `with` block."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_mb = pid, rss_mb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak_mb = max(self.peak_mb, rss_mb(self.pid))

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_measured(
    script: str, *args: object, limit_mb: float, tmp_path: Path, timeout: float = 300, env: dict[str, str] | None = None
) -> dict:
    """Run `script` in a fresh Python and return the JSON of its last line; fail (killed) past `limit_mb` of RSS."""
    out, err = tmp_path / "child.out", tmp_path / "child.err"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ["PYTHONPATH"]]),
        **(env or {}),
    }
    with open(out, "w") as stdout, open(err, "w") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", _MEASURE + script, *map(str, args)], cwd=ROOT, env=env, stdout=stdout, stderr=stderr
        )
    deadline, peak = time.monotonic() + timeout, 0.0
    while child.poll() is None:
        peak = max(peak, rss_mb(child.pid))
        if peak > limit_mb or time.monotonic() > deadline:
            child.kill()
            child.wait()
            pytest.fail(
                f"killed at {peak:.0f} MB of memory after {timeout - deadline + time.monotonic():.1f} s "
                f"(limit {limit_mb:.0f} MB, {timeout:.0f} s): {err.read_text()[-1000:]}"
            )
        time.sleep(0.01)
    assert child.returncode == 0, err.read_text()[-3000:]
    return json.loads(out.read_text().strip().splitlines()[-1])


def header_only(width: int, height: int, depth: int = 8, colour: int = 2) -> Image.Image:
    """A PNG opened but never decoded, whose header says width x height at that bit depth and colour type."""
    import io

    return Image.open(io.BytesIO(png_with_header(width, height, depth=depth, colour=colour)))


# --- What a picture needs, by mode and format --------------------------------------------------------


def test_bytes_per_pixel_are_pillows_own(tmp_path):
    """Measured in a fresh process: the memory Pillow takes to decode 16 million pixels of each mode."""
    formats = {
        "1": "PNG",
        "L": "PNG",
        "P": "PNG",
        "I;16": "PNG",
        "LA": "PNG",
        "RGB": "PNG",
        "RGBA": "PNG",
        "CMYK": "TIFF",
        "I": "TIFF",
        "F": "TIFF",
    }
    script = """
import io
from PIL import Image

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

taken = {}
for mode, fmt in zip(sys.argv[1::2], sys.argv[2::2]):
    buf = io.BytesIO()
    Image.new(mode, (4000, 4000)).save(buf, fmt)  # zeros: pages never written, so they take no memory
    before = rss()
    img = Image.open(buf)
    img.load()  # decoding writes every byte
    taken[mode] = (rss() - before) / 16e6
    del img
print(json.dumps(taken))
"""
    # Large blocks straight from the system and back, so that each picture's memory shows in the RSS.
    taken = run_measured(
        script,
        *[x for pair in formats.items() for x in pair],
        limit_mb=1000,
        tmp_path=tmp_path,
        env={"MALLOC_MMAP_THRESHOLD_": str(1 << 20)},
    )
    for mode in formats:
        assert taken[mode] == pytest.approx(pixel_bytes(mode), abs=0.3), (mode, taken)


def test_what_decoding_needs_follows_the_mode():
    size = 2000 * 1000
    need = {
        name: memory_needed(header_only(2000, 1000, depth, colour))
        for name, (depth, colour) in {
            "grey": (8, 0),
            "grey16": (16, 0),
            "one-bit": (1, 0),
            "rgb": (8, 2),
            "rgb16": (16, 2),
            "rgba": (8, 6),
            "grey-alpha": (8, 4),
        }.items()
    }
    assert need["grey16"] - need["grey"] == size  # 2 bytes a pixel against 1, then the same conversion
    assert need["one-bit"] == need["grey"]  # Pillow keeps 1-bit pixels in bytes
    assert need["rgb16"] == need["rgb"]  # 16-bit RGB is decoded to 8 bits a band
    assert need["rgba"] == need["grey-alpha"] > need["rgb"]  # both 4 bytes a pixel; RGB needs no conversion
    for name, needed in need.items():  # the decoded picture, its RGB copy and one band's, the turned copy
        assert size * 4 <= needed <= size * 13 + 20 * MB, name


def test_the_16_bit_bomb_fits_as_a_query_and_not_whole():
    bomb = header_only(9400, 9400, depth=16, colour=0)
    assert bomb.mode == "I;16"
    as_query = memory_needed(bomb, max_side=1024)
    assert 9400 * 9400 * 2 < as_query < 300 * MB  # decoded at 2 bytes a pixel, converted 4x smaller band by band
    assert memory_needed(bomb) > settings.DEFAULT_MAX_DECODE_MB * MB  # whole, its RGB copy alone is 353 MB


def test_webp_and_progressive_jpeg_decoders_are_counted():
    import io

    webp = Image.open(io.BytesIO(lossless_webp(9400, 9400)))
    assert memory_needed(webp, max_side=1024) > 1400 * MB  # libwebp's own buffers: 16 bytes a pixel in all
    photo = Image.linear_gradient("L").resize((640, 480)).convert("RGB")
    baseline, progressive = encode(photo, "JPEG"), encode(photo, "JPEG", progressive=True)
    extra = memory_needed(Image.open(io.BytesIO(progressive)), data=progressive) - memory_needed(
        Image.open(io.BytesIO(baseline)), data=baseline
    )
    assert extra == pytest.approx(640 * 480 * 3, rel=0.05)  # DCT coefficients, 2 bytes a sample, 4:2:0
    pair = encode(photo, "MPO", save_all=True, append_images=[photo])  # a phone's stereo pair: one scan each
    single = Image.open(io.BytesIO(pair))
    assert single.format == "MPO"
    assert memory_needed(single, data=pair) == memory_needed(Image.open(io.BytesIO(baseline)), data=baseline)


def test_a_normal_large_photo_is_read_whole_and_as_a_query(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.linear_gradient("L").resize((6000, 4000)).convert("RGB").save(path, quality=85)
    assert load_image(path).size == (6000, 4000)
    assert load_image(path, max_side=1024, fit_to=(224, "pad")).size == (750, 500)  # decoded at 1/8 scale


# --- Refusals --------------------------------------------------------------------------------------


def test_a_picture_over_the_budget_is_refused_with_one_line(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (2000, 2000), (30, 120, 200)).save(path)
    monkeypatch.setenv(settings.ENV_MAX_DECODE_MB, "8")
    with pytest.raises(ImageError) as caught:
        load_image(path, max_side=1024)
    message = str(caught.value)
    assert message.startswith(f"{path}: decoding this 2000x2000 RGB PNG needs about ") and "\n" not in message
    assert "more than the 8 MB allowed (RECOMMENDER_MAX_DECODE_MB)" in message and "decompression bomb" in message
    monkeypatch.setenv(settings.ENV_MAX_DECODE_MB, "64")
    assert load_image(path, max_side=1024).size == (1024, 1024)


def test_the_flag_beats_the_environment_which_beats_the_default(monkeypatch):
    assert settings.max_decode_mb() == settings.DEFAULT_MAX_DECODE_MB == 512
    monkeypatch.setenv(settings.ENV_MAX_DECODE_MB, "100")
    assert settings.max_decode_mb() == 100 and settings.max_decode_mb(40) == 40
    assert DECODE_BUDGET.capacity == 100 * MB
    set_max_decode_mb(40)
    assert DECODE_BUDGET.capacity == 40 * MB
    for bad in ("0", "-5", "lots", "nan", "inf"):
        monkeypatch.setenv(settings.ENV_MAX_DECODE_MB, bad)
        with pytest.raises(RecommenderError, match="positive number of megabytes"):
            settings.max_decode_mb()
    with pytest.raises(RecommenderError, match="positive number"):
        set_max_decode_mb(-1)


def test_the_cli_flag_sets_the_budget(labeled_catalog, tiny_model, tmp_path):
    from click.testing import CliRunner

    from recommender.cli import cli

    def invoke(*args: str, env: dict[str, str] | None = None) -> object:
        return CliRunner().invoke(cli, list(args), prog_name="python -m recommender", env=env)

    assert invoke("index", str(labeled_catalog), "--name", "shapes", "--model", str(tiny_model), "-q").exit_code == 0
    big = tmp_path / "big.png"
    Image.new("RGB", (1500, 1500), (200, 30, 30)).save(big)
    refused = invoke("--max-decode-mb", "2", "search", str(big), "--index", "shapes")
    assert refused.exit_code == 1 and refused.output.count("\n") == 1, refused.output
    assert "Error: " in refused.output and "more than the 2 MB allowed" in refused.output
    set_max_decode_mb(None)
    env = {settings.ENV_MAX_DECODE_MB: "2"}
    assert "2 MB allowed" in invoke("search", str(big), "--index", "shapes", env=env).output
    assert invoke("--max-decode-mb", "64", "search", str(big), "--index", "shapes", env=env).exit_code == 0
    bad = invoke("--max-decode-mb", "-1", "search", str(big), "--index", "shapes")
    assert bad.exit_code == 1 and "positive number of megabytes" in bad.output


# --- One budget for every thread -----------------------------------------------------------------


def test_a_reservation_larger_than_the_budget_is_refused_at_once():
    budget = DecodeBudget(1)
    started = time.perf_counter()
    with pytest.raises(ImageError, match=r"a\.png: decoding this 9x9 L PNG needs about 2 MB .* 1 MB allowed"):
        with budget.reserve(2 * MB, label="a.png", what="9x9 L PNG"):
            pass
    assert time.perf_counter() - started < 2 and budget.used == 0  # at once: a wait would never end


def test_threads_wait_their_turn_first_come_first_served():
    budget = DecodeBudget(1)
    order: list[str] = []
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with budget.reserve(600 << 10):
            holding.set()
            release.wait(5)
            order.append("first done")

    def take(name: str, nbytes: int) -> None:
        with budget.reserve(nbytes):
            order.append(name)

    first = threading.Thread(target=hold)
    first.start()
    holding.wait(5)
    big = threading.Thread(target=take, args=("big", 800 << 10))
    big.start()
    time.sleep(0.1)  # the big one is in line before the small one, which would fit at once
    small = threading.Thread(target=take, args=("small", 100 << 10))
    small.start()
    time.sleep(0.1)
    assert order == [] and budget.used == 600 << 10  # both wait: the small one does not jump the queue
    release.set()
    for thread in (first, big, small):
        thread.join(5)
    assert order == ["first done", "big", "small"]
    assert budget.peak <= budget.capacity and budget.used == 0


def test_a_wait_that_lasts_too_long_ends_with_one_line():
    budget = DecodeBudget(1, wait=0.05)
    with budget.reserve(MB):
        with pytest.raises(ImageError, match="too many large pictures are being decoded at once"):
            with budget.reserve(MB, label="b.png"):
                pass
    assert budget.used == 0


# --- The bombs, measured ---------------------------------------------------------------------------

_LOAD = """
from recommender.errors import ImageError
from recommender.images import load_image

results = {}
for path in sys.argv[1:]:
    started, spent = time.perf_counter(), cpu_seconds()
    for kind, options in (("query", {"max_side": 1024, "fit_to": (224, "pad")}), ("whole", {})):
        try:
            answer = list(load_image(path, **options).size)
        except ImageError as exc:
            answer = str(exc)
        results[f"{path.rsplit('/', 1)[-1]} {kind}"] = answer
    results[path.rsplit("/", 1)[-1]] = {"seconds": time.perf_counter() - started, "cpu": cpu_seconds() - spent,
                                        "peak_mb": peak_mb()}
print(json.dumps(results))
"""


@pytest.mark.slow
def test_picture_bombs_are_decoded_small_or_refused_in_seconds(tmp_path):
    files = write_all(tmp_path / "bombs", picture_bombs())
    out = run_measured(_LOAD, *files.values(), limit_mb=1000, tmp_path=tmp_path)
    print(json.dumps(out, indent=1))
    # As queries and catalog pictures are read (no side over 1024, for a 224 px square): decoded.
    assert out["grey16-9400.png query"] == out["rgba-9400.png query"] == [1024, 1024]
    for name in ("grey16-9400.png", "rgba-9400.png"):  # whole, the RGB copy would not fit beside the picture
        assert out[f"{name} whole"].startswith(f"{files[name]}: decoding this 9400x9400 ")
    assert "9400x9400 I;16 PNG" in out["grey16-9400.png whole"] and "512 MB allowed" in out["grey16-9400.png whole"]
    for kind in ("query", "whole"):  # with libwebp's own buffers, 1.4 GB at least
        assert re.search(r"9400x9400 RGB WEBP needs about 1,[4-9]\d\d MB", out[f"lossless-9400.webp {kind}"])
    assert out["lossless-9400.webp"]["cpu"] < 0.5  # refused before decoding
    for name in files:
        assert out[name]["cpu"] < 10, (name, out[name])  # was 9 s of CPU for the 16-bit one as a query
    assert max(out[name]["peak_mb"] for name in files) < 600  # was 2.9 GB


_BUILD = """
import zipfile
from pathlib import Path

from recommender.backbones import load_backbone
from recommender.build import LocalExecutor, build_index
from recommender.images import DECODE_BUDGET

folder, archive, model, index_dir = map(Path, sys.argv[1:5])
with zipfile.ZipFile(archive) as z:
    z.extractall(folder)
backbone = load_backbone(str(model))
base, started, spent = peak_mb(), time.perf_counter(), cpu_seconds()
report = build_index(folder, name="bombs", backbone=backbone, index_dir=index_dir, progress=False,
                     executor=LocalExecutor(workers=8))
print(json.dumps({"count": report.count, "skipped": [str(s) for s in report.skipped], "base_mb": base,
                  "peak_mb": peak_mb(), "seconds": time.perf_counter() - started, "cpu": cpu_seconds() - spent,
                  "reserved_mb": DECODE_BUDGET.peak / 2**20}))
"""


@pytest.mark.slow
def test_a_zip_of_three_bombs_is_indexed_within_the_budget(tmp_path, tiny_model):
    from conftest import draw_shape

    folder = tmp_path / "catalog"
    folder.mkdir()
    for i, shape in enumerate(("circle", "square", "triangle")):
        draw_shape(shape, (40 * i, 90, 200), seed=i).save(folder / f"{shape}.png")
    archive = bomb_zip(tmp_path / "bombs.zip")
    assert archive.stat().st_size < 520_000
    out = run_measured(_BUILD, folder, archive, tiny_model, tmp_path / "index", limit_mb=2000, tmp_path=tmp_path)
    print(json.dumps(out, indent=1))
    assert out["count"] == 6 and out["skipped"] == []  # three shapes and three bombs, all indexed
    assert out["reserved_mb"] <= settings.DEFAULT_MAX_DECODE_MB  # never more reserved at once than the budget
    assert out["peak_mb"] - out["base_mb"] < settings.DEFAULT_MAX_DECODE_MB + 100  # was 7.9 GB through the app


@pytest.mark.slow
def test_the_server_answers_bombs_in_seconds_and_stays_under_2_gb(app_server, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(app_server.url, verbose=False)
    files = write_all(tmp_path, picture_bombs())
    answers: dict[str, tuple[str, float]] = {}
    before = rss_mb(app_server.process.pid)
    with Watch(app_server.process.pid) as watch:
        for name, path in files.items():
            started = time.perf_counter()
            try:
                answer = client.predict(handle_file(str(path)), api_name="/identify_text")
            except AppError as exc:
                answer = str(exc)
            answers[name] = (answer, time.perf_counter() - started)
        pikachu = client.predict(handle_file(str(ROOT / "assets/pokemon/sprites/025.png")), api_name="/identify_text")
    print(
        f"server RSS {before:.0f} MB before, peak {watch.peak_mb:.0f} MB;",
        {name: (answer[:90], round(seconds, 1)) for name, (answer, seconds) in answers.items()},
    )
    for name, (answer, seconds) in answers.items():
        assert "\n" not in answer and "Traceback" not in answer, answer
        assert seconds < 20, (name, seconds)  # alone: 2-3 s for the PNGs, 0.1 s for the WebP
    for name in ("grey16-9400.png", "rgba-9400.png"):  # decoded at reduced size and answered
        assert answers[name][0].startswith(("This is ", "The closest ", "You gave ")), answers[name]
    assert answers["lossless-9400.webp"][0].startswith("lossless-9400.webp: decoding this 9400x9400 RGB WEBP")
    assert pikachu.startswith("This is “Pikachu”")  # the next request is answered as ever
    assert watch.peak_mb < 2048 and app_server.process.poll() is None  # was 3.4 GB for the 16-bit PNG

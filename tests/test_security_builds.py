"""Web builds in public: bounded, stopped when their client leaves, apart from searches, private to their session.

The library's limits, cancellation, cleanup and namespaces first; then the attacks of issue 16
(items 4-7) against the real server on loopback, through raw HTTP as any script could send them.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import CHROMIUM, make_labeled_catalog
from hostile import high_ratio, make_zip, names_only, png, tiny_pngs
from PIL import Image

from recommender import build_index
from recommender.archive import ARCHIVE_MAX_DEPTH, extract_archive
from recommender.build.pipeline import map_ordered, torch_threads
from recommender.errors import BuildStopped, IndexNotFoundError, LimitExceeded, RecommenderError
from recommender.index import Index
from recommender.service import WEB_BUILD_NICE, Service
from recommender.uploads import MB, UPLOAD, UploadLimits, session_key

ROOT = Path(__file__).resolve().parent.parent
PIKACHU = ROOT / "assets" / "pokemon" / "sprites" / "025.png"
DEEP = "a/" * 2000 + "deep.png"  # a member nested 2,000 folders deep


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in files_under(folder))


# ----------------------------------------------------------------------------- the library


@pytest.fixture
def make_service(tmp_path: Path, tiny_model: Path):
    """The app's shared state on a six-picture default catalog, with the limits given (small ones by default)."""
    default = make_labeled_catalog(tmp_path / "default", per_label=2)

    def make(**limits: float) -> Service:
        chosen = {"upload_bytes": 2 * MB, "session_bytes": 3 * MB, "total_bytes": 4 * MB, **limits}
        return Service(
            model=str(tiny_model),
            default_catalog=default,
            default_name="default",
            progress=False,
            limits=UploadLimits(**chosen),
        )

    return make


@pytest.fixture
def service(make_service) -> Service:
    return make_service()


def test_a_zip_over_the_picture_limit_is_refused_before_anything_is_written(tmp_path):
    archive = names_only(tmp_path / "many.zip", 51)
    with pytest.raises(
        LimitExceeded,
        match=r"many.zip: 51 pictures, more than the 50 a web upload may hold; "
        r"index larger catalogs from the command line",
    ):
        extract_archive(archive, tmp_path / "out", max_pictures=50)
    assert not (tmp_path / "out").exists()
    extract_archive(archive, tmp_path / "cli")  # the command line has no such limit


def test_a_csv_of_a_million_rows_is_refused_as_it_is_unpacked(tmp_path):
    rows = "image,label\n" + "a.png,x\n" * 1_000_000
    archive = make_zip(tmp_path / "rows.zip", {"items.csv": rows.encode(), "a.png": png(1)})
    started = time.perf_counter()
    with pytest.raises(LimitExceeded, match="items.csv: 1,000,000 rows, more than the 10,000 a web upload may list"):
        extract_archive(archive, tmp_path / "out", max_rows=10_000)
    assert time.perf_counter() - started < 5  # was: past 600 s in the build


def test_a_high_ratio_zip_is_refused_before_anything_is_written(tmp_path):
    archive = high_ratio(tmp_path / "ratio.zip", 120)
    total = sum(m.file_size for m in zipfile.ZipFile(archive).infolist())
    assert 150 < total / archive.stat().st_size < 200  # not a zip bomb by the ratio rule
    with pytest.raises(LimitExceeded, match=r"unpacks to 125.8 MB, more than the 100 MB a web upload may hold"):
        extract_archive(archive, tmp_path / "out", max_bytes=UploadLimits().upload_bytes)
    assert not (tmp_path / "out").exists()


def test_a_member_nested_2000_folders_deep_is_skipped_with_its_reason(tmp_path):
    deepest_allowed = "a/" * ARCHIVE_MAX_DEPTH + "x.png"
    archive = make_zip(tmp_path / "deep.zip", {DEEP: png(1), "ok.png": png(2), deepest_allowed: png(3)})
    _, skipped = extract_archive(archive, tmp_path / "out")
    assert [s.reason for s in skipped] == [f"nested 2,000 folders deep, more than the {ARCHIVE_MAX_DEPTH} allowed"]
    assert len(skipped[0].where) < 600  # shown cut in the middle, not 4,000 characters
    assert sorted(p.name for p in files_under(tmp_path / "out")) == ["ok.png", "x.png"]


def test_a_build_asked_to_stop_stops_within_a_picture_and_writes_nothing(tmp_path, tiny_model):
    catalog = tmp_path / "pics"
    catalog.mkdir()
    for name, data in tiny_pngs(40).items():
        (catalog / name).write_bytes(data)
    asked = []

    def should_stop() -> str | None:
        asked.append(1)
        return "enough" if len(asked) > 10 else None

    with pytest.raises(BuildStopped, match="^enough$"):
        build_index(
            catalog, name="stopped", model=str(tiny_model), progress=False, batch_size=4, should_stop=should_stop
        )
    assert len(asked) == 11  # asked before each picture
    assert not (tmp_path / "index" / "stopped" / "manifest.json").exists()
    # Without the bound the same catalog builds, re-using what the stopped build had checkpointed.
    assert build_index(catalog, name="stopped", model=str(tiny_model), progress=False).count == 40


def test_a_builds_thread_cap_is_its_own_and_undone_after():
    import torch

    before = torch.get_num_threads()
    seen: list[int] = []

    def build() -> None:
        with torch_threads(1):
            seen.append(torch.get_num_threads())
            time.sleep(0.2)
        seen.append(torch.get_num_threads())

    worker = threading.Thread(target=build)
    worker.start()
    time.sleep(0.1)
    assert torch.get_num_threads() == before  # other threads (searches) keep theirs meanwhile
    worker.join()
    assert seen[0] == 1 and seen[1] == before


def test_a_web_build_whose_client_goes_away_stops_and_leaves_nothing(service, tmp_path):
    archive = make_zip(tmp_path / "pics.zip", tiny_pngs(40))
    calls = []

    def client_gone() -> bool:
        calls.append(1)
        return len(calls) > 5

    with pytest.raises(BuildStopped, match="the page that started it was closed"):
        service.build_upload(archive, "gone", session="s1", client_gone=client_gone, progress=False)
    assert files_under(service.uploads.folder("s1")) == []
    assert service.indexes("s1") == ["default"]


def test_a_visitor_adapts_only_their_own_upload_and_can_stop_it(service, tmp_path):
    archive = make_zip(tmp_path / "shop.zip", {f"{k}/{i}.png": png(3 * k + i) for k in range(2) for i in range(3)})
    service.build_upload(archive, "shop", session="s1", progress=False)
    report = service.adapt_upload(UPLOAD + "shop", session="s1")
    assert report.name == "shop-adapted" and report.pictures == 6
    assert UPLOAD + "shop-adapted" in service.indexes("s1")
    assert service.index(UPLOAD + "shop-adapted", session="s1").manifest.adapter is not None
    with pytest.raises(IndexNotFoundError):  # another session's upload is not found, let alone adapted
        service.adapt_upload(UPLOAD + "shop", session="s2")
    with pytest.raises(RecommenderError, match="a catalog you uploaded"):  # the shared indexes stay as built
        service.adapt_upload("default", session="s1")
    service.build_upload(archive, "again", session="s1", progress=False)
    with pytest.raises(BuildStopped, match="the page that started it was closed"):
        service.adapt_upload(UPLOAD + "again", session="s1", client_gone=lambda: True)
    assert UPLOAD + "again-adapted" not in service.indexes("s1")


def test_a_web_build_past_its_time_limit_stops(make_service, tmp_path):
    limited = make_service(seconds=0)
    with pytest.raises(BuildStopped, match="build stopped after 0 s, the most a web build may take"):
        limited.build_upload(make_zip(tmp_path / "a.zip", {"a.png": png(1)}), "late", session="s1", progress=False)
    assert files_under(limited.uploads.folder("s1")) == []


def test_a_web_upload_never_touches_the_operators_index_of_that_name(service, tmp_path, tiny_model):
    operator = make_labeled_catalog(tmp_path / "operator", per_label=1)
    build_index(operator, name="shop", model=str(tiny_model), progress=False)
    manifest = tmp_path / "index" / "shop" / "manifest.json"
    before = manifest.read_bytes()
    report = service.build_upload(
        make_zip(tmp_path / "up.zip", {"a.png": png(1), "b.png": png(2)}), "shop", session="A", progress=False
    )
    assert report.count == 2 and manifest.read_bytes() == before
    assert service.indexes("A") == ["default", "shop", "upload:shop"]
    assert service.indexes("B") == ["default", "shop"] == service.indexes()
    assert ("shop (your upload)", "upload:shop") in service.choices("A")
    assert len(service.index("shop", session="A")) == 3  # the operator's, for everyone
    assert len(service.index("upload:shop", session="A")) == 2  # A's own
    with pytest.raises(IndexNotFoundError, match="no uploaded index named 'shop' in this session"):
        service.index("upload:shop", session="B")  # another session cannot reach it by its name
    with pytest.raises(RecommenderError, match="uploads belong to a browser session"):
        service.index("upload:shop")
    with pytest.raises(RecommenderError, match="bad index name"):
        service.index(f"upload:../{session_key('A')}/index/shop", session="B")


def test_quotas_per_session_and_overall_are_kept_with_a_clear_message(service, tmp_path):
    big = make_zip(tmp_path / "big.zip", {"a.png": png(1), "b.png": os.urandom(1_600_000)})
    service.build_upload(big, "one", session="A", progress=False)  # 1.6 MB unpacked; the junk is not kept
    assert disk_bytes(service.uploads.folder("A")) < 100_000
    keep = make_zip(tmp_path / "keep.zip", {f"{i}.bmp": _bmp(i) for i in range(2)})  # 1.5 MB that are kept
    service.build_upload(keep, "two", session="A", progress=False)
    with pytest.raises(
        LimitExceeded,
        match=r"this upload unpacks to 1.6 MB; with the 1.5 MB this session's other "
        r"uploads keep, that is more than the 3 MB one session may keep",
    ):
        service.build_upload(big, "three", session="A", progress=False)
    service.build_upload(keep, "two", session="A", progress=False)  # replacing an upload frees its room first
    service.build_upload(keep, "two", session="B", progress=False)
    with pytest.raises(LimitExceeded, match=r"the server's room for uploads \(4 MB\) is full for now"):
        service.build_upload(keep, "two", session="C", progress=False)


def test_a_refused_upload_never_tells_where_it_lies_on_the_server(service, tmp_path):
    rows = b"image,label\na.png," + b"x" * 200_000 + b"\n"  # a cell over the CSV limit
    archive = make_zip(tmp_path / "cell.zip", {"items.csv": rows, "a.png": png(1)})
    with pytest.raises(RecommenderError) as refused:
        service.build_upload(archive, "cell", session="s1", progress=False)
    message = str(refused.value)
    assert message.startswith("items.csv: row 2 has a cell longer than"), message
    assert str(tmp_path) not in message and os.sep + "sessions" not in message


def _bmp(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (512, 500, 3), dtype=np.uint8)).save(buf, "BMP")
    return buf.getvalue()


def test_uploads_go_when_the_page_closes_when_unused_and_at_every_start(make_service, tmp_path):
    service = make_service()
    archive = make_zip(tmp_path / "a.zip", {"a.png": png(1)})
    for session in ("closed", "idle", "active"):
        service.build_upload(archive, "mine", session=session, progress=False)
    service.close_session("closed")
    assert not service.uploads.folder("closed").exists()
    old = time.time() - service.limits.ttl - 10
    os.utime(service.uploads.folder("idle"), (old, old))
    os.utime(service.uploads.folder("active"), (old, old))
    service.index("upload:mine", session="active")  # a search through it counts as use
    service.index("upload:mine", session="idle")  # loaded, then swept: it must not linger
    os.utime(service.uploads.folder("idle"), (old, old))
    service.sweep()
    assert not service.uploads.folder("idle").exists() and service.uploads.folder("active").exists()
    with pytest.raises(IndexNotFoundError):
        service.index("upload:mine", session="idle")
    # A build killed with its process leaves folders; the next start removes every session's.
    orphan = service.uploads.catalog_dir("killed", "half") / "20250101-000000-abcdef"
    orphan.mkdir(parents=True)
    (orphan / "p.png").write_bytes(png(1))
    make_service()
    assert not (tmp_path / "data" / "sessions").exists()


def test_a_page_closed_during_its_build_loses_its_uploads_once_the_build_ends(service, tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"a.png": png(1)})
    with service.uploads.building("s1"):
        service.build_upload(archive, "mine", session="s1", progress=False)
        service.close_session("s1")
        assert service.uploads.folder("s1").exists()  # not pulled from under a running build
    assert not service.uploads.folder("s1").exists()


def test_upload_limits_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("RECOMMENDER_UPLOAD_PICTURES", "40")
    monkeypatch.setenv("RECOMMENDER_UNPACKED_MB", "2.5")
    monkeypatch.setenv("RECOMMENDER_UPLOAD_MB", "7")  # one uploaded file, the guard's: not the unpacked bytes
    monkeypatch.setenv("RECOMMENDER_UPLOAD_SECONDS", "30")
    limits = UploadLimits.from_env()
    assert (limits.pictures, limits.upload_bytes, limits.seconds, limits.rows) == (40, 2_500_000, 30, 10_000)
    monkeypatch.setenv("RECOMMENDER_UPLOAD_ROWS", "lots")
    with pytest.raises(RecommenderError, match="RECOMMENDER_UPLOAD_ROWS='lots': not a number"):
        UploadLimits.from_env()
    for bad in ("inf", "nan", "0"):
        monkeypatch.setenv("RECOMMENDER_UPLOAD_ROWS", bad)
        with pytest.raises(RecommenderError, match="must be a finite number, at least 1"):
            UploadLimits.from_env()


# ----------------------------------------------------------------------------- the real server


@dataclass(frozen=True)
class BuildsServer:
    process: object
    url: str
    folder: Path

    def session_folder(self, visitor: object) -> Path:
        return self.folder / "data" / "sessions" / session_key(visitor.session)  # type: ignore[attr-defined]

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()  # type: ignore[attr-defined]
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: The server's limits: small enough to reach in a test, and a long build (LONG pictures) well under them.
PICTURES, UPLOAD_MB, LONG = 9000, 20, 8000
CACHE_SECONDS = 20


@pytest.fixture(scope="module")
def builds_server(tmp_path_factory, tiny_model, app_folder) -> Iterator[BuildsServer]:
    """A server of its own, with small limits, an operator's index `shop`, and Gradio's cache kept 20 s.

    (Long enough for a page under load to upload a zip and start its build before the zip expires.)
    """
    from appserver import start_app

    folder = tmp_path_factory.mktemp("app-builds")
    shutil.copytree(app_folder / "index" / "pokemon", folder / "index" / "pokemon")  # not built again
    build_index(
        make_labeled_catalog(folder / "operator", per_label=1),
        name="shop",
        model=str(tiny_model),
        index_dir=folder / "index",
        progress=False,
    )
    process, url = start_app(
        folder,
        {
            "RECOMMENDER_MODEL": str(tiny_model),
            "RECOMMENDER_WEB_PROVIDER": "fake_web:FakeProvider",
            "RECOMMENDER_UPLOAD_PICTURES": str(PICTURES),
            "RECOMMENDER_UPLOAD_MB": str(UPLOAD_MB),
            "RECOMMENDER_UNPACKED_MB": str(UPLOAD_MB),
            "RECOMMENDER_UPLOAD_SECONDS": "120",
            "RECOMMENDER_BUILD_THREADS": "1",
            "RECOMMENDER_GRADIO_CACHE_TTL": str(CACHE_SECONDS),
        },
    )
    yield BuildsServer(process, url, folder)
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def long_zip(tmp_path_factory) -> Path:
    """LONG different tiny pictures: about half a minute of building on this machine's tiny model."""
    return make_zip(tmp_path_factory.mktemp("long") / "long.zip", tiny_pngs(LONG))


def visitor(server: BuildsServer):
    from visitor import Visitor

    return Visitor(server.url)


def start_long_build(stream: Iterator[dict]) -> dict:
    """Wait on the event stream of a build until it reports progress; returns that message."""
    for message in stream:
        if message["msg"] == "progress" and (message["progress_data"] or [{}])[0].get("index", 0) >= 50:
            return message
        assert message["msg"] != "process_completed", message
    raise AssertionError("the build never reported progress")


@pytest.mark.slow
def test_server_refuses_a_zip_over_the_picture_limit_at_once(builds_server, tmp_path):
    guest = visitor(builds_server)
    started = time.perf_counter()
    message = guest.error("build_upload", [guest.upload(names_only(tmp_path / "many.zip", PICTURES + 1)), "many"])
    assert message == (
        f"many.zip: {PICTURES + 1:,} pictures, more than the {PICTURES:,} a web upload may hold; "
        "index larger catalogs from the command line"
    )
    assert time.perf_counter() - started < 10
    assert files_under(builds_server.session_folder(guest)) == []


@pytest.mark.slow
def test_server_refuses_a_csv_of_a_million_rows_at_once(builds_server, tmp_path):
    guest = visitor(builds_server)
    rows = make_zip(tmp_path / "rows.zip", {"items.csv": b"image\n" + b"a.png\n" * 1_000_000, "a.png": png(1)})
    started = time.perf_counter()
    message = guest.error("build_upload", [guest.upload(rows), "rows"])
    assert "items.csv: 1,000,000 rows, more than the 10,000 a web upload may list" in message
    assert time.perf_counter() - started < 10
    assert files_under(builds_server.session_folder(guest)) == []


@pytest.mark.slow
def test_server_stops_a_build_when_its_client_goes_away(builds_server, long_zip, record_property):
    guest = visitor(builds_server)
    folder = builds_server.session_folder(guest)
    guest.join("build_upload", [guest.upload(long_zip), "long"])
    with guest.messages() as stream:
        start_long_build(stream)
        assert (folder / "catalogs" / "long").exists()
    closed = time.perf_counter()  # the stream is closed: the page went away
    while (folder / "catalogs" / "long").exists() or (folder / "index" / "long").exists():
        assert time.perf_counter() - closed < 15, "the build went on after its client left"
        time.sleep(0.05)
    stopped = time.perf_counter() - closed
    record_property("seconds_to_stop", round(stopped, 2))
    print(f"\nbuild stopped {stopped:.2f} s after its client left")
    before = builds_server.cpu_seconds()
    time.sleep(1.0)
    assert builds_server.cpu_seconds() - before < 0.5  # the CPU is free again (it was busy building)
    assert files_under(folder) == [] and "upload:long" not in guest.choices()


@pytest.mark.slow
def test_server_answers_searches_while_a_build_runs(builds_server, long_zip, record_property):
    from gradio_client import Client, handle_file

    searcher = Client(builds_server.url, verbose=False)
    searcher.predict(handle_file(str(PIKACHU)), api_name="/identify_text")  # warm
    builder = visitor(builds_server)
    builder.join("build_upload", [builder.upload(long_zip), "long"])
    with builder.messages() as stream:
        start_long_build(stream)
        seconds = []
        for _ in range(8):
            started = time.perf_counter()
            assert searcher.predict(handle_file(str(PIKACHU)), api_name="/identify_text").startswith(
                "This is “Pikachu”"
            )
            seconds.append(time.perf_counter() - started)
        folder = builds_server.session_folder(builder)  # the build still runs: the searches did not wait for it
        assert (folder / "catalogs" / "long").exists() and not (folder / "index" / "long" / "manifest.json").exists()
    record_property("search_p50_during_build_ms", round(1000 * sorted(seconds)[len(seconds) // 2]))
    print(f"\nsearches during a build: {', '.join(f'{s * 1000:.0f}' for s in seconds)} ms")
    assert max(seconds) < 10


@pytest.mark.slow
def test_server_keeps_an_upload_named_like_an_operators_index_apart(builds_server, tmp_path):
    manifest = builds_server.folder / "index" / "shop" / "manifest.json"
    before = manifest.read_bytes()
    owner, stranger = visitor(builds_server), visitor(builds_server)
    archive = make_zip(tmp_path / "shop.zip", {"a.png": png(1), "b.png": png(2)})
    report, chooser = owner.answer("build_upload", [owner.upload(archive), "shop"])
    assert report.startswith("Built **shop**: 2 pictures") and chooser["value"] == "upload:shop"
    assert manifest.read_bytes() == before  # the operator's index is as it was
    assert owner.choices() == ["pokemon", "shop", "upload:shop"]
    assert stranger.choices() == ["pokemon", "shop"]
    _, status = owner.answer("choose", ["upload:shop"])
    assert "catalog **shop**: 2 pictures" in status
    _, status = stranger.answer("choose", ["shop"])
    assert "catalog **shop**: 3 pictures" in status  # the operator's
    assert "upload:shop" in stranger.error("choose", ["upload:shop"])  # not among the stranger's choices


@pytest.mark.slow
def test_server_caps_a_high_ratio_zip_and_keeps_only_what_it_indexed(builds_server, tmp_path):
    guest = visitor(builds_server)
    message = guest.error("build_upload", [guest.upload(high_ratio(tmp_path / "big.zip", 30, keep=png(1))), "big"])
    assert message.startswith(f"big.zip: unpacks to 31.5 MB, more than the {UPLOAD_MB} MB a web upload may hold")
    assert files_under(builds_server.session_folder(guest)) == []
    small = high_ratio(tmp_path / "small.zip", 5, keep=png(1))
    report, _ = guest.answer("build_upload", [guest.upload(small), "small"])
    assert "1 pictures" in report and "`junk.png`" in report
    kept = disk_bytes(builds_server.session_folder(guest))
    assert kept < 100_000, kept  # the index and one small picture; not the 5 MB of junk


@pytest.mark.slow
def test_server_skips_a_member_nested_2000_folders_deep(builds_server, tmp_path):
    guest = visitor(builds_server)
    archive = make_zip(tmp_path / "deep.zip", {DEEP: png(1), "ok.png": png(2)})
    report, _ = guest.answer("build_upload", [guest.upload(archive), "deep"])
    assert "Built **deep**: 1 pictures" in report
    assert f"nested 2,000 folders deep, more than the {ARCHIVE_MAX_DEPTH} allowed" in report


@pytest.mark.slow
def test_server_lets_uploaded_files_expire_from_gradios_cache(builds_server, tmp_path):
    guest = visitor(builds_server)
    stored = Path(guest.upload(make_zip(tmp_path / "a.zip", {"a.png": png(1)}))["path"])
    assert stored.is_file()
    deadline = time.monotonic() + 3 * CACHE_SECONDS
    while stored.exists():
        assert time.monotonic() < deadline, "an upload stayed in Gradio's cache"
        time.sleep(0.5)


@pytest.mark.slow
def test_server_removes_a_sessions_uploads_when_its_page_closes(builds_server, tmp_path):
    guest = visitor(builds_server)
    with guest.http.stream("GET", f"/gradio_api/heartbeat/{guest.session}", timeout=60) as heartbeat:
        lines = heartbeat.iter_lines()  # kept: dropping the iterator would close the connection
        next(lines)  # the page is open
        guest.answer("build_upload", [guest.upload(make_zip(tmp_path / "a.zip", {"a.png": png(1)})), "mine"])
        assert (builds_server.session_folder(guest) / "index" / "mine" / "manifest.json").is_file()
    deadline = time.monotonic() + 15
    while builds_server.session_folder(guest).exists():
        assert time.monotonic() < deadline, "the uploads of a closed page were kept"
        time.sleep(0.2)
    assert Index.load(builds_server.folder / "index" / "shop").name == "shop"  # the operator's untouched


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_two_browsers_each_see_only_their_own_uploads(builds_server, browser, tmp_path):
    archive = make_zip(tmp_path / "shop.zip", {"a.png": png(1), "b.png": png(2)})
    contexts = [browser.new_context(viewport={"width": 1280, "height": 1000}) for _ in range(2)]  # two strangers
    try:
        pages = []
        for context in contexts:
            page = context.new_page()
            page.goto(builds_server.url)
            page.click("button[role=tab]:has-text('Your own catalog')")
            pages.append(page)
        owner, stranger = pages

        def wait(condition: str) -> None:
            from playwright.sync_api import TimeoutError as PlaywrightTimeout

            try:
                owner.wait_for_function(condition, timeout=60_000)
            except PlaywrightTimeout:
                seen = owner.evaluate(
                    "() => [document.querySelector('#upload').innerText, document.querySelector("
                    "'#build-report').innerText, document.querySelector('#chooser input').value, "
                    "[...document.querySelectorAll('.toast-body')].map(t => t.innerText)]"
                )
                pytest.fail(f"waited for {condition}; upload, report, chooser, toasts: {seen}")

        owner.set_input_files("#upload input[type=file]", str(archive))
        wait("document.querySelector('#upload').innerText.replace(/\\s/g, '').includes('shop.zip')")
        owner.locator("#new-name input, #new-name textarea").first.fill("shop")
        owner.click("#build")
        wait("document.querySelector('#build-report').innerText.includes('Built shop')")
        wait("document.querySelector('#chooser input').value === 'shop (your upload)'")
        # The examples are Pokémon: hidden while the visitor's own catalog is the one searched.
        wait("!document.querySelector('#examples') || !document.querySelector('#examples').checkVisibility()")

        def listed(page: object) -> list[str]:
            page.click("text=Refresh list")  # type: ignore[attr-defined]
            page.wait_for_timeout(1000)  # type: ignore[attr-defined]
            page.click("#chooser input")  # type: ignore[attr-defined]
            page.wait_for_selector("#chooser [role=option]", timeout=10_000)  # type: ignore[attr-defined]
            options = page.evaluate(
                "[...document.querySelectorAll('#chooser [role=option]')]"  # type: ignore[attr-defined]
                ".map(o => o.getAttribute('aria-label'))"
            )
            page.keyboard.press("Escape")  # type: ignore[attr-defined]
            return options

        assert listed(owner) == ["pokemon", "shop", "shop (your upload)"]
        assert listed(stranger) == ["pokemon", "shop"]
        assert "catalog **shop**: 2 pictures" not in stranger.inner_text("body")
        # The owner adapts it (the chosen index): a third index of theirs, chosen; still none for the stranger.
        owner.click("#adapt")
        wait("document.querySelector('#build-report').innerText.includes('Adapted shop')")
        wait("document.querySelector('#chooser input').value === 'shop-adapted (your upload)'")
        assert listed(stranger) == ["pokemon", "shop"]
    finally:
        for context in contexts:
            context.close()


@pytest.mark.skipif(sys.platform != "linux", reason="thread priorities are Linux's")
def test_a_web_builds_reading_threads_yield_to_the_searches():
    base = os.getpriority(os.PRIO_PROCESS, 0)

    def priority(_: int) -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    # One reading worker (a 2-core server's default) still reads in a thread of its own, never the caller's.
    assert set(map_ordered(priority, range(8), workers=1, nice=WEB_BUILD_NICE)) == {min(19, base + WEB_BUILD_NICE)}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base
    assert set(map_ordered(priority, range(8), workers=1)) == {base}

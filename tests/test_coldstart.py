"""A Space that starts fast and stays up: the index in persistent storage, the page served during a first build."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from appserver import READY_LINE, start_app
from conftest import CHROMIUM

from recommender import service as service_module
from recommender import settings
from recommender.errors import IndexNotReady
from recommender.service import Service

ROOT = Path(__file__).resolve().parent.parent
PIKACHU = ROOT / "assets" / "pokemon" / "sprites" / "025.png"


# ----------------------------------------------------------------------------- persistent storage


def test_the_index_goes_to_persistent_storage_when_there_is_some(monkeypatch, tmp_path):
    data = tmp_path / "data-volume"
    monkeypatch.setenv(settings.ENV_PERSISTENT_DIR, str(data))
    monkeypatch.delenv(settings.ENV_INDEX_DIR)
    assert settings.persistent_dir() is None  # not there: the usual default
    assert settings.index_dir() == settings.ROOT / "index"
    data.mkdir()
    assert settings.persistent_dir() == data
    assert settings.index_dir() == data / "index"
    monkeypatch.setenv(settings.ENV_INDEX_DIR, str(tmp_path / "chosen"))  # env beats the default rule
    assert settings.index_dir() == tmp_path / "chosen"
    assert settings.index_dir(tmp_path / "flag") == tmp_path / "flag"  # the flag beats both


def test_unwritable_persistent_storage_is_not_used(monkeypatch, tmp_path):
    data = tmp_path / "data-volume"
    data.mkdir()
    monkeypatch.setenv(settings.ENV_PERSISTENT_DIR, str(data))
    monkeypatch.delenv(settings.ENV_INDEX_DIR)
    monkeypatch.setattr(settings.os, "access", lambda path, mode: False)
    assert settings.persistent_dir() is None
    assert settings.index_dir() == settings.ROOT / "index"


def test_a_file_named_like_the_storage_is_not_used(monkeypatch, tmp_path):
    (tmp_path / "data").write_text("not a folder")
    monkeypatch.setenv(settings.ENV_PERSISTENT_DIR, str(tmp_path / "data"))
    assert settings.persistent_dir() is None


# ----------------------------------------------------------------------------- a background build


def test_a_background_build_refuses_searches_with_its_progress_then_answers(monkeypatch, tiny_model, labeled_catalog):
    gate = threading.Event()
    counted = service_module.Warmup.picture

    def held(self: service_module.Warmup) -> None:
        if self.done >= 3:
            assert gate.wait(60)
        counted(self)

    monkeypatch.setattr(service_module.Warmup, "picture", held)
    started = time.monotonic()
    service = Service(
        model=str(tiny_model),
        default_catalog=labeled_catalog,
        default_name="shapes",
        domain="shape",
        progress=False,
        background=True,
    )
    assert time.monotonic() - started < 30  # returned before the build ends (it is held)
    deadline = time.monotonic() + 60
    while service.warmup.done < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not service.ready and service.building
    assert service.warmup.total == 12
    with pytest.raises(IndexNotReady, match=r"still being indexed \(25%\); try again in a few seconds"):
        service.identify(labeled_catalog / "red-circle" / "0.png")
    assert "Building the shape index once" in service.status()
    assert "3 of 12 pictures (25%)" in service.status()
    assert "shapes" in service.indexes()  # listed already, for the chooser
    gate.set()
    assert service.wait_ready(60)
    assert service.identify(labeled_catalog / "red-circle" / "0.png").label == "red-circle"
    assert "catalog **shapes**: 12 pictures" in service.status()
    assert service.first_build is not None and service.warmup.seconds is not None


def test_a_failed_background_build_says_why_and_the_service_stays_up(tiny_model, tmp_path):
    broken = tmp_path / "broken"  # a picture by its name, unreadable: the build (not the reading) fails
    broken.mkdir()
    (broken / "a.png").write_text("not a picture")
    service = Service(
        model=str(tiny_model), default_catalog=broken, default_name="broken", progress=False, background=True
    )
    assert service.wait_ready(60) is False and not service.building
    assert "could not be built" in service.status()
    with pytest.raises(IndexNotReady, match="could not be built: .*none of its 1 pictures could be read"):
        service.identify(ROOT / "assets" / "pokemon" / "sprites" / "025.png")


def test_remaining_time_is_estimated_from_the_rate_so_far():
    warmup = service_module.Warmup(domain="Pokémon", total=1000)
    assert warmup.remaining() is None and "estimating" in warmup.line()
    warmup.started -= 10  # 100 pictures in 10 s: 900 more take about 90 s
    warmup.done = 100
    assert warmup.remaining() == pytest.approx(90, rel=0.05)
    assert warmup.line().startswith("Building the Pokémon index once (about 9")


def test_an_index_already_built_is_loaded_before_the_service_returns(tiny_model, labeled_catalog):
    options = {
        "model": str(tiny_model),
        "default_catalog": labeled_catalog,
        "default_name": "shapes",
        "progress": False,
    }
    assert Service(**options).first_build is not None  # built, in the constructor
    again = Service(**options, background=True)
    assert again.ready and again.first_build is None  # a later start only loads it: no build, no waiting page


# ----------------------------------------------------------------------------- the app, for real

needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)"
)


@pytest.mark.slow
@needs_chromium
def test_the_page_is_served_during_the_first_build_and_searches_work_once_it_ends(
    tmp_path_factory, tiny_model, browser
):
    folder = tmp_path_factory.mktemp("app-coldstart")
    gate = folder / "gate"
    gate.write_text("held")
    process, url = start_app(
        folder,
        {
            "RECOMMENDER_MODEL": str(tiny_model),
            "RECOMMENDER_WEB_PROVIDER": "fake_web:FakeProvider",
            "RECOMMENDER_TEST_GATE": str(gate),
        },
        wait_ready=False,
        script="tests/gated_app.py",
    )
    log = next(folder.glob("app-*.log"))
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(url)
        page.wait_for_selector("#query input[type=file]", state="attached", timeout=60_000)
        page.wait_for_function(
            "document.querySelector('#status').innerText.includes('Building the Pokémon index once (about')",
            timeout=60_000,
        )
        assert READY_LINE not in log.read_bytes()
        assert b"building the Pok\xc3\xa9mon index once" in log.read_bytes()  # the terminal says so too
        page.set_input_files("#query input[type=file]", str(PIKACHU))
        page.wait_for_function(  # said where the answer goes, as any picture that cannot be answered yet
            "document.querySelector('#answer').innerText.includes('The catalog is still being indexed (')",
            timeout=30_000,
        )
        assert "try again in a few seconds" in page.inner_text("#answer")
        gate.unlink()  # the build goes on; the open page follows it and says when it is ready
        page.wait_for_function(
            "document.querySelector('#status').innerText.includes('catalog pokemon')", timeout=300_000
        )
        assert READY_LINE in log.read_bytes()
        page.click("#search")
        page.wait_for_function(
            "/^This is “Pikachu”/.test(document.querySelector('#answer').innerText.trim())", timeout=60_000
        )
        page.close()
    finally:
        process.terminate()
        process.wait(timeout=30)

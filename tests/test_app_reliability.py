"""The real server under hostile use: bad pictures, URLs instead of files, oversize uploads, paths, many users."""

from __future__ import annotations

import functools
import importlib.util
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hostile import broken_pictures, odd_pictures, write_all

ROOT = Path(__file__).resolve().parent.parent
PIKACHU = ROOT / "assets" / "pokemon" / "sprites" / "025.png"
#: A bad upload is answered within this many seconds, queue included (it takes milliseconds alone).
FEW_SECONDS = 10.0

pytestmark = pytest.mark.slow


@functools.cache
def load_driver():
    """benchmarks/load.py, whose users and figures the short load test below shares."""
    spec = importlib.util.spec_from_file_location("bench_load", ROOT / "benchmarks" / "load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def identify(client, path: Path | str) -> str:
    """The identify API, sent once more if gradio_client cancels the call by itself (see benchmarks/load.py)."""
    from gradio_client import handle_file

    text, _ = load_driver()._predict(client, handle_file(str(path)))
    return text


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def call_raw(app_url: str, payload: object) -> str:
    """One call of the identify API over plain HTTP, as any script could make it; returns the event stream."""
    import httpx

    started = httpx.post(f"{app_url}/gradio_api/call/identify", json={"data": [payload]}, timeout=30)
    started.raise_for_status()
    return httpx.get(f"{app_url}/gradio_api/call/identify/{started.json()['event_id']}", timeout=60).text


def test_each_broken_picture_gets_its_reason_and_the_next_picture_is_answered(client, app_server, tmp_path):
    from gradio_client.exceptions import AppError

    files = write_all(tmp_path, {name: data for name, (data, _) in broken_pictures().items()})
    for name, (_, reason) in broken_pictures().items():
        started = time.perf_counter()
        with pytest.raises(AppError) as caught:
            identify(client, files[name])
        message = str(caught.value)
        assert re.match(rf"{re.escape(name)}: .*({reason})", message) and "\n" not in message, message
        assert "Traceback" not in message and time.perf_counter() - started < FEW_SECONDS
        assert identify(client, PIKACHU).startswith("This is “Pikachu”")  # the next request still works
    assert app_server.process.poll() is None


def test_odd_but_valid_pictures_are_answered(client, tmp_path):
    files = write_all(tmp_path, odd_pictures())
    for name, path in files.items():
        answer = identify(client, path)
        assert answer.startswith(("This is ", "You gave ", "The closest ")), (name, answer)


def test_urls_are_never_fetched_by_the_server(client, app_url):
    # A listener on loopback that would see any request, and a public-looking name that would need DNS:
    # both are refused by the app before Gradio would download them.
    from gradio_client.exceptions import AppError

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.2)
    hits: list[bytes] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                hits.append(conn.recv(100))
                conn.close()
            except OSError:
                pass

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    port = listener.getsockname()[1]
    try:
        for url in (f"http://127.0.0.1:{port}/pikachu.png", "https://pics.example.org/pikachu.png"):
            with pytest.raises(AppError, match="never fetched from a URL"):
                client.predict({"path": url, "meta": {"_type": "gradio.FileData"}}, api_name="/identify_text")
        for url in (f"https://127.0.0.1:{port}/x.png", "http://[::1]/x.png"):  # the raw HTTP API too
            answer = call_raw(app_url, {"path": url, "meta": {"_type": "gradio.FileData"}})
            assert "event: error" in answer and "never fetched from a URL" in answer, answer
        # Gradio itself takes an upper-case scheme for a local path, and refuses it as never uploaded.
        answer = call_raw(app_url, {"path": f"HTTP://localhost:{port}/x.png", "meta": {"_type": "gradio.FileData"}})
        assert "event: error" in answer and "not uploaded by a user" in answer, answer
    finally:
        stop.set()
        watcher.join()
        listener.close()
    assert hits == []


def test_the_page_offers_no_url_input(app_url):
    import json

    with urllib.request.urlopen(f"{app_url}/config", timeout=30) as response:
        config = json.load(response)
    components = {c["id"]: c for c in config["components"]}
    inputs = {i for dep in config["dependencies"] for i in dep["inputs"]}
    kinds = {components[i]["type"] for i in inputs}
    assert kinds <= {
        "image",
        "imageeditor",
        "slider",
        "state",
        "dropdown",
        "radio",
        "file",
        "textbox",
        "number",
        "gallery",
        "dataset",
    }
    texts = [components[i]["props"].get("label") for i in inputs if components[i]["type"] == "textbox"]
    # The new index's name becomes a folder name through service._safe_name; the API's index name is
    # only looked up (a shipped index, or one of this session's uploads), never opened as a path.
    assert sorted(texts) == ["Index name (API)", "Name of the new index"]
    for i in inputs:
        props = components[i]["props"]
        assert "url" not in (props.get("sources") or []) and "url" not in str(props.get("label", "")).lower()


def test_uploads_over_the_size_limit_are_refused(app_url, tmp_path):
    import httpx
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    big = tmp_path / "huge.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(11 << 20))
    response = httpx.post(f"{app_url}/gradio_api/upload", files={"files": (big.name, big.read_bytes())}, timeout=60)
    assert response.status_code == 413 and "maximum allowed size of 10485760 bytes" in response.text
    with pytest.raises((AppError, ValueError, httpx.HTTPError), match="(?i)exceed|too large|413"):
        identify(Client(app_url, verbose=False), big)
    small = httpx.post(f"{app_url}/gradio_api/upload", files={"files": ("ok.png", PIKACHU.read_bytes())})
    assert small.status_code == 200


def test_files_are_served_only_from_the_apps_own_folders(app_url, app_folder):
    examples = sorted((ROOT / "assets" / "examples").glob("*.png"))
    assert get(f"{app_url}/gradio_api/file={examples[0]}") == 200  # allowed_paths: the examples, nothing else
    refused = [
        "/etc/passwd",
        str(PIKACHU),
        str(ROOT / "app.py"),
        str(ROOT / "assets" / "pokemon" / "catalog.csv"),
        str(app_folder / "index" / "pokemon" / "manifest.json"),
        f"{examples[0].parent}/../pokemon/catalog.csv",
        "app.py",
        "../../../../etc/passwd",
        "%2Fetc%2Fpasswd",
    ]
    for path in refused:
        assert get(f"{app_url}/gradio_api/file={path}") in (403, 404), path


def test_sixteen_users_with_bad_files_in_the_mix(app_server, tmp_path, record_property):
    """The short load test: zero failures, p95 reported, the server's memory steady (`benchmarks/load.py` is longer)."""
    load = load_driver()
    report = load.drive(
        app_server.url,
        users=16,
        seconds=15,
        pid=app_server.process.pid,
        files=load.uploads(tmp_path, oversize=True),
        warmup=4,
    )
    print("\n" + report.summary())
    record_property("p95_seconds", round(report.percentile(95), 3))
    record_property("requests", len(report.outcomes))
    assert report.of("failed") == [], report.summary()
    assert len(report.of("answered")) >= 16 and report.of("refused")  # everyone got through; bad files too
    assert report.percentile(95) < 30
    assert report.rss_growth_mb() < 48, report.summary()  # measured: 5-20 MB while warm, flat in longer runs
    assert app_server.process.poll() is None

"""The real server against a stranger's requests: paths it names, URLs, floods of events and uploads (issue 16)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from appserver import start_app
from PIL import Image
from stranger import META, PIKACHU, Greedy, api_fn, gradient_png, normal_users, outcome, p95, rss_mb, upload

from recommender.guard import NEVER_FETCHED, NOT_UPLOADED

ROOT = Path(__file__).resolve().parent.parent
#: Words of the library's reasons that would tell a stranger what is (or is not) at a path.
TELLING = ("no such file", "is a folder", "not a recognised image", "This is ", "closest", "another universe")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def config(app_url: str) -> dict[str, Any]:
    import httpx

    return httpx.get(f"{app_url}/config", timeout=30).json()


def sample(kind: str) -> Any:
    """An ordinary value for an input of this component type."""
    return {"slider": 8, "radio": "all", "textbox": "my-catalog", "dropdown": None}.get(kind)


def carrying(kind: str, file: dict[str, Any]) -> Any:
    """`file` (a FileData-shaped dict) where an input of this type takes one."""
    if kind == "imageeditor":
        return {"background": file, "layers": [file], "composite": file, "id": None}
    if kind == "state":  # State inputs are kept on the server; what a client sends there must be ignored
        return {"query": file["path"], "index": None, "path": file["path"], "id": "x", "matches": [file]}
    return file


def hostile_paths(tmp_path: Path) -> dict[str, str]:
    """Paths a stranger may name: pictures and files that exist outside Gradio's cache, and ones that do not."""
    from gradio.utils import get_upload_folder

    secret = tmp_path / "secret.png"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(secret)
    cache = Path(get_upload_folder())
    return {
        "catalog picture": str(PIKACHU),
        "a picture in /tmp": str(secret),
        "/etc/passwd": "/etc/passwd",
        "missing": str(tmp_path / "missing.png"),
        "a folder": str(tmp_path),
        "the cache folder": str(cache),
        "missing in the cache": str(cache / ("0" * 64) / "x.png"),
        "out of the cache by ..": f"{cache}/../../etc/passwd",
    }


def settled(output: Any, path: str = "") -> str:
    """An event's output as text, without its timings, with `path` (where it is echoed) spelled <path>."""
    if isinstance(output, dict):
        output = {k: v for k, v in output.items() if k not in ("duration", "average_duration")}
    text = json.dumps(output, sort_keys=True)
    for spelling in (path, os.path.abspath(path)) if path else ():  # Gradio echoes the absolute path
        text = text.replace(json.dumps(spelling)[1:-1], "<path>")
    return re.sub(r"input_value=.*?, input_type", "input_value=<value>, input_type", text)  # pydantic's echo


def test_paths_a_client_names_are_refused_alike_through_every_event(app_url, app_server, config, tmp_path):
    """Every queued event, every input that can carry a file: no path outside Gradio's uploads is read.

    Inputs that take a file get each hostile path, with and without `meta`: one answer for all of
    them, which tells nothing. (With `meta`, Gradio refuses what is spelled outside its cache with
    its own words first, and the app the rest: one answer for each spelling, whatever exists.)
    State inputs are kept on the server: what a client sends there changes nothing (the event
    answers as it does to an empty value).
    """
    components = {c["id"]: c for c in config["components"]}
    paths = hostile_paths(tmp_path)
    cases = []
    for dep in config["dependencies"]:
        kinds = [components[i]["type"] for i in dep["inputs"]]
        if not dep.get("queue", True):
            continue  # load_example: an example's number, no file (and outside the queue)
        for position, kind in enumerate(kinds):
            if kind in ("image", "imageeditor", "file"):
                cases += [(dep["id"], kinds, position, meta) for meta in (False, True)]
            elif kind == "state":
                cases.append((dep["id"], kinds, position, False))
    assert len({c[0] for c in cases}) >= 25  # every event of the page, the private ones included

    def run(case: tuple[int, list[str], int, bool]) -> tuple[tuple[int, int, bool], dict[str, str]]:
        fn_index, kinds, position, meta = case
        state = kinds[position] == "state"
        tried = {"catalog picture": paths["catalog picture"], "missing": paths["missing"]} if state else paths
        seen = {}
        for name, path in {**tried, **({"nothing": None} if state else {})}.items():
            file = {"path": path, "meta": META} if meta else {"path": path}
            value = None if path is None else carrying(kinds[position], file)
            data = [value if i == position else sample(kind) for i, kind in enumerate(kinds)]
            started = time.perf_counter()
            status, output = outcome(app_url, fn_index, data)
            assert status == 200 and time.perf_counter() - started < 20, (case, name, status, output)
            seen[name] = settled(output, path or "")
            assert state or not any(word in seen[name] for word in TELLING), (case, name, seen[name])
        return (fn_index, position, meta), seen

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = dict(pool.map(run, cases))
    in_cache = {"the cache folder", "missing in the cache"}
    for (fn_index, position, meta), seen in results.items():
        # One answer whatever the path: nothing tells what exists.
        groups = [set(seen.values())]
        if meta:
            groups = [{v for k, v in seen.items() if k in in_cache}, {v for k, v in seen.items() if k not in in_cache}]
        answers = [{v[:300]: sorted(k for k in seen if seen[k] == v) for v in group} for group in groups]
        assert all(len(group) == 1 for group in groups), (fn_index, position, meta, answers)
        kind = [components[i]["type"] for i in config["dependencies"][fn_index]["inputs"]][position]
        if kind == "image":  # the app's own refusal, for everything Gradio lets through
            assert all(NOT_UPLOADED in v for k, v in seen.items() if not meta or k in in_cache), seen
    assert app_server.process.poll() is None


def test_no_event_undoes_the_bounded_preprocessing_of_a_session(app_url, config):
    """After any event, the picture inputs of that session still refuse what Gradio did not store.

    An event that returns an update for a component (gr.update, gr.skip) makes Gradio rebuild it
    for the session from its constructor, without the app's own preprocessing: the editor then
    decoded with Pillow, unbounded, and answered a missing file unlike any other.
    """
    from gradio.utils import get_upload_folder

    components = {c["id"]: c for c in config["components"]}
    missing = str(Path(get_upload_folder()) / ("0" * 64) / "x.png")
    kinds_of = {d["id"]: [components[i]["type"] for i in d["inputs"]] for d in config["dependencies"]}
    probes = [
        (d["id"], k.index(kind))
        for d, k in ((d, kinds_of[d["id"]]) for d in config["dependencies"])
        for kind in ("image", "imageeditor")
        if kind in k and d.get("queue", True)
    ]
    assert {kinds_of[fn][position] for fn, position in probes} == {"image", "imageeditor"}
    for dep in config["dependencies"]:
        if not dep.get("queue", True):
            continue
        session = uuid.uuid4().hex
        outcome(app_url, dep["id"], [sample(kind) for kind in kinds_of[dep["id"]]], session=session)
        for fn, position in probes:
            kinds = kinds_of[fn]
            file = carrying(kinds[position], {"path": missing, "meta": META})
            data = [file if i == position else sample(kind) for i, kind in enumerate(kinds)]
            status, output = outcome(app_url, fn, data, session=session)
            assert status == 200 and NOT_UPLOADED in json.dumps(output), (dep.get("api_name"), fn, output)


def test_endless_and_huge_files_are_never_read(app_url, app_server, config, tmp_path):
    """/dev/zero and a sparse 8 GB file, named as pictures: refused at once, the server's memory unchanged."""
    sparse = tmp_path / "huge.png"
    with open(sparse, "wb") as f:
        f.truncate(8 << 30)
    deps = {d["api_name"]: d["id"] for d in config["dependencies"]}
    rss = rss_mb(app_server.process.pid)
    for path in ("/dev/zero", str(sparse)):
        for file in ({"path": path}, {"path": path, "meta": META}):
            for fn_index, data in ((deps["identify"], [file]), (deps["answer"], [file, 8, None, None])):
                started = time.perf_counter()
                status, output = outcome(app_url, fn_index, data, timeout=30)
                assert status == 200 and "error" in output and time.perf_counter() - started < 5, output
    assert rss_mb(app_server.process.pid) - rss < 30


def test_the_picture_chain_leaks_no_pixels(app_url, config, tmp_path):
    """answer, then to_editor, then the editor's URL: once a way to copy any picture off the server."""
    secret = tmp_path / "secret.png"
    Image.new("RGB", (80, 80), (1, 2, 3)).save(secret)
    deps = {d["api_name"]: d["id"] for d in config["dependencies"]}
    session = uuid.uuid4().hex
    for path in (str(secret), str(PIKACHU)):
        status, output = outcome(app_url, deps["answer"], [{"path": path}, 8, None, None], session=session)
        assert output["error"] == NOT_UPLOADED
        status, output = outcome(app_url, deps["to_editor"], [{"query": path}], session=session)
        assert status == 200 and "/gradio_api/file=" not in json.dumps(output)  # nothing handed to the editor


def test_a_real_upload_is_still_searched_with_or_without_meta(app_url):
    stored = upload(app_url, PIKACHU)
    for file in ({"path": stored}, {"path": stored, "meta": META}):
        status, output = outcome(app_url, api_fn(app_url), [file])
        assert status == 200 and output["data"][0]["message"].startswith("This is “Pikachu”"), output


def test_gradios_file_route_never_fetches_a_url(app_url):
    import httpx

    urls = [
        "http://93.184.216.34/pikachu.png",  # a public address: Gradio would connect to it
        "https://pics.example.org/pikachu.png",
        "HTTP://example.org/x.png",
        "ftp://example.org/x.png",
    ]
    routes = [f"{app_url}/gradio_api/file={u}" for u in urls] + [
        f"{app_url}/gradio_api/file/https://pics.example.org/x.png",  # the deprecated spelling of the route
        f"{app_url}/gradio_api/file=https%3A%2F%2Fpics.example.org%2Fx.png",
        f"{app_url}/gradio_api/proxy=https://someone.hf.space/gradio_api/file=x.png",
    ]
    for route in routes:
        for method in ("GET", "HEAD"):
            started = time.perf_counter()
            response = httpx.request(method, route, timeout=30)
            assert response.status_code == 403 and time.perf_counter() - started < 10, (route, response.text)
            if method == "GET":
                assert response.json()["detail"] == NEVER_FETCHED
    examples = sorted((ROOT / "assets" / "examples").glob("*.png"))
    assert httpx.get(f"{app_url}/gradio_api/file={examples[0]}", timeout=30).status_code == 200  # files still are


def test_an_upload_request_with_many_files_is_refused_and_leaves_nothing(app_url):
    import httpx
    from gradio.utils import get_upload_folder

    tag = uuid.uuid4().hex
    files = [("files", (f"{tag}-{i}.png", PIKACHU.read_bytes())) for i in range(999)]
    started = time.perf_counter()
    response = httpx.post(f"{app_url}/gradio_api/upload", files=files, timeout=60)
    assert response.status_code == 413 and "Too many files in one upload: at most 4" in response.text
    assert time.perf_counter() - started < 10
    assert not list(Path(get_upload_folder()).glob(f"*/{tag}-*"))  # the files read before the refusal: deleted
    few = httpx.post(f"{app_url}/gradio_api/upload", files=files[:4], timeout=60)
    assert few.status_code == 200 and len(few.json()) == 4


def test_request_bodies_are_bounded(app_url):
    import httpx

    # An inline data: URL of 6 MB: refused from its Content-Length, before it is read.
    big = json.dumps(
        {
            "fn_index": api_fn(app_url),
            "session_hash": uuid.uuid4().hex,
            "data": [{"url": "data:image/png;base64," + "A" * (6 << 20)}],
        }
    )
    response = httpx.post(
        f"{app_url}/gradio_api/queue/join", content=big, headers={"content-type": "application/json"}, timeout=60
    )
    assert response.status_code == 413 and "Request too large" in response.json()["detail"]

    def chunks() -> Iterator[bytes]:  # the same without a Content-Length: refused as it streams past 4 MB
        for i in range(0, len(big), 1 << 16):
            yield big[i : i + (1 << 16)].encode()

    response = httpx.post(
        f"{app_url}/gradio_api/queue/join", content=chunks(), headers={"content-type": "application/json"}, timeout=60
    )
    assert response.status_code == 413 and "Request too large" in response.json()["detail"]
    # Events run only through the queue: Gradio's direct route is closed.
    assert httpx.post(f"{app_url}/gradio_api/run/identify", json={"data": [None]}, timeout=30).status_code == 404


def test_the_editor_keeps_a_few_layers_only(app_url, app_server, config):
    import httpx

    editor = next(c["id"] for c in config["components"] if c["type"] == "imageeditor")
    rss = rss_mb(app_server.process.pid)
    fields = {
        "type": "layer",
        "index": str(20_000_000),
        "id": uuid.uuid4().hex,
        "fn_name": "accept_blobs",
        "session_hash": uuid.uuid4().hex,
        "component_id": str(editor),
    }
    response = httpx.post(
        f"{app_url}/gradio_api/component_server",
        data=fields,
        files={"files": ("blob", PIKACHU.read_bytes())},
        timeout=30,
    )
    assert response.status_code == 400 and "at most 4 layers" in response.text
    assert rss_mb(app_server.process.pid) - rss < 50  # Gradio grew a list to the index it was given: 160 MB


# --- one client against the others -------------------------------------------------------------------------


def test_a_greedy_client_does_not_starve_the_others(public_url, record_property):
    """Normal users' p95 beside a client that keeps 80 events coming, with one session or many.

    Each normal user comes from an address of his own, as strangers do (uvicorn takes it from
    X-Forwarded-For on loopback); the greedy client asks what they ask (the cost of one event is
    bounded elsewhere; an event already running is not interrupted, so each worker can keep a
    visitor waiting one event). Windows with and without him alternate, so that the machine's
    other load weighs on both alike.
    """
    fn_index = api_fn(public_url)
    stored = upload(public_url, PIKACHU)
    normal_users(public_url, users=3, seconds=2)  # warm
    figures: dict[str, list[float]] = {"alone": []}
    for sessions, address in (("one", "127.0.0.1"), ("many", "127.0.0.2")):
        name = f"greedy, {sessions} session(s) from {address}"
        figures[name] = []
        codes: dict[int, int] = {}
        for _ in range(3):
            figures["alone"] += normal_users(public_url, users=3, seconds=3, apart=True)
            with Greedy(public_url, fn_index, stored, sessions=sessions, address=address) as greedy:
                time.sleep(0.5)  # its burst lands first
                figures[name] += normal_users(public_url, users=3, seconds=3, apart=True)
            for status, count in greedy.codes.items():
                codes[status] = codes.get(status, 0) + count
        print(f"greedy client ({sessions} session(s), {address}): joins by HTTP status {codes}")
        assert codes.get(429), codes  # it was refused, not queued without end
        assert not codes.get(503), codes  # and never filled the queue for everyone
    for name, times in figures.items():
        print(
            f"normal users, {name}: {len(times)} answers, p50 {statistics.median(times):.3f} s, p95 {p95(times):.3f} s"
        )
        record_property(f"p95 {name}", round(p95(times), 3))
    alone = figures.pop("alone")
    # Starved, they would wait behind his backlog: 80 events of ~median(alone) each, tens of seconds.
    # Served beside him, they wait at most an event or two he already runs: a second on top of the
    # loaded machine's threefold jitter (CI measured 1.59 s against 0.51 s alone on two busy cores).
    for name, times in figures.items():
        assert p95(times) <= 3 * p95(alone) + 1.0, (name, p95(times), p95(alone))
    # The server answers its next visitor at once, with nothing of the greedy client's left waiting.
    time.sleep(3)
    assert normal_users(public_url, users=1, seconds=0.5)


# --- a server with small limits, for what would take long to exhaust at the public defaults -------------------


def own_server(folder: Path, tiny_model: Path, app_folder: Path, **limits: str) -> Iterator[str]:
    """An app of its own with the given allowances (environment settings); it loads the first server's index."""
    process, url = start_app(
        folder,
        {
            "RECOMMENDER_MODEL": str(tiny_model),
            "RECOMMENDER_WEB_PROVIDER": "fake_web:FakeProvider",
            "RECOMMENDER_INDEX_DIR": str(app_folder / "index"),
            **limits,
        },
    )
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def public_url(tmp_path_factory, tiny_model, app_folder) -> Iterator[str]:
    """An app with the public defaults for every allowance (the shared one lets the suite's loopback clients be)."""
    yield from own_server(tmp_path_factory.mktemp("app-public"), tiny_model, app_folder)


@pytest.fixture(scope="module")
def strict_url(tmp_path_factory, tiny_model, app_folder) -> Iterator[str]:
    """A second app with small upload and queue allowances."""
    yield from own_server(
        tmp_path_factory.mktemp("app-strict"),
        tiny_model,
        app_folder,
        RECOMMENDER_UPLOADS_PER_HOUR="5",
        RECOMMENDER_UPLOAD_MB_PER_HOUR="1",
        RECOMMENDER_ADDRESS_PENDING="3",
        RECOMMENDER_UPLOAD_FILES="2",
    )


def test_each_address_has_an_upload_allowance_per_hour(strict_url, tmp_path):
    import httpx

    # uvicorn believes X-Forwarded-For from loopback (a local proxy, or --share's tunnel): two visitors.
    small = ("s.png", PIKACHU.read_bytes())
    first, second = {"x-forwarded-for": "198.51.100.7"}, {"x-forwarded-for": "203.0.113.9"}
    answers = [
        httpx.post(f"{strict_url}/gradio_api/upload", files={"files": small}, headers=first, timeout=30)
        for _ in range(6)
    ]
    assert [a.status_code for a in answers] == [200] * 5 + [429]
    assert "upload allowance (5 files and 1 MB per hour)" in answers[-1].text
    assert 0 < int(answers[-1].headers["retry-after"]) <= 720
    assert (
        httpx.post(f"{strict_url}/gradio_api/upload", files={"files": small}, headers=second, timeout=30).status_code
        == 200
    )
    # Bytes: 1 MB an hour, so a 700 kB file passes once and not twice (a third address, fresh allowance).
    noise = tmp_path / "noise.bin"
    noise.write_bytes(bytes(range(256)) * (700 * 4))
    third = {"x-forwarded-for": "192.0.2.44"}
    sizes = [
        httpx.post(
            f"{strict_url}/gradio_api/upload",
            files={"files": (noise.name, noise.read_bytes())},
            headers=third,
            timeout=30,
        ).status_code
        for _ in range(2)
    ]
    assert sizes == [200, 429]


def test_each_address_may_have_only_a_few_events_waiting(strict_url, tmp_path):
    import httpx

    stored = upload(
        strict_url,
        gradient_png(tmp_path / "big.png"),
        client=httpx.Client(headers={"x-forwarded-for": "198.51.100.99"}),
    )
    fn_index = api_fn(strict_url)
    body = {"fn_index": fn_index, "data": [{"path": stored, "meta": META}]}
    crowd = {"x-forwarded-for": "198.51.100.20"}
    ready = threading.Barrier(12)

    def join(_: int) -> httpx.Response:
        ready.wait()
        return httpx.post(
            f"{strict_url}/gradio_api/queue/join",
            json={**body, "session_hash": uuid.uuid4().hex},
            headers=crowd,
            timeout=30,
        )

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(join, range(12)))  # twelve sessions at once, from one address
    codes = [a.status_code for a in answers]
    assert codes.count(200) >= 3 and codes.count(429) >= 1 and set(codes) == {200, 429}, codes
    refusal = next(a for a in answers if a.status_code == 429)
    assert re.search(r"Your network address already has 3 requests waiting or running", refusal.text)
    status, output = outcome(strict_url, fn_index, [{"path": stored, "meta": META}])  # another address: served
    assert status == 200 and "data" in output, output

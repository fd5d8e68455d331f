"""The edge guards on their own: stored-file checks, fair order, allowances, multipart counting, the ASGI middleware."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
from pathlib import Path

import pytest

from recommender.errors import RecommenderError
from recommender.guard import (
    MB,
    NEVER_FETCHED,
    Allowance,
    Client,
    EdgeGuard,
    FileCounter,
    Limits,
    Recent,
    Share,
    fetches_url,
    forwarded_allow_ips,
    multipart_boundary,
    stored_file,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_only_regular_files_inside_the_folder_are_stored_files(tmp_path):
    folder = tmp_path / "cache"
    (folder / "abc").mkdir(parents=True)
    upload = folder / "abc" / "cat.png"
    upload.write_bytes(b"x")
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"y")
    (folder / "abc" / "link.png").symlink_to(outside)
    assert stored_file(str(upload), folder) == upload.resolve()
    assert stored_file(f"{folder}/abc/../abc/cat.png", folder) == upload.resolve()
    for refused in (
        outside,
        folder,
        folder / "abc",
        folder / "abc" / "missing.png",
        folder / "abc" / "link.png",
        f"{folder}/../secret.png",
        "/etc/passwd",
        "/dev/zero",
        "relative.png",
    ):
        assert stored_file(refused, folder) is None, refused


def test_a_path_outside_the_folder_is_refused_without_touching_the_disk(tmp_path, monkeypatch):
    def no_disk(*args, **kwargs):
        raise AssertionError("the file system was asked")

    folder = tmp_path / "cache"
    folder.mkdir()
    real = os.path.realpath(folder)  # the folder's own name is resolved once, before the disk is off limits
    monkeypatch.setattr(os.path, "realpath", lambda p, **kw: real if str(p) == str(folder) else no_disk())
    monkeypatch.setattr(Path, "is_file", no_disk)
    assert stored_file("/etc/shadow", folder) is None
    assert stored_file("/nowhere/at/all.png", folder) is None


def test_limits_come_from_the_environment_with_a_clear_error_for_bad_values():
    limits = Limits.from_env(
        {"RECOMMENDER_SESSION_PENDING": "9", "RECOMMENDER_UPLOAD_MB": "3", "RECOMMENDER_REQUEST_MB": ""}, workers=8
    )
    assert limits.session_pending == 9 and limits.upload_bytes == 3 * MB and limits.request_bytes == 4 * MB
    assert limits.address_running == 8 and Limits.from_env({}, workers=1).address_running == 3
    assert limits.upload_request_bytes == limits.upload_files * 3 * MB + 64 * 1024
    for bad in ("0", "-2", "lots", "1.5"):
        with pytest.raises(RecommenderError, match="RECOMMENDER_ADDRESS_PENDING must be a whole number"):
            Limits.from_env({"RECOMMENDER_ADDRESS_PENDING": bad})


def test_proxies_are_trusted_on_a_space_only_unless_the_operator_says():
    assert forwarded_allow_ips({}) is None
    assert "10.0.0.0/8" in forwarded_allow_ips({"SPACE_ID": "user/look-alike"})
    assert forwarded_allow_ips({"SPACE_ID": "user/look-alike", "FORWARDED_ALLOW_IPS": "10.1.2.3"}) is None


def test_admission_caps_sessions_and_addresses():
    share = Share(Limits(session_pending=2, address_pending=3))
    me, neighbour = Client("s1", "10.0.0.1"), Client("s2", "10.0.0.1")
    assert share.admit(me, [me]) is None
    assert "You already have 2 requests" in share.admit(me, [me, me])
    assert "network address already has 3" in share.admit(neighbour, [me, me, Client("s3", "10.0.0.1")])
    assert share.admit(Client("s4", "10.0.0.2"), [me, me, neighbour]) is None


def test_an_address_may_open_only_so_many_sessions_a_minute():
    clock = Clock()
    share = Share(Limits(new_sessions_per_minute=3), clock=clock)
    assert all(share.admit(Client(f"s{i}", "A"), []) is None for i in range(3))
    refusal = share.admit(Client("s3", "A"), [])
    assert "opened 3 sessions in the last minute" in refusal and "try again in 20 s" in refusal
    assert share.admit(Client("s0", "A"), []) is None  # a session it opened before: welcome
    assert share.admit(Client("s9", "B"), []) is None  # another address
    assert share.admit(Client("", "B"), []) is None and share.admit(Client("", "B"), []) is None
    assert share.admit(Client("", "B"), []) is not None  # without a session every event opens one
    clock.now += 20
    assert share.admit(Client("s3", "A"), []) is None


def run_queue(
    share: Share, clock: Clock, queue: list[tuple[str, Client, float]], *, workers: int = 1, until: float = 30.0
) -> dict[str, float]:
    """A tiny one-event-type queue driven by `share`: (event id, client, seconds) in order; event id -> finish time."""
    running: dict[str, tuple[Client, float]] = {}  # id -> (client, ends)
    done: dict[str, float] = {}
    start = clock.now
    while (queue or running) and clock.now - start < until:
        for event_id, (_, ends) in list(running.items()):
            if ends <= clock.now:
                done[event_id] = clock.now - start
                del running[event_id]
                share.finished(event_id)
        while queue and len(running) < workers:  # as Gradio's loop: no pick with nothing waiting
            at = share.pick([c for _, c, _ in queue], {e: c for e, (c, _) in running.items()})
            if at is None:
                break
            event_id, client, seconds = queue.pop(at)
            share.started(event_id, client)
            running[event_id] = (client, clock.now + seconds)
        clock.now += 0.01
    return done


def test_a_client_with_many_events_waiting_does_not_hold_up_another():
    clock = Clock()
    share = Share(Limits(session_running=1), clock=clock)
    greedy, other = Client("g", "10.0.0.9"), Client("o", "10.0.0.1")
    queue = [(f"g{i}", greedy, 0.5) for i in range(40)] + [("o1", other, 0.1)]
    done = run_queue(share, clock, queue)
    assert done["o1"] < 0.5 + 0.1 + 0.05  # after the greedy event already running, not after all 40


def test_expensive_events_count_by_their_time_not_their_number():
    clock = Clock()
    share = Share(Limits(session_running=1, address_running=1), clock=clock)
    heavy, light = Client("h", "10.0.0.9"), Client("l", "10.0.0.1")
    queue = [(f"h{i}", heavy, 1.0) for i in range(20)] + [(f"l{i}", light, 0.1) for i in range(20)]
    done = run_queue(share, clock, queue, until=8)
    light = [t for e, t in done.items() if e.startswith("l")]
    # Half the server's time each while both ask: the light visitor's 2 s of work is done in 4 to 5 s
    # (first come first served, or taking turns event by event, would take 22 s).
    assert len(light) == 20 and max(light) < 5.5


def test_waiting_banks_no_credit_beyond_the_grace():
    clock = Clock()
    share = Share(Limits(session_running=1), clock=clock)
    old, new = Client("a", "10.0.0.1"), Client("b", "10.0.0.2")
    run_queue(share, clock, [(f"a{i}", old, 1.0) for i in range(10)])  # the old visitor used 10 s
    # Both now ask; the newcomer is placed one second ahead, not ten: then they alternate.
    queue = [(f"a{i}x", old, 0.5) for i in range(10)] + [(f"b{i}", new, 0.5) for i in range(10)]
    done = run_queue(share, clock, queue, until=6)
    assert min(t for e, t in done.items() if e.startswith("a")) < 1.6  # (ten seconds' credit: about 10 s)


def test_running_caps_hold_an_event_back():
    share = Share(Limits(session_running=1, address_running=2))
    a1, a2, b = Client("s1", "A"), Client("s2", "A"), Client("s3", "B")
    assert share.pick([a1], {"e1": a1}) is None  # the session has one running
    assert share.pick([a1, a2], {"e1": a1}) == 1
    assert share.pick([a2, b], {"e1": a1, "e2": Client("s9", "A")}) == 1  # the address has two running


def test_an_allowance_refills_continuously_and_forgets_old_keys():
    clock = Clock()
    allowance = Allowance(10, 100, clock=clock, keys=2)
    assert allowance.take("a", 10) and not allowance.take("a", 1)
    clock.now += 50
    assert allowance.left("a") == pytest.approx(5) and allowance.seconds_until("a", 8) == pytest.approx(30)
    allowance.take("b", 1)
    allowance.take("c", 1)
    assert allowance.left("a") == 10  # forgotten: full again


def test_recent_keeps_the_last_entries():
    recent = Recent(2)
    for key in "abc":
        recent[key] = key
    assert list(recent) == ["b", "c"]


def multipart(files: int, fields: int = 1, boundary: str = "xYz") -> bytes:
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nvalue {i}\r\n' for i in range(fields)]
    parts += [
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="a{i}.png"\r\n'
        f"Content-Type: image/png\r\n\r\n" + "x" * (1000 + i) + "\r\n"
        for i in range(files)
    ]
    return ("".join(parts) + f"--{boundary}--\r\n").encode()


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 16])
def test_files_are_counted_however_the_body_is_cut(chunk):
    body = multipart(files=5, fields=3)
    counter = FileCounter(b"xYz")
    for i in range(0, len(body), chunk):
        counter.feed(body[i : i + chunk])
    assert counter.files == 5


def test_the_boundary_is_read_from_the_content_type():
    assert multipart_boundary('multipart/form-data; boundary="----Web Kit"') == b"----Web Kit"
    assert multipart_boundary("Multipart/Form-Data; charset=utf-8; boundary=abc") == b"abc"
    assert multipart_boundary("application/json") is None and multipart_boundary("multipart/form-data") is None


def test_url_routes_are_recognised():
    for path in (
        "/gradio_api/file=https://x.org/a.png",
        "/gradio_api/file=HTTP://x.org/a.png",
        "/gradio_api/file=ftp://x",
        "/gradio_api/file/https://x.org/a.png",
        "/sub/gradio_api/file=http://x",
        "/gradio_api/proxy=https://a.hf.space/x",
        "/gradio_api/file=//http://x",
    ):
        assert fetches_url(path), path
    for path in (
        "/gradio_api/file=/tmp/gradio/abc/cat.png",
        "/gradio_api/file=C:\\gradio\\cat.png",
        "/gradio_api/file=/tmp/odd:name.png",
        "/gradio_api/upload",
        "/config",
    ):
        assert not fetches_url(path), path


class App:
    """An ASGI app that reads the whole body and answers how much it got, like a route would."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope, receive, send):
        self.calls += 1
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = json.dumps({"got": size}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


def call(
    guard: EdgeGuard,
    path: str,
    body: bytes = b"",
    *,
    method: str = "POST",
    headers: dict | None = None,
    chunk: int = 1 << 16,
    length: bool = True,
    address: str = "10.0.0.1",
) -> tuple[int, dict, bytes]:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if length:
        raw.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "method": method, "path": path, "headers": raw, "client": (address, 1234)}
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1} for i, p in enumerate(pieces)]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    # In a thread of its own: the browser tests' Playwright may hold an event loop in this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, guard(scope, receive, send)).result()
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert sum(m["type"] == "http.response.start" for m in sent) == 1  # one answer, never two
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent)


def test_the_middleware_refuses_urls_big_bodies_and_too_many_files():
    app = App()
    guard = EdgeGuard(app, limits=Limits(request_bytes=1000, upload_files=2, upload_bytes=5000))
    status, _, body = call(guard, "/gradio_api/file=https://x.org/a.png", method="GET")
    assert status == 403 and json.loads(body)["detail"] == NEVER_FETCHED and app.calls == 0
    assert call(guard, "/gradio_api/queue/join", b"x" * 1001)[0] == 413 and app.calls == 0  # from Content-Length
    status, _, body = call(guard, "/gradio_api/queue/join", b"x" * 5000, length=False, chunk=100)
    assert status == 413 and "Request too large" in json.loads(body)["detail"]  # as it streams
    assert call(guard, "/gradio_api/queue/join", b"x" * 1000)[0] == 200
    form = {"content-type": "multipart/form-data; boundary=xYz"}
    status, _, body = call(guard, "/gradio_api/upload", multipart(files=3), headers=form, chunk=500)
    assert status == 413 and body == b"Too many files in one upload: at most 2."
    assert call(guard, "/gradio_api/upload", multipart(files=2), headers=form)[0] == 200


def test_the_middleware_keeps_an_allowance_per_address():
    clock = Clock()
    guard = EdgeGuard(App(), limits=Limits(uploads_per_hour=3, upload_bytes_per_hour=10_000), clock=clock)
    form = {"content-type": "multipart/form-data; boundary=xYz"}
    statuses = [call(guard, "/gradio_api/upload", multipart(files=1), headers=form)[0] for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    status, headers, body = call(guard, "/gradio_api/upload", multipart(files=1), headers=form)
    assert status == 429 and b"upload allowance (3 files" in body and int(headers[b"retry-after"]) <= 1200
    assert call(guard, "/gradio_api/upload", multipart(files=1), headers=form, address="10.0.0.2")[0] == 200
    clock.now += 1200  # a third of an hour: one file more
    assert call(guard, "/gradio_api/upload", multipart(files=1), headers=form)[0] == 200
    big = multipart(files=1).replace(b"x" * 1000, b"x" * 9000)
    clock.now += 3600
    assert call(guard, "/gradio_api/upload", big, headers=form)[0] == 200  # 9 kB of the 10
    assert call(guard, "/gradio_api/upload", big, headers=form)[0] == 429  # refused from its Content-Length
    clock.now += 3600
    status, _, _ = call(guard, "/gradio_api/upload", big + big, headers=form, length=False, chunk=2000)
    assert status == 429  # over the allowance while it streams (no Content-Length)

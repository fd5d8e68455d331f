"""A stranger's client of the real server: raw queue events, uploads, a greedy client and normal users.

Shared by the security tests and `benchmarks/attack.py`; nothing here knows the app's internals
beyond the names of its events (as given by /config, hidden ones included).
"""

from __future__ import annotations

import concurrent.futures
import json
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PIKACHU = ROOT / "assets" / "pokemon" / "sprites" / "025.png"


META = {"_type": "gradio.FileData"}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


_threads = threading.local()


def outcome(
    url: str, fn_index: int, data: list[Any], *, session: str | None = None, client: Any = None, timeout: float = 60
) -> tuple[int, Any]:
    """One event through `POST /gradio_api/queue/join` and its stream, as any script can send it.

    Returns (HTTP status of the join, the refusal's detail or the event's final output). Without
    `session`, each thread keeps one session, as a page does (an address may open only so many).
    """
    import httpx

    if session is None:
        _threads.session = session = getattr(_threads, "session", None) or uuid.uuid4().hex
    http = client or httpx.Client(timeout=timeout)
    try:
        joined = http.post(
            f"{url}/gradio_api/queue/join", json={"fn_index": fn_index, "data": data, "session_hash": session}
        )
        if joined.status_code != 200:
            return joined.status_code, joined.json().get("detail")
        event_id = joined.json()["event_id"]
        with http.stream("GET", f"{url}/gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("msg") == "process_completed" and message.get("event_id") == event_id:
                        return 200, message.get("output")
        raise AssertionError(f"the stream of event {fn_index} ended without its result")
    finally:
        if client is None:
            http.close()


def upload(url: str, path: Path, *, client: Any = None) -> str:
    """Upload one file the way the page does; returns the path Gradio stored it at."""
    import httpx

    response = (client or httpx).post(
        f"{url}/gradio_api/upload", files={"files": (path.name, path.read_bytes())}, timeout=60
    )
    response.raise_for_status()
    return response.json()[0]


def api_fn(url: str, name: str = "identify") -> int:
    """The fn_index of the event Gradio calls `name` (the named API's, or any hidden one's)."""
    import httpx

    config = httpx.get(f"{url}/config", timeout=30).json()
    return next(d["id"] for d in config["dependencies"] if d["api_name"] == name)


def gradient_png(path: Path, side: int = 3000) -> Path:
    """A large but small-to-send picture (a smooth gradient): a tenth of a second of server time to answer."""
    import numpy as np

    x = np.linspace(0, 255, side, dtype=np.float32)
    rgb = np.stack([np.add.outer(x, x) / 2, np.add.outer(x, 255 - x) / 2, np.full((side, side), 99.0)], -1)
    Image.fromarray(rgb.astype(np.uint8)).save(path)
    return path


class Greedy:
    """One client sending `identify` events as fast as it is let: a burst of `burst` joins, then more from threads.

    `sessions`: "one" (one session hash throughout) or "many" (a new one per event); `address`: the
    loopback address it connects from (127.0.0.2 is another visitor as far as the server can tell).
    """

    def __init__(
        self,
        url: str,
        fn_index: int,
        stored: str,
        *,
        sessions: str,
        address: str = "127.0.0.1",
        burst: int = 80,
        threads: int = 6,
    ) -> None:
        self.url, self.fn_index, self.stored, self.sessions, self.address = url, fn_index, stored, sessions, address
        self.burst, self.threads = burst, threads
        self.session = uuid.uuid4().hex
        self.codes: dict[int, int] = {}
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []

    def _join(self, http: Any) -> int:
        session = self.session if self.sessions == "one" else uuid.uuid4().hex
        try:
            status = http.post(
                f"{self.url}/gradio_api/queue/join",
                timeout=30,
                json={
                    "fn_index": self.fn_index,
                    "session_hash": session,
                    "data": [{"path": self.stored, "meta": META}],
                },
            ).status_code
        except Exception:
            status = 0
        with self._lock:
            self.codes[status] = self.codes.get(status, 0) + 1
        return status

    def _loop(self, first: int) -> None:
        import httpx

        with httpx.Client(transport=httpx.HTTPTransport(local_address=self.address)) as http:
            for _ in range(first):
                self._join(http)
            while not self.stop.is_set():
                if self._join(http) != 200:
                    self.stop.wait(0.25)  # refused: try again soon

    def __enter__(self) -> Greedy:
        for i in range(self.threads):
            share = self.burst // self.threads + (i < self.burst % self.threads)
            self._workers.append(threading.Thread(target=self._loop, args=(share,), daemon=True))
            self._workers[-1].start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for worker in self._workers:
            worker.join()


def normal_users(
    url: str,
    *,
    users: int,
    seconds: float,
    apart: bool = False,
    stop: threading.Event | None = None,
    into: list[float] | None = None,
) -> list[float]:
    """`users` gradio_client users, each asking `identify` about a sprite every 0.2 s; their latencies (s).

    `apart`: each from an address of its own (as strangers on a public Space are), else all from
    loopback. Any failure (an error, a refusal, a wrong answer) fails the test. They stop after
    `seconds` or once `stop` is set; `into` gets each latency as it comes (for a caller watching).
    """
    from gradio_client import Client, handle_file

    clients = [
        Client(url, verbose=False, headers={"x-forwarded-for": f"198.51.100.{i + 1}"} if apart else None)
        for i in range(users)
    ]
    deadline = time.perf_counter() + seconds
    times = [] if into is None else into

    def user(client: Any) -> None:
        while time.perf_counter() < deadline and not (stop and stop.is_set()):
            started = time.perf_counter()
            answer = client.predict(handle_file(str(PIKACHU)), api_name="/identify")
            times.append(time.perf_counter() - started)
            assert answer["label"] == "Pikachu" and answer["in_catalog"], answer
            time.sleep(0.2)

    with concurrent.futures.ThreadPoolExecutor(users) as pool:
        list(pool.map(user, clients))
    return times


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]

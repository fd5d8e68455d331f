"""Fake web-search providers behind the real interface (the one boundary the tests cannot reach), and the
loopback server their pictures come from, so that a browser showing them never leaves the machine."""

from __future__ import annotations

import http.server
import io
import threading

from PIL import Image

from recommender.websearch import Link

_SERVER: list[str] = []  # the base URL of this process's picture server, once started
_LOCK = threading.Lock()
#: Paths the picture server was asked for, in order (a browser test can check what it loaded).
REQUESTS: list[str] = []


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (240, 200, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


class _Pictures(http.server.BaseHTTPRequestHandler):
    body = _png()

    def do_GET(self) -> None:
        REQUESTS.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:  # quiet: the app's log is for the app
        pass


def pictures_url() -> str:
    """The base URL of a loopback server (started on first use, one per process) answering every path with a PNG."""
    with _LOCK:
        if not _SERVER:
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pictures)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            _SERVER.append(f"http://127.0.0.1:{server.server_address[1]}")
        return _SERVER[0]


class FakeProvider:
    """Answers every query with two pages and two images, built from the query, instantly."""

    name = "fake"

    def fetch(self, query: str, *, kind: str, limit: int, timeout: float) -> list[Link]:
        slug = query.split()[0].lower()
        if kind == "image":
            base = pictures_url()
            return [
                Link(
                    title=f"{query} picture {i}",
                    url=f"{base}/{slug}/{i}",
                    source="127.0.0.1",
                    thumbnail=f"{base}/{slug}/{i}.png",
                    kind="image",
                    image=f"{base}/{slug}/{i}.png",
                )
                for i in range(2)
            ]
        return [
            Link(
                title=f"{query} fan page {i}",
                url=f"https://fans{i}.example.com/{slug}",
                source=f"fans{i}.example.com",
                thumbnail=None,
                kind=kind,
            )
            for i in range(2)
        ][:limit]


#: What a hostile search result may carry: markup and quotes in every string the page shows.
HOSTILE_TITLE = "<script>alert('title')</script>\"><img src=x onerror=alert(1)>&amp;"
HOSTILE_HOST = 'x"onmouseover="alert(2)"<script>.example'  # urlsplit keeps it as the host: no space, no slash
HOSTILE_URL = "https://shop.example/p?q=\"><script>alert(3)</script>&x='y'"


class HostileProvider:
    """Answers with titles, domains and URLs made to break out of HTML text and attributes."""

    name = "hostile"

    def fetch(self, query: str, *, kind: str, limit: int, timeout: float) -> list[Link]:
        picture = f'{pictures_url()}/a.png?x="><script>alert(4)</script>'
        return [
            Link(title=HOSTILE_TITLE, url=HOSTILE_URL, source="", thumbnail=picture, kind=kind, image=picture),
            Link(title=HOSTILE_TITLE, url=f"https://{HOSTILE_HOST}/page", source="", thumbnail=None, kind=kind),
        ][:limit]

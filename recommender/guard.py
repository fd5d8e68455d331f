"""The public app's edge: which files a request may name, and how much work and upload one visitor may ask for.

Framework-free: `app.py` wires these into Gradio (its queue and its ASGI app). A visitor is a
`Client`: the session a page or API client opened, and the network address it comes from (as
uvicorn reports it: behind a trusted proxy, the address the proxy forwarded, see
`forwarded_allow_ips`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import RecommenderError

#: Environment variables for the limits below (README, "Limits of the public app").
ENV_SESSION_RUNNING = "RECOMMENDER_SESSION_RUNNING"
ENV_SESSION_PENDING = "RECOMMENDER_SESSION_PENDING"
ENV_ADDRESS_RUNNING = "RECOMMENDER_ADDRESS_RUNNING"
ENV_ADDRESS_PENDING = "RECOMMENDER_ADDRESS_PENDING"
ENV_QUEUE_SIZE = "RECOMMENDER_QUEUE_SIZE"
ENV_REQUEST_MB = "RECOMMENDER_REQUEST_MB"
ENV_UPLOAD_MB = "RECOMMENDER_UPLOAD_MB"
ENV_UPLOAD_FILES = "RECOMMENDER_UPLOAD_FILES"
ENV_UPLOADS_PER_HOUR = "RECOMMENDER_UPLOADS_PER_HOUR"
ENV_UPLOAD_MB_PER_HOUR = "RECOMMENDER_UPLOAD_MB_PER_HOUR"
ENV_SESSIONS = "RECOMMENDER_SESSIONS"
ENV_NEW_SESSIONS_PER_MINUTE = "RECOMMENDER_NEW_SESSIONS_PER_MINUTE"

MB = 1 << 20

#: The one answer to a file path that Gradio did not store for an upload, whatever is (or is not) there.
NOT_UPLOADED = "Only pictures uploaded to this app can be searched: upload the file itself."
#: The answer of Gradio's file routes to a URL (it would fetch any public one).
NEVER_FETCHED = "This server serves only its own files and never fetches a URL: download it, then upload the file."


@dataclass(frozen=True)
class Limits:
    """What one visitor may ask of the public app at once and per hour; `from_env` reads the settings.

    Pending means waiting in the queue or running. The address limits are larger than the session
    ones because people behind one NAT (a school, an office) share an address.
    """

    session_running: int = 2  # events of one session that run at the same time
    session_pending: int = 4  # events of one session waiting or running
    address_running: int = 3  # events from one network address that run at the same time
    address_pending: int = 24  # events from one network address waiting or running
    queue_size: int = 64  # events waiting in the whole queue (Gradio's max_size)
    request_bytes: int = 4 * MB  # the body of any request but an upload (an inline data: URL included)
    upload_bytes: int = 10 * MB  # one uploaded file (Gradio's max_file_size)
    upload_files: int = 4  # files in one upload request (the page sends one)
    uploads_per_hour: int = 3600  # files one address may upload per hour (a bucket refilled continuously)
    upload_bytes_per_hour: int = 512 * MB  # bytes one address may upload per hour
    sessions: int = 2000  # sessions whose state is kept in memory (about 80 KB each), the oldest dropped
    new_sessions_per_minute: int = 20  # sessions one address may open (a page load, an API client; refilled)

    @property
    def upload_request_bytes(self) -> int:
        """The largest upload request: its files at their largest, plus room for the multipart headers."""
        return self.upload_files * self.upload_bytes + 64 * 1024

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, workers: int = 1) -> Limits:
        """The limits, each from its environment variable when set; `workers` is the queue's per-event concurrency.

        An address may run as many events at once as one event has workers (at least 3), so a
        bigger machine serves one busy NAT faster.
        """
        env = os.environ if environ is None else environ

        def number(name: str, default: int, *, scale: int = 1) -> int:
            raw = env.get(name, "").strip()
            if not raw:
                return default * scale
            try:
                value = int(raw)
            except ValueError:
                value = 0
            if value < 1:
                raise RecommenderError(f"{name} must be a whole number of at least 1, not {raw!r}")
            return value * scale

        base = cls()
        return cls(
            session_running=number(ENV_SESSION_RUNNING, base.session_running),
            session_pending=number(ENV_SESSION_PENDING, base.session_pending),
            address_running=number(ENV_ADDRESS_RUNNING, max(base.address_running, workers)),
            address_pending=number(ENV_ADDRESS_PENDING, base.address_pending),
            queue_size=number(ENV_QUEUE_SIZE, base.queue_size),
            request_bytes=number(ENV_REQUEST_MB, base.request_bytes // MB, scale=MB),
            upload_bytes=number(ENV_UPLOAD_MB, base.upload_bytes // MB, scale=MB),
            upload_files=number(ENV_UPLOAD_FILES, base.upload_files),
            uploads_per_hour=number(ENV_UPLOADS_PER_HOUR, base.uploads_per_hour),
            upload_bytes_per_hour=number(ENV_UPLOAD_MB_PER_HOUR, base.upload_bytes_per_hour // MB, scale=MB),
            sessions=number(ENV_SESSIONS, base.sessions),
            new_sessions_per_minute=number(ENV_NEW_SESSIONS_PER_MINUTE, base.new_sessions_per_minute),
        )


def forwarded_allow_ips(environ: Mapping[str, str]) -> str | None:
    """The proxies whose X-Forwarded-For to believe (uvicorn's FORWARDED_ALLOW_IPS), where the default is wrong.

    uvicorn believes the header only from loopback by default: right for a local reverse proxy and
    for `--share` (its tunnel client connects from loopback). On a Hugging Face Space the proxy
    connects from the private network, so every visitor would share its address; there the
    private networks are trusted, and uvicorn takes the last address that is not one of them, the
    one the proxy appended (a visitor's own X-Forwarded-For stays to the left of it). None: keep
    uvicorn's default, or the operator's own setting.
    """
    if environ.get("FORWARDED_ALLOW_IPS") or not environ.get("SPACE_ID"):
        return None
    return "127.0.0.1,::1,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"


def stored_file(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> Path | None:
    """`path` as a regular file inside `folder` (links resolved), or None.

    A path outside the folder is refused on its spelling alone, before the file system is touched,
    so the answer says nothing about what exists elsewhere.
    """
    spelled = Path(os.path.abspath(path))
    homes = {Path(os.path.abspath(folder)), Path(os.path.realpath(folder))}
    if not any(spelled.is_relative_to(home) for home in homes):
        return None
    real = Path(os.path.realpath(spelled))
    if not real.is_relative_to(Path(os.path.realpath(folder))) or not real.is_file():
        return None
    return real


@dataclass(frozen=True)
class Client:
    """One visitor as the queue sees it: a session (a page or API client) and the address it comes from."""

    session: str
    address: str


class Share:
    """Who may join the queue and whose event runs next.

    Admission: at most `session_pending` events of a session and `address_pending` from an address
    may wait or run, and an address may open `new_sessions_per_minute` sessions (a new session
    costs the server more than an event: minting one per event would let one address slow all).

    Order, instead of first come first served: among the waiting events whose session and address
    are under their running caps, the one whose address, then session, has had the least server
    time lately goes first (least attained service, halved every `half_life` seconds). A visitor
    who starts asking again is placed level with the least served of those already asking, `grace`
    seconds ahead, so that no one banks credit by waiting (as CFS places a waking task). A client
    with many events waiting, or expensive ones, then delays each other visitor by about one of its
    events per worker.
    """

    def __init__(
        self,
        limits: Limits,
        *,
        half_life: float = 60.0,
        grace: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        remembered: int = 10_000,
    ) -> None:
        self.limits, self.half_life, self.grace = limits, half_life, grace
        self._clock, self._remembered = clock, remembered
        self._used: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()  # key -> (seconds, when)
        self._running: dict[str, tuple[Client, float]] = {}  # event id -> (client, started)
        self._asking: set[tuple[str, str]] = set()  # keys with events waiting or running at the last pick
        self._sessions: OrderedDict[str, None] = OrderedDict()  # sessions admitted before (most recent last)
        self._new_sessions = Allowance(limits.new_sessions_per_minute, 60, clock=clock, keys=remembered)

    def admit(self, client: Client, pending: Iterable[Client]) -> str | None:
        """Why `client` may not add an event now (one line), or None when it may (and is counted in)."""
        sessions = addresses = 0
        for other in pending:
            sessions += other.session == client.session
            addresses += other.address == client.address
        if sessions >= self.limits.session_pending:
            return f"You already have {sessions} requests waiting or running: wait for them to finish, then try again."
        if addresses >= self.limits.address_pending:
            return f"Your network address already has {addresses} requests waiting or running: try again in a moment."
        known = bool(client.session) and client.session in self._sessions  # no session: a new one each time
        if not known:
            if not self._new_sessions.take(client.address, 1):
                wait = math.ceil(self._new_sessions.seconds_until(client.address, 1))
                return (
                    f"Your network address has opened {self.limits.new_sessions_per_minute} sessions in the "
                    f"last minute: keep using one (one page, one API client), or try again in {wait} s."
                )
            if client.session:
                self._sessions[client.session] = None
        if client.session:
            self._sessions.move_to_end(client.session)
            while len(self._sessions) > self._remembered:
                self._sessions.popitem(last=False)
        return None

    def pick(
        self, waiting: Sequence[Client], running: Mapping[str, Client], *, asking: Iterable[Client] | None = None
    ) -> int | None:
        """The position in `waiting` (one queue, in its order) of the event to start next, or None to wait.

        `running`: the events running now, by id. `asking`: the clients with events waiting in any
        queue (default: `waiting`).
        """
        now = self._clock()
        busy: Counter[tuple[str, str]] = Counter()
        ongoing: Counter[tuple[str, str]] = Counter()  # seconds run so far by the events still running
        for event_id, client in running.items():
            began = self._running.get(event_id, (client, now))[1]
            for key in _keys(client):
                busy[key] += 1
                ongoing[key] += now - began
        asking_now = {
            key for client in [*(waiting if asking is None else asking), *running.values()] for key in _keys(client)
        }
        for kind in ("address", "session"):
            before = [self._usage(k, now) + ongoing[k] for k in asking_now & self._asking if k[0] == kind]
            if before:
                for key in {k for k in asking_now - self._asking if k[0] == kind}:
                    self._set(key, max(self._usage(key, now), min(before) - self.grace), now)
        self._asking = asking_now
        best: tuple[tuple[float, float, int], int] | None = None
        for i, client in enumerate(waiting):
            address, session = _keys(client)
            if busy[session] >= self.limits.session_running or busy[address] >= self.limits.address_running:
                continue
            rank = (self._usage(address, now) + ongoing[address], self._usage(session, now) + ongoing[session], i)
            if best is None or rank < best[0]:
                best = (rank, i)
        return None if best is None else best[1]

    def started(self, event_id: str, client: Client) -> None:
        """Note that the event `event_id` of `client` started."""
        self._running[event_id] = (client, self._clock())

    def finished(self, event_id: str) -> None:
        """Note that the event `event_id` ended (done, failed or cancelled): its client is charged its time."""
        if event_id in self._running:
            client, began = self._running.pop(event_id)
            now = self._clock()
            for key in _keys(client):
                self._set(key, self._usage(key, now) + now - began, now)

    def _usage(self, key: tuple[str, str], now: float) -> float:
        used, when = self._used.get(key, (0.0, now))
        return used * 0.5 ** ((now - when) / self.half_life)

    def _set(self, key: tuple[str, str], seconds: float, now: float) -> None:
        self._used[key] = (seconds, now)
        self._used.move_to_end(key)
        while len(self._used) > self._remembered:
            self._used.popitem(last=False)


def _keys(client: Client) -> tuple[tuple[str, str], tuple[str, str]]:
    return ("address", client.address), ("session", client.session)


class Recent(OrderedDict):  # type: ignore[type-arg]
    """A dict that keeps only its `size` most recently set entries (for what clients may store in memory)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class Allowance:
    """How much each key may still take: `amount` per `period` seconds, refilled continuously (a token bucket).

    A key starts full; at most `keys` are remembered (the least recently seen forgotten, i.e. refilled).
    """

    def __init__(
        self, amount: float, period: float, *, clock: Callable[[], float] = time.monotonic, keys: int = 10_000
    ) -> None:
        self.amount, self.rate = float(amount), float(amount) / period
        self._clock, self._keys = clock, keys
        self._state: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (left, when)

    def left(self, key: str) -> float:
        now = self._clock()
        left, when = self._state.get(key, (self.amount, now))
        return min(self.amount, left + (now - when) * self.rate)

    def take(self, key: str, amount: float) -> bool:
        """Take `amount`; False, leaving nothing, when less than that is left."""
        left = self.left(key)
        ok = left >= amount
        self._state[key] = (left - amount if ok else 0.0, self._clock())
        self._state.move_to_end(key)
        while len(self._state) > self._keys:
            self._state.popitem(last=False)
        return ok

    def seconds_until(self, key: str, amount: float) -> float:
        """How long until `amount` is available again."""
        return max(0.0, (amount - self.left(key)) / self.rate) if self.rate else math.inf


class FileCounter:
    """Counts the files of a multipart/form-data body as it streams past: parts whose headers name a filename."""

    HEADERS = 16 * 1024  # the most of a part's headers kept while looking for their end

    def __init__(self, boundary: bytes) -> None:
        self._delimiter = b"\r\n--" + boundary
        self._rest = b"\r\n"  # the body opens with the first delimiter, without its line break
        self._in_headers = False
        self.files = 0

    def feed(self, chunk: bytes) -> None:
        data = self._rest + chunk
        while True:
            if self._in_headers:
                end = data.find(b"\r\n\r\n")
                if end < 0 and len(data) <= self.HEADERS:
                    self._rest = data
                    return
                # Headers too long to be real still count as a file (Gradio's parser refuses them anyway).
                self.files += end < 0 or b"filename" in data[:end].lower()
                data, self._in_headers = data[end + 4 :] if end >= 0 else b"", False
            else:
                hit = data.find(self._delimiter)
                if hit < 0:
                    self._rest = data[-(len(self._delimiter) - 1) :]
                    return
                data, self._in_headers = data[hit + len(self._delimiter) :], True


def multipart_boundary(content_type: str) -> bytes | None:
    """The boundary of a multipart/form-data Content-Type header, or None when it is not one."""
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        return None
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "boundary" and value.strip().strip('"'):
            return value.strip().strip('"').encode("latin-1")
    return None


def fetches_url(path: str, prefix: str = "/gradio_api") -> bool:
    """Whether a request path asks Gradio's file or proxy routes for a URL (`/file=https://...`)."""
    for route in ("/file=", "/file/", "/proxy="):
        at = path.find(prefix + route)
        if at >= 0:
            rest = path[at + len(prefix) + len(route) :].lstrip("/")
            scheme, colon, _ = rest.partition(":")
            # Any scheme in any case, not only the http(s) Gradio fetches; one letter is a Windows drive.
            if route == "/proxy=" or (
                colon and len(scheme) > 1 and scheme.replace("+", "").replace("-", "").replace(".", "").isalnum()
            ):
                return True
    return False


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Refused(Exception):
    """Raised into the application when a request body goes over a limit while it streams in."""


class EdgeGuard:
    """ASGI middleware in front of the app: no URL fetching, bounded request bodies, bounded uploads per address.

    - `GET /gradio_api/file=<URL>` (and `/file/`, `/proxy=`) is refused: 403.
    - A request body over `request_bytes` (uploads: over `upload_request_bytes`) is refused: 413,
      from its Content-Length before it is read, or as soon as it streams past the limit.
    - A multipart upload with more than `upload_files` files is refused: 413, as soon as the part
      over the limit begins.
    - Each address may upload `uploads_per_hour` files and `upload_bytes_per_hour` bytes (refilled
      continuously); past that, 429 with Retry-After.

    A limit crossed while the body streams raises `refuse(message)` into the application's read of
    it (pass the exception its parser cleans up after, e.g. Gradio's MultiPartException, so that
    partial files are deleted); whatever the application then answers is replaced by the refusal.
    """

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        *,
        limits: Limits,
        prefix: str = "/gradio_api",
        refuse: Callable[[str], Exception] = Refused,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app, self.limits, self.prefix, self.refuse = app, limits, prefix, refuse
        self.files = Allowance(limits.uploads_per_hour, 3600, clock=clock)
        self.bytes = Allowance(limits.upload_bytes_per_hour, 3600, clock=clock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if fetches_url(scope.get("path", ""), self.prefix):
            await _answer(send, 403, NEVER_FETCHED)
            return
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = {name.lower(): value for name, value in scope.get("headers", [])}
        address = (scope.get("client") or ("", 0))[0] or ""
        boundary = multipart_boundary(headers.get(b"content-type", b"").decode("latin-1"))
        try:
            length: int | None = int(headers[b"content-length"])
        except (KeyError, ValueError):
            length = None
        limit = self.limits.upload_request_bytes if boundary else self.limits.request_bytes
        if length is not None and length > limit:
            await _answer(send, 413, _too_large(limit, boundary is not None), text=boundary is not None)
            return
        if boundary and (self.files.left(address) < 1 or self.bytes.left(address) < (length or 1)):
            status, message, wait = self._out_of_allowance(address, length or 1)
            await _answer(send, status, message, text=True, retry_after=wait)
            return
        await self._guarded(scope, receive, send, address=address, limit=limit, boundary=boundary)

    def _out_of_allowance(self, address: str, size: int) -> tuple[int, str, int]:
        """The 429 refusal of an address whose upload allowance is spent: (status, message, seconds to wait)."""
        wait = math.ceil(max(self.files.seconds_until(address, 1), self.bytes.seconds_until(address, size)))
        return (
            429,
            (
                f"Your network address has used its upload allowance ({self.limits.uploads_per_hour} files "
                f"and {self.limits.upload_bytes_per_hour // MB} MB per hour): try again in {wait} s."
            ),
            wait,
        )

    def _check_body(
        self, body: bytes, received: int, *, limit: int, counter: FileCounter | None, address: str
    ) -> tuple[int, str, int | None] | None:
        """The refusal (status, message, retry after) of a request whose body, so far, breaks a limit; else None."""
        if received > limit:
            return 413, _too_large(limit, counter is not None), None
        if counter is None:
            return None
        before = counter.files
        counter.feed(body)
        if counter.files > self.limits.upload_files:
            return 413, f"Too many files in one upload: at most {self.limits.upload_files}.", None
        if not (self.files.take(address, counter.files - before) and self.bytes.take(address, len(body))):
            return self._out_of_allowance(address, len(body))
        return None

    async def _guarded(
        self, scope: Scope, receive: Receive, send: Send, *, address: str, limit: int, boundary: bytes | None
    ) -> None:
        counter = FileCounter(boundary) if boundary else None
        received = 0
        refusal: tuple[int, str, int | None] | None = None  # (status, message, retry after)
        raised: Exception | None = None
        answered = False

        async def guarded_receive() -> dict[str, Any]:
            nonlocal received, refusal, raised
            if raised is not None:
                raise raised
            message = await receive()
            if message["type"] != "http.request":
                return message
            body = message.get("body", b"")
            received += len(body)
            refusal = self._check_body(body, received, limit=limit, counter=counter, address=address)
            if refusal is not None:
                raised = self.refuse(refusal[1])
                raise raised
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal answered
            if refusal is not None:  # the application's answer to a body it could not read: ours instead
                if not answered:
                    answered = True
                    await _answer(send, refusal[0], refusal[1], text=counter is not None, retry_after=refusal[2])
                return
            if message["type"] == "http.response.start":
                answered = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if refusal is None or answered:
                raise
        if refusal is not None and not answered:
            await _answer(send, refusal[0], refusal[1], text=counter is not None, retry_after=refusal[2])


def _too_large(limit: int, upload: bool) -> str:
    size = f"{limit / MB:.0f} MB" if limit >= MB else f"{limit} bytes"
    if upload:
        return f"Upload too large: at most {size} in one request."
    return f"Request too large: at most {size}; send pictures as uploaded files, not inline data."


async def _answer(send: Send, status: int, message: str, *, text: bool = False, retry_after: int | None = None) -> None:
    """A complete refusal: plain text for upload routes (as Gradio answers there), else JSON `detail`."""
    body = message.encode() if text else json.dumps({"detail": message}).encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8" if text else b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

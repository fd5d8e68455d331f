"""What visitors upload through the app: the limits on their builds, one private folder per browser session, cleanup.

Layout on disk, apart from the operator's index folder (which web builds never write to):

    <data dir>/sessions/<key>/catalogs/<name>/<stamp>/   the pictures an upload's index holds (nothing else)
    <data dir>/sessions/<key>/index/<name>/              that index

`<key>` is a hash of Gradio's session hash, so that no client-chosen text becomes a path. A
session's indexes are reached only through its own key (`UPLOAD` + name in the app's choices),
never by a name that could reach another session's folder or shadow an operator's index.
Folders go when the page is closed, when unused for `UploadLimits.ttl`, and at every start.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import settings
from .errors import IndexNotFoundError, LimitExceeded, RecommenderError
from .index import MANIFEST, check_name, list_indexes

#: How the app's index choices name a session's own index; operator index names cannot hold ':'.
UPLOAD = "upload:"
MB = 1_000_000


@dataclass(frozen=True)
class UploadLimits:
    """How much one web upload, one session and all sessions together may take; the CLI has no such limits."""

    pictures: int = 3_000  # picture files in one upload
    rows: int = 10_000  # rows of a CSV in one upload
    seconds: float = 300.0  # wall time of one web build, unpacking included
    upload_bytes: int = 100 * MB  # unpacked bytes of one upload
    session_bytes: int = 200 * MB  # everything one session keeps (pictures and indexes)
    total_bytes: int = 2_000 * MB  # everything all sessions keep
    ttl: float = 3600.0  # seconds a session's uploads are kept unused
    threads: int = max(1, (os.cpu_count() or 2) // 2)  # torch and reading threads of a web build

    @classmethod
    def from_env(cls) -> UploadLimits:
        """The defaults above, each overridden by its environment variable (sizes in MB)."""
        number, d = settings.number, cls()
        return cls(
            pictures=int(number(settings.ENV_UPLOAD_PICTURES, d.pictures, minimum=1)),
            rows=int(number(settings.ENV_UPLOAD_ROWS, d.rows, minimum=1)),
            seconds=number(settings.ENV_UPLOAD_SECONDS, d.seconds, minimum=1),
            upload_bytes=int(number(settings.ENV_UNPACKED_MB, d.upload_bytes / MB, minimum=0.001) * MB),
            session_bytes=int(number(settings.ENV_SESSION_MB, d.session_bytes / MB, minimum=0.001) * MB),
            total_bytes=int(number(settings.ENV_UPLOADS_TOTAL_MB, d.total_bytes / MB, minimum=0.001) * MB),
            ttl=number(settings.ENV_UPLOAD_TTL, d.ttl, minimum=1),
            threads=int(number(settings.ENV_BUILD_THREADS, d.threads, minimum=1)),
        )


def stop_check(seconds: float, client_gone: Callable[[], bool] | None = None) -> Callable[[], str | None]:
    """A build's `should_stop`: why it must stop (its client went away, or `seconds` have passed), else None."""
    deadline = time.monotonic() + seconds

    def should_stop() -> str | None:
        if client_gone is not None and client_gone():
            return "build stopped: the page that started it was closed or the request cancelled"
        if time.monotonic() > deadline:
            return (
                f"build stopped after {seconds:g} s, the most a web build may take; upload fewer pictures, "
                "or index the catalog from the command line"
            )
        return None

    return should_stop


def session_key(session: str | None) -> str:
    """The folder name of a browser session: a hash, so that the client's text never becomes a path."""
    if not session:
        raise RecommenderError("uploads belong to a browser session, and this request has none")
    return hashlib.sha256(session.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class Uploads:
    """Every browser session's own catalogs and indexes under one folder, with quotas and cleanup."""

    def __init__(self, root: Path, limits: UploadLimits, *, on_remove: Callable[[Path], None] | None = None) -> None:
        """`on_remove` hears of each session folder removed (to forget what was loaded from it)."""
        self.root = root
        self.limits = limits
        self._on_remove = on_remove
        self._lock = threading.Lock()
        self._busy: dict[str, int] = {}  # session key -> builds running for it
        self._closed: set[str] = set()  # sessions whose page was closed during a build

    def folder(self, session: str | None) -> Path:
        return self.root / session_key(session)

    def index_dir(self, session: str | None) -> Path:
        return self.folder(session) / "index"

    def catalog_dir(self, session: str | None, name: str) -> Path:
        return self.folder(session) / "catalogs" / check_name(name)

    def names(self, session: str | None) -> list[str]:
        """The session's own indexes (none without a session)."""
        return list_indexes(self.index_dir(session)) if session else []

    def index_folder(self, session: str | None, name: str) -> Path:
        """The folder of this session's index `name`; `IndexNotFoundError` when it has none of that name."""
        folder = self.index_dir(session) / check_name(name)
        if not (folder / MANIFEST).is_file():
            raise IndexNotFoundError(
                f"no uploaded index named {name!r} in this session: uploads last while the page stays open "
                f"(and {self.limits.ttl / 60:g} minutes unused at most); upload the zip again"
            )
        with contextlib.suppress(OSError):
            os.utime(self.folder(session))  # in use: the time-to-live counts from now
        return folder

    def index_bytes(self, session: str | None, name: str) -> int:
        """Bytes of one of the session's indexes (0 when it has none of that name)."""
        return _size(self.index_dir(session) / check_name(name))

    def usage(self, session: str | None = None) -> int:
        """Bytes kept by one session, or by all sessions together."""
        return _size(self.folder(session) if session else self.root)

    def check_room(self, session: str | None, name: str, incoming: int) -> None:
        """Refuse (`LimitExceeded`) an upload of `incoming` bytes under `name` that would pass a quota.

        What the session keeps under `name` now does not count: the new upload replaces it.
        """
        limits = self.limits
        replaced = _size(self.catalog_dir(session, name)) + self.index_bytes(session, name)
        mine = self.usage(session) - replaced
        if mine + incoming > limits.session_bytes:
            raise LimitExceeded(
                f"this upload unpacks to {incoming / MB:,.1f} MB; with the {mine / MB:,.1f} MB this session's other "
                f"uploads keep, that is more than the {limits.session_bytes / MB:,.0f} MB one session may keep"
            )
        if self.usage() - replaced + incoming > limits.total_bytes:
            raise LimitExceeded(
                f"the server's room for uploads ({limits.total_bytes / MB:,.0f} MB) is full for now; try again later"
            )

    @contextlib.contextmanager
    def building(self, session: str | None) -> Iterator[Path]:
        """Mark a build of this session as running (no cleanup removes its folder meanwhile); yields the folder."""
        key = session_key(session)
        with self._lock:
            self._busy[key] = self._busy.get(key, 0) + 1
        try:
            yield self.root / key
        finally:
            with self._lock:
                self._busy[key] -= 1
                if not self._busy[key]:
                    del self._busy[key]
                    if key in self._closed:
                        self._closed.discard(key)
                        self._remove(key)

    def close(self, session: str | None) -> None:
        """The session's page was closed: remove its uploads now (after its build, if one runs)."""
        if not session:
            return
        key = session_key(session)
        with self._lock:  # held while removing: a build of this session cannot start meanwhile
            if key in self._busy:
                self._closed.add(key)
            else:
                self._remove(key)

    def sweep(self, now: float | None = None) -> None:
        """Remove the sessions unused for longer than the time-to-live."""
        if not self.root.is_dir():
            return
        now = time.time() if now is None else now
        for folder in self.root.iterdir():
            try:
                idle = now - folder.stat().st_mtime
            except OSError:
                continue
            if idle > self.limits.ttl:
                with self._lock:
                    if folder.name not in self._busy:
                        self._remove(folder.name)

    def clear(self) -> None:
        """Remove every session's uploads: at start, those of an earlier process (and of builds it was killed in)."""
        shutil.rmtree(self.root, ignore_errors=True)

    def _remove(self, key: str) -> None:
        folder = self.root / key
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
            if self._on_remove is not None:
                self._on_remove(folder)


def _size(path: Path) -> int:
    """Bytes of the files under `path` (links not followed); 0 when it does not exist."""
    total = 0
    for dirpath, _, filenames in os.walk(path, followlinks=False):
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total

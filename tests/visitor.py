"""One browser session over plain HTTP, as any script could drive the app: upload files, join the queue, read answers.

Events are called by their function's name (the `api_name` Gradio gives every event in /config,
private ones included), which is how a stranger reaches the hidden events too.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx


class Visitor:
    """A session of its own (a fresh session hash), talking to the app at `url`."""

    def __init__(self, url: str, session: str | None = None) -> None:
        self.url = url
        self.session = session or secrets.token_hex(6)
        self.http = httpx.Client(base_url=url, timeout=60)
        config = self.http.get("/config").json()
        self.fns = {d["api_name"]: d["id"] for d in config["dependencies"]}

    def upload(self, path: Path) -> dict[str, Any]:
        """Upload a file as the page does; returns the file object an event takes."""
        response = self.http.post("/gradio_api/upload", files={"files": (path.name, path.read_bytes())})
        response.raise_for_status()
        return {"path": response.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}

    def join(self, fn: str, data: list[Any]) -> str:
        body = {
            "data": data,
            "fn_index": self.fns[fn],
            "session_hash": self.session,
            "event_data": None,
            "trigger_id": None,
        }
        response = self.http.post("/gradio_api/queue/join", json=body)
        response.raise_for_status()
        return response.json()["event_id"]

    @contextmanager
    def messages(self, timeout: float = 120) -> Iterator[Iterator[dict[str, Any]]]:
        """The session's event stream (open it after `join`), message by message; leaving the block closes it.

        Closing it is what a page that goes away does: Gradio then marks the session's events not alive.
        """
        with self.http.stream(
            "GET", "/gradio_api/queue/data", params={"session_hash": self.session}, timeout=timeout
        ) as response:
            yield (json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:"))

    def call(self, fn: str, data: list[Any], timeout: float = 120) -> dict[str, Any]:
        """Run one event to its end; returns the completion message (`success`, `output`)."""
        event = self.join(fn, data)
        with self.messages(timeout) as stream:
            for message in stream:
                if message.get("msg") == "process_completed" and message.get("event_id") == event:
                    return message
        raise AssertionError(f"{fn}: the stream ended without an answer")

    def answer(self, fn: str, data: list[Any], timeout: float = 120) -> list[Any]:
        """The outputs of a successful event; an `AssertionError` with the message of a failed one."""
        message = self.call(fn, data, timeout)
        assert message["success"], message["output"].get("error")
        return message["output"]["data"]

    def error(self, fn: str, data: list[Any], timeout: float = 120) -> str:
        """The one-line message of an event that must fail."""
        message = self.call(fn, data, timeout)
        assert not message["success"], message["output"]
        return str(message["output"].get("error"))

    def choices(self) -> list[str]:
        """The index references this session's chooser lists (the refresh button's answer)."""
        return [value for _, value in self.answer("listing", [])[0]["choices"]]

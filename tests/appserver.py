"""The real `python app.py` on a free port, isolated in a folder: for the browser tests and the load benchmark."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: Debian's Chromium and the flags every headless run here uses (the tests add their network guard).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
#: A page's answer once settled: one of the answer's sentences, no progress timer in front of it (arg: the one before).
SETTLED = (
    "before => { const a = document.querySelector('#answer'); const t = a.innerText.trim();"
    " return !a.querySelector('.progress-text, .eta-bar') && t !== before"
    " && /^(This is|You gave|The closest|Not answered)/.test(t); }"
)

#: What app.py prints once the default index can be searched (it serves its page before, during a first build).
READY_LINE = b"recommender.app: ready in "


def start_app(
    folder: Path, env: dict[str, str], *, wait_ready: bool = True, script: str = "app.py"
) -> tuple[subprocess.Popen[bytes], str]:
    """Start app.py (or `script`, which runs it) and wait until it serves its page and, with `wait_ready`,
    its default index is ready.

    The first start builds the Pokémon index, behind the page already served.
    """
    port = free_port()
    log_path = folder / f"app-{port}.log"
    full_env = {
        **os.environ,
        "RECOMMENDER_INDEX_DIR": str(folder / "index"),
        "RECOMMENDER_CACHE_DIR": str(folder / "cache"),
        "RECOMMENDER_DATA_DIR": str(folder / "data"),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(folder / "hf"),  # no model from the developer's cache
        "GRADIO_ANALYTICS_ENABLED": "False",
        # tests/ for the fake web provider; tests/hermetic (its sitecustomize) guards the network.
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT / "tests" / "hermetic")]),
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, script, "--port", str(port)],
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    served = False
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited: {log_path.read_text()[-2000:]}")
        if not served:
            try:
                with urllib.request.urlopen(url, timeout=2):
                    served = True
            except OSError:
                pass
        if served and (not wait_ready or READY_LINE in log_path.read_bytes()):
            return process, url
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"app.py did not serve its page in time: {log_path.read_text()[-2000:]}")

"""Cold start: seconds from `python app.py` to a served page, with the Pokémon index cached and without.

    python benchmarks/coldstart.py [--model offline] [--runs 3]

The first start (an empty index folder) builds the embedded Pokémon index, which is the naive
baseline of every later start; a later start finds the index cached beside the app and only
loads it. Each start is a fresh process on a free port; the time is until the page answers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import machine, table  # noqa: E402


def start(env: dict[str, str]) -> float:
    """Seconds until a fresh `python app.py` serves its page; the process is stopped afterwards."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError("app.py exited before serving its page")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                    return time.perf_counter() - started
            except OSError:
                time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="offline", help="RECOMMENDER_MODEL for the app")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="recommender-coldstart-"))
    env = {
        "RECOMMENDER_MODEL": args.model,
        "RECOMMENDER_INDEX_DIR": str(work / "index"),
        "RECOMMENDER_CACHE_DIR": str(work / "cache"),
        "RECOMMENDER_DATA_DIR": str(work / "data"),
        "HF_HUB_OFFLINE": "1",
    }
    try:
        first = start(env)  # builds the index
        cached = [start(env) for _ in range(args.runs)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {machine()}")
    print(f"app.py on the embedded Pokémon catalog (1298 pictures), RECOMMENDER_MODEL={args.model}\n")
    print(
        table(
            [
                {"start": "first (builds the index: the naive baseline)", "seconds to a served page": f"{first:.1f}"},
                {
                    "start": f"later, index cached (median of {len(cached)})",
                    "seconds to a served page": f"{float(np.median(cached)):.1f}",
                },
            ]
        )
    )


if __name__ == "__main__":
    main()

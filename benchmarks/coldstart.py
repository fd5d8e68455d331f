"""Cold start: seconds from `python app.py` to a served page and to a searchable index, first start and later.

    python benchmarks/coldstart.py [--model offline] [--runs 3]

The first start (an empty index folder) builds the embedded Pokémon index. The app serves its
page at once and builds behind it; the naive baseline, in the same run, is the old start, which
built before serving (`RECOMMENDER_BUILD_BEFORE_SERVING=1`). A later start finds the index cached
and only loads it. Each start is a fresh process on a free port: the page is served at the first
HTTP 200 on `/`, the index is ready when the app logs `ready in` (the line the tests wait for).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from appserver import READY_LINE, free_port  # noqa: E402  # the tests' own notion of ready
from common import machine, table  # noqa: E402


def start(env: dict[str, str], log: Path) -> tuple[float, float]:
    """(seconds to a served page, seconds to a ready index) of a fresh `python app.py`, stopped afterwards."""
    port = free_port()
    started = time.perf_counter()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "app.py", "--port", str(port)],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    served = ready = None
    try:
        while served is None or ready is None:
            if process.poll() is not None:
                raise RuntimeError(f"app.py exited: {log.read_text()[-2000:]}")
            if ready is None and READY_LINE in log.read_bytes():
                ready = time.perf_counter() - started
            if served is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                        served = time.perf_counter() - started
                except OSError:
                    pass
            time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=30)
    return served, ready


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="offline", help="RECOMMENDER_MODEL for the app")
    parser.add_argument("--runs", type=int, default=3, help="later starts to take the median of")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="recommender-coldstart-"))
    rows = []
    try:
        for mode, blocking in (("builds before serving (the old start)", "1"), ("serves at once, builds behind", "")):
            folder = work / ("blocking" if blocking else "background")
            env = {
                "RECOMMENDER_MODEL": args.model,
                "RECOMMENDER_INDEX_DIR": str(folder / "index"),
                "RECOMMENDER_CACHE_DIR": str(folder / "cache"),
                "RECOMMENDER_DATA_DIR": str(folder / "data"),
                "RECOMMENDER_BUILD_BEFORE_SERVING": blocking,
                "HF_HUB_OFFLINE": "1",
            }
            folder.mkdir(parents=True)
            served, ready = start(env, folder / "first.log")  # builds the index
            later = [start(env, folder / f"later-{n}.log") for n in range(args.runs)]
            rows.append({"app": mode, "start": "first (builds the index)", "page served, s": served, "ready, s": ready})
            rows.append(
                {
                    "app": mode,
                    "start": f"later, index cached (median of {len(later)})",
                    "page served, s": float(np.median([s for s, _ in later])),
                    "ready, s": float(np.median([r for _, r in later])),
                }
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {machine()}")
    print(f"app.py on the embedded Pokémon catalog (1298 pictures), RECOMMENDER_MODEL={args.model}\n")
    print(
        table(
            [
                {**row, "page served, s": f"{row['page served, s']:.1f}", "ready, s": f"{row['ready, s']:.1f}"}
                for row in rows
            ]
        )
    )


if __name__ == "__main__":
    main()

"""Upload to answer in a real browser: ms p50/p95 of the page, beside the library's own answer in the same run.

    python benchmarks/browser.py [--pictures 30] [--model offline]

Starts `python app.py` with the given backbone (the Pokémon index is built on its first start and
kept under .cache/bench-browser/), opens it in Debian's Chromium at 1366x900, and uploads held-out
pictures one after the other (the catalog does not contain them; `scripts/build_pokemon_catalog.py
--heldout-only` writes them), timing each from the file being set to the answer settled on the page.
The baseline is the naive path with no server at all: the same pictures through `Service.answer`
in this process, on the same index and backbone. The difference is what the page, the queue and
the upload cost.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from appserver import CHROMIUM, CHROMIUM_FLAGS, SETTLED, start_app  # noqa: E402


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def in_browser(url: str, pictures: list[Path]) -> list[float]:
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.goto(url)
        page.wait_for_selector("#query input[type=file]", state="attached", timeout=60_000)
        for picture in pictures:
            before = page.inner_text("#answer").strip()
            started = time.perf_counter()
            page.set_input_files("#query input[type=file]", str(picture))
            page.wait_for_function(SETTLED, arg=before, timeout=60_000)
            times.append(time.perf_counter() - started)
        browser.close()
    return times


def in_process(folder: Path, model: str, pictures: list[Path]) -> list[float]:
    from recommender.service import Service

    service = Service(model=model, index_dir=folder / "index", progress=False)
    times = []
    for picture in pictures:
        started = time.perf_counter()
        service.answer(str(picture), session="bench", name=picture.name)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pictures", type=int, default=30)
    parser.add_argument("--model", default="offline")
    args = parser.parse_args()
    held = ROOT / ".cache" / "pokemon-heldout"
    # Alternating kinds, one picture each, so that consecutive uploads differ (a repeated file is a new upload).
    kinds = ["shiny", "back", "back-shiny"]
    found = [sorted((held / kind).glob("*/*.png")) for kind in kinds]
    pictures = [found[i % 3][i * 7 % len(found[i % 3])] for i in range(args.pictures)]
    folder = ROOT / ".cache" / "bench-browser"
    folder.mkdir(parents=True, exist_ok=True)
    env = {"RECOMMENDER_MODEL": args.model, "RECOMMENDER_WEB_PROVIDER": "fake_web:FakeProvider"}
    process, url = start_app(folder, env)
    try:
        in_browser(url, pictures[:3])  # warm: the first answers load the backbone's kernels
        page = in_browser(url, pictures)
    finally:
        process.terminate()
        process.wait(timeout=30)
    library = in_process(folder, args.model, pictures[:3] + pictures)[3:]
    print(f"{len(pictures)} held-out pictures, backbone {args.model}")
    print("| path | p50 ms | p95 ms |\n| --- | --- | --- |")
    for name, times in (("library, in process (baseline)", library), ("browser: upload to settled answer", page)):
        print(f"| {name} | {statistics.median(times) * 1000:.0f} | {p95(times) * 1000:.0f} |")


if __name__ == "__main__":
    main()

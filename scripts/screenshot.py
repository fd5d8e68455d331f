#!/usr/bin/env python
"""Refresh `docs/screenshot.png`: the real app, in Debian's Chromium at 1366x900, answering a picture.

    python scripts/screenshot.py [--picture PATH] [--model offline]

Run by hand (never by tests or CI). It starts `python app.py` with the given backbone on a cache
folder of its own (`.cache/screenshot/`: the first run builds the Pokémon index there), uploads the
picture (default: Charizard's back sprite from the held-out set, which
`scripts/build_pokemon_catalog.py --heldout-only` writes; the catalog holds only its front), waits for
the answer and its look-alikes, and writes the page as a visitor sees it. The web provider is the
tests' fake one, so the "related" links are placeholders and no network is needed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from appserver import CHROMIUM, CHROMIUM_FLAGS, SETTLED, start_app  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--picture", type=Path, default=ROOT / ".cache/pokemon-heldout/back/Charizard/006.png")
    parser.add_argument("--model", default="offline")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    args = parser.parse_args()
    folder = ROOT / ".cache" / "screenshot"
    folder.mkdir(parents=True, exist_ok=True)
    env = {"RECOMMENDER_MODEL": args.model, "RECOMMENDER_WEB_PROVIDER": "fake_web:FakeProvider"}
    process, url = start_app(folder, env)
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.goto(url)
            page.wait_for_selector("#query input[type=file]", state="attached", timeout=60_000)
            before = page.inner_text("#answer").strip()
            page.set_input_files("#query input[type=file]", str(args.picture))
            page.wait_for_function(SETTLED, arg=before, timeout=120_000)
            page.wait_for_function("document.querySelectorAll('#gallery img').length >= 8", timeout=60_000)
            page.wait_for_selector("#related a, #related p", timeout=60_000)
            page.wait_for_timeout(1000)  # thumbnails decoded
            page.screenshot(path=str(args.out))
            print(f"wrote {args.out}: {page.inner_text('#answer').splitlines()[0]}")
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    main()

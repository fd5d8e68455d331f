#!/usr/bin/env python
"""Plant deliberate bugs one at a time in a scratch copy of the checkout and check that the tests catch each.

    python scripts/mutants.py              # every mutant, each against the tests meant to catch it
    python scripts/mutants.py --list       # what each mutant changes
    python scripts/mutants.py 1 3          # only mutants 1 and 3

Each mutant is an exact text replacement in one source file (the script refuses to run one whose
text is no longer there, so the list keeps up with the code). The copy lives in a temporary
folder; the checkout is never touched. A mutant is caught when its tests fail; the score is
caught / planted. Run by hand (a few minutes on two cores), not by CI's default run.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    """A deliberate bug: where, what text becomes what, and the tests that must catch it."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS = (
    Mutant(
        "write_atomic writes in place",
        "recommender/files.py",
        """    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:""",
        """    try:
        with open(path, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    finally:""",
        ("tests/test_crash_safety.py",),
    ),
    Mutant(
        "link titles not HTML-escaped in the related-media panel",
        "app.py",
        """f'<li><a href="{html.escape(link.url)}" {a}>{html.escape(link.title)}</a> '""",
        """f'<li><a href="{html.escape(link.url)}" {a}>{link.title}</a> '""",
        ("tests/test_app_logic.py",),
    ),
    Mutant(
        "Service.index never reloads a rebuilt index",
        "recommender/service.py",
        "            if cached and cached[0] == stamp:",
        "            if cached:",
        ("tests/test_app_logic.py",),
    ),
    Mutant(
        "a rebuild that ignores a changed catalog",
        "recommender/service.py",
        "        if index.manifest.catalog.fingerprint == fingerprint:",
        "        if index.manifest.catalog.fingerprint or fingerprint:",
        ("tests/test_app_logic.py",),
    ),
    Mutant(
        "feedback steers identify's answer, not only its look-alikes",
        "recommender/recommend.py",
        "    scores = index.scores(query)[0]  # (N,)",
        "    scores = index.scores(steered)[0]  # (N,)",
        ("tests/test_app_logic.py", "tests/test_recommend.py"),
    ),
)


def scratch_copy() -> Path:
    """The checkout's tracked and untracked-but-not-ignored files, copied to a temporary folder."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    target = Path(tempfile.mkdtemp(prefix="mutants-"))
    for name in filter(None, files):
        source = ROOT / name.decode()
        if source.is_file():
            (target / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name.decode())
    return target


def plant(copy: Path, mutant: Mutant) -> str:
    """Apply `mutant` to the copy; returns the original text of its file (to put back)."""
    path = copy / mutant.path
    original = path.read_text()
    if original.count(mutant.old) != 1:
        raise SystemExit(f"mutant {mutant.name!r}: its text is not (once) in {mutant.path}; update scripts/mutants.py")
    path.write_text(original.replace(mutant.old, mutant.new))
    return original


def run(copy: Path, mutant: Mutant) -> tuple[bool, list[str], float]:
    """(caught, the tests that failed, seconds) for one planted mutant."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *mutant.tests]
    result = subprocess.run(command, cwd=copy, capture_output=True, text=True)
    failed = re.findall(r"^FAILED (\S+)", result.stdout, flags=re.MULTILINE)
    return result.returncode != 0, failed, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("numbers", nargs="*", type=int, help="mutants to plant (1-based; default all)")
    parser.add_argument("--list", action="store_true", help="say what each mutant changes and stop")
    args = parser.parse_args()
    chosen = [(n, m) for n, m in enumerate(MUTANTS, 1) if not args.numbers or n in args.numbers]
    if args.list:
        for n, mutant in chosen:
            print(f"{n}. {mutant.name} ({mutant.path}): {mutant.new.strip().splitlines()[0]}")
        return
    copy = scratch_copy()
    caught = 0
    try:
        for n, mutant in chosen:
            original = plant(copy, mutant)
            try:
                killed, failed, seconds = run(copy, mutant)
            finally:
                (copy / mutant.path).write_text(original)
            caught += killed
            verdict = f"caught by {', '.join(failed) or 'a failing run'}" if killed else "SURVIVED"
            print(f"{n}. {mutant.name}: {verdict} ({seconds:.0f} s)", flush=True)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    print(f"score: {caught}/{len(chosen)} mutants caught")
    sys.exit(0 if caught == len(chosen) else 1)


if __name__ == "__main__":
    main()

"""Index integrity when the indexer is killed: SIGKILL at random moments of builds and incremental updates.

Each run starts `python -m recommender index ...` in a subprocess and kills it with SIGKILL,
either after a random delay or a random instant after it starts writing files. The index on disk
must then be exactly the last good build (same ids, hashes and vectors) or exactly the new one,
and load with its checksums verified. `KILL_RUNS=100 KILL_MODEL=tiny pytest tests/test_crash_safety.py`
runs a longer campaign with the tiny DINOv2; CI uses the colour histogram, whose subprocess starts
in half a second (torch and transformers take five of CPU to import) and whose build and write
code is the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import SHAPES, draw_shape

from recommender import build_index
from recommender.errors import IndexLoadError
from recommender.index import Index

ROOT = Path(__file__).resolve().parent.parent
KILLS = int(os.environ.get("KILL_RUNS", "20"))
FIRST_BUILDS = 4  # of the kills, how many hit a first build (no previous index)


@dataclass(frozen=True)
class State:
    """What an index holds, to compare builds exactly."""

    ids: tuple[str, ...]
    hashes: tuple[str | None, ...]
    vectors: np.ndarray

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, State)
            and self.ids == other.ids
            and self.hashes == other.hashes
            and np.array_equal(self.vectors, other.vectors)
        )

    __hash__ = None  # type: ignore[assignment]


def state(index_dir: Path, name: str) -> State | None:
    """The index's content, checksums verified; None when no build was ever committed."""
    try:
        index = Index.load(name, index_dir=index_dir, verify=True)
    except IndexLoadError as exc:
        if not (index_dir / name / "manifest.json").exists():
            return None  # killed before the first commit: no manifest, nothing half-written counts
        raise AssertionError(f"a committed index no longer loads: {exc}") from None
    return State(tuple(i.id for i in index.items), tuple(i.sha256 for i in index.items), np.array(index.embeddings))


class Catalog:
    """Class folders of generated shapes that change between runs: added, changed and removed pictures."""

    def __init__(self, root: Path, rng: random.Random, size: int = 90) -> None:
        self.root, self.rng, self.seed = root, rng, 0
        for _ in range(size):
            self.add()

    def add(self) -> None:
        self.seed += 1
        label = self.rng.choice(sorted(SHAPES))
        shape, colour = SHAPES[label]
        (self.root / label).mkdir(parents=True, exist_ok=True)
        draw_shape(shape, colour, seed=self.seed, size=(128, 128)).save(self.root / label / f"{self.seed}.png")

    def change(self) -> None:
        for _ in range(2):
            self.add()
        files = sorted(self.root.rglob("*.png"))
        victim, changed = self.rng.sample(files, 2)
        victim.unlink()
        self.seed += 1
        draw_shape("circle", (self.seed % 255, 90, 90), seed=self.seed, size=(128, 128)).save(changed)


def tree(root: Path, *, skip: tuple[str, ...] = ()) -> list[str]:
    """Every file under `root` but the top-level folders in `skip` (the catalog changes on purpose)."""
    return [
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.relative_to(root).parts[0] not in (*skip, "catalog")
    ]


def _leftovers(folder: Path) -> bool:
    """Whether the folder holds files its manifest does not name: a run was killed while writing."""
    if not folder.exists():
        return False
    named = {"manifest.json", ".lock"}
    with contextlib.suppress(OSError, ValueError):
        named |= set(json.loads((folder / "manifest.json").read_text())["files"].values())
    return any(p.name not in named for p in folder.iterdir())


def reference(catalog: Path, model: str, folder: Path) -> State:
    """The index a complete run makes of the catalog as it is now, built in this process."""
    shutil.rmtree(folder, ignore_errors=True)
    build_index(catalog, name="ref", model=model, index_dir=folder, progress=False)
    result = state(folder, "ref")
    assert result is not None
    return result


def run_and_kill(
    command: list[str], env: dict[str, str], folder: Path, rng: random.Random, expected_seconds: float
) -> tuple[bool, float]:
    """Start the indexer and SIGKILL it; returns (killed while running, seconds it ran)."""
    before = set(os.listdir(folder)) if folder.exists() else set()
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if rng.random() < 0.5:  # at a random moment of the whole run
        time.sleep(rng.uniform(0.0, expected_seconds))
    else:  # at a random instant once it writes: the data files, the manifest, the clean-up
        while process.poll() is None and (set(os.listdir(folder)) if folder.exists() else set()) <= before:
            time.sleep(0.0005)
        time.sleep(rng.uniform(0.0, 0.02))
    alive = process.poll() is None
    if alive:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    return alive, time.perf_counter() - started


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_during_builds_and_updates_never_loses_the_last_good_index(tmp_path, tiny_model):
    model = {"tiny": str(tiny_model), "histogram": "colour-histogram"}[os.environ.get("KILL_MODEL", "histogram")]
    seed = int(os.environ.get("KILL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"KILL_SEED={seed}")
    catalog = Catalog(tmp_path / "catalog", rng)
    index_dir, folder = tmp_path / "index", tmp_path / "index" / "k"
    env = {
        **os.environ,
        "RECOMMENDER_DEVICE": "cpu",
        "RECOMMENDER_CACHE_DIR": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    }
    command = [
        sys.executable,
        "-m",
        "recommender",
        "--index-dir",
        str(index_dir),
        "index",
        str(catalog.root),
        "--name",
        "k",
        "--model",
        model,
        "-q",
    ]

    # A clean run first: how long a whole run takes here, for the random delays.
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
    expected = max(0.3, time.perf_counter() - started)
    shutil.rmtree(index_dir)
    outside = sorted(tree(tmp_path, skip=("index", "ref")))

    kills = {"first build": 0, "update": 0}
    outcomes = {"previous kept": 0, "new committed": 0, "nothing yet": 0, "mid-write (files left over)": 0}
    good = None  # the last good build, as found on disk
    target = reference(catalog.root, model, tmp_path / "ref")
    attempts = 0
    while sum(kills.values()) < KILLS:
        attempts += 1
        assert attempts < 4 * KILLS, f"only {kills} kills landed in {attempts} runs"
        phase = "first build" if kills["first build"] < FIRST_BUILDS else "update"
        if phase == "first build":
            shutil.rmtree(index_dir, ignore_errors=True)
            good = None
        elif good is None:  # the first update needs a committed build to update
            subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
            good = state(index_dir, "k")
            assert good == target
            catalog.change()
            target = reference(catalog.root, model, tmp_path / "ref")
        killed, seconds = run_and_kill(command, env, folder, rng, expected)
        now = state(index_dir, "k")
        outcomes["mid-write (files left over)"] += killed and _leftovers(folder)
        if now is None:
            assert good is None, "a committed index disappeared"
            outcomes["nothing yet"] += killed
        elif now == good:
            outcomes["previous kept"] += killed
        else:
            assert now == target, "the index on disk is neither the last good build nor the new one"
            outcomes["new committed"] += killed
            good = now
            if phase == "update":
                catalog.change()
                target = reference(catalog.root, model, tmp_path / "ref")
        if killed:
            kills[phase] += 1
        expected = max(expected, seconds) if not killed else expected

    # After all that, a run that is left alone brings the index up to date, and nothing is left over.
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
    assert state(index_dir, "k") == reference(catalog.root, model, tmp_path / "ref")
    files = sorted(p.name for p in folder.iterdir())  # temporaries and orphans of killed runs are gone
    assert files[0] == ".lock" and files[-2] == "manifest.json" and len(files) == 5, files
    assert files[-1].startswith("skipped-"), files  # one list of what the last build skipped
    assert sorted(tree(tmp_path, skip=("index", "ref"))) == outside  # nothing written beside the index
    print(f"{sum(kills.values())} kills ({kills}) in {attempts} runs: {outcomes}")

"""Index integrity when the indexer is killed: SIGKILL at every file event of builds and incremental updates.

A trace of a whole `recommender index ...` run lists its file events under the index folder
(tests/crashpoint/sitecustomize.py): the middle of each file's first write, its close, each rename
and each removal, for the checkpoint shard, the embeddings, the items, the manifest and the
clean-up. The run is then repeated from the same starting state once per event and killed with
SIGKILL exactly there. The index on disk must then be exactly the last good build (same ids,
hashes and vectors) or exactly the new one, load with its checksums verified, switch from old to
new at one event only, and be brought up to date by the next run, which leaves nothing over.
Runs are forks of one warm interpreter (tests/crashpoint/zygote.py), so that every event fits
CI's budget; CI uses the colour histogram, whose build and write code is that of every backbone.
`KILL_MODEL=tiny pytest tests/test_crash_safety.py` does the same with the tiny DINOv2.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import SHAPES, draw_shape

from recommender import build_index
from recommender.errors import IndexLoadError
from recommender.index import Index

ROOT = Path(__file__).resolve().parent.parent
CRASHPOINT = ROOT / "tests" / "crashpoint"


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


def reference(catalog: Path, model: str, folder: Path) -> State:
    """The index a complete run makes of the catalog as it is now, built in this process."""
    shutil.rmtree(folder, ignore_errors=True)
    build_index(catalog, name="ref", model=model, index_dir=folder, progress=False)
    result = state(folder, "ref")
    assert result is not None
    return result


class Indexer:
    """`recommender index` runs in forks of one warm interpreter, each traced or killed at one file event."""

    def __init__(self, tmp_path: Path, folder: Path, args: list[str]) -> None:
        self.args, self.log = args, tmp_path / "events.log"
        env = {
            **os.environ,
            "RECOMMENDER_DEVICE": "cpu",
            "RECOMMENDER_CACHE_DIR": str(tmp_path / "cache"),
            "RECOMMENDER_TEST_CRASH_DIR": str(folder),
            "PYTHONPATH": os.pathsep.join([str(CRASHPOINT), str(ROOT)]),  # its sitecustomize guards the network too
        }
        command = [sys.executable, str(CRASHPOINT / "zygote.py")]
        self.process = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, *, at: int = 0) -> tuple[int, list[str]]:
        """One run, killed at event `at` (1, 2, ...; 0: not killed): its exit status and the events it logged."""
        self.log.write_text("")
        job = {
            "args": self.args,
            "env": {"RECOMMENDER_TEST_CRASH_AT": str(at), "RECOMMENDER_TEST_CRASH_LOG": str(self.log)},
        }
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        status = json.loads(self.process.stdout.readline())["status"]
        return status, self.log.read_text().splitlines()

    def close(self) -> None:
        assert self.process.stdin
        self.process.stdin.close()
        self.process.wait(timeout=60)


def leftovers(folder: Path) -> list[str]:
    """Files in the index folder beyond the lock, the manifest and the two data files it names."""
    named = {"manifest.json", ".lock", *json.loads((folder / "manifest.json").read_text())["files"].values()}
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.name not in named)


def same_as_the_one_before(event: str) -> bool:
    """Events that leave the disk as the one before: a close (then fsync) before its rename, a temporary's
    removal after it was renamed away (a no-op). Kills there would repeat the one before."""
    return event.startswith("closed ") or (event.startswith("before removal of ") and event.endswith(".tmp"))


def kill_at_every_event(indexer: Indexer, index_dir: Path, good: State | None, target: State) -> dict[str, str]:
    """Kill a run from the same starting state at each event of its trace; returns each event's outcome."""
    before = index_dir.parent / "before"
    shutil.rmtree(before, ignore_errors=True)
    if index_dir.exists():
        shutil.copytree(index_dir, before)
    status, trace = indexer.run()
    assert status == 0 and trace, (status, trace)
    outcomes: dict[str, str] = {}
    for at, event in enumerate(trace, 1):
        if same_as_the_one_before(event):
            continue
        shutil.rmtree(index_dir, ignore_errors=True)
        if before.exists():
            shutil.copytree(before, index_dir)
        status, killed = indexer.run(at=at)
        assert status == -signal.SIGKILL and killed == [event], f"event {at} ({event}) was not reached: {killed}"
        now = state(index_dir, "k")  # raises when a committed index no longer loads
        if now is None:
            assert good is None, f"killed at {event}: a committed index disappeared"
            outcomes[event] = "nothing yet"
        elif now == good:
            outcomes[event] = "previous kept"
        else:
            assert now == target, f"killed at {event}: the index is neither the last good build nor the new one"
            outcomes[event] = "new committed"
        status, _ = indexer.run()  # a run left alone afterwards brings the index up to date
        assert status == 0 and state(index_dir, "k") == target, f"not recovered after a kill at {event}"
        assert leftovers(index_dir / "k") == [], f"left over after a kill at {event}: {leftovers(index_dir / 'k')}"
    return outcomes


def check_outcomes(outcomes: dict[str, str], *, first: bool) -> None:
    """Every write phase was hit, and the index switched from old to new at the manifest's rename, once."""
    events = list(outcomes)
    for wanted in (
        "mid-write .embeddings-T.safetensors.tmp",
        "mid-write .items-T.json.tmp",
        "mid-write .manifest.json.tmp",
    ):
        assert wanted in events, f"no {wanted!r} among the run's events: {events}"
    commit = events.index("after rename .manifest.json.tmp -> manifest.json")
    old = "nothing yet" if first else "previous kept"
    assert [outcomes[e] for e in events[:commit]] == [old] * commit, outcomes
    assert {outcomes[e] for e in events[commit:]} == {"new committed"}, outcomes


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_at_every_write_phase_keeps_the_last_good_index_or_commits_the_new_one(tmp_path, tiny_model):
    model = {"tiny": str(tiny_model), "histogram": "colour-histogram"}[os.environ.get("KILL_MODEL", "histogram")]
    rng = random.Random(int(os.environ.get("KILL_SEED", "0")))  # the same catalogs, the same events, every run
    catalog = Catalog(tmp_path / "catalog", rng)
    index_dir = tmp_path / "index"
    args = ["--index-dir", str(index_dir), "index", str(catalog.root), "--name", "k", "--model", model, "-q"]
    outside = sorted(tree(tmp_path, skip=("index", "ref", "before", "events.log")))
    indexer = Indexer(tmp_path, index_dir / "k", args)
    try:
        target = reference(catalog.root, model, tmp_path / "ref")
        first = kill_at_every_event(indexer, index_dir, None, target)
        check_outcomes(first, first=True)
        good = target  # each kill's recovery run left the index at the build
        catalog.change()  # two pictures added, one removed, one changed: an incremental update
        target = reference(catalog.root, model, tmp_path / "ref")
        update = kill_at_every_event(indexer, index_dir, good, target)
        check_outcomes(update, first=False)
    finally:
        indexer.close()
    assert sorted(tree(tmp_path, skip=("index", "ref", "before", "events.log"))) == outside  # nothing written beside
    counts = {
        phase: {o: list(found.values()).count(o) for o in set(found.values())}
        for phase, found in (("first build", first), ("update", update))
    }
    print(f"{len(first) + len(update)} kills, one at each event: {counts}")

"""Attacks of a public Space on the running app: does each hold, and what do normal users feel meanwhile?

    python benchmarks/attack.py [--model offline|tiny|small|FOLDER] [--users 3] [--only NAME ...]

Starts `python app.py` on loopback with the public defaults (the Pokémon index is built on its
first start and kept under .cache/bench-attack/), measures three normal users alone (the
baseline: each from an address of its own, asking `identify` about a sprite every 0.2 s), then
runs each attack of issue 16 while the same users go on. It prints one row per attack: held or
FAILED with what was seen, the normal users' p50/p95 during it beside the baseline, and the
server's peak RSS (sampled every 50 ms from /proc). Every attack is bounded in count and time and
stays on loopback. Held means: refused with its one-line reason (the same reason whether or not a
named path exists), in seconds, the server still serving, nothing left on disk.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(Path(__file__).resolve().parent)]

#: What a stranger's path is answered with through every event: the same line whatever is there.
from recommender.guard import NEVER_FETCHED, NOT_UPLOADED  # noqa: E402
from recommender.uploads import session_key  # noqa: E402

#: The memory ceiling docs/security.md sets for the server process.
CEILING_MB = 2048


@dataclass(frozen=True)
class Server:
    url: str
    pid: int
    folder: Path  # the server's own folder (index/, data/)


@dataclass(frozen=True)
class Verdict:
    held: bool
    seen: str  # what the attacker got, in a few words


class Memory:
    """The server's RSS sampled every 50 ms in a thread: the peak since the last `reset`."""

    def __init__(self, pid: int) -> None:
        from stranger import rss_mb

        self._read = lambda: rss_mb(pid)
        self.peak = self.overall = self._read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                mb = self._read()
            except (OSError, AssertionError):  # the server is gone: the attack's row says so
                return
            self.peak, self.overall = max(self.peak, mb), max(self.overall, mb)

    def reset(self) -> None:
        self.peak = self._read()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class Users:
    """Normal users in a thread until `stop()`: their latencies (s) as they come, and what went wrong for them."""

    def __init__(self, url: str, users: int) -> None:
        self.url, self.users = url, users
        self.times: list[float] = []
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from stranger import normal_users

        try:
            normal_users(self.url, users=self.users, seconds=86_400, apart=True, stop=self._stop, into=self.times)
        except Exception as exc:  # a normal user's failure is reported in the attack's row
            self.error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:80]}"

    def since(self, start: int) -> list[float]:
        """The latencies of the answers that came after the first `start`."""
        return self.times[start:]

    def __enter__(self) -> Users:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def one_line(text: str) -> bool:
    return "\n" not in text and "Traceback" not in text and "Unexpected error" not in text


# ----------------------------------------------------------------------------- the attacks


def stranger(server: Server):
    from visitor import Visitor

    return Visitor(server.url)


def named_paths(server: Server, tmp: Path) -> Verdict:
    """1. File objects without `meta` naming server files: /etc/passwd, a catalog picture, a missing file."""
    guest = stranger(server)
    paths = ["/etc/passwd", str(ROOT / "assets/pokemon/sprites/025.png"), str(tmp / "missing.png"), str(ROOT)]
    errors = {guest.error("identify", [{"path": path}]) for path in paths}
    return Verdict(errors == {NOT_UPLOADED}, f"{len(paths)} paths -> {len(errors)} distinct answer(s)")


def endless_file(server: Server, tmp: Path) -> Verdict:
    """1. `{"path": "/dev/zero"}`: must be refused before any read."""
    started = time.perf_counter()
    error = stranger(server).error("identify", [{"path": "/dev/zero"}])
    seconds = time.perf_counter() - started
    return Verdict(error == NOT_UPLOADED and seconds < 5, f"refused in {seconds:.2f} s")


def file_route(server: Server, tmp: Path) -> Verdict:
    """1, 8. Gradio's file route: a server path, a traversal, and a public URL it would fetch."""
    import httpx

    codes = {}
    for name, target in {
        "path": "/etc/passwd",
        "traversal": "../../../../etc/passwd",
        "url": "https://example.com/x.png",
    }.items():
        response = httpx.get(f"{server.url}/gradio_api/file={target}", timeout=30)
        leaked = response.status_code == 200 and ("root:" in response.text or name == "url")
        codes[name] = "LEAKED" if leaked else response.status_code
    url_refused = httpx.get(f"{server.url}/gradio_api/file=https://example.com/x.png", timeout=30)
    held = "LEAKED" not in codes.values() and NEVER_FETCHED in url_refused.text
    return Verdict(held, ", ".join(f"{k} {v}" for k, v in codes.items()))


def picture_bomb(server: Server, tmp: Path) -> Verdict:
    """2. A 172 KB 16-bit grey PNG of 9400x9400 as a query (was 31 s and 3.4 GB)."""
    from hostile import picture_bombs

    path = tmp / "grey16-9400.png"
    path.write_bytes(picture_bombs()["grey16-9400.png"])
    guest = stranger(server)
    started = time.perf_counter()
    message = guest.call("identify", [guest.upload(path)], timeout=60)
    seconds = time.perf_counter() - started
    said = message["output"]["data"][0]["message"] if message["success"] else str(message["output"].get("error"))
    return Verdict(one_line(said) and seconds < 20, f"{seconds:.1f} s: {said[:40]}")


def bomb_build(server: Server, tmp: Path) -> Verdict:
    """2. A 516 KB zip of three such PNGs as a catalog (was 7.9 GB)."""
    from hostile import bomb_zip

    guest = stranger(server)
    started = time.perf_counter()
    message = guest.call("build_upload", [guest.upload(bomb_zip(tmp / "bombs.zip")), "bombs"], timeout=300)
    seconds = time.perf_counter() - started
    said = message["output"]["data"][0] if message["success"] else str(message["output"].get("error"))
    return Verdict(one_line(said) and seconds < 120, f"{seconds:.0f} s: {said[:40]}")


def greedy_client(sessions: str, address: str) -> Callable[[Server, Path], Verdict]:
    """3. One client keeping 80 `identify` events coming, with one session or a new one per event."""

    def attack(server: Server, tmp: Path) -> Verdict:
        from stranger import PIKACHU, Greedy, api_fn, upload

        stored = upload(server.url, PIKACHU)
        with Greedy(server.url, api_fn(server.url), stored, sessions=sessions, address=address) as client:
            time.sleep(8)
        codes = dict(sorted(client.codes.items()))
        return Verdict(bool(codes.get(429)) and not codes.get(503), "joins by status " + str(codes))

    attack.__doc__ = greedy_client.__doc__
    return attack


def many_pictures(server: Server, tmp: Path) -> Verdict:
    """4. An 8.5 MB zip of 50,000 tiny PNGs (was 40 minutes of CPU)."""
    from hostile import make_zip, tiny_pngs

    archive = make_zip(tmp / "many.zip", tiny_pngs(50_000, side=1))  # 1x1: 8.5 MB, as in the review
    guest = stranger(server)
    started = time.perf_counter()
    error = guest.error("build_upload", [guest.upload(archive), "many"])
    seconds = time.perf_counter() - started
    return Verdict(
        "more than the" in error and seconds < 15, f"{archive.stat().st_size / 2**20:.1f} MB, {seconds:.1f} s"
    )


def million_rows(server: Server, tmp: Path) -> Verdict:
    """4. A CSV of 10^6 rows naming one picture (ran past 600 s)."""
    from hostile import make_zip, png

    archive = make_zip(tmp / "rows.zip", {"items.csv": b"image\n" + b"a.png\n" * 1_000_000, "a.png": png(1)})
    guest = stranger(server)
    started = time.perf_counter()
    error = guest.error("build_upload", [guest.upload(archive), "rows"])
    seconds = time.perf_counter() - started
    return Verdict("1,000,000 rows" in error and seconds < 15, f"refused in {seconds:.1f} s")


def client_leaves(server: Server, tmp: Path) -> Verdict:
    """4. A long build whose page goes away mid-way (it used to run on)."""
    from hostile import make_zip, tiny_pngs

    guest = stranger(server)
    folder = server.folder / "data" / "sessions" / session_key(guest.session)
    guest.join("build_upload", [guest.upload(make_zip(tmp / "long.zip", tiny_pngs(2_900))), "long"])
    with guest.messages() as stream:
        for message in stream:
            if message["msg"] == "progress" and (message["progress_data"] or [{}])[0].get("index", 0) >= 50:
                break
            if message["msg"] == "process_completed":
                return Verdict(False, "the build ended before it could be left")
    left = time.perf_counter()
    building = lambda: (folder / "catalogs" / "long").exists() or (folder / "index" / "long").exists()  # noqa: E731
    while building() and time.perf_counter() - left < 30:
        time.sleep(0.05)
    seconds = time.perf_counter() - left
    return Verdict(not building(), f"stopped and removed {seconds:.1f} s after")


def high_ratio_zip(server: Server, tmp: Path) -> Verdict:
    """5. A zip that unpacks 185 times larger (left 1.8 GB on disk)."""
    from hostile import high_ratio, png

    archive = high_ratio(tmp / "big.zip", 150, keep=png(1))
    guest = stranger(server)
    error = guest.error("build_upload", [guest.upload(archive), "big"])
    left = server.folder / "data" / "sessions" / session_key(guest.session)
    kept = sum(p.stat().st_size for p in left.rglob("*") if p.is_file()) if left.exists() else 0
    return Verdict("unpacks to" in error and kept == 0, f"{archive.stat().st_size / 2**20:.1f} MB zip, {kept} B kept")


def upload_flood(server: Server, tmp: Path) -> Verdict:
    """5. 999 files in one upload request."""
    import httpx

    files = [("files", (f"f{i}.png", b"x")) for i in range(999)]
    response = httpx.post(f"{server.url}/gradio_api/upload", files=files, timeout=60)
    return Verdict(response.status_code >= 400, f"HTTP {response.status_code}")


def operator_name(server: Server, tmp: Path) -> Verdict:
    """6. An upload named like the operator's index."""
    from hostile import make_zip, png

    manifest = server.folder / "index" / "pokemon" / "manifest.json"
    before = manifest.read_bytes()
    owner = stranger(server)
    owner.answer("build_upload", [owner.upload(make_zip(tmp / "pokemon.zip", {"a.png": png(1)})), "pokemon"])
    others = stranger(server).choices()
    held = manifest.read_bytes() == before and others == ["pokemon"]
    return Verdict(held, f"operator's manifest {'kept' if manifest.read_bytes() == before else 'CHANGED'}")


def someone_elses(server: Server, tmp: Path) -> Verdict:
    """Issue 18: searching another session's upload by its name through the named API."""
    from hostile import make_zip, png
    from stranger import PIKACHU

    owner, other = stranger(server), stranger(server)
    owner.answer("build_upload", [owner.upload(make_zip(tmp / "mine.zip", {"a.png": png(1), "b.png": png(2)})), "mine"])
    error = other.error("search", [other.upload(PIKACHU), 4, "upload:mine"])
    return Verdict("no uploaded index named" in error, error[:50])


def deep_member(server: Server, tmp: Path) -> Verdict:
    """7. A zip member nested 2,000 folders deep (was RecursionError)."""
    from hostile import make_zip, png

    guest = stranger(server)
    archive = make_zip(tmp / "deep.zip", {"a/" * 2000 + "deep.png": png(1), "ok.png": png(2)})
    report = guest.answer("build_upload", [guest.upload(archive), "deep"])[0]
    return Verdict("nested 2,000 folders deep" in report, "skipped with its reason" if "nested" in report else report)


def huge_cell(server: Server, tmp: Path) -> Verdict:
    """7. A CSV field over 131,072 characters (was "Unexpected error (Error)")."""
    from hostile import make_zip, png

    guest = stranger(server)
    rows = b"image,label\na.png," + b"x" * 200_000 + b"\n"
    error = guest.error(
        "build_upload", [guest.upload(make_zip(tmp / "cell.zip", {"items.csv": rows, "a.png": png(1)})), "cell"]
    )
    return Verdict(one_line(error), error[:50])


ATTACKS: dict[str, Callable[[Server, Path], Verdict]] = {
    "paths without meta": named_paths,
    "/dev/zero": endless_file,
    "file route: path, ../, URL": file_route,
    "16-bit PNG bomb query": picture_bomb,
    "zip of three bombs": bomb_build,
    "greedy, one session": greedy_client("one", "127.0.0.1"),
    "greedy, many sessions": greedy_client("many", "127.0.0.2"),
    "50,000-picture zip": many_pictures,
    "10^6-row CSV": million_rows,
    "build, client leaves": client_leaves,
    "185:1 zip": high_ratio_zip,
    "999 files, one upload": upload_flood,
    "upload named like operator's": operator_name,
    "another session's upload": someone_elses,
    "member 2,000 folders deep": deep_member,
    "CSV field of 200,000 chars": huge_cell,
}


def run(server: Server, names: list[str], users: int) -> None:
    memory = Memory(server.pid)
    rows, worst = [], 0.0
    with Users(server.url, users=users) as normal:
        time.sleep(15)  # their clients connect, then the baseline: no attack
        alone = normal.since(users)  # each client's first answer is its slowest (connecting), left out
        base50, base95 = statistics.median(alone), percentile(alone, 95)
        print(f"normal users alone: {len(alone)} answers, p50 {base50:.3f} s, p95 {base95:.3f} s\n")
        for name in names:
            memory.reset()
            first = len(normal.times)
            with tempfile.TemporaryDirectory(prefix="attack-") as tmp:
                started = time.perf_counter()
                try:
                    verdict = ATTACKS[name](server, Path(tmp))
                except Exception as exc:  # an attack that breaks the attacker's expectations is a failure to look at
                    verdict = Verdict(False, f"{type(exc).__name__}: {' '.join(str(exc).split())[:60]}")
                time.sleep(max(0.0, 3 - (time.perf_counter() - started)))  # a few answers for the users at least
            during = normal.since(first)
            p50, p95 = (statistics.median(during) if during else float("nan")), percentile(during, 95)
            worst = max(worst, p95 / base95)
            held = verdict.held and not normal.error and p95 <= 3 * base95
            seen = verdict.seen + (f"; normal users: {normal.error}" if normal.error else "")
            rows.append(
                {
                    "attack": name,
                    "held": "held" if held else "FAILED",
                    "seen": seen,
                    "users p50 s": f"{p50:.2f}",
                    "users p95 s": f"{p95:.2f}",
                    "p95 / alone": f"{p95 / base95:.1f}x",
                    "peak RSS MB": f"{memory.peak:.0f}",
                }
            )
            print(f"  {name}: {rows[-1]['held']} ({seen})", flush=True)
    memory.close()
    from common import table

    print("\n" + table(rows))
    held = sum(row["held"] == "held" for row in rows)
    print(
        f"\n{held} of {len(rows)} held; normal users' p95 alone {base95:.2f} s, at worst {worst:.1f}x that during "
        f"an attack (limit 3x); server peak RSS {memory.overall:.0f} MB (ceiling {CEILING_MB} MB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="offline", help="offline (the Space's CPU choice), tiny, small or a folder")
    parser.add_argument("--users", type=int, default=3, help="normal users beside the attacks")
    parser.add_argument("--only", nargs="*", choices=list(ATTACKS), default=list(ATTACKS), metavar="NAME")
    args = parser.parse_args()
    from common import machine
    from load import model_folder, start_server

    folder = ROOT / ".cache" / "bench-attack"
    folder.mkdir(parents=True, exist_ok=True)
    model = model_folder(args.model, folder)
    server_dir = folder / (args.model if args.model in ("offline", "small", "tiny") else "custom")
    server_dir.mkdir(exist_ok=True)
    started = time.perf_counter()
    process, url = start_server(model, server_dir)
    print(f"{machine()}\napp.py ({args.model}) serving {url} after {time.perf_counter() - started:.0f} s")
    try:
        run(Server(url, process.pid, server_dir), args.only, args.users)
        if process.poll() is not None:
            print("the server died during the run")
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    main()

"""Unpacking a zip that a stranger uploaded: only pictures and CSVs, only inside its folder, within bounds.

Zip bombs (too many members, too many bytes, a suspicious compression ratio) and a web upload's
limits are refused before anything is written; members that would leave the folder (absolute
paths, `..`, links), special files and members nested too deep are skipped with their reason.
After a build, `prune_catalog` keeps only the pictures the index holds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

from .catalog import Skip, is_image_file
from .errors import BuildStopped, CatalogError, LimitExceeded

#: Limits on an uploaded archive: members, total unpacked bytes, and unpacked/packed ratio (zip bombs).
ARCHIVE_MAX_MEMBERS = 50_000
ARCHIVE_MAX_BYTES = 2 << 30
ARCHIVE_MAX_RATIO = 200
#: Members nested deeper than this many folders are skipped (a catalog needs two or three).
ARCHIVE_MAX_DEPTH = 32
# How many members are unpacked between two calls of `should_stop`.
_STOP_EVERY = 64


def unpacked_size(archive: str | os.PathLike) -> int:
    """The bytes a zip says its members unpack to: the most `extract_archive` can write from it."""
    with _open_zip(Path(archive)) as bundle:
        return sum(m.file_size for m in bundle.infolist())


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CatalogError(f"{path.name}: not a readable zip archive ({exc})") from None


def extract_archive(
    archive: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    max_bytes: int | None = None,
    max_pictures: int | None = None,
    max_rows: int | None = None,
    should_stop: Callable[[], str | None] | None = None,
) -> tuple[Path, list[Skip]]:
    """Unpack a zip of pictures (class folders, a flat folder, or a CSV with its pictures) into `dest`.

    Only picture files and CSVs are written, and only inside `dest`: members with absolute paths,
    `..`, links, other special files or too many folders are skipped with a reason; a zip bomb
    (too many members, too many bytes, or a suspicious compression ratio) is refused before
    anything is written. The limits of a web upload raise `LimitExceeded`, also before anything
    is written: `max_bytes` unpacked, `max_pictures` picture files; `max_rows` refuses a CSV with
    more rows once it is unpacked. `should_stop` is asked between members; what it answers
    (why to stop) is raised as `BuildStopped`. Returns the catalog source to index (the CSV if
    there is exactly one, else the folder).
    """
    path, target = Path(archive), Path(dest).resolve()
    skipped: list[Skip] = []
    csvs: list[Path] = []
    with _open_zip(path) as bundle:
        members = bundle.infolist()
        _check_totals(path.name, members, max_bytes=max_bytes, max_pictures=max_pictures)
        target.mkdir(parents=True, exist_ok=True)
        for number, member in enumerate(members):
            if should_stop is not None and number % _STOP_EVERY == 0 and (reason := should_stop()):
                raise BuildStopped(reason)
            if member.is_dir() or member.filename.startswith("__MACOSX/") or Path(member.filename).name.startswith("."):
                continue
            out, why = _destination(member, target)
            why = why or _write(bundle, member, out)
            if why:
                skipped.append(Skip(_shown(member.filename), why))
                continue
            if out.suffix.lower() == ".csv":
                if max_rows is not None and (lines := _count_lines(out)) > max_rows + 1:  # + the header
                    raise LimitExceeded(
                        f"{_shown(member.filename)}: {lines - 1:,} rows, more than the "
                        f"{max_rows:,} a web upload may list"
                    )
                csvs.append(out)
    if len(csvs) == 1:
        return csvs[0], skipped
    if len(csvs) > 1:
        skipped.append(Skip(", ".join(p.name for p in csvs), "several CSVs: indexing the pictures as folders"))
    return target, skipped


def _check_totals(
    name: str, members: list[zipfile.ZipInfo], *, max_bytes: int | None, max_pictures: int | None
) -> None:
    """Refuse a zip bomb, or an upload over its limits, from the archive's directory alone."""
    if len(members) > ARCHIVE_MAX_MEMBERS:
        raise CatalogError(f"{name}: {len(members):,} files, more than the {ARCHIVE_MAX_MEMBERS:,} allowed")
    total = sum(m.file_size for m in members)
    packed = max(1, sum(m.compress_size for m in members))
    if total > ARCHIVE_MAX_BYTES or (total / packed > ARCHIVE_MAX_RATIO and total > 64 << 20):
        raise CatalogError(
            f"{name}: unpacks to {total / 1e6:,.0f} MB from {packed / 1e6:,.1f} MB; refused as a possible zip bomb"
        )
    if max_bytes is not None and total > max_bytes:
        raise LimitExceeded(
            f"{name}: unpacks to {total / 1e6:,.1f} MB, more than the {max_bytes / 1e6:,.0f} MB a web upload may hold"
        )
    pictures = sum(
        not m.is_dir() and not m.filename.startswith("__MACOSX/") and is_image_file(Path(m.filename)) for m in members
    )
    if max_pictures is not None and pictures > max_pictures:
        raise LimitExceeded(
            f"{name}: {pictures:,} pictures, more than the {max_pictures:,} a web upload may "
            "hold; index larger catalogs from the command line"
        )


def _destination(member: zipfile.ZipInfo, target: Path) -> tuple[Path, str | None]:
    """Where a member would be written inside `target`, or why it is skipped."""
    name = member.filename
    parts = Path(name.replace("\\", "/")).parts
    out = target.joinpath(*parts)
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        return out, "path leaves the archive's folder"
    if len(parts) - 1 > ARCHIVE_MAX_DEPTH:  # pathlib's mkdir would recurse once per folder
        return out, f"nested {len(parts) - 1:,} folders deep, more than the {ARCHIVE_MAX_DEPTH} allowed"
    if stat.S_IFMT(member.external_attr >> 16) not in (0, stat.S_IFREG):  # type bits unset: most zippers' files
        return out, "a link or special file, not a regular file"
    if not (is_image_file(out) or out.suffix.lower() == ".csv"):
        return out, "neither a picture nor a CSV"
    if not _inside(out.resolve(), target):
        return out, "path leaves the archive's folder"
    return out, None


def _write(bundle: zipfile.ZipFile, member: zipfile.ZipInfo, out: Path) -> str | None:
    """Unpack one member to `out`; why it could not be, or None."""
    try:
        # A name too long for the file system, or a file where a folder must go, fails here.
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot be written here ({exc.strerror or exc})"
    try:
        # zipfile never returns more than the declared size, which the totals bounded.
        with bundle.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        out.unlink(missing_ok=True)
        return f"corrupt in the archive ({exc})"
    except OSError as exc:
        with contextlib.suppress(OSError):
            out.unlink(missing_ok=True)
        return f"cannot be written here ({exc.strerror or exc})"
    return None


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _shown(name: str, limit: int = 512) -> str:
    """An archive member's name as reports show it: a very long one cut in the middle."""
    return name if len(name) <= limit else f"{name[: limit // 2]}…{name[-limit // 4 :]}"


def _count_lines(path: Path) -> int:
    """Lines in a text file, counted in blocks (a CSV row is at least one line)."""
    count, last = 0, b"\n"
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def prune_catalog(folder: str | os.PathLike, keep: Iterable[str | os.PathLike]) -> int:
    """Delete every file under `folder` but those in `keep` (and the folders left empty); returns bytes freed.

    After a web build, only the pictures its index holds are needed: skipped, unreadable and
    repeated members, and the CSV (its rows are in the index), would only take disk space.
    """
    root = Path(folder)
    wanted = {os.path.realpath(p) for p in keep}
    freed = 0
    for dirpath, dirnames, filenames in os.walk(root, topdown=False, followlinks=False):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.realpath(path) not in wanted:
                with contextlib.suppress(OSError):
                    freed += os.lstat(path).st_size
                    os.unlink(path)
        for name in dirnames:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(dirpath, name))  # only when empty
    return freed

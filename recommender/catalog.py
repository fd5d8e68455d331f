"""Reading a catalog (class folders, a flat folder, or a CSV) into `Item`s, with a report of what was skipped."""

from __future__ import annotations

import codecs
import contextlib
import csv
import itertools
import os
import shutil
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Literal

from .errors import BuildStopped, CatalogError, LimitExceeded

#: File name endings taken as pictures when a folder is scanned.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".avif")
#: Column names tried, in order, when no --image-column / --label-column / id column is given.
IMAGE_COLUMNS = ("image", "image_path", "path", "file", "filename", "file_name", "img", "picture")
LABEL_COLUMNS = ("label", "class", "class_name")
ID_COLUMNS = ("id", "item_id", "sku")

Kind = Literal["folders", "flat", "csv"]


@dataclass(frozen=True)
class Item:
    """One catalog picture: a stable id, its path relative to the catalog root, label and metadata."""

    id: str
    path: str
    label: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    sha256: str | None = None


@dataclass(frozen=True)
class Skip:
    """A row or file left out of a catalog, and why."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class Catalog:
    """What a source holds: items in a stable order, the folder their paths are relative to, and skips."""

    source: Path
    root: Path
    kind: Kind
    items: list[Item]
    skipped: list[Skip] = field(default_factory=list)
    columns: dict[str, str | None] = field(default_factory=dict)

    @property
    def labeled(self) -> bool:
        return any(item.label is not None for item in self.items)


def read_catalog(
    source: str | os.PathLike,
    *,
    limit: int | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    id_column: str | None = None,
    confined: bool = False,
) -> Catalog:
    """Read a folder of class sub-folders (labeled), a flat folder (unlabeled) or a CSV.

    Unreadable rows and missing files are skipped with a reason; a source with no usable
    item raises `CatalogError`. `limit` keeps the first N items (a quick trial run).
    `confined` skips CSV rows naming a file outside the CSV's folder (after following links):
    for catalogs that strangers upload, whose CSV could otherwise list any picture on the server.
    """
    path = Path(source).expanduser()
    if limit is not None and limit < 1:
        raise CatalogError(f"--limit must be at least 1, not {limit}")
    if not path.exists():
        raise CatalogError(f"{path}: no such file or folder")
    if path.is_dir():
        if image_column or label_column or id_column:
            raise CatalogError("--image-column, --label-column and id columns only apply to CSV catalogs")
        catalog = _read_folder(path)
    elif path.suffix.lower() in (".csv", ".tsv", ".txt"):
        catalog = _read_csv(path, image_column=image_column, label_column=label_column, id_column=id_column,
                            confined=confined)
    else:
        raise CatalogError(f"{path}: a catalog is a folder of pictures or a CSV file")
    if limit is not None:
        catalog.items = catalog.items[:limit]
    if not catalog.items:
        found = f" ({len(catalog.skipped)} skipped: {catalog.skipped[0]})" if catalog.skipped else ""
        raise CatalogError(
            f"{path}: no pictures found{found}; expected {', '.join(IMAGE_SUFFIXES)} files in class folders, "
            "directly in the folder, or listed in a CSV"
        )
    return catalog


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _read_folder(folder: Path) -> Catalog:
    root = folder.resolve()
    skipped: list[Skip] = []
    files = sorted(_walk(root, skipped), key=lambda p: p.relative_to(root).as_posix())
    nested = [p for p in files if len(p.relative_to(root).parts) > 1]
    if not nested:  # flat folder: unlabeled
        items = [Item(id=p.name, path=p.name) for p in files]
        return Catalog(source=folder, root=root, kind="flat", items=items, skipped=skipped)
    items = []
    for p in files:
        rel = p.relative_to(root)
        if len(rel.parts) == 1:
            skipped.append(Skip(rel.as_posix(), "not inside a class folder (the catalog has class folders)"))
            continue
        items.append(Item(id=rel.as_posix(), path=rel.as_posix(), label=rel.parts[0]))
    return Catalog(source=folder, root=root, kind="folders", items=items, skipped=skipped)


def _walk(root: Path, skipped: list[Skip]) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            path = Path(dirpath) / name
            if not is_image_file(path):
                continue
            rel = path.relative_to(root).as_posix()
            if path.is_symlink() and not _inside(path.resolve(), root):
                skipped.append(Skip(rel, "symbolic link to a file outside the catalog folder"))
                continue
            found.append(path)
    return found


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


#: Bounds on a CSV catalog: a cell (csv's own limit, left as it is), a line, and the rows read.
CSV_MAX_LINE = 1 << 20
CSV_MAX_ROWS = 10_000_000


def _read_csv(path: Path, *, image_column: str | None, label_column: str | None, id_column: str | None,
              confined: bool = False) -> Catalog:
    """Read a CSV catalog a line at a time, within bounds: `CSV_MAX_LINE`, `CSV_MAX_ROWS` and csv's cell limit.

    A cell, line or file beyond them is refused with one line (an unclosed quote is the usual cause
    of a giant cell); rows that cannot be used are skipped with a reason.
    """
    try:
        fh = open(path, "rb")  # noqa: SIM115  # closed below, once every row is read
    except OSError as exc:
        raise CatalogError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    number = 1  # the record being read: the header is row 1
    with fh:
        lines = _csv_lines(fh, path)
        first = next(lines, None)
        if first is None or not first.strip():
            raise CatalogError(f"{path}: empty CSV (expected a header row naming the columns)")
        delimiter = "\t" if path.suffix.lower() == ".tsv" else _sniff_delimiter(first)
        reader = csv.reader(itertools.chain([first], lines), delimiter=delimiter)
        try:
            header = [h.strip() for h in next(reader)]
            if len(set(header)) != len(header):
                raise CatalogError(f"{path}: repeated column names in the header: {header}")
            image_col = _column(path, header, image_column, IMAGE_COLUMNS, "image", required=True)
            label_col = _column(path, header, label_column, LABEL_COLUMNS, "label", required=False)
            id_col = _column(path, header, id_column, ID_COLUMNS, "id", required=False)
            assert image_col is not None
            root = path.resolve().parent
            items: list[Item] = []
            reals: list[Path] = []  # each item's picture, links followed
            skipped: list[Skip] = []
            seen: set[str] = set()
            for number, row in enumerate(reader, start=2):
                if number > CSV_MAX_ROWS + 1:
                    raise CatalogError(f"{path}: more than {CSV_MAX_ROWS:,} rows, the most a catalog may have; "
                                       "split it into several catalogs")
                if not any(cell.strip() for cell in row):
                    continue  # blank line
                where = f"{path.name} row {number}"
                if len(row) != len(header):
                    skipped.append(Skip(where, f"has {len(row)} fields but the header has {len(header)}"))
                    continue
                record = {h: cell.strip() for h, cell in zip(header, row)}
                image = record[image_col]
                if not image:
                    skipped.append(Skip(where, f"empty {image_col!r} cell"))
                    continue
                if "://" in image:
                    skipped.append(Skip(where, f"{image}: URLs are not downloaded; list local files"))
                    continue
                file = (root / image).expanduser()
                if confined and not _inside(file.resolve(), root):  # asked first: says nothing of what exists there
                    skipped.append(Skip(where, f"{image}: outside the catalog's folder"))
                    continue
                if not file.is_file():
                    skipped.append(Skip(where, f"{image}: no such file"))
                    continue
                if not is_image_file(file):
                    skipped.append(Skip(where, f"{image}: not a picture file ({', '.join(IMAGE_SUFFIXES)})"))
                    continue
                real = file.resolve()
                rel = Path(os.path.relpath(real, root)).as_posix()
                item_id = record[id_col] if id_col and record[id_col] else rel
                if item_id in seen:
                    skipped.append(Skip(where, f"repeats the id {item_id!r}"))
                    continue
                seen.add(item_id)
                label = (record[label_col] or None) if label_col else None
                metadata = {k: v for k, v in record.items() if k not in (image_col, label_col)}
                items.append(Item(id=item_id, path=rel, label=label, metadata=metadata))
                reals.append(real)
        except csv.Error as exc:
            if "field larger than field limit" in str(exc):
                raise CatalogError(f"{path}: row {number + 1} has a cell longer than {csv.field_size_limit():,} "
                                   "characters (an unclosed quote?); a catalog's cells hold paths, labels and short "
                                   "text") from None
            raise CatalogError(f"{path}: row {number + 1} is not readable CSV ({exc})") from None
    root, items = _under_one_root(path, root, items, reals)
    columns = {"image": image_col, "label": label_col, "id": id_col}
    return Catalog(source=path, root=root, kind="csv", items=items, skipped=skipped, columns=columns)


def _under_one_root(path: Path, root: Path, items: list[Item], reals: list[Path]) -> tuple[Path, list[Item]]:
    """The root and items of a CSV whose rows may name pictures outside its folder: one root above them all.

    An index names its pictures by plain relative paths under its catalog root (never `..`, which
    a loaded index refuses), so the root moves up to the folder that holds every picture; an id
    that was the picture's path moves with it.
    """
    outside = [real for real in reals if not _inside(real, root)]
    if not outside:
        return root, items
    top = Path(os.path.commonpath([root, *outside]))
    if top == top.parent:
        raise CatalogError(f"{path}: its pictures are spread over the whole file system ({root} and "
                           f"{outside[0].parent} have only {top} in common); put them under one folder")
    moved = []
    for item, real in zip(items, reals):
        rel = Path(os.path.relpath(real, top)).as_posix()
        moved.append(replace(item, path=rel, id=rel if item.id == item.path else item.id))
    return top, moved


def _csv_lines(fh: BinaryIO, path: Path) -> Iterator[str]:
    """The lines of a UTF-8 file (BOM dropped, any line break), refusing a line over `CSV_MAX_LINE` bytes."""
    offset = 0
    while raw := fh.readline(CSV_MAX_LINE + 1):
        if len(raw) > CSV_MAX_LINE:
            raise CatalogError(f"{path}: a line longer than {CSV_MAX_LINE:,} bytes at byte {offset:,}; a catalog's "
                               "rows name a picture and a few short fields")
        if offset == 0 and raw.startswith(codecs.BOM_UTF8):
            raw, offset = raw[len(codecs.BOM_UTF8):], len(codecs.BOM_UTF8)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CatalogError(f"{path}: not UTF-8 text ({exc.reason} at byte {offset + exc.start}); save it as "
                               "UTF-8") from None
        offset += len(raw)
        yield from text.splitlines()


def _sniff_delimiter(header_line: str) -> str:
    counts = {d: header_line.count(d) for d in (",", ";", "\t", "|")}
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else ","


def _column(path: Path, header: list[str], given: str | None, candidates: tuple[str, ...], role: str, *,
            required: bool) -> str | None:
    if given:
        if given not in header:
            raise CatalogError(f"{path}: no column {given!r} for the {role}; the columns are: {', '.join(header)}")
        return given
    by_lower = {h.lower(): h for h in header}
    for name in candidates:
        if name in by_lower:
            return by_lower[name]
    if required:
        raise CatalogError(
            f"{path}: no {role} column found (tried {', '.join(candidates)}); the columns are: {', '.join(header)}; "
            f"name it with --{role}-column"
        )
    return None


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
    with _open_zip(path) as bundle:
        members = bundle.infolist()
        if len(members) > ARCHIVE_MAX_MEMBERS:
            raise CatalogError(f"{path.name}: {len(members):,} files, more than the {ARCHIVE_MAX_MEMBERS:,} allowed")
        total = sum(m.file_size for m in members)
        packed = max(1, sum(m.compress_size for m in members))
        if total > ARCHIVE_MAX_BYTES or (total / packed > ARCHIVE_MAX_RATIO and total > 64 << 20):
            raise CatalogError(f"{path.name}: unpacks to {total / 1e6:,.0f} MB from {packed / 1e6:,.1f} MB; refused "
                               "as a possible zip bomb")
        if max_bytes is not None and total > max_bytes:
            raise LimitExceeded(f"{path.name}: unpacks to {total / 1e6:,.1f} MB, more than the "
                                f"{max_bytes / 1e6:,.0f} MB a web upload may hold")
        pictures = sum(not m.is_dir() and not m.filename.startswith("__MACOSX/") and is_image_file(Path(m.filename))
                       for m in members)
        if max_pictures is not None and pictures > max_pictures:
            raise LimitExceeded(f"{path.name}: {pictures:,} pictures, more than the {max_pictures:,} a web upload may "
                                "hold; index larger catalogs from the command line")
        target.mkdir(parents=True, exist_ok=True)
        csvs: list[Path] = []
        for number, member in enumerate(members):
            if should_stop is not None and number % _STOP_EVERY == 0 and (reason := should_stop()):
                raise BuildStopped(reason)
            name = member.filename
            if member.is_dir() or name.startswith("__MACOSX/") or Path(name).name.startswith("."):
                continue
            mode = member.external_attr >> 16
            parts = Path(name.replace("\\", "/")).parts
            if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                skipped.append(Skip(_shown(name), "path leaves the archive's folder"))
                continue
            if len(parts) - 1 > ARCHIVE_MAX_DEPTH:  # pathlib's mkdir would recurse once per folder
                skipped.append(Skip(_shown(name), f"nested {len(parts) - 1:,} folders deep, more than the "
                                                  f"{ARCHIVE_MAX_DEPTH} allowed"))
                continue
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # type bits unset: an ordinary file from most zippers
                skipped.append(Skip(_shown(name), "a link or special file, not a regular file"))
                continue
            out = target.joinpath(*parts)
            if not (is_image_file(out) or out.suffix.lower() == ".csv"):
                skipped.append(Skip(_shown(name), "neither a picture nor a CSV"))
                continue
            if not _inside(out.resolve(), target):
                skipped.append(Skip(_shown(name), "path leaves the archive's folder"))
                continue
            try:
                # A name too long for the file system, or a file where a folder must go, fails here.
                out.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                skipped.append(Skip(_shown(name), f"cannot be written here ({exc.strerror or exc})"))
                continue
            try:
                # zipfile never returns more than the declared size, which the totals above bounded.
                with bundle.open(member) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
                out.unlink(missing_ok=True)
                skipped.append(Skip(_shown(name), f"corrupt in the archive ({exc})"))
                continue
            except OSError as exc:
                with contextlib.suppress(OSError):
                    out.unlink(missing_ok=True)
                skipped.append(Skip(_shown(name), f"cannot be written here ({exc.strerror or exc})"))
                continue
            if out.suffix.lower() == ".csv":
                if max_rows is not None and (lines := _count_lines(out)) > max_rows + 1:  # + the header
                    raise LimitExceeded(f"{_shown(name)}: {lines - 1:,} rows, more than the {max_rows:,} a web upload "
                                        "may list")
                csvs.append(out)
    if len(csvs) == 1:
        return csvs[0], skipped
    if len(csvs) > 1:
        skipped.append(Skip(", ".join(p.name for p in csvs), "several CSVs: indexing the pictures as folders"))
    return target, skipped


def _shown(name: str, limit: int = 512) -> str:
    """An archive member's name as reports show it: a very long one cut in the middle."""
    return name if len(name) <= limit else f"{name[:limit // 2]}…{name[-limit // 4:]}"


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

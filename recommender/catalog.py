"""Reading a catalog (class folders, a flat folder, or a CSV) into `Item`s, with a report of what was skipped."""

from __future__ import annotations

import codecs
import csv
import hashlib
import itertools
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Literal

from .errors import CatalogError

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
    """A row or file left out of a catalog, and why (and its label, where it had one)."""

    where: str
    reason: str
    label: str | None = None

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

    def fingerprint(self) -> str:
        """A cheap identity of what the catalog holds: every item (id, path, label, metadata) and its file's
        size and modification time, so that it changes when a row, a label or a picture does."""
        digest = hashlib.sha256(f"{self.kind}\0{self.root}".encode())
        for item in self.items:
            try:
                stat = (self.root / item.path).stat()
                when = f"{stat.st_size}:{stat.st_mtime_ns}"
            except OSError:
                when = "missing"
            digest.update(json.dumps([item.id, item.path, item.label, dict(item.metadata), when]).encode())
        return "sha256:" + digest.hexdigest()[:16]


def quoted(text: str) -> str:
    """A label or id as messages write it: in curly quotes, so that any label reads right ("This is “it”")."""
    return f"“{text}”"


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
        catalog = _read_csv(
            path, image_column=image_column, label_column=label_column, id_column=id_column, confined=confined
        )
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


def _read_csv(
    path: Path, *, image_column: str | None, label_column: str | None, id_column: str | None, confined: bool = False
) -> Catalog:
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
                    raise CatalogError(
                        f"{path}: more than {CSV_MAX_ROWS:,} rows, the most a catalog may have; "
                        "split it into several catalogs"
                    )
                if not any(cell.strip() for cell in row):
                    continue  # blank line
                where = f"{path.name} row {number}"
                if len(row) != len(header):
                    skipped.append(Skip(where, f"has {len(row)} fields but the header has {len(header)}"))
                    continue
                record = {h: cell.strip() for h, cell in zip(header, row)}
                label = (record[label_col] or None) if label_col else None
                real, why = _row_picture(record[image_col], image_col, root, confined=confined)
                if real is None:
                    skipped.append(Skip(where, why, label))
                    continue
                rel = Path(os.path.relpath(real, root)).as_posix()
                item_id = record[id_col] if id_col and record[id_col] else rel
                if item_id in seen:
                    skipped.append(Skip(where, f"repeats the id {item_id!r}", label))
                    continue
                seen.add(item_id)
                metadata = {k: v for k, v in record.items() if k not in (image_col, label_col)}
                items.append(Item(id=item_id, path=rel, label=label, metadata=metadata))
                reals.append(real)
        except csv.Error as exc:
            if "field larger than field limit" in str(exc):
                raise CatalogError(
                    f"{path}: row {number + 1} has a cell longer than {csv.field_size_limit():,} "
                    "characters (an unclosed quote?); a catalog's cells hold paths, labels and short "
                    "text"
                ) from None
            raise CatalogError(f"{path}: row {number + 1} is not readable CSV ({exc})") from None
    root, items = _under_one_root(path, root, items, reals)
    columns = {"image": image_col, "label": label_col, "id": id_col}
    return Catalog(source=path, root=root, kind="csv", items=items, skipped=skipped, columns=columns)


def _row_picture(image: str, column: str, root: Path, *, confined: bool) -> tuple[Path | None, str]:
    """The picture a CSV row names (links followed), or None and why the row is skipped."""
    if not image:
        return None, f"empty {column!r} cell"
    if "://" in image:
        return None, f"{image}: URLs are not downloaded; list local files"
    file = (root / image).expanduser()
    if confined and not _inside(file.resolve(), root):  # asked first: says nothing of what exists there
        return None, f"{image}: outside the catalog's folder"
    if not file.is_file():
        return None, f"{image}: no such file"
    if not is_image_file(file):
        return None, f"{image}: not a picture file ({', '.join(IMAGE_SUFFIXES)})"
    return file.resolve(), ""


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
        raise CatalogError(
            f"{path}: its pictures are spread over the whole file system ({root} and "
            f"{outside[0].parent} have only {top} in common); put them under one folder"
        )
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
            raise CatalogError(
                f"{path}: a line longer than {CSV_MAX_LINE:,} bytes at byte {offset:,}; a catalog's "
                "rows name a picture and a few short fields"
            )
        if offset == 0 and raw.startswith(codecs.BOM_UTF8):
            raw, offset = raw[len(codecs.BOM_UTF8) :], len(codecs.BOM_UTF8)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CatalogError(
                f"{path}: not UTF-8 text ({exc.reason} at byte {offset + exc.start}); save it as UTF-8"
            ) from None
        offset += len(raw)
        yield from text.splitlines()


def _sniff_delimiter(header_line: str) -> str:
    counts = {d: header_line.count(d) for d in (",", ";", "\t", "|")}
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else ","


def _column(
    path: Path, header: list[str], given: str | None, candidates: tuple[str, ...], role: str, *, required: bool
) -> str | None:
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

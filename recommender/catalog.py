"""Reading a catalog (class folders, a flat folder, a CSV or a Hugging Face dataset) into `Item`s, with skips."""

from __future__ import annotations

import codecs
import csv
import hashlib
import itertools
import json
import os
import re
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import urlsplit

from . import settings
from .errors import CatalogError

#: File name endings taken as pictures when a folder is scanned.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".avif")
#: Column names tried, in order, when no --image-column / --label-column / id column is given.
IMAGE_COLUMNS = ("image", "image_path", "path", "file", "filename", "file_name", "img", "picture")
LABEL_COLUMNS = ("label", "class", "class_name")
ID_COLUMNS = ("id", "item_id", "sku")

Kind = Literal["folders", "flat", "csv", "dataset"]


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
    #: Where it came from when that is no local path (`hf://datasets/OWNER/NAME:split`), for the manifest.
    location: str = ""

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
    """Read a folder of class sub-folders (labeled), a flat folder (unlabeled), a CSV or a dataset.

    A dataset is `hf://datasets/OWNER/NAME[:split]` or a local folder the `datasets` library reads
    (see `read_dataset`); not when `confined`, whose folders are only ever pictures and CSVs.
    Unreadable rows and missing files are skipped with a reason; a source with no usable
    item raises `CatalogError`. `limit` keeps the first N items (a quick trial run).
    `confined` skips CSV rows naming a file outside the CSV's folder (after following links):
    for catalogs that strangers upload, whose CSV could otherwise list any picture on the server.
    """
    if limit is not None and limit < 1:
        raise CatalogError(f"--limit must be at least 1, not {limit}")
    if not confined and is_dataset(source):
        columns = {"image": image_column, "label": label_column, "id": id_column}
        return _nonempty(read_dataset(source, limit=limit, columns=columns))
    path = Path(source).expanduser()
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
    return _nonempty(catalog)


def _nonempty(catalog: Catalog) -> Catalog:
    if not catalog.items:
        found = f" ({len(catalog.skipped)} skipped: {catalog.skipped[0]})" if catalog.skipped else ""
        raise CatalogError(
            f"{catalog.location or catalog.source}: no pictures found{found}; expected "
            f"{', '.join(IMAGE_SUFFIXES)} files in class folders, directly in the folder, listed in a CSV, "
            "or in a dataset's image column"
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


# --- Hugging Face datasets -------------------------------------------------------------------

#: The prefix of a dataset on the Hugging Face hub: hf://datasets/OWNER/NAME[:split].
HF_PREFIX = "hf://datasets/"
#: Files that make a folder a `datasets` folder: `save_to_disk` output, or an imagefolder's metadata.
_SAVED = ("dataset_dict.json", "state.json")
_METADATA = ("metadata.csv", "metadata.jsonl")
#: Dataset rows are read this many at a time (a batch of Python objects, not the whole table).
_BATCH = 256
#: The leading bytes of the picture formats a dataset's image bytes are recognised by.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"GIF87a", ".gif"),
    (b"GIF89a", ".gif"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
)


def is_dataset(source: str | os.PathLike) -> bool:
    """Whether `source` names a Hugging Face dataset: hf://datasets/..., a `datasets` folder or parquet files."""
    if str(source).startswith("hf://"):
        return True
    path, _ = _split_suffix(source)
    return path is not None and _dataset_form(path) is not None


def read_dataset(
    source: str | os.PathLike, *, limit: int | None = None, columns: Mapping[str, str | None] | None = None
) -> Catalog:
    """Read a Hugging Face dataset through the `datasets` library (the optional extra `recommender[hf]`).

    `source` is `hf://datasets/OWNER/NAME[:split]`, a folder written by `save_to_disk`, an
    `imagefolder` with `metadata.csv` / `metadata.jsonl`, or parquet files with an image column
    (a folder of them or one file); `PATH:split` picks a split (default: `train`, or the only one).
    `columns` names the `image`, `label` and `id` columns; by default the first `Image` feature,
    the first `ClassLabel` (its names become the labels) or a column named like `LABEL_COLUMNS`,
    and an `ID_COLUMNS` one. Pictures that are files (an imagefolder) are indexed where they are;
    pictures stored inside the dataset are written once, named by content, under the data folder
    (`datasets/`). Rows without a recognisable picture, or without a label in a labeled dataset,
    are skipped with a reason.
    """
    datasets = _datasets_module()
    text = str(source)
    dataset, split, location, base = _load(datasets, text)
    wanted = dict(columns or {})
    image_col, label_col, id_col = _dataset_columns(datasets, dataset, text, wanted)
    dataset = dataset.cast_column(image_col, datasets.Image(decode=False))  # bytes and paths, not decoded pictures
    label_names = _label_names(datasets, dataset, label_col)
    extract_to = settings.data_dir() / "datasets" / _dataset_folder_name(location or str(base), split)
    rows = _DatasetRows(split=split, base=base, extract_to=extract_to)
    for start in range(0, len(dataset), _BATCH):
        if limit is not None and len(rows.kept) >= limit:
            break
        batch = dataset[start : start + _BATCH]
        for offset, image in enumerate(batch[image_col]):
            record = {name: values[offset] for name, values in batch.items()}
            label = _dataset_label(record, label_col, label_names)
            rows.add(
                start + offset, image, record, label=label, label_col=label_col, id_col=id_col, image_col=image_col
            )
            if limit is not None and len(rows.kept) >= limit:
                break
    root, items = rows.items()
    used = {"image": image_col, "label": label_col, "id": id_col}
    source_path = root if location else (_split_suffix(text)[0] or base).resolve()
    return Catalog(
        source=source_path,
        root=root,
        kind="dataset",
        items=items,
        skipped=rows.skipped,
        columns=used,
        location=location,
    )


def _datasets_module() -> Any:
    try:
        import datasets
    except ImportError:
        raise CatalogError(
            "reading a Hugging Face dataset needs the datasets package: pip install 'recommender[hf]'"
        ) from None
    datasets.disable_progress_bars()  # the build shows one bar of its own
    return datasets


def _split_suffix(source: str | os.PathLike) -> tuple[Path | None, str | None]:
    """A local source and the split it names: `PATH` or `PATH:split` (only when PATH itself exists)."""
    path = Path(source).expanduser()
    if path.exists():
        return path, None
    head, sep, split = str(source).rpartition(":")
    if sep and head and split and "/" not in split and Path(head).expanduser().exists():
        return Path(head).expanduser(), split
    return None, None


def _dataset_form(path: Path) -> str | None:
    """What kind of `datasets` source a local path is: saved, imagefolder, parquet, or None (no dataset)."""
    if path.is_file():
        return "parquet" if path.suffix.lower() == ".parquet" else None
    if not path.is_dir():
        return None
    if any((path / name).is_file() for name in _SAVED) and (
        (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file()
    ):
        return "saved"
    folders = [path, *(p for p in sorted(path.iterdir()) if p.is_dir() and not p.name.startswith("."))]
    if any((folder / name).is_file() for folder in folders for name in _METADATA):
        return "imagefolder"
    if _parquet_files(path):
        return "parquet"
    return None


def _parquet_files(path: Path) -> list[str]:
    if path.is_file():
        return [str(path)]
    found = sorted(path.glob("*.parquet")) or sorted(path.glob("data/*.parquet"))
    return [str(p) for p in found]


def _load(datasets: Any, text: str) -> tuple[Any, str, str, Path]:
    """(the dataset of one split, its name, the hf:// location or '', the folder relative paths start from)."""
    try:
        if text.startswith("hf://"):
            repo, split = _hub_name(text)
            loaded = datasets.load_dataset(repo, split=split)
            location = f"{HF_PREFIX}{repo}:{split}"
            return loaded, split, location, Path.cwd()
        path, split = _split_suffix(text)
        assert path is not None  # is_dataset said so
        form = _dataset_form(path)
        if form == "saved":
            loaded = datasets.load_from_disk(str(path))
        elif form == "imagefolder":
            loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
        else:
            loaded = datasets.load_dataset("parquet", data_files=_parquet_files(path))
        chosen, name = _pick_split(loaded, split, text)
        return chosen, name, "", path.resolve() if path.is_dir() else path.resolve().parent
    except CatalogError:
        raise
    except ConnectionError as exc:
        raise CatalogError(
            f"{text}: not in the local Hugging Face cache and the hub cannot be reached ({_first_line(exc)})"
        ) from None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CatalogError(f"{text}: cannot be read as a Hugging Face dataset ({_first_line(exc)})") from None
    except Exception as exc:  # datasets' own errors (DatasetNotFoundError, DatasetGenerationError) share no base
        raise CatalogError(f"{text}: cannot be read as a Hugging Face dataset ({_first_line(exc)})") from None


def _hub_name(text: str) -> tuple[str, str]:
    """`hf://datasets/OWNER/NAME[:split]` -> ("OWNER/NAME", split); the hub is asked first whether it answers."""
    if not text.startswith(HF_PREFIX):
        raise CatalogError(f"{text}: a dataset on the hub is named {HF_PREFIX}OWNER/NAME[:split]")
    repo, _, split = text[len(HF_PREFIX) :].partition(":")
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo) or (split and not re.fullmatch(r"[\w.\[\]%:-]+", split)):
        raise CatalogError(f"{text}: a dataset on the hub is named {HF_PREFIX}OWNER/NAME[:split]")
    _check_hub_reachable(text)
    return repo, split or "train"


def _check_hub_reachable(text: str) -> None:
    """Fail in seconds, not after the hub client's retries (about 25 s), when the hub cannot be reached.

    Offline mode (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) is left to `datasets`, which reads its cache.
    """
    if any(os.environ.get(name, "").lower() in ("1", "true", "yes", "on") for name in _OFFLINE):
        return
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((endpoint.hostname or "", endpoint.port or 443), timeout=5).close()
    except OSError as exc:
        raise CatalogError(
            f"{text}: the Hugging Face hub cannot be reached ({exc.strerror or exc}); with a copy in the "
            "local cache set HF_HUB_OFFLINE=1, or index a local folder (save_to_disk)"
        ) from None


_OFFLINE = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def _pick_split(loaded: Any, split: str | None, text: str) -> tuple[Any, str]:
    """One split of a DatasetDict (the one named, else `train`, else the only one); a Dataset as it is."""
    if not hasattr(loaded, "keys"):
        return loaded, split or str(loaded.split or "train")
    names = list(loaded.keys())
    chosen = split or ("train" if "train" in names else names[0] if len(names) == 1 else None)
    if chosen not in names:
        wanted = f"no split {split!r}" if split else "several splits"
        raise CatalogError(f"{text}: {wanted}; the splits are {', '.join(names)}: name one as {text}:SPLIT")
    return loaded[chosen], chosen


def _dataset_columns(
    datasets: Any, dataset: Any, text: str, wanted: Mapping[str, str | None]
) -> tuple[str, str | None, str | None]:
    """The image, label and id columns: those named, else found by feature type or by name."""
    features = dataset.features
    names = list(features)
    for role, given in wanted.items():
        if given and given not in features:
            raise CatalogError(f"{text}: no column {given!r} for the {role}; the columns are: {', '.join(names)}")
    by_lower = {name.lower(): name for name in names}

    def named(candidates: tuple[str, ...]) -> str | None:
        return next((by_lower[c] for c in candidates if c in by_lower), None)

    image = wanted.get("image") or next((n for n in names if isinstance(features[n], datasets.Image)), None)
    image = image or named(IMAGE_COLUMNS)
    if image is None:
        raise CatalogError(
            f"{text}: no image column found (no Image feature, none named {', '.join(IMAGE_COLUMNS)}); "
            f"the columns are: {', '.join(names)}; name it with --image-column"
        )
    label = wanted.get("label") or next((n for n in names if isinstance(features[n], datasets.ClassLabel)), None)
    label = label or named(LABEL_COLUMNS)
    id_col = wanted.get("id") or named(ID_COLUMNS)
    return image, (label if label != image else None), (id_col if id_col not in (image, label) else None)


def _label_names(datasets: Any, dataset: Any, label_col: str | None) -> list[str] | None:
    """A ClassLabel column's names (its values are their numbers); None for a column of plain values."""
    feature = dataset.features.get(label_col) if label_col else None
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def _dataset_label(record: Mapping[str, Any], column: str | None, names: list[str] | None) -> str | None:
    if column is None:
        return None
    value = record.get(column)
    if names is not None:
        return names[value] if isinstance(value, int) and 0 <= value < len(names) else None  # -1: no label
    text = "" if value is None else str(value).strip()
    return text or None


def _dataset_folder_name(where: str, split: str) -> str:
    digest = hashlib.sha256(f"{where}\0{split}".encode()).hexdigest()[:12]
    tail = where.rstrip("/").rsplit("/", 1)[-1].split(":")[0]
    name = re.sub(r"[^a-z0-9._-]+", "-", tail.lower()).strip("-._")[:32]
    return f"{name or 'dataset'}-{digest}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class _DatasetRows:
    """Rows of one split turned into items: pictures that are files stay where they are, bytes are written out."""

    split: str
    base: Path
    extract_to: Path
    kept: list[tuple[Item, Path | None, bytes | None, str]] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    rows: list[int] = field(default_factory=list)

    def add(
        self,
        row: int,
        image: Any,
        record: Mapping[str, Any],
        *,
        label: str | None,
        label_col: str | None,
        id_col: str | None,
        image_col: str,
    ) -> None:
        where = f"{self.split} row {row}"
        data, file, why = self._picture(image)
        if why:
            self.skipped.append(Skip(where, why))
            return
        if label_col and label is None:
            self.skipped.append(Skip(where, f"no label in {label_col!r}"))
            return
        given = record.get(id_col) if id_col else None
        item_id = str(given).strip() if given is not None else ""  # '': the file's path, or split/row
        if item_id in self.seen:
            self.skipped.append(Skip(where, f"repeats the id {item_id!r}"))
            return
        if item_id:
            self.seen.add(item_id)
        metadata = {
            k: str(v)[:1000]
            for k, v in record.items()
            if k not in (image_col, label_col) and isinstance(v, (str, int, float, bool))
        }
        suffix = _suffix(data, file)
        self.kept.append((Item(id=item_id, path="", label=label, metadata=metadata), file, data, f"{row}{suffix}"))
        self.rows.append(row)

    def _picture(self, image: Any) -> tuple[bytes | None, Path | None, str]:
        """(bytes, or the file holding the picture, and '') or (None, None, why the row is skipped)."""
        if not isinstance(image, Mapping) or not (image.get("bytes") or image.get("path")):
            return None, None, "no picture"
        data = image.get("bytes")
        if data:
            return (data, None, "") if _suffix(data, None) else (None, None, "not a recognised picture format")
        file = (self.base / str(image["path"])).expanduser()
        if not file.is_file():
            return None, None, f"{image['path']}: no such file"
        if not is_image_file(file):
            return None, None, f"{image['path']}: not a picture file ({', '.join(IMAGE_SUFFIXES)})"
        return None, file.resolve(), ""

    def items(self) -> tuple[Path, list[Item]]:
        """The root and the items: under the files' own folder when every picture is a file, else written out."""
        if self.kept and all(data is None for _, _, data, _ in self.kept):
            files = [file for _, file, _, _ in self.kept if file is not None]
            root = Path(os.path.commonpath([f.parent for f in files]))
            root = self.base if _inside(root, self.base) else root  # ids as an imagefolder names its files
            items = []
            for (item, file, _, _), row in zip(self.kept, self.rows):
                rel = Path(os.path.relpath(file, root)).as_posix()  # type: ignore[arg-type]
                item_id = item.id or rel  # as for folders and CSVs: the picture's path
                if item_id in self.seen:
                    self.skipped.append(Skip(f"{self.split} row {row}", f"repeats the id {item_id!r}"))
                    continue
                self.seen.add(item_id)
                items.append(replace(item, path=rel, id=item_id))
            return root, items
        items = []
        for (item, file, data, name), row in zip(self.kept, self.rows):
            content = data if data is not None else file.read_bytes() if file is not None else b""
            digest = hashlib.sha256(content).hexdigest()
            rel = f"{self.split}/{digest[:2]}/{Path(name).stem}-{digest[:12]}{Path(name).suffix}"
            _write_once(self.extract_to / rel, content)
            items.append(replace(item, path=rel, id=item.id or f"{self.split}/{row}"))
        return self.extract_to, items


def _suffix(data: bytes | None, file: Path | None) -> str:
    """The file name ending of a picture: its file's, or the one its leading bytes say ('' when unknown)."""
    if file is not None:
        return file.suffix.lower()
    head = (data or b"")[:16]
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    if head[4:12] in (b"ftypavif", b"ftypavis"):
        return ".avif"
    return next((suffix for magic, suffix in _MAGIC if head.startswith(magic)), "")


def _write_once(path: Path, data: bytes) -> None:
    """Write a picture taken out of a dataset, unless it is there already (its name carries its hash)."""
    if path.is_file() and path.stat().st_size == len(data):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # a reader never sees half a picture; losing one costs writing it again

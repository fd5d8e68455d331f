"""Hostile catalogs and uploads: bad rows skipped with reasons, escapes refused, nothing written outside its folders."""

from __future__ import annotations

import os
import secrets
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from conftest import make_labeled_catalog
from hostile import make_zip, png

from recommender import build_index
from recommender.archive import extract_archive
from recommender.catalog import read_catalog
from recommender.errors import CatalogError
from recommender.index import Index
from recommender.service import Service


def tree(root: Path) -> set[str]:
    """Every path under `root` (links listed, never followed), relative to it."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            found.add((Path(dirpath) / name).relative_to(root).as_posix())
    return found


def written_outside(before: set[str], after: set[str], *allowed: str) -> list[str]:
    """New paths that are neither inside one of the `allowed` folders nor one of their parents."""
    parents = {"/".join(a.split("/")[:n]) for a in allowed for n in range(1, a.count("/") + 1)}
    return sorted(
        p for p in after - before if p not in parents and not any(p == a or p.startswith(a + "/") for a in allowed)
    )


@pytest.fixture
def service(tmp_path: Path, tiny_model: Path) -> Service:
    """The app's shared state, on a six-picture default catalog (the real one is 1,300 pictures)."""
    default = make_labeled_catalog(tmp_path / "default", per_label=2)
    return Service(model=str(tiny_model), default_catalog=default, default_name="default", progress=False)


def test_a_hostile_zip_through_the_apps_upload_path_writes_only_its_two_folders(service, tmp_path):
    token = secrets.token_hex(4)
    secret = tmp_path / "secret.png"  # a picture on the server that no upload may reach
    secret.write_bytes(png(99, (1, 2, 3)))
    archive = make_zip(
        tmp_path / "upload.zip",
        {
            "shop/items.csv": (
                "image,label\n"
                "img/a.png,round\n"
                "img/b.png,round\n"
                "img/a-copy.png,round\n"  # the same picture again
                "img/missing.png,round\n"
                f"{secret},stolen\n"  # absolute path to a server file
                "../../../../secret.png,stolen\n"  # relative escape to the same file
                "img/a.png,round,extra-field\n"
            ).encode(),
            "shop/img/a.png": png(1),
            "shop/img/b.png": png(2, (10, 10, 200)),
            "shop/img/a-copy.png": png(1),
            "shop/img/broken.png": b"\x89PNG\r\n\x1a\n broken",
            f"../../../../../../tmp/escape-{token}.png": png(3),
            f"/tmp/absolute-{token}.png": png(4),
            "shop/img/../../../up.png": png(5),
            "shop/img/run.sh": b"#!/bin/sh\necho pwned\n",
        },
        links={"shop/img/link.png": "/etc/passwd"},
    )
    before = tree(tmp_path)
    report = service.build_upload(archive, "My Shop!", session="s1", progress=False)
    after = tree(tmp_path)
    assert report.name == "My-Shop" and report.count == 2
    mine = service.uploads.folder("s1").relative_to(tmp_path).as_posix()  # data/sessions/<hash of s1>
    assert written_outside(before, after, f"{mine}/catalogs/My-Shop", f"{mine}/index/My-Shop") == []
    assert not Path(f"/tmp/escape-{token}.png").exists() and not Path(f"/tmp/absolute-{token}.png").exists()
    reasons = {s.where: s.reason for s in report.skipped}
    assert reasons[f"../../../../../../tmp/escape-{token}.png"] == "path leaves the archive's folder"
    assert reasons[f"/tmp/absolute-{token}.png"] == "path leaves the archive's folder"
    assert reasons["shop/img/link.png"].startswith("a link")
    assert reasons["shop/img/run.sh"] == "neither a picture nor a CSV"
    assert reasons["items.csv row 6"] == f"{secret}: outside the catalog's folder"
    assert reasons["items.csv row 7"] == "../../../../secret.png: outside the catalog's folder"
    assert reasons["items.csv row 5"] == "img/missing.png: no such file"
    assert "same picture as img/a.png" in reasons["img/a-copy.png"]
    assert "has 3 fields" in reasons["items.csv row 8"]
    index = service.index("upload:My-Shop", session="s1")
    assert sorted(item.label for item in index.items) == ["round", "round"]
    assert all(index.path_of(item).is_relative_to(tmp_path / mine / "catalogs" / "My-Shop") for item in index.items)
    # Only what the index holds is kept: no CSV, no copy, no broken picture; and all of that.
    assert sorted(p.name for p in (tmp_path / mine / "catalogs").rglob("*") if p.is_file()) == ["a.png", "b.png"]
    assert all(index.path_of(item).is_file() for item in index.items)


def test_a_second_upload_under_the_same_name_replaces_the_first(service, tmp_path):
    first = make_zip(tmp_path / "one.zip", {"a.png": png(1), "b.png": png(2)})
    second = make_zip(tmp_path / "two.zip", {"c.png": png(3)})
    assert service.build_upload(first, "mine", session="s1", progress=False).count == 2
    assert service.build_upload(second, "mine", session="s1", progress=False).count == 1  # not 3: none left over
    assert [item.id for item in service.index("upload:mine", session="s1").items] == ["c.png"]
    assert len(list(service.uploads.catalog_dir("s1", "mine").iterdir())) == 1


@pytest.mark.parametrize("kind", ["bomb", "not-a-zip", "nothing-usable"])
def test_refused_uploads_leave_nothing_behind(service, tmp_path, kind):
    archive = tmp_path / "upload.zip"
    if kind == "bomb":
        make_zip(archive, {"a.png": b"\0" * (80 << 20)})  # 80 MB of zeros in 80 KB
    elif kind == "not-a-zip":
        archive.write_bytes(b"<html>not a zip</html>")
    else:
        make_zip(archive, {"notes.txt": b"hi", "empty.png": b"", "../x.png": png(1)})
    before = tree(tmp_path)
    with pytest.raises(CatalogError, match="zip bomb|not a readable zip|no pictures found|could be read"):
        service.build_upload(archive, "refused", session="s1", progress=False)
    assert written_outside(before, tree(tmp_path), "data/sessions") == []
    assert not service.uploads.catalog_dir("s1", "refused").exists()  # not even an empty folder
    assert not (service.uploads.index_dir("s1") / "refused").exists()
    assert not (tmp_path / "index" / "refused").exists()


def overlapping_bomb(path: Path, members: int = 200, size: int = 1 << 20) -> Path:
    """A zip whose entries all point at one compressed block (Fifield's overlapping bomb): small, huge unpacked."""
    # Written by hand: zipfile will not write overlapping entries.
    data = b"\0" * size
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = compressor.compress(data) + compressor.flush()
    crc = zlib.crc32(data)
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(packed), size, 5, 0) + b"a.png"
    blob = local + packed
    central = b""
    for i in range(members):
        name = f"{i:04d}.png".encode()
        central += (
            struct.pack(
                "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(packed), size, len(name), 0, 0, 0, 0, 0, 0
            )
            + name
        )
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, members, members, len(central), len(blob), 0)
    path.write_bytes(blob + central + end)
    return path


def test_an_overlapping_zip_bomb_is_refused_before_anything_is_written(tmp_path):
    bomb = overlapping_bomb(tmp_path / "overlap.zip")
    assert bomb.stat().st_size < 20_000  # 200 MB declared
    with pytest.raises(CatalogError, match="zip bomb"):
        extract_archive(bomb, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_members_that_lie_about_their_size_or_cannot_be_written_are_skipped(tmp_path):
    archive = tmp_path / "odd.zip"
    make_zip(
        archive,
        {
            "big.png": os.urandom(200_000),
            "ok.png": png(1),
            "x.png": png(2),
            "x.png/y.png": png(3),
            "a" * 300 + ".png": png(4),
        },
    )
    data = bytearray(archive.read_bytes())
    # Declare big.png 1,000 bytes long in both headers: zipfile reads no more, and its checksum fails.
    for signature, at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        offset = data.index(signature)
        struct.pack_into("<L", data, offset + at, 1000)
    archive.write_bytes(bytes(data))
    _, skipped = extract_archive(archive, tmp_path / "out")
    reasons = {s.where: s.reason for s in skipped}
    assert reasons["big.png"].startswith("corrupt in the archive")
    assert reasons["x.png/y.png"].startswith("cannot be written here")
    assert reasons["a" * 300 + ".png"].startswith("cannot be written here")
    assert sorted(tree(tmp_path / "out")) == ["ok.png", "x.png"]


def test_symlinked_folders_and_files_out_of_a_catalog_are_not_followed(tmp_path, tiny_model):
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "cat").mkdir()
    (outside / "cat" / "p.png").write_bytes(png(1))
    catalog = make_labeled_catalog(tmp_path / "shapes", per_label=2)
    (catalog / "stolen").symlink_to(outside / "cat", target_is_directory=True)  # a class folder that is a link
    (catalog / "red-circle" / "leak.png").symlink_to(outside / "cat" / "p.png")
    report = build_index(catalog, name="shapes", model=str(tiny_model), progress=False)
    paths = {item.path for item in Index.load("shapes").items}
    assert report.count == 6 and not any(p.startswith("stolen") for p in paths)
    assert "red-circle/leak.png: symbolic link to a file outside the catalog folder" in map(str, report.skipped)


def test_a_csv_with_a_wrong_column_is_refused_before_anything_is_written(tmp_path, tiny_model):
    (tmp_path / "p.png").write_bytes(png(1))
    (tmp_path / "items.csv").write_text("picture_url,category\np.png,round\n")
    before = tree(tmp_path)
    with pytest.raises(CatalogError, match=r"no image column found .*picture_url, category.*--image-column"):
        build_index(tmp_path / "items.csv", name="wrong", model=str(tiny_model), progress=False)
    with pytest.raises(CatalogError, match="no column 'image_path' for the image"):
        build_index(
            tmp_path / "items.csv", name="wrong", model=str(tiny_model), image_column="image_path", progress=False
        )
    assert written_outside(before, tree(tmp_path)) == []


def test_unreadable_rows_missing_and_duplicate_files_are_reported_by_the_cli(tmp_path, tiny_model):
    from click.testing import CliRunner

    from recommender.cli import cli

    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png(1))
    shutil.copy(tmp_path / "img" / "a.png", tmp_path / "img" / "same.png")
    (tmp_path / "img" / "bad.png").write_bytes(b"GIF89a nonsense")
    (tmp_path / "items.csv").write_bytes(
        b"id,image,label\n1,img/a.png,x\n2,img/same.png,x\n3,img/bad.png,x\n4,img/none.png,x\n"
        b'5,"img/a.png,x\n6,img/a.png\n\xff\xfe,img/a.png,x\n'
    )
    result = CliRunner().invoke(
        cli, ["index", str(tmp_path / "items.csv"), "--name", "rows", "--model", str(tiny_model), "-q"]
    )
    assert result.exit_code == 1 and "not UTF-8" in result.stderr  # refused whole: a file in another encoding
    text = (tmp_path / "items.csv").read_bytes().replace(b"\xff\xfe", b"7")
    (tmp_path / "items.csv").write_bytes(text)
    result = CliRunner().invoke(
        cli, ["index", str(tmp_path / "items.csv"), "--name", "rows", "--model", str(tiny_model), "-q"]
    )
    assert result.exit_code == 0, result.stderr
    assert "indexed 1 pictures" in result.stdout
    assert "skipped img/same.png: same picture as img/a.png" in result.stderr
    assert "skipped img/bad.png: " in result.stderr and "skipped items.csv row 5: img/none.png: no such file" in (
        result.stderr
    )


def test_confined_catalogs_refuse_rows_that_leave_through_links(tmp_path):
    (tmp_path / "private.png").write_bytes(png(1))
    shop = tmp_path / "shop"
    shop.mkdir()
    (shop / "ok.png").write_bytes(png(2))
    (shop / "inner.png").symlink_to(tmp_path / "private.png")
    (shop / "up").symlink_to(tmp_path, target_is_directory=True)
    (shop / "items.csv").write_text("image\nok.png\ninner.png\nup/private.png\n")
    catalog = read_catalog(shop / "items.csv", confined=True)
    assert [item.path for item in catalog.items] == ["ok.png"]
    assert [s.reason for s in catalog.skipped] == [
        "inner.png: outside the catalog's folder",
        "up/private.png: outside the catalog's folder",
    ]
    assert len(read_catalog(shop / "items.csv").items) == 2  # a user's own CSV on the command line may

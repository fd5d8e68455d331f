"""catalog: class folders, flat folders and CSVs become Items; bad rows are skipped with reasons."""

from __future__ import annotations

import os

import pytest
from conftest import draw_shape
from hostile import make_zip, png

from recommender.catalog import read_catalog
from recommender.errors import CatalogError


def test_class_folders_are_labeled(labeled_catalog):
    (labeled_catalog / "notes.txt").write_text("not a picture")  # ignored: not a picture file
    (labeled_catalog / ".hidden").mkdir()
    draw_shape("circle", (0, 0, 0), seed=1).save(labeled_catalog / ".hidden" / "x.png")
    draw_shape("circle", (0, 0, 0), seed=1).save(labeled_catalog / "stray.png")
    catalog = read_catalog(labeled_catalog)
    assert catalog.kind == "folders" and catalog.labeled
    assert len(catalog.items) == 12
    assert {item.label for item in catalog.items} == {"red-circle", "green-square", "blue-triangle"}
    first = catalog.items[0]
    assert first.id == first.path == "blue-triangle/0.png" and first.metadata == {}
    assert [str(s) for s in catalog.skipped] == ["stray.png: not inside a class folder (the catalog has class folders)"]


def test_flat_folder_is_unlabeled(tmp_path):
    for i in range(3):
        draw_shape("square", (9, 9, 9), seed=i).save(tmp_path / f"p{i}.jpg")
    catalog = read_catalog(tmp_path)
    assert catalog.kind == "flat" and not catalog.labeled
    assert [item.path for item in catalog.items] == ["p0.jpg", "p1.jpg", "p2.jpg"]
    assert all(item.label is None for item in catalog.items)


def test_limit_keeps_the_first_items(labeled_catalog):
    assert len(read_catalog(labeled_catalog, limit=5).items) == 5
    with pytest.raises(CatalogError, match="at least 1"):
        read_catalog(labeled_catalog, limit=0)


def test_csv_with_detected_columns_and_metadata(tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(3):
        draw_shape("circle", (200, 0, 0), seed=i).save(tmp_path / "img" / f"w{i}.png")
    (tmp_path / "watches.csv").write_text(
        "ID,Image,Brand,Model,Label\n"
        "a1,img/w0.png,Seiko,SKX007,diver\n"
        "a2,img/w1.png,Casio,F-91W,digital\n"
        "\n"
        "a3,img/w2.png,Omega,Speedmaster,\n",
        encoding="utf-8",
    )
    catalog = read_catalog(tmp_path / "watches.csv")
    assert catalog.kind == "csv" and catalog.columns == {"image": "Image", "label": "Label", "id": "ID"}
    assert [i.id for i in catalog.items] == ["a1", "a2", "a3"]
    assert catalog.items[0].label == "diver" and catalog.items[2].label is None
    assert catalog.items[1].metadata == {"ID": "a2", "Brand": "Casio", "Model": "F-91W"}
    assert catalog.items[0].path == "img/w0.png"


def test_csv_bad_rows_are_skipped_with_reasons(tmp_path):
    draw_shape("circle", (200, 0, 0), seed=1).save(tmp_path / "ok.png")
    (tmp_path / "doc.pdf").write_bytes(b"%PDF")
    (tmp_path / "c.csv").write_text(
        "image;label\nok.png;a\nmissing.png;b\n;c\nhttps://example.com/x.jpg;d\ndoc.pdf;e\nok.png;f;extra\nok.png;a\n",
        encoding="utf-8",
    )
    catalog = read_catalog(tmp_path / "c.csv")
    assert [i.label for i in catalog.items] == ["a"]
    reasons = [s.reason for s in catalog.skipped]
    assert reasons[0] == "missing.png: no such file"
    assert "empty 'image' cell" in reasons[1]
    assert "URLs are not downloaded" in reasons[2]
    assert "not a picture file" in reasons[3]
    assert "has 3 fields but the header has 2" in reasons[4]
    assert "repeats the id 'ok.png'" in reasons[5]
    assert catalog.skipped[0].where == "c.csv row 3"


def test_csv_column_options_and_errors(tmp_path):
    draw_shape("circle", (200, 0, 0), seed=1).save(tmp_path / "a.png")
    (tmp_path / "c.csv").write_text("pic,kind,name\na.png,round,Alpha\n", encoding="utf-8")
    with pytest.raises(CatalogError, match="no image column found.*pic, kind, name.*--image-column"):
        read_catalog(tmp_path / "c.csv")
    catalog = read_catalog(tmp_path / "c.csv", image_column="pic", label_column="kind")
    assert catalog.items[0].label == "round" and catalog.items[0].metadata == {"name": "Alpha"}
    with pytest.raises(CatalogError, match="no column 'colour' for the label"):
        read_catalog(tmp_path / "c.csv", image_column="pic", label_column="colour")
    with pytest.raises(CatalogError, match="only apply to CSV"):
        read_catalog(tmp_path, image_column="pic")


def test_csv_encoding_and_empty_files(tmp_path):
    (tmp_path / "latin.csv").write_bytes("image,label\ncaf\xe9.png,x\n".encode("latin-1"))
    with pytest.raises(CatalogError, match="not UTF-8"):
        read_catalog(tmp_path / "latin.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(CatalogError, match="empty CSV"):
        read_catalog(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("image,label\n")
    with pytest.raises(CatalogError, match="no pictures found"):
        read_catalog(tmp_path / "header.csv")


def test_empty_and_missing_sources(tmp_path):
    with pytest.raises(CatalogError, match="no pictures found"):
        read_catalog(tmp_path)
    with pytest.raises(CatalogError, match="no such file or folder"):
        read_catalog(tmp_path / "nope")
    (tmp_path / "x.zip").write_bytes(b"PK")
    with pytest.raises(CatalogError, match="folder of pictures or a CSV"):
        read_catalog(tmp_path / "x.zip")


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_symlinks_out_of_the_catalog_are_skipped(tmp_path):
    outside = tmp_path / "secret.png"
    draw_shape("circle", (1, 2, 3), seed=1).save(outside)
    catalog_dir = tmp_path / "cat"
    catalog_dir.mkdir()
    draw_shape("circle", (1, 2, 3), seed=2).save(catalog_dir / "inside.png")
    (catalog_dir / "link.png").symlink_to(outside)
    (catalog_dir / "alias.png").symlink_to(catalog_dir / "inside.png")
    catalog = read_catalog(catalog_dir)
    assert sorted(i.path for i in catalog.items) == ["alias.png", "inside.png"]
    assert [str(s) for s in catalog.skipped] == ["link.png: symbolic link to a file outside the catalog folder"]


def test_archive_of_class_folders_is_extracted_safely(tmp_path):
    from recommender.archive import extract_archive

    archive = make_zip(
        tmp_path / "up.zip",
        {
            "cats/a.png": png(1),
            "cats/b.png": png(2),
            "dogs/c.png": png(3),
            "../escape.png": png(4),
            "/abs.png": png(5),
            "dogs/../../up.png": png(6),
            "notes.txt": b"hello",
            "__MACOSX/._a.png": b"junk",
        },
        links={"dogs/link.png": "/etc/passwd"},
    )
    dest = tmp_path / "out"
    source, skipped = extract_archive(archive, dest)
    assert source == dest.resolve()
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == [
        "cats/a.png",
        "cats/b.png",
        "dogs/c.png",
    ]
    reasons = {s.where: s.reason for s in skipped}
    assert (
        reasons["../escape.png"]
        == reasons["/abs.png"]
        == reasons["dogs/../../up.png"]
        == ("path leaves the archive's folder")
    )
    assert reasons["dogs/link.png"].startswith("a link") and reasons["notes.txt"] == "neither a picture nor a CSV"
    assert not (tmp_path / "escape.png").exists() and not (tmp_path / "up.png").exists()
    assert read_catalog(source).labeled


def test_archive_with_a_csv_returns_the_csv(tmp_path):
    from recommender.archive import extract_archive

    archive = make_zip(
        tmp_path / "shop.zip", {"shop/items.csv": b"image,label\nimg/x.png,round\n", "shop/img/x.png": png(1)}
    )
    source, skipped = extract_archive(archive, tmp_path / "out")
    assert source.name == "items.csv" and not skipped
    assert read_catalog(source).items[0].label == "round"


def test_zip_bombs_and_non_zips_are_refused(tmp_path):
    from recommender.archive import extract_archive

    bomb = make_zip(tmp_path / "bomb.zip", {"a.png": b"\0" * (80 << 20)}, level=9)  # 80 MB of zeros in ~80 KB
    with pytest.raises(CatalogError, match="zip bomb"):
        extract_archive(bomb, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "fake.zip").write_bytes(b"not a zip")
    with pytest.raises(CatalogError, match="not a readable zip"):
        extract_archive(tmp_path / "fake.zip", tmp_path / "out2")

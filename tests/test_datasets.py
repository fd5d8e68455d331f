"""Catalogs from Hugging Face datasets, built on the fly on disk: imagefolder, save_to_disk, parquet, hf://."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import SHAPES, draw_shape

from recommender.catalog import read_catalog
from recommender.cli import cli
from recommender.errors import CatalogError

datasets = pytest.importorskip("datasets", reason="pip install 'recommender[hf]'")


@pytest.fixture(autouse=True)
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No network and a Hugging Face cache of the test's own (datasets reads HF_HOME when imported)."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")


def make_imagefolder(root: Path, *, per_label: int = 3) -> Path:
    """An imagefolder: train/<n>.png and a metadata.csv naming each file's label, one row without one."""
    (root / "train").mkdir(parents=True)
    rows = ["file_name,label,colour"]
    n = 0
    for k, (label, (shape, colour)) in enumerate(SHAPES.items()):
        for i in range(per_label):
            draw_shape(shape, colour, seed=100 * k + i).save(root / "train" / f"{n}.png")
            rows.append(f"{n}.png,{label},{colour[0]}")
            n += 1
    draw_shape("circle", (0, 0, 0), seed=7).save(root / "train" / "nolabel.png")
    rows.append("nolabel.png,,0")
    (root / "train" / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def make_saved(root: Path, *, splits: tuple[str, ...] = ("train",)) -> Path:
    """A save_to_disk dataset: pictures as PNG bytes inside Arrow, ClassLabel labels, one undecodable row."""
    import io

    names = list(SHAPES)
    images, labels = [], []
    for k, (shape, colour) in enumerate(SHAPES.values()):
        for i in range(3):
            buffer = io.BytesIO()
            draw_shape(shape, colour, seed=100 * k + i).save(buffer, format="PNG")
            images.append({"bytes": buffer.getvalue(), "path": None})
            labels.append(k)
    images.append({"bytes": b"<p>not a picture</p>", "path": None})
    labels.append(0)
    features = datasets.Features({"picture": datasets.Image(), "kind": datasets.ClassLabel(names=names)})
    table = datasets.Dataset.from_dict({"picture": images, "kind": labels}, features=features)
    if splits == ("train",):
        table.save_to_disk(str(root))
    else:
        datasets.DatasetDict({s: table for s in splits}).save_to_disk(str(root))
    return root


def test_an_imagefolder_with_metadata_is_read_in_place(tmp_path):
    catalog = read_catalog(make_imagefolder(tmp_path / "imf"))
    assert catalog.kind == "dataset" and catalog.root == (tmp_path / "imf").resolve()
    assert len(catalog.items) == 9 and catalog.items[0].id == "train/0.png" and catalog.items[0].label == "red-circle"
    assert catalog.items[0].metadata == {"colour": "220"}
    assert [str(s) for s in catalog.skipped] == ["train row 9: no label in 'label'"]
    assert catalog.columns == {"image": "image", "label": "label", "id": None}


def test_a_saved_dataset_is_written_out_once_by_content(tmp_path, isolated_folders):
    source = make_saved(tmp_path / "saved")
    catalog = read_catalog(source)
    assert len(catalog.items) == 9 and {item.label for item in catalog.items} == set(SHAPES)  # ClassLabel names
    assert catalog.columns["image"] == "picture" and catalog.columns["label"] == "kind"
    assert catalog.items[0].id == "train/0" and (catalog.root / catalog.items[0].path).is_file()
    assert catalog.root.is_relative_to(isolated_folders / "data" / "datasets")
    assert [str(s) for s in catalog.skipped] == ["train row 9: not a recognised picture format"]
    stamp = (catalog.root / catalog.items[0].path).stat().st_mtime_ns
    again = read_catalog(source)
    assert again.fingerprint() == catalog.fingerprint()
    assert (again.root / again.items[0].path).stat().st_mtime_ns == stamp  # not written twice


def test_splits_columns_and_limits(tmp_path):
    source = make_saved(tmp_path / "dd", splits=("train", "test"))
    assert read_catalog(source).items[0].id == "train/0"
    assert read_catalog(f"{source}:test").items[0].id == "test/0"
    with pytest.raises(CatalogError, match=r"no split 'dev'; the splits are train, test"):
        read_catalog(f"{source}:dev")
    assert len(read_catalog(source, limit=4).items) == 4
    unlabeled = read_catalog(source, label_column="picture")  # a label column that is the image is none
    assert unlabeled.columns["label"] is None and not unlabeled.labeled
    with pytest.raises(CatalogError, match=r"no column 'nope' for the label; the columns are: picture, kind"):
        read_catalog(source, label_column="nope")


def test_parquet_files_with_an_image_column(tmp_path):
    saved = datasets.load_from_disk(str(make_saved(tmp_path / "saved")))
    (tmp_path / "pq" / "data").mkdir(parents=True)
    saved.to_parquet(str(tmp_path / "pq" / "data" / "train-0.parquet"))
    catalog = read_catalog(tmp_path / "pq")
    assert len(catalog.items) == 9 and catalog.columns["image"] == "picture"
    assert len(read_catalog(tmp_path / "pq" / "data" / "train-0.parquet").items) == 9


def test_the_hub_without_network_is_a_clear_error_at_once():
    started = time.perf_counter()
    with pytest.raises(CatalogError, match=r"shapes:train: not in the local Hugging Face cache"):
        read_catalog("hf://datasets/someone/shapes:train")
    assert time.perf_counter() - started < 5


def test_an_unreachable_hub_is_said_in_seconds_not_after_retries(monkeypatch):
    """Not offline but no hub: a quick connection probe answers before the hub client's retries (about 25 s)."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    started = time.perf_counter()
    with pytest.raises(CatalogError, match=r"the Hugging Face hub cannot be reached .*HF_HUB_OFFLINE=1"):
        read_catalog("hf://datasets/someone/shapes")
    assert time.perf_counter() - started < 6
    with pytest.raises(CatalogError, match=r"is named hf://datasets/OWNER/NAME\[:split\]"):
        read_catalog("hf://models/someone/shapes")


def test_without_the_datasets_package_one_line_says_what_to_install(tmp_path, monkeypatch):
    import sys

    source = make_saved(tmp_path / "saved")
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(CatalogError, match=r"needs the datasets package: pip install 'recommender\[hf\]'"):
        read_catalog(source)


def test_uploaded_folders_are_never_read_as_datasets(tmp_path):
    """A stranger's zip may hold a metadata.csv: confined reading keeps it a folder of pictures."""
    catalog = read_catalog(make_imagefolder(tmp_path / "imf"), confined=True)
    assert catalog.kind == "flat" or catalog.kind == "folders"


@pytest.mark.parametrize("maker", [make_imagefolder, make_saved])
def test_datasets_index_search_and_identify(maker, tmp_path, tiny_model):
    source = maker(tmp_path / "ds")
    runner = CliRunner()
    built = runner.invoke(cli, ["index", str(source), "--name", "ds", "--model", str(tiny_model), "-q", "--json"])
    assert built.exit_code == 0, built.output
    summary = json.loads(built.stdout)
    assert summary["count"] == 9 and summary["skipped"] == 1 and summary["skips"][0]["where"] == "train row 9"
    info = json.loads(runner.invoke(cli, ["info", "--index", "ds", "--json"]).stdout)
    assert info["catalog"]["kind"] == "dataset" and info["catalog"]["labels"] == 3
    catalog = read_catalog(source)
    query = catalog.root / catalog.items[4].path
    found = json.loads(runner.invoke(cli, ["search", str(query), "--index", "ds", "--json", "-k", "2"]).stdout)
    assert found[0]["id"] == catalog.items[4].id and found[0]["score"] == pytest.approx(1.0, abs=2e-3)
    answer = json.loads(runner.invoke(cli, ["identify", str(query), "--index", "ds", "--json"]).stdout)
    assert answer["label"] == catalog.items[4].label and answer["in_catalog"]

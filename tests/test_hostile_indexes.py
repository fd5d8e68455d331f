"""Indexes from elsewhere: truncated, corrupt or mismatched ones fail with a clear line; none can run code."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_labeled_catalog

from recommender import build_index, load_backbone, look_alikes
from recommender.cli import cli
from recommender.errors import IndexLoadError, IndexMismatchError, RecommenderError
from recommender.index import FORMAT_VERSION, Index


@pytest.fixture
def shapes(tmp_path: Path, tiny_model: Path) -> tuple[Path, Index]:
    catalog = make_labeled_catalog(tmp_path / "shapes", per_label=2)
    build_index(catalog, name="shapes", model=str(tiny_model), progress=False)
    return catalog, Index.load("shapes")


def edit_manifest(index: Index, **changes: object) -> None:
    manifest = json.loads((index.folder / "manifest.json").read_text())
    manifest.update(changes)
    (index.folder / "manifest.json").write_text(json.dumps(manifest))


def one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text and "rebuild it with" in text, text
    return text


@pytest.mark.parametrize("version", [0, FORMAT_VERSION + 1, "1", None])
def test_another_format_version_is_named_with_both_versions(shapes, version):
    _, index = shapes
    edit_manifest(index, format_version=version, library_version="9.9.9")
    with pytest.raises(IndexMismatchError) as caught:
        Index.load("shapes")
    assert f"format version {version}" in one_line(caught.value) and f"-{FORMAT_VERSION}" in str(caught.value)


def test_another_library_version_with_the_same_format_loads(shapes):
    # The format version is the contract; a patch release of the library reads what older ones wrote.
    _, index = shapes
    edit_manifest(index, library_version="0.0.1")
    assert len(Index.load("shapes")) == 6


def test_another_image_size_or_backbone_is_refused_when_searched(shapes, tiny_model):
    catalog, index = shapes
    query = catalog / "red-circle" / "0.png"
    for other, words in [
        (load_backbone(str(tiny_model), image_size=112), "image_size=224"),
        (load_backbone(str(tiny_model), pooling="mean"), "pooling=cls"),
        (load_backbone("colour-histogram"), "colour-histogram"),
    ]:
        with pytest.raises(IndexMismatchError) as caught:
            look_alikes(query, index, backbone=other)
        assert "was built with" in one_line(caught.value) and words in str(caught.value)


@pytest.mark.parametrize(
    "damage",
    [
        "manifest cut",
        "items cut",
        "items garbage",
        "embeddings missing",
        "count disagrees",
        "dim disagrees",
        "backbone spec",
    ],
)
def test_damaged_indexes_are_detected_on_load(shapes, damage):
    _, index = shapes
    manifest_path = index.folder / "manifest.json"
    files = index.manifest.files
    items, embeddings = index.folder / files.items, index.folder / files.embeddings
    if damage == "manifest cut":
        manifest_path.write_bytes(manifest_path.read_bytes()[:200])
    elif damage == "items cut":
        items.write_bytes(items.read_bytes()[:-30])
    elif damage == "items garbage":
        items.write_bytes(b"\x00\xff" * 50)
    elif damage == "embeddings missing":
        embeddings.unlink()
    elif damage == "count disagrees":
        edit_manifest(index, count=index.manifest.count + 1)
    elif damage == "dim disagrees":
        edit_manifest(index, dim=64)
    else:
        edit_manifest(index, backbone={**index.manifest.backbone.to_json(), "trust_remote_code": True})
    with pytest.raises(IndexLoadError) as caught:
        Index.load("shapes", verify=True)
    assert "shapes" in one_line(caught.value)
    result = CliRunner().invoke(cli, ["info", "--index", "shapes"])
    assert result.exit_code == 1 and result.stderr.startswith("Error: index 'shapes'")
    assert len(result.stderr.strip().splitlines()) == 1


# A pickle that runs `touch SENTINEL` when unpickled (protocol 0, written out by hand).
def payload(sentinel: Path) -> bytes:
    return f"cposix\nsystem\n(S'touch {sentinel}'\ntR.".encode()


def test_the_payload_is_live_when_unpickled(tmp_path):
    # The control for the test below: the same bytes do run code when something unpickles them.
    sentinel = tmp_path / "control-ran"
    (tmp_path / "p").write_bytes(payload(sentinel))
    subprocess.run(
        [sys.executable, "-c", "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))", str(tmp_path / "p")],
        check=True,
    )
    assert sentinel.exists()


def test_loading_and_searching_a_hostile_index_never_runs_its_code(shapes, tmp_path, tiny_model):
    catalog, index = shapes
    sentinel = tmp_path / "code-ran"
    evil = payload(sentinel)

    def plant(name: str, data: bytes) -> None:
        """Put `data` where the manifest says a data file is, with a matching checksum (it passes that check)."""
        manifest = json.loads((index.folder / "manifest.json").read_text())
        old = index.folder / manifest["files"][name]
        new = old.with_name(old.stem + ".pkl")
        old.unlink(missing_ok=True)
        new.write_bytes(data)
        manifest["files"][name] = new.name
        manifest["files"][f"{name}_sha256"] = hashlib.sha256(data).hexdigest()
        (index.folder / "manifest.json").write_text(json.dumps(manifest))

    pristine = {p.name: p.read_bytes() for p in index.folder.iterdir() if p.is_file()}

    def restore() -> None:
        for p in index.folder.iterdir():
            if p.is_file():
                p.unlink()
        for name, data in pristine.items():
            (index.folder / name).write_bytes(data)

    for target in ("embeddings", "items"):
        restore()
        plant(target, evil)
        with pytest.raises(IndexLoadError, match="not a safetensors file|not valid JSON"):
            Index.load("shapes", verify=True)
    restore()
    edit_manifest(
        index,
        catalog={
            **index.manifest.catalog.to_json(),
            "__reduce__": "posix.system",
            "root": f"{tmp_path}/$(touch {sentinel})",
        },
    )
    Index.load("shapes")  # strings in JSON stay strings

    # A backbone folder of the attacker's: DINOv2 by name, custom code on offer, pickled weights.
    model = tmp_path / "evil-model"
    model.mkdir()
    (model / "config.json").write_text(
        json.dumps(
            {
                **json.loads((tiny_model / "config.json").read_text()),
                "auto_map": {"AutoModel": "modeling_evil.EvilModel"},
                "trust_remote_code": True,
            }
        )
    )
    (model / "modeling_evil.py").write_text(f"import os\nos.system('touch {sentinel}')\n")
    (model / "pytorch_model.bin").write_bytes(evil)
    restore()
    edit_manifest(index, backbone={**index.manifest.backbone.to_json(), "model": str(model)})
    with pytest.raises(RecommenderError, match="cannot load the model"):
        look_alikes(catalog / "red-circle" / "0.png", Index.load("shapes"))
    result = CliRunner().invoke(cli, ["search", str(catalog / "red-circle" / "0.png"), "--index", "shapes"])
    assert result.exit_code == 1 and "cannot load the model" in result.stderr
    assert not sentinel.exists()
    assert not any(p.suffix == ".pyc" for p in model.rglob("*"))  # its module was never even imported

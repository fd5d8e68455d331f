"""The smaller holes of issue 16: giant CSV cells, deep JSON, NaN vectors, indexes naming pictures elsewhere, stores.

Each attack is made the way a stranger would make it (a CSV, an index folder dropped into the index
folder, a downloaded manifest) and must end in one line saying what is wrong, never in an unexpected
error, a silent empty answer, or a picture from outside the index's own catalog folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import struct
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import draw_shape, make_labeled_catalog
from hostile import png

import recommender.catalog as catalog_module
from recommender import build_index, load_backbone, look_alikes
from recommender.build import Checkpoint
from recommender.catalog import CSV_MAX_LINE, Item, _under_one_root, read_catalog
from recommender.cli import cli
from recommender.errors import CatalogError, IndexLoadError, RecommenderError
from recommender.index import CatalogInfo, Index, write_index
from recommender.index.format import safetensors_bytes
from recommender.recommend import identify

# ------------------------------------------------------------------------------------------ helpers


def one_line(text: str) -> str:
    assert "\n" not in text.strip(), text
    return text


def cli_error(*args: str) -> str:
    """Run the CLI; it must fail with exit status 1 and one line on stderr, which is returned."""
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert "unexpected" not in result.stderr, result.stderr
    return one_line(result.stderr.strip())


def tamper(
    folder: Path,
    *,
    items: Callable[[dict], None] | None = None,
    manifest: Callable[[dict], None] | None = None,
    embeddings: np.ndarray | None = None,
) -> None:
    """Edit an index folder as an attacker would, keeping every checksum valid (so that only the content is wrong)."""
    m = json.loads((folder / "manifest.json").read_text())
    if items is not None:
        path = folder / m["files"]["items"]
        data = json.loads(path.read_text())
        items(data)
        raw = json.dumps(data).encode()
        path.write_bytes(raw)
        m["files"]["items_sha256"] = hashlib.sha256(raw).hexdigest()
    if embeddings is not None:
        raw = safetensors_bytes("embeddings", embeddings)
        (folder / m["files"]["embeddings"]).write_bytes(raw)
        m["files"]["embeddings_sha256"] = hashlib.sha256(raw).hexdigest()
    if manifest is not None:
        manifest(m)
    (folder / "manifest.json").write_text(json.dumps(m))


@pytest.fixture
def shapes(tmp_path: Path) -> tuple[Path, Index]:
    """A small labeled index (the colour histogram: no model to load) and its catalog folder."""
    catalog = make_labeled_catalog(tmp_path / "shapes", per_label=2)
    build_index(catalog, name="shapes", model="colour-histogram", progress=False)
    return catalog, Index.load("shapes")


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A picture outside every catalog folder: what an attacker would like the app to show."""
    folder = tmp_path / "private"
    folder.mkdir()
    draw_shape("circle", (1, 2, 3), seed=7).save(folder / "secret.png")
    return folder / "secret.png"


# ------------------------------------------------------------------------------------------ CSV bounds


def test_a_csv_cell_over_the_csv_limit_is_one_clear_line(tmp_path):
    (tmp_path / "a.png").write_bytes(png(1))
    csv_path = tmp_path / "items.csv"
    csv_path.write_text("image,label,description\na.png,round," + "x" * 140_000 + "\n")
    with pytest.raises(CatalogError, match=r"row 2 has a cell longer than 131,072 characters \(an unclosed quote"):
        read_catalog(csv_path)
    # Before: "Error: unexpected Error: field larger than field limit (131072)".
    assert "cell longer than 131,072" in cli_error(
        "index", str(csv_path), "--name", "c", "--model", "colour-histogram", "-q"
    )
    # The usual cause: a quote opened and never closed swallows the rest of the file into one cell.
    csv_path.write_text("image,label\na.png,round\n" + 'a.png,"oops\n' + "a.png,round\n" * 20_000)
    with pytest.raises(CatalogError, match="row 3 has a cell longer than"):
        read_catalog(csv_path)


def test_a_csv_line_or_row_count_beyond_the_bounds_is_refused(tmp_path, monkeypatch):
    (tmp_path / "a.png").write_bytes(png(1))
    csv_path = tmp_path / "items.csv"
    csv_path.write_text("image,label\na.png," + "y," * (CSV_MAX_LINE // 2) + "\n")
    with pytest.raises(CatalogError, match="a line longer than 1,048,576 bytes"):
        read_catalog(csv_path)
    monkeypatch.setattr(catalog_module, "CSV_MAX_ROWS", 100)
    csv_path.write_text("id,image\n" + "".join(f"{i},a.png\n" for i in range(101)))
    with pytest.raises(CatalogError, match="more than 100 rows"):
        read_catalog(csv_path)
    csv_path.write_text("id,image\n" + "".join(f"{i},a.png\n" for i in range(100)))
    assert len(read_catalog(csv_path).items) == 100


def test_a_csv_naming_pictures_beside_its_folder_gets_a_root_above_them(tmp_path):
    # Pictures outside the CSV's folder used to become `../img/a.png` items; a loaded index now refuses `..`.
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png(1))
    (tmp_path / "img" / "b.png").write_bytes(png(2, (10, 200, 10)))
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "items.csv").write_text("image,label\n../img/a.png,red\n../img/b.png,green\n")
    catalog = read_catalog(tmp_path / "meta" / "items.csv")
    assert catalog.root == tmp_path.resolve() and [i.path for i in catalog.items] == ["img/a.png", "img/b.png"]
    assert [i.id for i in catalog.items] == ["img/a.png", "img/b.png"]
    build_index(catalog, name="beside", model="colour-histogram", progress=False)
    match = look_alikes(tmp_path / "img" / "a.png", Index.load("beside"), k=1)[0]
    assert match.path == tmp_path.resolve() / "img" / "a.png"
    with pytest.raises(CatalogError, match="spread over the whole file system"):
        _under_one_root(Path("x.csv"), Path("/srv/shop"), [Item("a", "a.png")], [Path("/mnt/pictures/a.png")])


# ------------------------------------------------------------------------------------------ deep or huge JSON


def test_a_safetensors_header_of_brackets_is_one_line(shapes):
    _, index = shapes
    emb = index.folder / index.manifest.files.embeddings
    for head in (b"[" * (16 << 20), b"[" * 60_000):  # the issue's 16 MB one, and one under the header bound
        emb.write_bytes(struct.pack("<Q", len(head)) + head + b"\0" * 64)
        tamper(index.folder, manifest=lambda m: m["files"].pop("embeddings_sha256", None))
        with pytest.raises(IndexLoadError, match="not a safetensors file"):
            Index.load("shapes")
        # Before: "Error: unexpected RecursionError: maximum recursion depth exceeded while decoding a JSON array".
        assert "not a safetensors file; rebuild it with" in cli_error("info", "--index", "shapes")


@pytest.mark.parametrize("target", ["manifest", "items"])
def test_deeply_nested_index_json_is_one_line(shapes, target):
    _, index = shapes
    path = index.folder / ("manifest.json" if target == "manifest" else index.manifest.files.items)
    if target == "items":
        tamper(index.folder, manifest=lambda m: m["files"].pop("items_sha256"))
    path.write_bytes(b"[" * 200_000)
    assert "nested too deeply to be an index file; rebuild it with" in cli_error("info", "--index", "shapes")


def test_manifests_that_parse_but_nest_deeply_or_are_huge_are_refused(shapes):
    _, index = shapes
    deep: Any = "x"
    for _ in range(200):  # parses (under Python's recursion limit), but would trip whatever walks it next
        deep = [deep]
    tamper(index.folder, manifest=lambda m: m.update(stats={"deep": deep}))
    assert "malformed manifest (nested too deeply)" in cli_error("info", "--index", "shapes", "--json")
    with open(index.folder / "manifest.json", "ab") as fh:
        fh.truncate(17 << 20)  # sparse: 17 MB that are never read
    assert "manifest.json is 17.8 MB, more than the 16.8 MB it may be" in cli_error("info", "--index", "shapes")


@pytest.mark.parametrize("damage", ["label", "id", "metadata", "calibration"])
def test_index_fields_of_the_wrong_type_are_refused_on_load(shapes, damage):
    _, index = shapes
    if damage == "calibration":
        tamper(index.folder, manifest=lambda m: m.update(calibration={"threshold": "high"}))
    else:

        def edit(data: dict) -> None:
            if damage == "metadata":
                data["metadata"] = {"colour": [{"nested": True}] * len(data["id"])}
            else:
                data[damage][0] = {"__class__": "object"}

        tamper(index.folder, items=edit)
    with pytest.raises(IndexLoadError, match="malformed"):
        Index.load("shapes")


def test_a_hostile_checkpoint_costs_only_its_own_shards(shapes, tmp_path):
    from safetensors.numpy import save

    _, index = shapes
    backbone = load_backbone("colour-histogram")
    checkpoint = Checkpoint(index.folder, backbone, "float16")
    checkpoint.dir.mkdir(parents=True)
    good = np.full((2, backbone.dim), backbone.dim**-0.5, np.float32)

    def shard(name: str, hashes: np.ndarray, vectors: np.ndarray) -> None:
        (checkpoint.dir / f"shard-{name}.safetensors").write_bytes(save({"hashes": hashes, "vectors": vectors}))

    shard("1-good", np.full((2, 32), 1, np.uint8), good)
    nan = good.copy()
    nan[1] = np.nan
    shard("2-nan", np.stack([np.full(32, 2, np.uint8), np.full(32, 3, np.uint8)]), nan)
    shard("3-other-dim", np.full((2, 32), 4, np.uint8), np.ones((2, 7), np.float32))
    shard("4-short-hashes", np.full((2, 8), 5, np.uint8), good)
    shard("5-float64", np.full((2, 32), 6, np.uint8), good.astype(np.float64))
    head = b"[" * (1 << 20)
    (checkpoint.dir / "shard-6-deep.safetensors").write_bytes(struct.pack("<Q", len(head)) + head)
    with open(checkpoint.dir / "shard-7-huge.safetensors", "wb") as fh:
        fh.truncate(64 << 30)  # sparse: never read
    found = checkpoint.load()
    assert sorted(found) == [bytes([1] * 32).hex(), bytes([2] * 32).hex()]  # the NaN row is embedded again
    assert all(v.shape == (backbone.dim,) and np.isfinite(v).all() for v in found.values())


# ------------------------------------------------------------------------------------------ NaN vectors


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """The tiny DINOv2 with one weight damaged to NaN: every picture it embeds comes out as NaN."""
    import torch
    from transformers import Dinov2Model

    model = Dinov2Model.from_pretrained(tiny_model)
    with torch.no_grad():
        model.layernorm.weight[0] = float("nan")
    folder = tmp_path_factory.mktemp("nan-dinov2")
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text((tiny_model / "preprocessor_config.json").read_text())
    return folder


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_nan_vectors_in_an_index_fail_on_load_and_on_search(shapes):
    catalog, index = shapes
    vectors = np.array(index.embeddings)
    vectors[1] = np.nan
    vectors[2] = np.inf
    tamper(index.folder, embeddings=vectors)
    # Before: search returned [] (every match silently dropped), with exit status 0.
    with pytest.raises(IndexLoadError, match=r"its vector 1 is not a number \(NaN or infinite\); rebuild it with"):
        Index.load("shapes")
    query = str(catalog / "red-circle" / "0.png")
    assert "is not a number" in cli_error("search", query, "--index", "shapes", "--json")
    # Files too large to checksum on every load are not read whole: the first search finds it instead.
    unchecked = Index.load("shapes", verify=False)
    with pytest.raises(IndexLoadError, match="its vector 1 is not a number"):
        look_alikes(catalog / "red-circle" / "0.png", unchecked)
    with pytest.raises(IndexLoadError, match="is not a number"):
        identify(catalog / "red-circle" / "0.png", unchecked)
    store = unchecked.store
    store.__dict__["_dense"] = None  # as if too large for one float32 matrix: scored in blocks
    with pytest.raises(IndexLoadError, match="its vector 1 is not a number"):
        store.search(np.ones((1, index.dim), np.float32) / np.sqrt(index.dim), 3)


def test_nan_vectors_in_the_two_pass_search_are_found(monkeypatch):
    import recommender.hardware as hardware
    from recommender.index.store import LocalStore

    rows = np.eye(8, 16, dtype=np.float16)
    rows[5, 3] = np.nan
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    store = LocalStore(rows, [Item(f"i{i}", f"i{i}.png") for i in range(8)], label="big")
    store.__dict__["_dense"] = None
    with pytest.raises(IndexLoadError, match="index 'big' is corrupt: its vector 5 is not a number"):
        store.search(np.eye(1, 16, dtype=np.float32), 2)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_a_query_vector_that_is_not_a_number_is_refused(shapes):
    _, index = shapes
    for bad in (np.full(index.dim, np.nan, np.float32), np.full(index.dim, np.inf, np.float32)):
        with pytest.raises(RecommenderError, match="query vector is not a number"):
            index.search(bad)
        with pytest.raises(RecommenderError, match="query vector is not a number"):
            index.scores(bad)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_a_backbone_that_gives_nan_never_writes_an_index(tmp_path, nan_model):
    catalog = make_labeled_catalog(tmp_path / "shapes", per_label=1)
    with pytest.raises(
        RecommenderError,
        match=r"gave vectors that are not numbers \(NaN or infinite\) for 3 of 3 "
        r"pictures \(blue-triangle/0.png, green-square/0.png",
    ):
        build_index(catalog, name="nan", model=str(nan_model), progress=False)
    assert not (tmp_path / "index" / "nan" / "manifest.json").exists()
    assert "not numbers" in cli_error("index", str(catalog), "--name", "nan", "--model", str(nan_model), "-q")
    # An index whose own backbone gives NaN for a query (weights damaged after the build): one line, no [].
    backbone = load_backbone(str(nan_model))
    items = [Item(id=p.name, path=f"red-circle/{p.name}", sha256="0" * 64) for p in (catalog / "red-circle").iterdir()]
    write_index(
        tmp_path / "index" / "damaged",
        embeddings=np.eye(1, backbone.dim, dtype=np.float32),
        items=items,
        backbone=backbone,
        catalog=CatalogInfo(root=str(catalog)),
    )
    with pytest.raises(RecommenderError, match="0.png: .* gave no usable vector for this picture"):
        look_alikes(catalog / "red-circle" / "0.png", Index.load("damaged"))


# ------------------------------------------------------------------------------------------ pictures elsewhere


def hostile_variants(secret: Path) -> dict[str, Callable[[dict], None] | tuple[str, Callable[[dict], None]]]:
    """name -> how to make an index name `secret`: through its items' paths, or its catalog root."""

    def item_path(path: str) -> Callable[[dict], None]:
        def edit(data: dict) -> None:
            data["path"][0] = path

        return edit

    return {
        "dotdot": item_path(f"../../private/{secret.name}"),
        "absolute": item_path(str(secret)),
        "empty": item_path(""),
        "dot": item_path(f"./red-circle/../../private/{secret.name}"),
        "backslash": item_path(f"..\\private\\{secret.name}"),
        "root-slash": ("manifest", lambda m: m["catalog"].update(root="/")),
        "root-relative": ("manifest", lambda m: m["catalog"].update(root="private")),
        "root-dotdot": ("manifest", lambda m: m["catalog"].update(root=f"{secret.parent}" + "/.." * 40)),
    }


def plant(folder: Path, variant: Callable[[dict], None] | tuple[str, Callable[[dict], None]]) -> None:
    if isinstance(variant, tuple):
        tamper(folder, manifest=variant[1])
    else:
        tamper(folder, items=variant)


@pytest.mark.parametrize(
    "variant", ["dotdot", "absolute", "empty", "dot", "backslash", "root-slash", "root-relative", "root-dotdot"]
)
def test_an_index_naming_pictures_outside_its_catalog_is_refused_on_load(shapes, secret, variant):
    catalog, index = shapes
    plant(index.folder, hostile_variants(secret)[variant])
    with pytest.raises(IndexLoadError) as caught:
        Index.load("shapes")
    assert "is refused" in one_line(str(caught.value)) and "rebuild it with" in str(caught.value)
    # Before: searched, and the secret picture's path was printed as a match (the app would show it).
    text = cli_error("search", str(catalog / "red-circle" / "0.png"), "--index", "shapes", "--json")
    assert "is refused" in text and "score" not in text


def test_a_picture_reached_through_a_link_outside_the_catalog_is_refused(shapes, secret):
    catalog, _ = shapes
    query = catalog / "red-circle" / "0.png"
    (catalog / "red-circle" / "1.png").unlink()
    (catalog / "red-circle" / "1.png").symlink_to(secret)  # a file link
    loaded = Index.load("shapes")  # the paths themselves are plain
    for ask in (lambda: look_alikes(query, loaded, k=6), lambda: identify(query, loaded, k=6)):
        with pytest.raises(IndexLoadError, match="'red-circle/1.png' is a link to a file outside its catalog folder"):
            ask()
    assert "outside its catalog folder" in cli_error("search", str(query), "--index", "shapes")
    # A folder link: every picture under it leads elsewhere.
    (catalog / "red-circle" / "1.png").unlink()
    (catalog / "red-circle" / "1.png").write_bytes(query.read_bytes())
    moved = catalog.parent / "moved-green"
    (catalog / "green-square").rename(moved)
    (catalog / "green-square").symlink_to(moved, target_is_directory=True)
    with pytest.raises(IndexLoadError, match="'green-square/.*' is a link to a file outside"):
        look_alikes(query, Index.load("shapes"), k=6)
    # Links that stay inside the catalog are fine.
    (catalog / "green-square").unlink()
    moved.rename(catalog / "green-square")
    (catalog / "red-circle" / "1.png").unlink()
    (catalog / "red-circle" / "1.png").symlink_to(catalog / "red-circle" / "0.png")
    assert len(look_alikes(query, Index.load("shapes"), k=6)) == 6


def test_an_index_is_named_by_its_folder_not_by_its_manifest(shapes):
    _, index = shapes
    tamper(index.folder, manifest=lambda m: m.update(name="pokemon"))
    assert Index.load("shapes").name == "shapes"


# ------------------------------------------------------------------------------------------ stores elsewhere


def milvus_manifest(kind: str, where: str, **extra: Any) -> Callable[[dict], None]:
    def edit(m: dict) -> None:
        m["format_version"] = 2
        m["store"] = {
            "kind": kind,
            "uri": where,
            "collection": "rec_shapes_0000_x",
            "columns": ["label", "id"],
            "index": {"index_type": "HNSW"},
            "search_params": {"ef": 128},
            **extra,
        }

    return edit


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback port that records whether anything connects to it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.settimeout(0.5)
        yield sock


def test_a_milvus_server_named_by_an_index_is_never_contacted(shapes, listener, monkeypatch):
    _, index = shapes
    port = listener.getsockname()[1]
    monkeypatch.setenv("RECOMMENDER_MILVUS_TOKEN", "root:secret")
    tamper(index.folder, manifest=milvus_manifest("milvus", f"http://127.0.0.1:{port}"))
    with pytest.raises(
        IndexLoadError,
        match=rf"keeps its vectors on the Milvus server milvus://127.0.0.1:{port}, "
        r"which is not the store this machine is set to use \(RECOMMENDER_STORE="
        rf"local\).*set RECOMMENDER_STORE=milvus://127.0.0.1:{port} to trust it",
    ):
        Index.load("shapes")
    assert "is refused" in cli_error("info", "--index", "shapes")
    with pytest.raises(TimeoutError):
        listener.accept()  # nobody came: the token went nowhere
    monkeypatch.setenv("RECOMMENDER_STORE", "milvus://other.example:19530")
    with pytest.raises(IndexLoadError, match="not the store this machine is set to use"):
        Index.load("shapes")


@pytest.mark.parametrize("uri", ["../elsewhere.db", "sub/vectors.db", "ABSOLUTE/new/vectors.db", "vectors.sqlite"])
def test_a_milvus_lite_database_outside_the_index_or_not_there_is_refused(shapes, tmp_path, uri):
    _, index = shapes
    uri = uri.replace("ABSOLUTE", str(tmp_path / "nowhere"))
    tamper(index.folder, manifest=milvus_manifest("milvus-lite", uri))
    with pytest.raises(IndexLoadError, match="is refused: its Milvus Lite database"):
        Index.load("shapes")
    assert not (tmp_path / "nowhere").exists() and not (index.folder.parent / "elsewhere.db").exists()


@pytest.mark.parametrize(
    "extra",
    [{"search_params": {"ef": [1]}}, {"collection": "x; drop"}, {"columns": [1]}, {"index": "HNSW"}, {"uri": 5}],
)
def test_a_malformed_store_in_the_manifest_is_one_line(shapes, extra):
    _, index = shapes
    tamper(index.folder, manifest=milvus_manifest("milvus-lite", "vectors.db", **extra))
    (index.folder / "vectors.db").mkdir()
    with pytest.raises(IndexLoadError, match=r"malformed manifest \(bad 'store'\)"):
        Index.load("shapes")


def test_a_rebuild_leaves_a_store_the_old_manifest_names_elsewhere_alone(shapes, tmp_path):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from recommender.index.store.milvus import close_clients

    catalog, index = shapes
    elsewhere = tmp_path / "not-mine" / "vectors.db"
    tamper(index.folder, manifest=milvus_manifest("milvus-lite", str(elsewhere)))
    try:
        build_index(catalog, name="shapes", model="colour-histogram", progress=False, store="milvus-lite")
        assert len(look_alikes(catalog / "red-circle" / "0.png", Index.load("shapes"), k=2)) == 2
    finally:
        close_clients()
    assert not elsewhere.parent.exists()  # before: created (and opened) where the old manifest said


# ------------------------------------------------------------------------------------------ the real server


class Server:
    """Calls the app's own (hidden) events over plain HTTP, as any script could, in one session."""

    def __init__(self, url: str) -> None:
        import httpx

        self.url, self.http = url, httpx
        self.config = httpx.get(f"{url}/config", timeout=30).json()
        self.session = secrets.token_hex(8)

    def component(self, elem_id: str) -> int:
        return next(c["id"] for c in self.config["components"] if c.get("props", {}).get("elem_id") == elem_id)

    def call(self, elem_id: str, trigger: str, data: list[Any], *, fn: int | None = None) -> dict[str, Any]:
        """Run the event `trigger` of the component `elem_id` (or the event numbered `fn`) with these inputs."""
        comp = self.component(elem_id)
        if fn is None:
            fn = next(d["id"] for d in self.config["dependencies"] if [comp, trigger] in d["targets"])
        joined = self.http.post(
            f"{self.url}/gradio_api/queue/join",
            timeout=30,
            json={"data": data, "fn_index": fn, "trigger_id": comp, "session_hash": self.session, "event_data": None},
        )
        joined.raise_for_status()
        with self.http.stream(
            "GET", f"{self.url}/gradio_api/queue/data", params={"session_hash": self.session}, timeout=120
        ) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("msg") == "process_completed":
                        return message
        raise AssertionError("the event never completed")

    def upload(self, path: Path) -> dict[str, Any]:
        with open(path, "rb") as fh:
            sent = self.http.post(f"{self.url}/gradio_api/upload", files={"files": (path.name, fh)}, timeout=30)
        sent.raise_for_status()
        return {"path": sent.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}

    def choose(self, name: str) -> dict[str, Any]:
        """Pick an index in the "Your own catalog" tab, after "Refresh list" (the operator's folder as it is now)."""
        chooser = self.component("chooser")
        refresh = next(d["id"] for d in self.config["dependencies"] if d["inputs"] == [] and d["outputs"] == [chooser])
        refreshed = self.call("chooser", "click", [], fn=refresh)
        assert refreshed["success"], refreshed
        return self.call("chooser", "change", [name])


def error_of(message: dict[str, Any]) -> str:
    assert not message["success"], json.dumps(message)[:600]
    return str(message["output"].get("error"))


@pytest.fixture
def operator_indexes(app_server, tmp_path, secret) -> Iterator[Callable[..., str]]:
    """Hostile index folders dropped into the running server's index folder; removed afterwards."""
    import shutil

    index_dir = app_server.folder / "index"
    catalog = make_labeled_catalog(tmp_path / "shapes", per_label=2)
    names = []

    def add(name: str, variant: Any = None, embeddings: Callable[[np.ndarray], np.ndarray] | None = None) -> str:
        name = f"hostile-{name}-{secrets.token_hex(3)}"
        build_index(catalog, name=name, model="colour-histogram", index_dir=index_dir, progress=False)
        folder = index_dir / name
        names.append(folder)
        if variant is not None:
            plant(folder, variant)
        if embeddings is not None:
            tamper(folder, embeddings=embeddings(np.array(Index.load(folder).embeddings)))
        return name

    yield add
    for folder in names:
        shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(catalog, ignore_errors=True)


def nan_rows(vectors: np.ndarray) -> np.ndarray:
    vectors[0] = np.nan
    return vectors


@pytest.mark.slow
def test_the_server_refuses_operator_indexes_that_name_pictures_elsewhere(app_server, operator_indexes, secret):
    server = Server(app_server.url)
    variants = hostile_variants(secret)
    for variant in ("dotdot", "absolute", "root-slash"):
        name = operator_indexes(variant, variants[variant])
        # Before: chosen, then searched, and the gallery showed a thumbnail of the secret picture.
        text = error_of(server.choose(name))
        assert "is refused" in one_line(text) and "rebuild it with" in text
    name = operator_indexes("nan", embeddings=nan_rows)
    assert "is not a number (NaN or infinite)" in error_of(server.choose(name))  # before: every search gave []
    assert app_server.process.poll() is None


@pytest.mark.slow
def test_the_server_refuses_to_show_a_picture_linked_from_outside(app_server, operator_indexes, secret, tmp_path):
    server = Server(app_server.url)
    name = operator_indexes("link")
    index = Index.load(app_server.folder / "index" / name)
    linked = index.root / "red-circle" / "1.png"
    query = tmp_path / "query.png"
    query.write_bytes((index.root / "red-circle" / "0.png").read_bytes())
    linked.unlink()
    linked.symlink_to(secret)
    assert server.choose(name)["success"]
    # Before: the answer's gallery held the secret picture, served from Gradio's cache.
    # The page says why in the answer's place (`app.unanswered`), with nothing beside it.
    answered = server.call("search", "click", [server.upload(query), 6, None, None])
    assert answered["success"], json.dumps(answered)[:600]
    text, _, gallery, *_ = answered["output"]["data"]
    assert text.startswith("### Not answered") and gallery["value"] == []
    assert "is a link to a file outside its catalog folder" in text and str(secret) not in json.dumps(answered)
    assert app_server.process.poll() is None


@pytest.mark.slow
def test_a_web_upload_with_a_giant_csv_cell_is_one_clear_line(app_server, tmp_path):
    server = Server(app_server.url)
    archive = tmp_path / "shop.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("shop/a.png", png(1))
        z.writestr("shop/items.csv", "image,label,notes\na.png,round," + "x" * 140_000 + "\n")
    # Before: "Unexpected error (Error); the server keeps running."
    text = error_of(server.call("build", "click", [server.upload(archive), f"giant-cell-{os.getpid()}"]))
    assert "has a cell longer than 131,072 characters" in one_line(text) and "Unexpected" not in text

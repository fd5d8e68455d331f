"""Nothing silently lost: a picture two labels share, every evaluated query, every skip, any label in a message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import draw_shape, make_labeled_catalog

from recommender import build_index
from recommender.catalog import Item
from recommender.cli import cli
from recommender.evaluate import Vectors, retrieve
from recommender.index import Index
from recommender.recommend import identify, look_alikes
from recommender.service import Service
from recommender.session import Visit

MODEL = "colour-histogram"  # no torch: these tests are about bookkeeping, not what a model sees


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), prog_name="python -m recommender")
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def flags(tmp_path: Path) -> Path:
    """Shapes, two flags drawn identically (one picture, byte for byte, under two labels), a picture repeated
    under its own label, and a label whose only picture is broken."""
    root = make_labeled_catalog(tmp_path / "flags", per_label=2)
    for label in ("flag-a", "flag-b"):
        (root / label).mkdir()
    draw_shape("square", (230, 200, 0), seed=5).save(root / "flag-a" / "flag.png")
    shutil.copy(root / "flag-a" / "flag.png", root / "flag-b" / "flag.png")
    shutil.copy(root / "red-circle" / "0.png", root / "red-circle" / "again.png")
    (root / "lost").mkdir()
    (root / "lost" / "only.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def test_a_picture_shared_by_two_labels_indexes_under_both(flags):
    report = build_index(flags, name="flags", model=MODEL, progress=False)
    assert report.count == 8  # 6 shapes and both flags
    assert (report.embedded, report.copies) == (7, 1)  # the shared picture is embedded once
    reasons = {s.where: s.reason for s in report.skipped}
    assert reasons == {
        "red-circle/again.png": "same picture as red-circle/0.png",
        "lost/only.png": reasons["lost/only.png"],
    }
    assert report.skipped_labels == ["lost", "red-circle"] and report.lost_labels == ["lost"]
    assert report.skipped_summary() == "2 skipped (2 labels affected, 1 of them left with no picture: “lost”)"
    index = Index.load("flags")
    shared = [item for item in index.items if item.label in ("flag-a", "flag-b")]
    assert [item.id for item in shared] == ["flag-a/flag.png", "flag-b/flag.png"]
    assert shared[0].sha256 == shared[1].sha256
    assert index.manifest.catalog.labels == 5
    # Both searchable: by look-alikes (two perfect matches) and by their own label.
    found = look_alikes(flags / "flag-a" / "flag.png", index, k=2)
    assert {m.id for m in found} == {"flag-a/flag.png", "flag-b/flag.png"}
    assert all(m.score == pytest.approx(1.0, abs=2e-3) for m in found)
    only_b = look_alikes(flags / "flag-a" / "flag.png", index, k=3, where={"label": "flag-b"})
    assert [m.id for m in only_b] == ["flag-b/flag.png"]
    # Identify sees both labels, and the answer says the catalog cannot tell them apart.
    answer = identify(flags / "flag-b" / "flag.png", index)
    assert [ls.label for ls in answer.labels[:2]] == ["flag-a", "flag-b"]
    assert answer.label == "flag-a" and answer.shared_with == ["flag-b"] and answer.in_catalog
    assert answer.message.startswith("This is “flag-a” or “flag-b” (1.00): the catalog has the same picture for both")
    assert answer.to_dict()["shared_with"] == ["flag-b"]
    # A picture of one shape names that shape alone.
    assert identify(flags / "green-square" / "1.png", index).shared_with == []


def test_every_skip_is_kept_beside_the_index_and_in_info(flags, isolated_folders):
    code, out, err = invoke("index", str(flags), "--name", "flags", "--model", MODEL, "-q")
    assert code == 0, err
    assert "skipped red-circle/again.png: same picture as red-circle/0.png" in err
    assert "skipped lost/only.png: " in err
    assert "1 the same picture as another label's" in out
    assert "2 skipped (2 labels affected, 1 of them left with no picture: “lost”)" in out
    index = Index.load("flags")
    listed = index.folder / str(index.manifest.files.skipped)
    assert listed.is_file() and listed.parent == isolated_folders / "index" / "flags"
    assert [(s.where, s.label) for s in index.skipped] == [
        ("lost/only.png", "lost"),
        ("red-circle/again.png", "red-circle"),
    ]
    code, out, _ = invoke("info", "--index", "flags", "--json")
    info = json.loads(out)
    assert info["stats"]["skipped"] == 2 == len(info["skipped"])
    assert info["skipped"][1] == {
        "where": "red-circle/again.png",
        "reason": "same picture as red-circle/0.png",
        "label": "red-circle",
    }
    code, out, _ = invoke("info", "--index", "flags")
    assert f"2 pictures, each with why: {listed}" in out
    # A rebuild with nothing to skip leaves an empty list, not the last build's.
    (flags / "red-circle" / "again.png").unlink()
    (flags / "lost" / "only.png").unlink()
    build_index(flags, name="flags", model=MODEL, progress=False)
    assert Index.load("flags").skipped == [] and not listed.exists()


def test_many_skips_say_where_the_whole_list_is(tmp_path):
    root = make_labeled_catalog(tmp_path / "shapes", per_label=1)
    for n in range(7):
        (root / "red-circle" / f"broken{n}.png").write_bytes(b"junk")
    code, out, err = invoke("index", str(root), "--name", "shapes", "--model", MODEL, "-q")
    assert code == 0, err
    assert "... and 2 more skipped (every one in " in err and "skipped-" in err
    assert "7 skipped (1 label affected)" in out


@pytest.fixture
def held_out(tmp_path: Path) -> dict[str, Path]:
    """A gallery (with a label of one picture) and a query set holding repeats: under one label, across two."""
    gallery = make_labeled_catalog(tmp_path / "gallery", per_label=3)
    (gallery / "solo").mkdir()
    draw_shape("circle", (120, 0, 120), seed=77).save(gallery / "solo" / "0.png")
    queries = make_labeled_catalog(tmp_path / "queries", per_label=2)
    shutil.copy(queries / "red-circle" / "0.png", queries / "red-circle" / "0-again.png")  # same label
    shutil.copy(queries / "red-circle" / "1.png", queries / "green-square" / "looks-red.png")  # another label
    (queries / "blue-triangle" / "broken.png").write_bytes(b"junk")
    return {"gallery": gallery, "queries": queries}


def test_both_evaluate_paths_count_every_query(held_out):
    build_index(held_out["gallery"], name="gallery", model=MODEL, progress=False)
    common = ("--queries", str(held_out["queries"]), "--leave-one-out", "--json", "-q", "--worst", "2")
    code, out, err = invoke("evaluate", "--index", "gallery", *common)
    assert code == 0, err
    by_index = json.loads(out)
    code, out, err_models = invoke("evaluate", "--catalog", str(held_out["gallery"]), "--models", MODEL, *common)
    assert code == 0, err_models
    by_models = json.loads(out)
    for d, stderr in ((by_index, err), (by_models, err_models)):
        assert d["queries"] == 8  # every readable picture, repeats included
        assert d["skipped"] == ["blue-triangle/broken.png: not a recognised image format"]
        assert "skipped blue-triangle/broken.png: not a recognised image format" in stderr
        loo = d["leave_one_out"]
        assert (loo["queries"], loo["left_out"]) == (9, 1)
        assert loo["skipped"] == ["solo/0.png: the only picture of “solo”: nothing else to find"]
        assert "skipped solo/0.png: the only picture of “solo”" in stderr
        # --worst reaches the JSON: the worst queries of each protocol, with what they were named.
        assert len(d["worst"]) == 2 and {"path", "label", "predicted", "score", "rank"} <= set(d["worst"][0])
        assert len(loo["worst"]) == 2
        assert d["ms_per_query"] >= 0 and d["ms_per_image"] > 0


def test_ms_per_query_is_the_search_alone(tmp_path):
    """One definition on both paths: queries embedded now (their `seconds`) are not in the search time."""
    rows = [("g0", "a", (1.0, 0.0)), ("g1", "b", (0.0, 1.0))]
    items = [Item(id=i, path=f"{i}.png", label=label) for i, label, _ in rows]
    gallery = Vectors("g", items, np.array([v for *_, v in rows], dtype=np.float32), tmp_path)
    embedded_now = Vectors("q", items, gallery.vectors, tmp_path, seconds=60.0)  # a minute to embed two pictures
    from_an_index = Vectors("q", items, gallery.vectors, tmp_path)
    for queries in (embedded_now, from_an_index):
        assert retrieve(queries, gallery).seconds_per_query < 1.0


@pytest.fixture
def short_labels(tmp_path: Path) -> Path:
    root = tmp_path / "short"
    for n, label in enumerate(("it", "_x_")):
        (root / label).mkdir(parents=True)
        for i in range(2):
            draw_shape("circle", ((200, 30, 30), (30, 30, 200))[n], seed=10 * n + i).save(root / label / f"{i}.png")
    return root


def test_a_short_label_reads_right_everywhere(short_labels, monkeypatch):
    picture = short_labels / "it" / "0.png"
    build_index(short_labels, name="short", model=MODEL, progress=False)
    code, out, err = invoke("identify", str(picture), "--index", "short")
    assert code == 0, err
    assert out.startswith("This is “it” (1.00)") and "another picture of “it”: " in out
    assert "best labels: “it” 1.000, “_x_” " in out
    # The API, which the app's page and clients share.
    service = Service(model=MODEL, default_catalog=short_labels, default_name="short-app", progress=False)
    answer = service.answer(picture)
    assert answer["message"].startswith("This is “it” (1.00)") and answer["shared_with"] == []
    # The app's answer is Markdown: a label with Markdown's characters is escaped, so it reads as written.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    import app

    named = service.identify(short_labels / "_x_" / "1.png")
    text = app.answer_text(named, Visit(), "short", None)
    assert text.startswith("### This is “\\_x\\_” (1.00)")

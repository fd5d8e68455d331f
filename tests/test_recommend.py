"""recommend and evaluate: label aggregation, the calibrated another-universe decision, naming via a reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SHAPES, draw_shape, make_labeled_catalog

from recommender import build_index, load_backbone
from recommender.calibration import Calibration, calibrate
from recommender.catalog import Item
from recommender.cli import cli
from recommender.errors import CatalogError, RecommenderError
from recommender.evaluate import evaluate_queries
from recommender.index import CatalogInfo, Index, write_index
from recommender.recommend import another_picture, identify, rank_labels


def unit(*values: float, dim: int = 512) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[: len(values)] = values
    return v / np.linalg.norm(v)


def crafted_index(tmp_path: Path, rows: list[tuple[str, str | None, np.ndarray]]) -> Index:
    """An index of hand-made 512-d vectors (the colour histogram's size) with these (id, label, vector) rows."""
    for item_id, _, _ in rows:
        draw_shape("circle", (1, 2, 3), seed=hash(item_id) % 1000).save(tmp_path / f"{item_id}.png")
    items = [Item(id=i, path=f"{i}.png", label=label, sha256=f"sha-{i}") for i, label, _ in rows]
    vectors = np.stack([v for _, _, v in rows])
    labels = [label for _, label, _ in rows]
    folder = tmp_path / "index" / "crafted"
    write_index(
        folder,
        embeddings=vectors,
        items=items,
        backbone=load_backbone("colour-histogram"),
        catalog=CatalogInfo(root=str(tmp_path), labeled=any(labels), domain="shape"),
        calibration=calibrate(vectors, labels),
    )
    return Index.load("crafted")


def test_labels_are_ranked_by_their_best_item(store, tmp_path):
    # "b" has one excellent item, "a" many good ones: the best item decides, not the count.
    rows = [(f"a{i}", "a", unit(0.8, 0.6, 0.01 * i)) for i in range(5)]
    rows += [("b0", "b", unit(1.0, 0.05)), ("b1", "b", unit(0.0, 1.0))]
    index = crafted_index(tmp_path, rows)
    query = unit(1.0, 0.0)
    labels = rank_labels(index, index.scores(query)[0])
    assert [ls.label for ls in labels] == ["b", "a"]
    assert labels[0].best.item.id == "b0" and labels[0].score == pytest.approx(float(query @ unit(1.0, 0.05)), abs=1e-3)
    scores = index.label_scores(index.scores(np.stack([query, unit(0.0, 1.0)])))
    assert scores.shape == (2, 2) and scores[1, index.label_names.index("b")] == pytest.approx(1.0, abs=1e-3)


def test_another_picture_is_not_the_query_nor_the_best_match(store, tmp_path):
    rows = [
        ("p0", "pika", unit(1.0, 0.0)),
        ("p1", "pika", unit(0.9, 0.3)),
        ("p2", "pika", unit(0.5, 0.8)),
        ("m0", "meow", unit(0.0, 1.0)),
    ]
    index = crafted_index(tmp_path, rows)
    scores = index.scores(unit(1.0, 0.0))[0]
    # the query is p0 itself (same bytes): never offer it back; p1 is the best other picture
    assert another_picture(index, "pika", scores, exclude_sha256="sha-p0").name == "p1.png"
    # a new picture whose best match p0 is already on screen: p1 is "another" picture
    assert another_picture(index, "pika", index.scores(unit(1.0, 0.1))[0]).name == "p1.png"
    # an identical picture (score ~1) counts as the query even without a hash
    assert another_picture(index, "pika", scores).name == "p1.png"
    # a label with a single picture: that one
    assert another_picture(index, "meow", scores).name == "m0.png"


def test_calibration_learns_how_close_the_catalog_is_to_itself():
    rng = np.random.default_rng(0)
    centres = np.abs(rng.normal(size=(20, 32)))  # one "universe": positive coordinates in the first 32 dims

    def sample(centre: np.ndarray, n: int) -> np.ndarray:
        v = np.zeros((n, 64))
        v[:, :32] = centre + 0.25 * rng.normal(size=(n, 32))
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    vectors = np.concatenate([sample(c, 5) for c in centres])
    labels = [f"l{i // 5}" for i in range(100)]
    cal = calibrate(vectors, labels)
    assert cal.method == "5% quantile of each item's score to its nearest item of another label"
    assert cal.queries == 100 and cal.nearest_else["p05"] == pytest.approx(cal.threshold, abs=1e-3)
    assert cal.same_label["median"] > cal.nearest_else["median"]
    assert (vectors @ sample(centres[3], 1)[0]).max() >= cal.threshold  # a new picture of a known thing
    outsider = np.zeros(64)
    outsider[32:] = np.abs(rng.normal(size=32))  # another universe: nothing in common with the catalog
    assert (vectors @ (outsider / np.linalg.norm(outsider))).max() < cal.threshold


def test_calibration_of_unlabeled_and_tiny_catalogs():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(50, 16))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cal = calibrate(vectors, [None] * 50)
    assert "unlabeled" in cal.method and cal.nearest_else["p05"] == pytest.approx(cal.threshold, abs=1e-3)
    assert calibrate(vectors[:1], [None]).queries == 0
    sampled = calibrate(vectors, [None] * 50, queries=10)
    assert sampled.queries == 10


def test_calibration_in_blocks_equals_the_direct_computation(monkeypatch):
    import recommender.calibration as rec

    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(300, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    codes = np.arange(300) % 7
    codes[::11] = -1  # some unlabeled items
    picked = np.arange(0, 300, 3)
    inside, outside, nearest = rec._leave_one_out(vectors, codes, picked)
    sims = vectors[picked] @ vectors.T
    sims[np.arange(len(picked)), picked] = -np.inf
    same = (codes[picked][:, None] == codes[None, :]) & (codes[picked][:, None] >= 0)
    np.testing.assert_allclose(inside, np.where(same, sims, -np.inf).max(1), atol=1e-6)
    np.testing.assert_allclose(outside, np.where(same, -np.inf, sims).max(1), atol=1e-6)
    np.testing.assert_allclose(nearest, sims.max(1), atol=1e-6)


@pytest.fixture
def shapes(store, labeled_catalog, tiny_model):
    """The shapes catalog indexed into each vector store in turn."""
    build_index(labeled_catalog, name="shapes", model=str(tiny_model), domain="shape", progress=False)
    return Index.load("shapes")


def test_identify_names_a_new_picture_and_offers_another(shapes, labeled_catalog, tmp_path):
    query = tmp_path / "new-circle.png"
    draw_shape("circle", (220, 30, 30), seed=4242).save(query)
    answer = identify(query, shapes)
    assert answer.label == "red-circle" and answer.in_catalog
    assert answer.message.startswith(f"This is “red-circle” ({answer.score:.2f})")
    assert answer.another_image is not None and answer.another_image.parent.name == "red-circle"
    assert answer.another_image != answer.matches[0].path
    assert answer.threshold == shapes.calibration.threshold
    assert answer.labels[0].label == "red-circle" and len(answer.labels) == 3
    d = answer.to_dict()
    assert {"label", "score", "in_catalog", "another_image", "matches"} <= set(d)
    json.dumps(d)


def test_catalog_picture_is_not_its_own_another_image(shapes, labeled_catalog):
    query = labeled_catalog / "green-square" / "2.png"
    answer = identify(query, shapes)
    assert answer.label == "green-square" and answer.score == pytest.approx(1.0, abs=2e-3)
    assert answer.another_image not in (None, query)


def test_a_picture_from_another_universe(shapes, monkeypatch):
    # Force the calibrated threshold above any score: the decision and the message must follow it.
    monkeypatch.setitem(shapes.__dict__, "calibration", Calibration(threshold=1.5))
    answer = identify(draw_shape("circle", (220, 30, 30), seed=7), shapes)
    assert not answer.in_catalog and answer.label == "red-circle"
    assert answer.message.startswith(
        "You gave a picture from another universe; the shape that looks most like it is “red-circle”"
    )


def test_manifest_keeps_the_calibration(shapes):
    cal = shapes.manifest.calibration
    assert "another label" in cal.method and -1 <= cal.threshold <= 1
    assert cal.queries == 12


def test_naming_through_a_reference_index(store, tmp_path, tiny_model):
    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    for n, (shape, colour) in enumerate(SHAPES.values()):
        draw_shape(shape, colour, seed=500 + n).save(unlabeled / f"picture{n}.png")
    build_index(unlabeled, name="mystery", model=str(tiny_model), progress=False)
    reference = make_labeled_catalog(tmp_path / "reference")
    build_index(reference, name="ref", model="colour-histogram", domain="shape", progress=False)  # another backbone
    mystery, ref = Index.load("mystery"), Index.load("ref")
    assert not mystery.labeled and "unlabeled" in mystery.calibration.method
    alone = identify(unlabeled / "picture1.png", mystery)
    assert alone.label is None and alone.matches[0].item.id == "picture1.png" and alone.in_catalog
    assert alone.message.startswith("The closest picture is “picture1.png”")
    named = identify(unlabeled / "picture1.png", mystery, reference=ref)
    assert named.label == "green-square" and named.named_with == "ref" and named.named_score > 0.5
    assert named.matches[0].item.id == "picture1.png"
    assert named.another_image is not None and named.another_image.parent.name == "green-square"
    assert "looks like “green-square”" in named.message
    with pytest.raises(RecommenderError, match="has no labels"):
        identify(unlabeled / "picture1.png", ref, reference=mystery)


def test_evaluate_held_out_queries(store, tmp_path):
    build_index(make_labeled_catalog(tmp_path / "catalog"), name="hist", model="colour-histogram", progress=False)
    queries = tmp_path / "queries"
    for n, (label, (shape, colour)) in enumerate(SHAPES.items()):
        (queries / label).mkdir(parents=True)
        for i in range(2):
            draw_shape(shape, colour, seed=9000 + 10 * n + i).save(queries / label / f"q{i}.png")
    (queries / "purple-star").mkdir()
    draw_shape("circle", (128, 0, 128), seed=1).save(queries / "purple-star" / "x.png")
    (queries / "red-circle" / "broken.png").write_bytes(b"junk")
    result = evaluate_queries(Index.load("hist"), queries, progress=False)
    d = result.to_dict()
    assert d["queries"] == 7 and result.unknown_labels == ["purple-star"]
    assert result.recall[1] == pytest.approx(6 / 7) and result.recall[5] == pytest.approx(6 / 7)
    assert result.map_at_5 == pytest.approx(6 / 7)  # colour alone ranks every same-colour item first
    assert d["recall@1"] == round(6 / 7, 4)
    assert d.get("ann_recall@10", 1.0) == 1.0 and ("ann_recall@10" in d) == (store != "local")
    assert [str(s) for s in result.skipped] == ["red-circle/broken.png: not a recognised image format"]
    assert result.worst(1)[0].label == "purple-star"
    with pytest.raises(CatalogError, match="class sub-folders"):
        evaluate_queries(Index.load("hist"), queries / "red-circle", progress=False)


def test_identify_and_evaluate_from_the_command_line(shapes, labeled_catalog, tmp_path):
    runner = CliRunner()
    out = runner.invoke(
        cli, ["identify", str(labeled_catalog / "blue-triangle" / "1.png"), "--index", "shapes", "--json"]
    )
    assert out.exit_code == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["label"] == "blue-triangle" and answer["in_catalog"] is True
    assert Path(answer["another_image"]).parent.name == "blue-triangle"
    assert answer["matches"][0]["id"] == "blue-triangle/1.png"
    text = runner.invoke(cli, ["identify", str(labeled_catalog / "blue-triangle" / "1.png"), "--index", "shapes"])
    assert text.stdout.startswith("This is “blue-triangle”") and "another picture of “blue-triangle”" in text.stdout
    evaluated = runner.invoke(cli, ["evaluate", "--index", "shapes", "--queries", str(labeled_catalog), "--json", "-q"])
    metrics = json.loads(evaluated.stdout)
    assert {"recall@1", "recall@5", "mAP@5", "queries"} <= set(metrics) and metrics["queries"] == 12
    assert metrics["recall@1"] == 1.0  # every query is in the catalog: its own picture names it


def test_feedback_moves_the_ranking_toward_liked_and_away_from_disliked(tmp_path):
    from recommender.recommend import look_alikes, refine

    rows = [
        ("a0", "a", unit(1.0, 0.0, 0.0)),
        ("a1", "a", unit(0.95, 0.3, 0.0)),
        ("b0", "b", unit(0.6, 0.8, 0.0)),
        ("b1", "b", unit(0.5, 0.85, 0.1)),
        ("c0", "c", unit(0.6, 0.0, 0.8)),
    ]
    index = crafted_index(tmp_path, rows)
    query = unit(1.0, 0.1, 0.05)
    first = [m.item.id for m in index.search(query, k=5)]
    assert first[:2] == ["a0", "a1"] and first.index("b1") > first.index("c0")
    liked = [m.item.id for m in index.search(refine(query, index, liked=["b0", "b1"]), k=5)]
    assert liked.index("b0") < first.index("b0") and liked.index("b1") < liked.index("c0")  # toward the liked
    assert [m.item.id for m in index.search(refine(query, index, liked=["b0"], weights=(1, 3, 0)), k=2)] == ["b0", "b1"]
    away = refine(query, index, disliked=["a0"])
    assert float(away @ index.vector("a0")) < float(query @ index.vector("a0"))  # away from the disliked
    assert refine(query, index) is not query and np.allclose(refine(query, index), query)
    picture = tmp_path / "a0.png"
    ids = [m.item.id for m in look_alikes(picture, index, k=5, disliked=["a0"])]
    assert "a0" not in ids and len(ids) == 4
    answer = identify(picture, index, liked=["c0"], disliked=["a0"])
    assert "a0" not in [m.item.id for m in answer.matches]
    with pytest.raises(RecommenderError, match="no item with id 'zz'"):
        refine(query, index, liked=["zz"])


def test_feedback_from_the_command_line(shapes, labeled_catalog):
    runner = CliRunner()
    query = str(labeled_catalog / "red-circle" / "0.png")
    plain = json.loads(runner.invoke(cli, ["search", query, "--index", "shapes", "--json", "-k", "12"]).stdout)
    assert plain[0]["id"] == "red-circle/0.png"
    out = runner.invoke(
        cli,
        [
            "search",
            query,
            "--index",
            "shapes",
            "--json",
            "-k",
            "12",
            "--dislike",
            "red-circle/0.png",
            "--like",
            "blue-triangle/1.png",
        ],
    )
    moved = json.loads(out.stdout)
    assert "red-circle/0.png" not in [m["id"] for m in moved] and len(moved) == 11
    rank = {m["id"]: m["rank"] for m in moved}
    before = {m["id"]: m["rank"] for m in plain}
    assert rank["blue-triangle/1.png"] < before["blue-triangle/1.png"]
    bad = runner.invoke(cli, ["search", query, "--index", "shapes", "--like", "nope.png"])
    assert bad.exit_code == 1 and "no item with id 'nope.png'" in bad.stderr

"""evaluate: metric definitions on hand-made vectors, the four protocols from the CLI, several backbones, sheets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SHAPES, draw_shape, make_labeled_catalog
from PIL import Image

from recommender import build_index, load_backbone
from recommender.catalog import Catalog, Item
from recommender.cli import cli
from recommender.errors import ModelError
from recommender.evaluate import (
    Pairs,
    Vectors,
    average_precision,
    best_cut,
    decision_metrics,
    evaluate_pairs,
    label_ranks,
    pair_ranks,
    parse_models,
    recall_at,
    retrieve,
)
from recommender.index import Index

# ------------------------------------------------------------------------------------ metric definitions


def test_label_rank_counts_strictly_better_labels():
    scores = np.array([[0.9, 0.5, 0.7], [0.2, 0.8, 0.8], [0.1, 0.2, 0.3]])
    assert label_ranks(scores, np.array([2, 0, -1])).tolist() == [2, 3, 0]
    assert label_ranks(scores, np.array([0, 1, 2])).tolist() == [1, 1, 1]  # a tie counts for the query
    ranks = np.array([1, 2, 0, 7])
    assert (recall_at(ranks, 1), recall_at(ranks, 5), recall_at(ranks, 10)) == (0.25, 0.5, 0.75)


def test_average_precision_at_k():
    relevant = np.array([[1, 0, 1, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    ap = average_precision(relevant, np.array([2, 1, 3, 10, 9]))
    np.testing.assert_allclose(ap, [(1 + 2 / 3) / 2, 0.5, 0.0, 2 / 5, 1.0])
    assert average_precision(np.zeros((1, 5)), np.array([0]))[0] == 0.0  # nothing relevant exists


def test_pair_rank_and_the_decision_metrics():
    assert pair_ranks(np.array([0.5, 0.5]), np.array([[0.6, 0.4, 0.5], [0.1, 0.2, 0.3]])).tolist() == [2, 1]
    inside, outside = np.array([0.9, 0.8, 0.4, 0.7]), np.array([0.3, 0.5, 0.2])
    m = decision_metrics(inside, outside, 0.45)  # refuses 0.4 inside, 0.3 and 0.2 outside
    assert m == {
        "threshold": 0.45,
        "kept": 0.75,
        "refused": 0.6667,
        "precision": 0.6667,
        "recall": 0.6667,
        "accuracy": 0.7143,
        "balanced_accuracy": 0.7083,
    }
    assert best_cut(inside, outside) == 0.7  # keeps 3 of 4, refuses all 3
    assert decision_metrics(inside, outside, 0.0)["precision"] is None  # nothing refused


def hand_made(tmp_path: Path, rows: list[tuple[str, str | None, tuple[float, ...]]], name: str) -> Vectors:
    items = [Item(id=i, path=f"{i}.png", label=label, sha256=i) for i, label, _ in rows]
    vectors = np.array([v for _, _, v in rows], dtype=np.float32)
    return Vectors(name, items, vectors / np.linalg.norm(vectors, axis=1, keepdims=True), tmp_path)


GALLERY = [
    ("g0", "a", (1, 0, 0)),
    ("g1", "a", (0.8, 0.6, 0)),
    ("g2", "b", (0.6, 0.8, 0)),
    ("g3", "b", (0, 1, 0)),
    ("g4", "c", (0, 0, 1)),
]


def test_query_set_metrics_on_hand_made_vectors(tmp_path):
    gallery = hand_made(tmp_path, GALLERY, "gallery")
    queries = hand_made(tmp_path, [("q0", "a", (0.6, 0.8, 0)), ("q1", "b", (0, 1, 0)), ("q2", "z", (0, 0, 1))], "q")
    e = retrieve(queries, gallery)
    # q0: labels b 1.0 > a 0.96 -> rank 2; items b,a,b,a,c -> AP (1/2 + 2/4) / 2. q1: rank 1, AP 1. q2: unknown.
    assert [r.rank for r in e.results] == [2, 1, None]
    assert [r.ap for r in e.results] == pytest.approx([0.5, 1.0, 0.0])
    assert e.recall == pytest.approx({1: 1 / 3, 5: 2 / 3, 10: 2 / 3}) and e.mean_ap == pytest.approx(0.5)
    assert e.unknown_labels == ["z"] and e.results[0].predicted == "b"
    assert e.results[0].top.name == "g2.png" and e.results[0].correct.name == "g1.png"
    assert e.to_dict()["mAP@5"] == 0.5
    reverse = retrieve(gallery, queries, protocol="reverse")  # g4's label "c" is not among the queries: left out
    assert reverse.left_out == 1 and [r.rank for r in reverse.results] == [1, 1, 2, 1]
    at2 = retrieve(queries, gallery, map_at=2)  # q0: b,a -> precision@2 0.5 over min(2, 2)
    assert at2.mean_ap == pytest.approx((0.25 + 1.0) / 3) and "mAP@2" in at2.to_dict()


def test_leave_one_out_on_hand_made_vectors(tmp_path):
    gallery = hand_made(tmp_path, GALLERY, "gallery")
    e = retrieve(gallery, gallery, leave_one_out=True, group_by="label", protocol="leave-one-out")
    # g4 is alone in "c": left out. g0 and g3 find their partner first; g1 and g2 find each other first.
    assert e.left_out == 1 and [r.rank for r in e.results] == [1, 2, 2, 1]
    assert [r.ap for r in e.results] == pytest.approx([1.0, 0.5, 0.5, 1.0])
    assert e.recall[1] == 0.5 and e.mean_ap == pytest.approx(0.75)
    groups = e.to_dict()["groups"]
    assert groups == [
        {
            "group": "a",
            "items": 2,
            "share": 0.4,
            "queries": 2,
            "recall@1": 0.5,
            "recall@5": 1.0,
            "recall@10": 1.0,
            "mAP@5": 0.75,
        },
        {
            "group": "b",
            "items": 2,
            "share": 0.4,
            "queries": 2,
            "recall@1": 0.5,
            "recall@5": 1.0,
            "recall@10": 1.0,
            "mAP@5": 0.75,
        },
    ]


def test_pairs_on_hand_made_vectors(tmp_path):
    rows = [
        ("r0", None, (1, 0, 0)),
        ("r1", None, (0, 1, 0)),
        ("r2", None, (0, 0, 1)),
        ("l0", None, (0.9, 0.1, 0)),
        ("l1", None, (0.1, 0.3, 0.95)),
        ("l2", None, (0.7, 0.6, 0.1)),
    ]
    vectors = hand_made(tmp_path, rows, "pairs")
    catalog = Catalog(source=tmp_path / "pairs.csv", root=tmp_path, kind="csv", items=vectors.items)
    pairs = Pairs(catalog, [("l0", "r0"), ("l1", "r1"), ("l2", "r2")], {})
    e = evaluate_pairs(pairs, vectors, seed=3)
    assert e.candidates == 3 and [r.rank for r in e.results] == [1, 2, 3]  # two foils: every other right
    assert e.top(1) == pytest.approx(1 / 3) and e.top(2) == pytest.approx(2 / 3)
    assert e.results[1].foil.name == "r2.png" and e.worst(1)[0].left.name == "l2.png"


def test_model_lists_with_inline_and_shared_weights():
    specs = parse_models("colour-histogram, efficientnet-lite0@0.9+colour-histogram@0.1,a+b,offline", "0.7,0.3")
    assert [(s.model, s.weights) for s in specs] == [
        ("colour-histogram", None),
        ("efficientnet-lite0+colour-histogram", (0.9, 0.1)),
        ("a+b", (0.7, 0.3)),
        ("offline", None),
    ]
    assert specs[2].label == "a@0.7+b@0.3"
    with pytest.raises(ModelError, match="every part"):
        parse_models("a@0.9+b")
    with pytest.raises(ModelError, match="is a number"):
        parse_models("a+b,0.9,0.1")


# ------------------------------------------------------------------------------------ the CLI on generated data

COLOURS = [
    (220, 30, 30),
    (30, 180, 60),
    (40, 60, 220),
    (230, 200, 20),
    (150, 40, 180),
    (20, 180, 190),
    (240, 130, 20),
    (90, 90, 90),
]


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Path]:
    """A labeled catalog, a held-out query set, pictures from another universe, and 24 look-alike pairs."""
    catalog = make_labeled_catalog(tmp_path / "shapes", per_label=3)
    queries = tmp_path / "queries"
    for n, (label, (shape, colour)) in enumerate(SHAPES.items()):
        (queries / label).mkdir(parents=True)
        for i in range(2):
            draw_shape(shape, colour, seed=7000 + 10 * n + i).save(queries / label / f"q{i}.png")
    outside = tmp_path / "outside"
    outside.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # noise: nothing like a shape on white
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(outside / f"noise{i}.png")
    pairs_dir = tmp_path / "pairs"
    pairs_dir.mkdir()
    with open(pairs_dir / "pairs.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Left", "Right"])
        for n, (shape, colour) in enumerate((s, c) for s in ("circle", "square", "triangle") for c in COLOURS):
            for side, seed in (("l", 2 * n), ("r", 2 * n + 1)):
                draw_shape(shape, colour, seed=seed).save(pairs_dir / f"{side}{n}.png")
            writer.writerow([f"l{n}.png", f"r{n}.png"])
    return {"catalog": catalog, "queries": queries, "outside": outside, "pairs": pairs_dir / "pairs.csv"}


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), prog_name="python -m recommender")
    return result.exit_code, result.stdout, result.stderr


def test_all_four_protocols_from_the_cli(data, tiny_model, tmp_path):
    build_index(data["catalog"], name="shapes", model=str(tiny_model), progress=False)
    sheet = tmp_path / "worst.png"
    code, out, err = invoke(
        "evaluate",
        "--index",
        "shapes",
        "--queries",
        str(data["queries"]),
        "--reverse",
        "--leave-one-out",
        "--group-by",
        "label",
        "--pairs",
        str(data["pairs"]),
        "--outside",
        str(data["outside"]),
        "--json",
        "-q",
        "--worst",
        "2",
        "--sheet",
        str(sheet),
    )
    assert code == 0, err
    d = json.loads(out)
    assert {"recall@1", "recall@5", "recall@10", "mAP@5", "queries", "index_mb", "ms_per_image"} <= set(d)
    assert d["queries"] == 6 and d["index"] == "shapes" and d["index_mb"] > 0 and d["ms_per_image"] > 0
    assert [g["items"] for g in d["groups"]] == [3, 3, 3]  # the class distribution beside the metrics
    assert d["reverse"]["queries"]["queries"] == 9  # every catalog picture queries the query set
    loo = d["leave_one_out"]
    assert loo["queries"] == 9 and loo["left_out"] == 0 and len(loo["groups"]) == 3
    assert {g["share"] for g in loo["groups"]} == {0.3333}
    assert d["pairs"]["pairs"] == 24 and d["pairs"]["candidates"] == 20
    assert 0 <= d["pairs"]["top-1"] <= d["pairs"]["top-2"] <= 1 and d["pairs"]["chance_top-1"] == 0.05
    universe = d["universe"]
    assert universe["inside"] == 6 and universe["outside"] == 3
    assert universe["threshold"] == Index.load("shapes").calibration.threshold
    assert {"precision", "recall", "accuracy", "kept", "refused"} <= set(universe)
    assert universe["rules"][-1]["rule"].startswith("best cut") and len(universe["rules"]) == 5
    with Image.open(sheet) as img:
        assert img.format == "PNG" and img.width == 6 + 3 * (128 + 6)
        assert img.height > 4 * 2 * 128  # four protocols, two rows each
    # the same run as Markdown tables
    code, out, _ = invoke(
        "evaluate",
        "--index",
        "shapes",
        "--queries",
        str(data["queries"]),
        "--reverse",
        "--leave-one-out",
        "--pairs",
        str(data["pairs"]),
        "--outside",
        str(data["outside"]),
        "--markdown",
        "-q",
        "--worst",
        "1",
    )
    assert code == 0, out
    assert "| query set | queries | recall@1 | recall@5 | recall@10 | mAP@5 |" in out
    assert "### Reverse" in out and "| gallery | queries |" in out and "### Worst 1" in out
    assert "### Leave-one-out" in out and "### Pairs: the true right picture among 20" in out
    assert "| index calibration (5% quantile" in out and "MB" in out and "ms an image" in out


def test_the_simplest_run_prints_as_before(data, tiny_model):
    build_index(data["catalog"], name="shapes", model=str(tiny_model), progress=False)
    code, out, _ = invoke("evaluate", "--index", "shapes", "--queries", str(data["queries"]), "-q")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"6 queries against 'shapes' ({tiny_model})"
    assert [line.split()[0] for line in lines[1:5]] == ["recall@1", "recall@5", "recall@10", "mAP@5"]
    assert "ms a query, index" in lines[5]


def test_several_backbones_in_one_table(data, tiny_model, tmp_path, isolated_folders):
    tiny = str(tiny_model)
    models = f"colour-histogram,{tiny},colour-histogram@0.3+{tiny}@0.7,dinov2-small"
    args = [
        "evaluate",
        "--catalog",
        str(data["catalog"]),
        "--models",
        models,
        "--queries",
        str(data["queries"]),
        "--queries",
        str(data["catalog"]),
        "--reverse",
        "--leave-one-out",
        "--outside",
        str(data["outside"]),
        "-q",
    ]
    code, out, err = invoke(*args, "--json")
    assert code == 0, err
    runs = json.loads(out)["models"]
    assert [r["model"] for r in runs] == models.split(",")
    assert [r["status"] for r in runs[:3]] == ["ok"] * 3
    assert runs[3]["status"].startswith("not run here: facebook/dinov2-small is not in the local cache")
    for run in runs[:3]:
        assert run["sets"]["queries"]["queries"] == 6 and run["queries"] == 6 + 9
        assert run["leave_one_out"]["queries"] == 9 and run["universe"]["outside"] == 3
        assert run["reverse"]["queries"]["queries"] == 9
        assert run["index_mb"] > 0 and run["ms_per_image"] > 0
    assert runs[0]["recall@1"] == 1.0  # colour alone names every generated shape
    cache = isolated_folders / "cache" / "evaluation"
    hybrid = Index.load(runs[2]["index"], index_dir=cache)
    assert hybrid.manifest.stats.embedded == 0  # assembled from its parts' cached indexes
    assert hybrid.manifest.backbone.weights == (0.3, 0.7)
    direct = load_backbone(f"colour-histogram+{tiny}", weights=[0.3, 0.7]).embed(
        [Image.open(data["catalog"] / hybrid.items[0].path).convert("RGB")]
    )[0]
    assert float(direct @ hybrid.vector(hybrid.items[0].id)) > 0.999
    built = {p.name: p.stat().st_mtime_ns for p in cache.glob("*/manifest.json")}
    sheet = tmp_path / "sheet.png"
    code, out, err = invoke(*args, "--markdown", "--sheet", str(sheet), "--worst", "1")  # cached: nothing is built
    assert code == 0 and {p.name: p.stat().st_mtime_ns for p in cache.glob("*/manifest.json")} == built
    table = out.split("### Query sets")[1]
    assert "| model | MB | ms/img | queries R@1 | shapes R@1 | mean R@1 | all R@1 | all mAP@5 |" in table
    assert "### Reverse" in out
    assert "| dinov2-small | not run here: facebook/dinov2-small is not in the local cache" in table
    assert f"| colour-histogram@0.3+{tiny}@0.7 |" in table
    assert len(list(tmp_path.glob("sheet-*.png"))) == 3, err  # one per model that ran
    assert "sheet-colour-histogram.png" in {p.name for p in tmp_path.glob("sheet-*.png")}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--queries", "{tmp}/nowhere"], "nowhere: no such file or folder"),
        (["--pairs", "{tmp}/bad.csv"], "a pairs CSV needs the columns 'left' and 'right'"),
        (["--queries", "{tmp}/outside"], "queries must be class sub-folders named by label"),
        (["--leave-one-out", "--group-by", "colour"], "cannot group by 'colour'"),
        (["--index", "unlabeled", "--leave-one-out"], "index 'unlabeled' has no labels"),
    ],
)
def test_bad_input_is_one_clear_line(data, tmp_path, args, message):
    (tmp_path / "bad.csv").write_text("image,label\na.png,x\n")
    build_index(data["outside"], name="unlabeled", model="colour-histogram", progress=False)
    build_index(data["catalog"], name="pokemon", model="colour-histogram", progress=False)  # the default index
    code, _, err = invoke("evaluate", *(a.replace("{tmp}", str(tmp_path)) for a in args))
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], err


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "nothing to evaluate"),
        (["--reverse", "--leave-one-out"], "--reverse swaps query set and gallery"),
        (["--inside", "{tmp}/outside"], "--inside needs --outside"),
        (["--models", "colour-histogram", "--queries", "{tmp}/queries"], "needs a gallery"),
        (["--json", "--markdown", "--leave-one-out"], "--json and --markdown are exclusive"),
        (["--index", "pokemon", "--weights", "1,1", "--leave-one-out"], "--weights applies to --models hybrids"),
    ],
)
def test_flags_that_do_not_go_together_are_usage_errors(tmp_path, args, message):
    """Usage errors exit with click's status 2 and its usage line, before any index is opened or built."""
    code, _, err = invoke("evaluate", *(a.replace("{tmp}", str(tmp_path)) for a in args))
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and lines[0].startswith("Usage: ") and lines[-1].startswith("Error: ") and message in lines[-1]
    assert not (tmp_path / "index").exists()


def test_an_index_as_the_query_set_both_ways(data):
    build_index(data["catalog"], name="gallery", model="colour-histogram", progress=False)
    build_index(data["queries"], name="held-out", model="colour-histogram", progress=False)
    code, out, err = invoke("evaluate", "--index", "gallery", "--query-index", "held-out", "--reverse", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["queries"] == 6 and d["recall@1"] == 1.0 and d["reverse"]["held-out"]["queries"] == 9
    build_index(data["queries"], name="cnn-less", model="colour-histogram+colour-histogram", progress=False)
    code, _, err = invoke("evaluate", "--index", "gallery", "--query-index", "cnn-less")
    assert code == 1 and "built with different backbones" in err

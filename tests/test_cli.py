"""The command line: real subprocesses for the main path, click's runner for the many error paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from recommender.cli import cli

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m recommender ARGS` in a fresh process, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "recommender", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def invoke(*args: str) -> object:
    return CliRunner().invoke(cli, list(args), prog_name="python -m recommender")


def one_line_error(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), text
    assert "Traceback" not in text
    return lines[0]


def test_index_then_search_json_then_truncate(labeled_catalog, tiny_model, isolated_folders):
    """The issue's 'done when': index a class folder, find a picture first with score 1, break the index."""
    built = run("index", str(labeled_catalog), "--name", "demo", "--model", str(tiny_model))
    assert built.returncode == 0, built.stderr
    assert "indexed 12 pictures" in built.stdout and "12 embedded" in built.stdout
    assert "indexing demo" in built.stderr  # the progress bar
    query = labeled_catalog / "green-square" / "2.png"
    found = run("search", str(query), "--index", "demo", "--json", "-k", "3")
    assert found.returncode == 0, found.stderr
    matches = json.loads(found.stdout)
    assert len(matches) == 3
    assert matches[0]["id"] == "green-square/2.png" and matches[0]["label"] == "green-square"
    assert matches[0]["score"] == pytest.approx(1.0, abs=2e-3) and matches[0]["rank"] == 1
    assert Path(matches[0]["path"]) == query
    emb = next((isolated_folders / "index" / "demo").glob("embeddings-*.safetensors"))
    emb.write_bytes(emb.read_bytes()[:-100])
    broken = run("search", str(query), "--index", "demo", "--json")
    assert broken.returncode == 1 and broken.stdout == ""
    line = one_line_error(broken.stderr)
    assert "index 'demo' is corrupt" in line and "rebuild it with" in line


def test_human_readable_search_and_info(store, labeled_catalog, tiny_model):
    assert invoke("index", str(labeled_catalog), "--name", "shapes", "--model", str(tiny_model), "-q").exit_code == 0
    result = invoke("search", str(labeled_catalog / "red-circle" / "1.png"), "--index", "shapes", "-k", "2")
    assert result.exit_code == 0
    header, first = (line.split() for line in result.stdout.splitlines()[:2])
    assert header == ["rank", "score", "label", "path"]
    assert first[0] == "1" and first[2] == "red-circle" and float(first[1]) == pytest.approx(1.0, abs=2e-3)
    info = invoke("info", "--index", "shapes")
    rows = {line.split()[0]: line.split()[1:] for line in info.stdout.splitlines()}
    assert info.exit_code == 0 and rows["items"][0] == "12" and rows["dim"] == ["32"]
    assert "blue-triangle, green-square, red-circle" in info.stdout
    assert rows["vectors"][0] == store  # where the vectors live, from the manifest
    as_json = json.loads(invoke("info", "--index", "shapes", "--json").stdout)
    assert as_json["count"] == 12 and as_json["dim"] == 32 and as_json["label_names"][0] == "blue-triangle"


def test_where_filter_from_the_command_line(store, labeled_catalog, tiny_model):
    invoke("index", str(labeled_catalog), "--name", "shapes", "--model", str(tiny_model), "-q")
    query = str(labeled_catalog / "red-circle" / "1.png")
    result = invoke("search", query, "--index", "shapes", "--json", "--where", "label=blue-triangle")
    assert {m["label"] for m in json.loads(result.stdout)} == {"blue-triangle"}
    bad = invoke("search", query, "--index", "shapes", "--where", "nokey")
    assert bad.exit_code == 2 and "expected key=value" in bad.stderr


def test_index_name_from_the_environment(labeled_catalog, tiny_model, monkeypatch):
    invoke("index", str(labeled_catalog), "--name", "mine", "--model", str(tiny_model), "-q")
    monkeypatch.setenv("RECOMMENDER_INDEX", "mine")
    assert invoke("search", str(labeled_catalog / "red-circle" / "1.png"), "--json").exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "{query}", "--index", "nope"], "no index named 'nope'"),
        (["search", "{garbage}", "--index", "shapes"], "garbage.jpg: not a recognised image format"),
        (["search", "{missing}", "--index", "shapes"], "missing.png: no such file"),
        (["index", "{catalog}", "--name", "x", "--model", "resnet-9000"], "unknown model 'resnet-9000'"),
        (["index", "{catalog}", "--name", "x", "--model", "dinov2-small"], "--model offline"),
        (["index", "{empty}", "--name", "x", "--model", "colour-histogram"], "no pictures found"),
        (["index", "{catalog}", "--name", "../x", "--model", "colour-histogram"], "bad index name"),
        (["index", "{catalog}", "--name", "x", "--model", "{model}", "--image-size", "225"], "multiple of 14"),
        (["index", "{catalog}", "--name", "x", "--model", "colour-histogram", "--weights", "1,2"], "hybrids"),
    ],
)
def test_bad_input_gives_one_line_and_exit_1(args, message, labeled_catalog, tiny_model, tmp_path):
    invoke("index", str(labeled_catalog), "--name", "shapes", "--model", str(tiny_model), "-q")
    (tmp_path / "garbage.jpg").write_text("<p>not a picture</p>")
    (tmp_path / "empty").mkdir()
    paths = {
        "query": labeled_catalog / "red-circle" / "1.png",
        "garbage": tmp_path / "garbage.jpg",
        "missing": tmp_path / "missing.png",
        "catalog": labeled_catalog,
        "empty": tmp_path / "empty",
        "model": tiny_model,
    }
    result = invoke(*[a.format(**{k: str(v) for k, v in paths.items()}) for a in args])
    assert result.exit_code == 1
    assert message in one_line_error(result.stderr)


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "bad.png").write_text("x")
    result = invoke("--debug", "search", str(tmp_path / "bad.png"), "--index", "nope")
    assert result.exit_code == 1 and result.exception is not None
    assert type(result.exception).__name__ == "ImageError"  # the picture is checked before the index opens


def test_skips_are_listed_then_summarised(tmp_path, tiny_model):
    folder = tmp_path / "cat"
    (folder / "a").mkdir(parents=True)
    from conftest import draw_shape

    draw_shape("circle", (200, 0, 0), seed=1).save(folder / "a" / "ok.png")
    for i in range(8):
        (folder / "a" / f"bad{i}.png").write_bytes(b"junk")
    result = invoke("index", str(folder), "--name", "few", "--model", str(tiny_model), "-q")
    assert result.exit_code == 0
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 5 and "... and 3 more skipped" in result.stderr
    assert "indexed 1 pictures" in result.stdout and "8 skipped" in result.stdout


def test_help_and_version():
    assert "index" in invoke("--help").stdout and "search" in invoke("--help").stdout
    assert invoke("--version").exit_code == 0
    helped = invoke("index", "--help").stdout
    for flag in (
        "--name",
        "--model",
        "--weights",
        "--pooling",
        "--image-size",
        "--limit",
        "--label-column",
        "--image-column",
    ):
        assert flag in helped


def test_the_default_pokemon_index_is_built_on_first_use(tiny_model, monkeypatch):
    monkeypatch.setenv("RECOMMENDER_MODEL", str(tiny_model))
    sprite = Path(__file__).resolve().parent.parent / "assets" / "pokemon" / "sprites" / "025.png"
    first = invoke("identify", str(sprite), "--json")
    assert first.exit_code == 0, first.stderr
    assert "note: building the default Pokémon index (first use)" in first.stderr
    answer = json.loads(first.stdout)
    assert answer["label"] == "Pikachu" and answer["in_catalog"]
    assert "artwork/025" in answer["another_image"]  # another picture of Pikachu: its artwork
    again = invoke("search", str(sprite), "--json", "-k", "1")
    assert "building" not in again.stderr and json.loads(again.stdout)[0]["label"] == "Pikachu"


VERBS = ("index", "search", "identify", "evaluate", "map", "info", "links", "heatmap", "explain")


def test_every_verb_takes_the_same_flags_for_the_same_things():
    """--index-dir on every verb, --json on every verb that prints a result, -q wherever a bar can show."""
    helped = {verb: invoke(verb, "--help").stdout for verb in VERBS}
    for verb, text in helped.items():
        assert "--index-dir" in text, verb
        assert "--json" in text, verb
        quiet = "-q, --quiet" in text
        assert quiet == (verb not in ("info", "links")), verb  # those two never build nor show a bar
    assert "--max-items" in helped["heatmap"] and "--limit" not in helped["heatmap"]  # --limit: index's first N
    assert "--lines" in helped["explain"] and "--pairs" not in helped["explain"]  # --pairs: evaluate's CSV


def test_json_summaries_of_what_was_written_and_index_dir_after_the_verb(labeled_catalog, tiny_model, tmp_path):
    elsewhere = str(tmp_path / "elsewhere")
    built = invoke("index", str(labeled_catalog), "--name", "s", "--model", str(tiny_model), "-q", "--json")
    assert built.exit_code == 0, built.stderr
    summary = json.loads(built.stdout)
    assert summary["count"] == 12 and summary["embedded"] == 12 and summary["skipped"] == 0 and summary["skips"] == []
    assert {"folder", "seconds", "images_per_second", "store", "forward", "notes"} <= set(summary)
    moved = invoke(
        "index", str(labeled_catalog), "--name", "s", "--model", str(tiny_model), "-q", "--index-dir", elsewhere
    )
    assert moved.exit_code == 0 and Path(elsewhere, "s", "manifest.json").is_file()
    assert json.loads(invoke("info", "--index", "s", "--index-dir", elsewhere, "--json").stdout)["count"] == 12
    query = str(labeled_catalog / "red-circle" / "1.png")
    drawn = json.loads(
        invoke("map", "--index", "s", "--out", str(tmp_path / "m.html"), "--query", query, "--json").stdout
    )
    assert drawn == {"out": str(tmp_path / "m.html"), "index": "s", "items": 12, "color_by": "label", "query": query}
    heat = invoke("heatmap", "--index", "s", "--out", str(tmp_path / "h.png"), "--max-items", "4", "--json")
    matrix = json.loads(heat.stdout)
    assert matrix["items"] == len(matrix["labels"]) == len(matrix["ids"]) <= 4 and matrix["out"] == str(
        tmp_path / "h.png"
    )
    why = json.loads(invoke("explain", query, "--index", "s", "--out", str(tmp_path / "e.png"), "--json").stdout)
    assert why["match"]["id"] == "red-circle/1.png" and why["lines"] == 8 and (tmp_path / "e.png").is_file()
    old = invoke("heatmap", "--index", "s", "--out", str(tmp_path / "h2.png"), "--limit", "3")
    assert old.exit_code == 0 and "--limit is deprecated here; use --max-items" in old.stderr
    old = invoke("explain", query, "--index", "s", "--out", str(tmp_path / "e2.png"), "--pairs", "2", "--json")
    assert json.loads(old.stdout)["lines"] == 2 and "use --lines" in old.stderr


def test_identify_k_is_how_many_labels(labeled_catalog, tiny_model):
    invoke("index", str(labeled_catalog), "--name", "s", "--model", str(tiny_model), "-q")
    query = str(labeled_catalog / "red-circle" / "1.png")
    answer = json.loads(invoke("identify", query, "--index", "s", "-k", "2", "--json").stdout)
    assert len(answer["labels"]) == 2 and len(answer["matches"]) == 2
    text = invoke("identify", query, "--index", "s", "-k", "3").stdout
    listed = next(line for line in text.splitlines() if line.startswith("best labels: "))
    assert listed.startswith("best labels: “red-circle”") and listed.count(", ") == 2  # three labels listed


@pytest.mark.parametrize(
    "args",
    [
        ["search", "{bad}", "--index", "s"],
        ["identify", "{bad}"],
        ["explain", "{bad}", "--out", "{out}"],
        ["map", "--query", "{bad}", "--out", "{out}"],
        ["heatmap", "--query", "{bad}", "--out", "{out}"],
    ],
)
def test_an_unreadable_picture_is_refused_before_any_index_or_model_loads(args, tmp_path, monkeypatch):
    from recommender.index import Index

    def no(*_args, **_kwargs):
        raise AssertionError("the index (and its model) was opened before the picture was checked")

    monkeypatch.setattr(Index, "load", no)
    (tmp_path / "bad.jpg").write_text("<p>not a picture</p>")
    paths = {"bad": str(tmp_path / "bad.jpg"), "out": str(tmp_path / "out.png")}
    result = invoke(*[a.format(**paths) for a in args])
    assert result.exit_code == 1
    assert "bad.jpg: not a recognised image format" in one_line_error(result.stderr)

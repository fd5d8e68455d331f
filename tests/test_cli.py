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
    first = result.stdout.splitlines()[0].split()
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
    assert type(result.exception).__name__ == "IndexNotFoundError"


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

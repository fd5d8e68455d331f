"""The project's own promises: README commands match CI, lint is clean, modules say what they own, no pickle."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*ROOT.glob("recommender/*.py"), *ROOT.glob("*.py"), *ROOT.glob("benchmarks/*.py")])


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [line for block in blocks[:2] for line in block.strip().splitlines()]


def test_readme_gives_two_setup_commands_and_ci_runs_the_test_one():
    start, test = readme_commands()
    assert "pip install torch==2.13.0" in start and start.endswith("python app.py")
    assert "pip install -q torch==2.13.0" in test and test.endswith("python -m pytest")
    assert test in (ROOT / ".ci" / "run").read_text()


def test_a_space_takes_torch_from_the_cpu_index_and_nothing_else_does():
    # A Space installs pre-requirements.txt, then requirements.txt: PyPI's torch would bring its CUDA
    # wheels (about 3 GB). Nothing else may name that index: CI and these machines cannot reach it.
    def lines(name: str) -> list[str]:
        return [line.split("#")[0].strip() for line in (ROOT / name).read_text().splitlines()]

    assert lines("pre-requirements.txt")[-2:] == ["--index-url https://download.pytorch.org/whl/cpu", "torch>=2.4,<3"]
    assert "torch>=2.4,<3" in lines("requirements.txt")
    for name in ("requirements.txt", "requirements-dev.txt", "requirements-scale.txt"):
        assert not any("download.pytorch.org" in line for line in lines(name)), name


@pytest.mark.skipif(
    shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff").exists(), reason="ruff is not installed"
)
def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    result = subprocess.run([ruff, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    formatted = subprocess.run([ruff, "format", "--check", "."], cwd=ROOT, capture_output=True, text=True)
    assert formatted.returncode == 0, "run `ruff format .`:\n" + formatted.stdout + formatted.stderr


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_opens_with_a_one_line_docstring(path):
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc, f"{path.name} has no module docstring"
    assert len(doc.splitlines()[0]) <= 120


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_pickle_anywhere(path):
    text = path.read_text()
    assert not re.search(r"^\s*(import|from)\s+(c?pickle|dill|joblib)\b", text, flags=re.M)
    assert "allow_pickle=True" not in text
    for call in re.findall(r"torch\.load\(([^)]*)\)", text):
        assert "weights_only=True" in call


def test_malloc_arenas_are_capped_unless_the_user_chose(monkeypatch):
    from recommender.memory import limit_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False  # the user's setting wins
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert isinstance(limit_malloc_arenas(), bool)  # True on glibc; False elsewhere, never an error


def test_freed_tensor_buffers_are_kept_unless_the_user_chose(monkeypatch):
    from recommender.memory import keep_freed_buffers

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert keep_freed_buffers.__wrapped__() is False  # the user's setting wins
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    assert isinstance(keep_freed_buffers(), bool)

"""The package as users install it: a wheel in a fresh venv, the `recommender` command from any folder."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _requirement_names(lines: list[str]) -> dict[str, str]:
    """{distribution name: the whole requirement} of requirement lines (comments and blanks dropped)."""
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out[re.split(r"[<>=!~\[ ;]", line, maxsplit=1)[0].lower()] = line.replace(" ", "")
    return out


def test_the_package_declares_what_requirements_txt_installs():
    """pyproject's dependencies plus its `app` extra are requirements.txt (what a Space installs), bounds included."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _requirement_names([*project["dependencies"], *project["optional-dependencies"]["app"]])
    assert declared == _requirement_names((ROOT / "requirements.txt").read_text().splitlines())
    scale = _requirement_names(project["optional-dependencies"]["scale"])
    assert scale == _requirement_names((ROOT / "requirements-scale.txt").read_text().splitlines())
    assert project["license"] == "MIT" and "gradio>=6.0,<7" in declared.values()
    hf = _requirement_names(project["optional-dependencies"]["hf"])  # installed for the tests, so that they run
    dev = _requirement_names((ROOT / "requirements-dev.txt").read_text().splitlines())
    assert hf.items() <= dev.items() and "recommender[app,scale,hf]" in project["optional-dependencies"]["dev"]


def test_a_wheel_installs_and_runs_from_any_folder(tmp_path, tiny_model, labeled_catalog):
    """Build a wheel from a copy of the sources, install it into a fresh venv, and use the command from /tmp.

    The venv sees this environment's third-party packages through a .pth file (no downloads), but
    `recommender` only from the wheel; HOME is the test's, so the user's data folder is too.
    """
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "recommender", source / "recommender", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)]
    subprocess.run([*build, str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("recommender-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)

    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    keep = ("PATH", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "RECOMMENDER_TEST_NETLOG", "DDGS_PROXY")  # + the guard
    env = {k: v for k, v in os.environ.items() if k in keep} | {
        "HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(home / "hf"),
        "RECOMMENDER_MODEL": str(tiny_model),
    }

    def recommender(*args: str) -> subprocess.CompletedProcess[str]:
        command = [str(venv / "bin" / "recommender"), *args]
        return subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)

    helped = recommender("--help")
    assert helped.returncode == 0 and "Usage: recommender" in helped.stdout, helped.stderr
    where = subprocess.run(
        [python, "-c", "import recommender; print(recommender.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    assert where.startswith(site), where  # the wheel's copy, not the checkout

    # No index yet and no embedded catalog in a wheel: one clear line saying what to do.
    missing = recommender("identify", str(labeled_catalog / "red-circle" / "0.png"))
    assert missing.returncode == 1 and "ships with the source repository" in missing.stderr, missing.stderr
    assert missing.stderr.count("\n") == 1

    built = recommender("index", str(labeled_catalog), "--name", "shapes", "-q")
    assert built.returncode == 0, built.stderr
    data = home / ".local" / "share" / "recommender" / "index" / "shapes"
    assert (data / "manifest.json").is_file()  # the user's data folder, never site-packages
    assert not any(Path(site).glob("index*")) and not (elsewhere / "index").exists()
    named = recommender("identify", str(labeled_catalog / "red-circle" / "0.png"), "--index", "shapes")
    assert named.returncode == 0 and "red-circle" in named.stdout, named.stderr

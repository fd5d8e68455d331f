"""Shared fixtures: a tiny random DINOv2 saved to disk, generated catalogs, and isolated data folders."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from appserver import CHROMIUM, CHROMIUM_FLAGS
from PIL import Image, ImageDraw

# No test may reach the network: the hub client must answer from disk or fail at once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"  # nor may the datasets library
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Hermetic by construction, for this process and every process the tests start (they inherit it):
# the network guard of tests/hermetic/sitecustomize.py (loopback and Unix sockets only; attempts are
# logged and fail the test), no Gradio analytics, a Hugging Face home of the suite's own (no DINOv2
# from the developer's cache), and ddgs (whose HTTP client is Rust, out of the guard's reach)
# pointed at a closed loopback port.
HERMETIC = Path(__file__).resolve().parent / "hermetic"
SCRATCH = Path(tempfile.mkdtemp(prefix="recommender-tests-"))
NETLOG = SCRATCH / "network.log"
CLOSED_PORT_URL = "http://127.0.0.1:9"  # the discard port: nothing listens there, a connection is refused
os.environ["RECOMMENDER_TEST_NETLOG"] = str(NETLOG)
os.environ["PYTHONPATH"] = os.pathsep.join([str(HERMETIC), *filter(None, [os.environ.get("PYTHONPATH")])])
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # Ray asks cloud metadata servers (169.254.169.254) for its usage report
os.environ["HF_HOME"] = str(SCRATCH / "hf")
for _name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_TOKEN"):
    os.environ.pop(_name, None)
os.environ["DDGS_PROXY"] = CLOSED_PORT_URL
_spec = importlib.util.spec_from_file_location("netguard", HERMETIC / "sitecustomize.py")
netguard = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(netguard)
netguard.install()

#: Skips that stay skips in CI (where $CI is set every other skip is a failure: a missing chromium,
#: Ray, Milvus Lite or node module there means the suite did not test what it claims).
SKIPS_ALLOWED_IN_CI = ("needs symbolic links",)


def network_attempts(since: int) -> tuple[str, int]:
    """What the guard logged from byte `since` on, and where the log ends now."""
    try:
        data = NETLOG.read_bytes()
    except FileNotFoundError:
        return "", 0
    return data[since:].decode("utf-8", "replace"), len(data)


_CHECKED = [0]  # how far the log has been checked: attempts are charged to the test that was running


@pytest.fixture(autouse=True)
def no_network() -> Iterator[None]:
    """Fail a test (loudly, even when the code under test caught the error) that tried the network."""
    before, _CHECKED[0] = network_attempts(_CHECKED[0])
    if before:
        pytest.fail(f"the network was tried before this test (by a session fixture or server):\n{before}")
    yield
    during, _CHECKED[0] = network_attempts(_CHECKED[0])
    if during:
        pytest.fail(f"this test tried the network:\n{during}")


def _fail_skip_in_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    """In CI a skip is a failure: the suite must not pass by testing less than it claims."""
    if not (report.skipped and os.environ.get("CI")) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if not reason.removeprefix("Skipped: ").startswith(SKIPS_ALLOWED_IN_CI):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where everything the suite needs must be installed: {reason}"


@pytest.fixture
def network_log() -> Callable[[], str]:
    """For the guard's own tests: what was logged since the last look, then forgotten (so it fails nothing)."""

    def take() -> str:
        found, _CHECKED[0] = network_attempts(_CHECKED[0])
        return found

    return take


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    _fail_skip_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield  # a module-level importorskip (Ray, Milvus Lite) skips at collection
    _fail_skip_in_ci(outcome.get_result())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Attempts after the last test (a server's shutdown) fail the run too; then the scratch folder goes."""
    late, _CHECKED[0] = network_attempts(_CHECKED[0])
    if late:
        print(f"\nthe network was tried after the last test:\n{late}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    shutil.rmtree(SCRATCH, ignore_errors=True)


with contextlib.suppress(ImportError):  # hypothesis: the same examples on every CI run, none saved between
    from hypothesis import settings as hypothesis_settings

    hypothesis_settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
    hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default"))

#: label -> (shape, colour) of the generated labeled catalog
SHAPES = {
    "red-circle": ("circle", (220, 30, 30)),
    "green-square": ("square", (30, 180, 60)),
    "blue-triangle": ("triangle", (40, 60, 220)),
}


def draw_shape(
    shape: str,
    colour: tuple[int, int, int],
    *,
    seed: int,
    size: tuple[int, int] = (96, 96),
    background: tuple[int, ...] = (255, 255, 255),
    mode: str = "RGB",
) -> Image.Image:
    """A shape on a plain background, its size and position varied by `seed`."""
    rng = random.Random(seed)
    img = Image.new(mode, size, background)
    draw = ImageDraw.Draw(img)
    w, h = size
    s = int(min(w, h) * rng.uniform(0.45, 0.7))
    x, y = rng.randint(2, max(2, w - s - 2)), rng.randint(2, max(2, h - s - 2))
    fill = colour if mode == "RGB" else (*colour, 255)
    if shape == "circle":
        draw.ellipse([x, y, x + s, y + s], fill=fill)
    elif shape == "square":
        draw.rectangle([x, y, x + s, y + s], fill=fill)
    else:
        draw.polygon([(x + s // 2, y), (x, y + s), (x + s, y + s)], fill=fill)
    return img


def make_labeled_catalog(root: Path, per_label: int = 4) -> Path:
    """Class folders of generated shapes: root/<label>/<i>.png."""
    for n, (label, (shape, colour)) in enumerate(SHAPES.items()):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_label):
            draw_shape(shape, colour, seed=100 * n + i).save(root / label / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised DINOv2 (patch 14, 2 layers, 32-d) saved like a real one; the path is its folder.

    A large initializer range makes its CLS tokens differ between pictures (with the default 0.02
    every picture gets almost the same vector), so that retrieval tests mean something.
    """
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-dinov2")
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=14,
        image_size=224,
        initializer_range=0.5,
    )
    Dinov2Model(config).save_pretrained(folder)
    stats = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    (folder / "preprocessor_config.json").write_text(json.dumps(stats))
    return folder


@pytest.fixture(scope="session")
def tiny_model_registers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The with-registers variant (4 register tokens), saved without a preprocessor config."""
    import torch
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("tiny-dinov2-reg")
    config = Dinov2WithRegistersConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=14,
        image_size=224,
        num_register_tokens=4,
        initializer_range=0.5,
    )
    Dinov2WithRegistersModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def isolated_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own index and cache folders, and no model or index chosen by the environment."""
    monkeypatch.setenv("RECOMMENDER_INDEX_DIR", str(tmp_path / "index"))
    monkeypatch.setenv("RECOMMENDER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RECOMMENDER_DATA_DIR", str(tmp_path / "data"))
    for name in (
        "RECOMMENDER_MODEL",
        "RECOMMENDER_MODEL_REVISION",
        "RECOMMENDER_INDEX",
        "RECOMMENDER_DEVICE",
        "RECOMMENDER_DEBUG",
        "RECOMMENDER_PRECISION",
        "RECOMMENDER_STORE",
        "RECOMMENDER_MAX_DECODE_MB",
    ):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def labeled_catalog(tmp_path: Path) -> Path:
    return make_labeled_catalog(tmp_path / "shapes")


#: The vector stores every search test runs against: the embedded default and the real Milvus Lite engine.
STORES = ("local", "milvus-lite")


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each store in turn, chosen through RECOMMENDER_STORE so that every build of the test goes there.

    Milvus Lite (an optional dependency) puts its database inside each index folder; the test is
    skipped where it is not installed.
    """
    if request.param != "local":
        pytest.importorskip("pymilvus", reason="pip install -r requirements-scale.txt")
        pytest.importorskip("milvus_lite", reason="pip install -r requirements-scale.txt")
    monkeypatch.setenv("RECOMMENDER_STORE", request.param)
    yield request.param
    if request.param != "local":
        from recommender.index.store.milvus import close_clients

        close_clients()


@dataclass(frozen=True)
class AppServer:
    """`python app.py` running on a free port: its process (for RSS and liveness), URL and folder."""

    process: subprocess.Popen[bytes]
    url: str
    folder: Path


@pytest.fixture(scope="session")
def app_server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[AppServer]:
    """One real app server for the whole session (its first start builds the Pokémon index, so it is shared)."""
    from appserver import start_app

    folder = tmp_path_factory.mktemp("app")
    process, url = start_app(
        folder,
        {
            "RECOMMENDER_MODEL": str(tiny_model),
            "RECOMMENDER_WEB_PROVIDER": "fake_web:FakeProvider",
            # Every client of the suite comes from loopback; the public default (20) is tested on a server
            # of its own (test_security_server.public_url).
            "RECOMMENDER_NEW_SESSIONS_PER_MINUTE": "600",
        },
    )
    yield AppServer(process, url, folder)
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="session")
def app_folder(app_server: AppServer) -> Path:
    return app_server.folder


@pytest.fixture(scope="session")
def app_url(app_server: AppServer) -> str:
    return app_server.url


CHROMIUM_ARGS = [
    *CHROMIUM_FLAGS,
    # Hermetic: every request for another machine goes to a closed loopback port, no name resolves.
    f"--proxy-server={CLOSED_PORT_URL}",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Debian's Chromium through Playwright, one for the session (Playwright's sync API allows one at a time)."""
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()

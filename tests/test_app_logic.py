"""The app's own decisions, without a browser: the start-up model, rebuilds, reloads, other indexes, escaping.

Each test here is named after a deliberate bug it is known to catch (scripts/mutants.py plants them).
"""

from __future__ import annotations

import html.parser
import importlib.util
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SHAPES, draw_shape, make_labeled_catalog
from fake_web import HOSTILE_HOST, HOSTILE_TITLE, HOSTILE_URL, HostileProvider

from recommender import build_index
from recommender.backbones import OFFLINE, load_backbone
from recommender.errors import ModelError
from recommender.index import Index
from recommender.recommend import identify
from recommender.runtime import Runtime
from recommender.service import Service, choose_backbone, ensure_index
from recommender.session import Visit
from recommender.websearch import search_media, set_provider

ROOT = Path(__file__).resolve().parent.parent


def shop(root: Path, labels: dict[str, int]) -> Path:
    """Class folders of generated shapes, `labels` mapping each label of SHAPES to how many pictures it has."""
    for n, (label, count) in enumerate(labels.items()):
        shape, colour = SHAPES[label]
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            draw_shape(shape, colour, seed=100 * n + i).save(root / label / f"{i}.png")
    return root


# --- identify: "less like this" ---------------------------------------------------------------------------------


def test_a_disliked_item_leaves_the_look_alikes_but_not_the_answer(tmp_path):
    # The red circle is the only item of its label: disliked, it is not offered again, yet the picture
    # is still a red circle (feedback steers the look-alikes, never what the picture is).
    catalog = shop(tmp_path / "shop", {"red-circle": 1, "green-square": 3, "blue-triangle": 3})
    build_index(catalog, name="shop", model="colour-histogram", progress=False)
    index = Index.load("shop")
    picture = catalog / "red-circle" / "0.png"
    plain = identify(picture, index)
    answer = identify(picture, index, disliked=["red-circle/0.png"])
    assert plain.label == answer.label == "red-circle"
    assert (answer.score, answer.in_catalog, answer.message) == (plain.score, plain.in_catalog, plain.message)
    assert answer.labels == plain.labels
    assert "red-circle/0.png" not in [m.item.id for m in answer.matches]


def test_liking_another_item_reorders_the_look_alikes_and_leaves_the_answer(tmp_path):
    catalog = shop(tmp_path / "shop", {"red-circle": 3, "green-square": 3, "blue-triangle": 3})
    service = Service(model="colour-histogram", default_catalog=catalog, default_name="shop", progress=False)
    asked = Visit().asking(catalog / "red-circle" / "0.png", None)
    visit, plain = service.ask(asked, session=None, k=9)
    liked = next(m.item.id for m in reversed(plain.matches) if m.label == "blue-triangle")  # the last blue one
    steered_visit, steered = service.ask(visit.steered("like", liked), session=None, k=9)
    assert (steered.label, steered.score, steered.in_catalog, steered.message, steered.threshold) == (
        plain.label,
        plain.score,
        plain.in_catalog,
        plain.message,
        plain.threshold,
    )
    assert steered.ranked() == plain.ranked() and steered.another_image == plain.another_image
    before, after = [m.item.id for m in plain.matches], [m.item.id for m in steered.matches]
    assert after != before and after.index(liked) < before.index(liked)  # the ranking moved toward the liked
    assert steered_visit.steering == "Look-alikes steered by your feedback: 1 more like, 0 less like"
    assert visit.steering is None and [s.id for s in steered_visit.matches] == after  # what the page shows


def test_the_scores_panel_lists_each_label_once_as_escaped_similarities(tmp_path, app_module):
    catalog = shop(tmp_path / "shop", {"red-circle": 4, "green-square": 4, "blue-triangle": 4})
    service = Service(model="colour-histogram", default_catalog=catalog, default_name="shop", progress=False)
    _, result = service.ask(Visit().asking(catalog / "red-circle" / "0.png", None), session=None, k=12)
    names = [name for name, _ in result.ranked()]
    assert sorted(names) == sorted(SHAPES) and len(result.matches) == 12  # 12 pictures, 3 labels: each once
    assert result.ranked()[0] == ("red-circle", result.score)
    panel = Page()
    panel.feed(app_module.scores_html([("<img src=x onerror=alert(1)>", 0.834), ("{{x}} ${y}", -0.2)]))
    panel.close()
    assert {tag for tag, _ in panel.tags} == {"div", "ol", "li", "span"}  # no element the label tried to add
    text = "".join(panel.text)
    assert "1. <img src=x onerror=alert(1)>" in text and "0.83" in text and "-0.20" in text and "%" not in text
    widths = [attrs["style"] for tag, attrs in panel.tags if tag == "span" and attrs.get("style")]
    assert widths == ["width:83%", "width:0%"]  # bars from the similarity, clipped at 0


# --- the model the app starts with ------------------------------------------------------------------------------


def plant_in_hub_cache(model_folder: Path, cache: Path, repo: str) -> None:
    """Put a saved model where huggingface_hub's offline lookup finds `repo` (its cache layout)."""
    base = cache / f"models--{repo.replace('/', '--')}"
    snapshot = base / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for path in model_folder.iterdir():
        shutil.copy(path, snapshot / path.name)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text("0" * 40)


def test_start_up_model_the_environment_names_is_used_without_a_notice(tiny_model, monkeypatch):
    monkeypatch.setenv("RECOMMENDER_MODEL", str(tiny_model))
    choice = choose_backbone()
    assert choice.notice is None and choice.backbone.identity == load_backbone(str(tiny_model)).identity
    assert choose_backbone("colour-histogram").backbone.name == load_backbone("colour-histogram").name  # flag first


def test_start_up_model_a_broken_explicit_choice_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("RECOMMENDER_MODEL", str(tmp_path / "no-such-model"))
    with pytest.raises(ModelError):
        choose_backbone()


@pytest.fixture
def no_loaded_dinov2() -> Iterator[None]:
    """Forget DINOv2 models loaded before (and by) the test: they are kept per source name."""
    from recommender.backbones.vision import load_vision

    load_vision.cache_clear()
    yield
    load_vision.cache_clear()


def test_start_up_model_is_the_local_dinov2_when_the_cache_has_it(tiny_model, tmp_path, monkeypatch, no_loaded_dinov2):
    from huggingface_hub import constants

    plant_in_hub_cache(tiny_model, tmp_path / "hub", "facebook/dinov2-small")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    choice = choose_backbone()
    assert choice.notice is None
    assert choice.backbone.identity == load_backbone(str(tiny_model)).identity  # the cached weights, offline


def test_start_up_model_falls_back_to_the_offline_cnn_and_says_why(tmp_path, monkeypatch, no_loaded_dinov2):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))  # whatever the developer has
    choice = choose_backbone()
    assert choice.backbone.name == load_backbone(OFFLINE).name
    assert choice.notice and choice.notice.startswith("DINOv2 could not be loaded (")
    assert "HF_HUB_OFFLINE" in choice.notice and "RECOMMENDER_MODEL" in choice.notice and OFFLINE in choice.notice


# --- when the default index is rebuilt --------------------------------------------------------------------------


def test_ensure_index_reuses_an_up_to_date_index_and_rebuilds_a_changed_catalog(tmp_path):
    catalog = shop(tmp_path / "shop", {"red-circle": 2, "green-square": 2})
    histogram = load_backbone("colour-histogram")
    first, report = ensure_index("shop", catalog, histogram, progress=False)
    assert report is not None and len(first) == 4
    again, report = ensure_index("shop", catalog, histogram, progress=False)
    assert report is None and again.manifest == first.manifest  # nothing changed: not rebuilt
    draw_shape("triangle", (40, 60, 220), seed=7).save(catalog / "green-square" / "new.png")
    grown, report = ensure_index("shop", catalog, histogram, progress=False)
    assert report is not None and len(grown) == 5 and "green-square/new.png" in [i.id for i in grown.items]
    (catalog / "red-circle" / "0.png").write_bytes((catalog / "green-square" / "new.png").read_bytes())
    changed, report = ensure_index("shop", catalog, histogram, progress=False)  # same names, a picture changed
    assert report is not None and changed.manifest.catalog.fingerprint != grown.manifest.catalog.fingerprint


def test_ensure_index_rebuilds_when_the_backbone_changes(tmp_path, tiny_model):
    catalog = shop(tmp_path / "shop", {"red-circle": 2, "green-square": 2})
    ensure_index("shop", catalog, load_backbone("colour-histogram"), progress=False)
    tiny = load_backbone(str(tiny_model))
    index, report = ensure_index("shop", catalog, tiny, progress=False)
    assert report is not None and index.built_with(tiny) and index.dim == tiny.dim


# --- the service: indexes other than the default ----------------------------------------------------------------


@pytest.fixture
def service(tmp_path) -> Service:
    default = shop(tmp_path / "default", {"blue-triangle": 3})
    return Service(model="colour-histogram", default_catalog=default, default_name="default", progress=False)


def test_service_reloads_an_index_rebuilt_after_it_was_loaded(service, tmp_path):
    catalog = shop(tmp_path / "shop", {"red-circle": 2})
    build_index(catalog, name="shop", model="colour-histogram", progress=False)
    assert len(service.index("shop")) == 2
    assert service.index("shop") is service.index("shop")  # unchanged: the loaded one, not read again
    shop(catalog, {"red-circle": 2, "green-square": 2})
    build_index(catalog, name="shop", model="colour-histogram", progress=False)
    assert len(service.index("shop")) == 4, "the service still serves the index as it was before the rebuild"


def test_service_searches_the_index_it_is_asked_for(service, tmp_path):
    catalog = make_labeled_catalog(tmp_path / "shapes")
    build_index(catalog, name="shapes", model="colour-histogram", progress=False)
    picture = catalog / "green-square" / "1.png"
    found = service.search(picture, index="shapes", k=3)
    assert {m["label"] for m in found} == {"green-square"}  # the shapes' green squares, by colour
    answer = service.answer(picture, index="shapes")
    assert answer["label"] == "green-square" and answer["matches"][0]["id"].startswith("green-square/")
    assert {m["label"] for m in service.search(picture, k=3)} == {"blue-triangle"}  # the default one otherwise
    assert set(service.indexes()) >= {"default", "shapes"}


# --- the related-media panel with a hostile search provider -----------------------------------------------------


class Page(html.parser.HTMLParser):
    """The elements, attributes and text a browser would make of a fragment."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@pytest.fixture(scope="module")
def app_module():
    spec = importlib.util.spec_from_file_location("app_under_test", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ALLOWED = {
    "div": {"id"},
    "ul": set(),
    "li": set(),
    "small": set(),
    "a": {"href", "target", "rel", "title"},
    "img": {"src", "alt", "loading", "referrerpolicy", "style"},
}


def test_every_remote_string_in_the_related_media_panel_is_escaped(app_module):
    runtime = Runtime()
    set_provider(HostileProvider(), runtime=runtime)
    found = (
        search_media("Pikachu", kind="image", limit=6, domain="Pokémon", runtime=runtime),
        search_media("Pikachu", kind="page", limit=6, domain="Pokémon", runtime=runtime),
    )
    assert found[0] and found[1]
    page = Page()
    page.feed(app_module.links_html("<b>Pikachu</b>", found))
    page.close()
    for tag, attrs in page.tags:  # no element or attribute the hostile strings tried to add
        assert tag in ALLOWED and set(attrs) <= ALLOWED[tag], (tag, attrs)
    titles = [attrs["title"] for tag, attrs in page.tags if tag == "a" and "title" in attrs]
    hrefs = [attrs["href"] for tag, attrs in page.tags if tag == "a"]
    assert titles and set(titles) == {HOSTILE_TITLE}  # the browser shows each string exactly as it came
    assert HOSTILE_URL in hrefs and f"https://{HOSTILE_HOST}/page" in hrefs
    assert {attrs["alt"] for tag, attrs in page.tags if tag == "img"} == {HOSTILE_TITLE}
    text = "".join(page.text)
    assert HOSTILE_TITLE in text and HOSTILE_HOST.lower() in text  # the page title and its domain, as text
    empty = Page()
    empty.feed(app_module.links_html("<img src=x onerror=alert(5)>", ([], [])))
    assert [tag for tag, _ in empty.tags] == ["p"] and "<img src=x onerror=alert(5)>" in "".join(empty.text)
    offline = Page()
    offline.feed(app_module.links_html("Pikachu", "web search unavailable: <script>alert(6)</script>"))
    assert [tag for tag, _ in offline.tags] == ["p"]


def test_the_fake_providers_pictures_come_from_this_machine():
    from fake_web import FakeProvider

    links = FakeProvider().fetch("Pikachu Pokémon", kind="image", limit=2, timeout=1)
    assert links and all(link.thumbnail.startswith("http://127.0.0.1:") for link in links)
    import urllib.request

    with urllib.request.urlopen(links[0].thumbnail, timeout=10) as response:
        assert response.headers["Content-Type"] == "image/png" and response.read(8) == b"\x89PNG\r\n\x1a\n"

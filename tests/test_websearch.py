"""websearch: clean, cached, time-bounded links; the real ddgs client offline fails fast with one clear line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import pytest
from click.testing import CliRunner

from recommender import websearch
from recommender.catalog import Item
from recommender.cli import cli
from recommender.errors import RecommenderError, WebSearchUnavailable
from recommender.websearch import (
    DuckDuckGoProvider,
    Kind,
    Link,
    WebSearch,
    build_query,
    clean_links,
    clean_url,
    query_for_item,
    search_media,
    set_provider,
)

ROOT = Path(__file__).resolve().parent.parent
# A local port nobody listens on: the real client, sent through it as a proxy, can never reach the web.
CLOSED_PROXY = "http://127.0.0.1:9"


class FakeProvider:
    """Answers from a list (or raises, or blocks) and counts the calls: the real code paths, no network."""

    name = "Fake"

    def __init__(self, links: Sequence[Link] = (), *, errors: Sequence[BaseException] = (), block: float = 0.0) -> None:
        self.links = list(links)
        self.errors = list(errors)
        self.block = block
        self.calls: list[dict[str, object]] = []
        self.released = threading.Event()

    def fetch(self, query: str, *, kind: Kind, limit: int, timeout: float) -> list[Link]:
        self.calls.append({"query": query, "kind": kind, "limit": limit, "timeout": timeout})
        if self.block:
            self.released.wait(self.block)
        if self.errors:
            raise self.errors.pop(0)
        return self.links[:limit]


def page(n: int, url: str | None = None, **kw: object) -> Link:
    return Link(kw.pop("title", f"Page {n}"), url or f"https://site{n}.example.org/pikachu", "", **kw)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def clean_state(monkeypatch: pytest.MonkeyPatch):
    """No web setting from the environment, and the shared searcher rebuilt after each test."""
    for name in list(os.environ):
        if name.startswith("RECOMMENDER_WEB_") or name == "DDGS_PROXY":
            monkeypatch.delenv(name, raising=False)
    set_provider(None)
    yield
    set_provider(None)


# --- the real ddgs client, offline ------------------------------------------------------------------------------


ONE_LINE = r"^web search unavailable: (no network|DuckDuckGo did not answer|DuckDuckGo is rate limiting)"


@pytest.mark.parametrize("kind", ["page", "image", "video"])
def test_real_client_through_a_dead_proxy_fails_fast_and_clearly(kind, monkeypatch):
    pytest.importorskip("ddgs")
    monkeypatch.setenv("DDGS_PROXY", CLOSED_PROXY)  # read by ddgs.DDGS(): the web is out of reach by construction
    start = time.monotonic()
    with pytest.raises(WebSearchUnavailable, match=ONE_LINE) as info:
        search_media("Pikachu", kind=kind)
    assert time.monotonic() - start < 5
    assert "\n" not in str(info.value) and not info.value.retryable


def test_real_client_through_a_proxy_that_never_answers_gives_up_within_its_deadline(monkeypatch):
    # Offline on purpose: a loopback listener that takes connections and never says a word.
    pytest.importorskip("ddgs")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        monkeypatch.setenv("DDGS_PROXY", f"http://127.0.0.1:{silent.getsockname()[1]}")
        start = time.monotonic()
        with pytest.raises(WebSearchUnavailable, match=ONE_LINE):
            WebSearch(DuckDuckGoProvider(), timeout=1.0).search("Pikachu Pokémon", kind="page")
        assert time.monotonic() - start < 10  # a 1 s deadline; generous for a loaded machine


def test_cli_offline_exits_non_zero_with_one_line_and_no_traceback():
    pytest.importorskip("ddgs")
    env = {
        **os.environ,
        "DDGS_PROXY": CLOSED_PROXY,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ["PYTHONPATH"]]),
    }
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "recommender", "links", "Pikachu"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert time.monotonic() - start < 20  # a fresh interpreter's imports included; ddgs would retry for minutes
    assert proc.returncode != 0
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("Error: web search unavailable: ")


# --- cleaning, ranking and duplicates ---------------------------------------------------------------------------


def test_keeps_the_providers_order_and_drops_duplicates_and_unsafe_urls():
    links = [
        page(1, "https://www.bulbapedia.example/wiki/Pikachu?utm_source=ddg#Biology"),
        page(2, "javascript:alert(1)"),
        page(3, "http://bulbapedia.example/wiki/Pikachu/"),  # page 1 again: scheme, www, slash, tracking
        page(4, "data:text/html,hi"),
        page(5, "https://user:pw@evil.example/"),  # credentials make a link look like another site
        page(6, "/relative/path"),
        page(7, "https://Serebii.example/pokedex/025.shtml", thumbnail="ftp://x.example/t.png"),
        page(8, "https://fans.example/a b"),  # whitespace: not a URL a browser gets right
        page(9),
        page(10),
    ]
    out = clean_links(links, kind="page", limit=3)
    assert [link.title for link in out] == ["Page 1", "Page 7", "Page 9"]
    assert [link.source for link in out] == ["bulbapedia.example", "serebii.example", "site9.example.org"]
    assert out[1].thumbnail is None  # a bad thumbnail is blanked, the link kept
    assert all(link.kind == "page" for link in out)


def test_same_image_on_two_pages_is_one_link_and_image_only_results_open_the_picture():
    links = [
        Link("a", "https://a.example/p", "", "https://t.example/1.jpg", "image", image="https://img.example/1.png"),
        Link("b", "https://b.example/q", "", "https://t.example/2.jpg", "image", image="https://img.example/1.png"),
        Link("c", "", "", None, "image", image="https://img.example/3.png"),
        Link("", "https://d.example/r", "", "https://t.example/4.jpg", "image", image="javascript:x"),
    ]
    out = clean_links(links, kind="image", limit=10)
    assert [link.url for link in out] == ["https://a.example/p", "https://img.example/3.png", "https://d.example/r"]
    assert out[1].source == "img.example" and out[2].image is None and out[2].title == "d.example"


@pytest.mark.parametrize("url", ["https://a.example", "http://a.example:8080/x?y=1"])
def test_clean_url_accepts_http_and_https(url):
    assert clean_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        None,
        "",
        "ftp://a.example/",
        "//a.example/x",
        "https://",
        "https://a.example:99999/",
        "https://a.example/\x00",
        "https://a.example/" + "x" * 3000,
        42,
    ],
)
def test_clean_url_refuses_the_rest(url):
    assert clean_url(url) is None


def test_search_asks_for_spares_and_fills_the_limit_after_filtering():
    links = [page(1, "javascript:void(0)"), page(2), page(2), page(3), page(4)]
    provider = FakeProvider(links)
    out = WebSearch(provider).search("Pikachu Pokémon", kind="pages", limit=3)
    assert [link.title for link in out] == ["Page 2", "Page 3", "Page 4"]
    assert provider.calls[0]["limit"] > 3 and provider.calls[0]["kind"] == "page"


# --- caching ----------------------------------------------------------------------------------------------------


def test_repeated_queries_come_from_the_cache_until_the_ttl_passes():
    clock = Clock()
    provider = FakeProvider([page(n) for n in range(20)])
    searcher = WebSearch(provider, ttl=60, clock=clock)
    first = searcher.search("Pikachu Pokémon", limit=5)
    assert searcher.search("pikachu   pokémon", limit=5) == first  # same query, other spelling
    assert searcher.search("Pikachu Pokémon", limit=2) == first[:2]
    assert len(provider.calls) == 1
    searcher.search("Pikachu Pokémon", kind="image", limit=5)  # another kind is another question
    assert len(provider.calls) == 2
    clock.now += 59
    searcher.search("Pikachu Pokémon", limit=5)
    assert len(provider.calls) == 2
    clock.now += 2
    searcher.search("Pikachu Pokémon", limit=5)
    assert len(provider.calls) == 3


def test_a_larger_limit_asks_again_unless_the_provider_had_no_more():
    provider = FakeProvider([page(n) for n in range(40)])
    searcher = WebSearch(provider)
    searcher.search("q", limit=2)
    assert len(searcher.search("q", limit=20)) == 20 and len(provider.calls) == 2
    few = FakeProvider([page(1), page(2)])
    searcher = WebSearch(few)
    searcher.search("q", limit=2)
    assert len(searcher.search("q", limit=20)) == 2 and len(few.calls) == 1


def test_empty_answers_are_not_cached_and_the_cache_is_bounded():
    empty = FakeProvider([])
    searcher = WebSearch(empty)
    assert searcher.search("q") == [] and searcher.search("q") == []
    assert len(empty.calls) == 2
    provider = FakeProvider([page(1)])
    searcher = WebSearch(provider, max_entries=2)
    for query in ("a", "b", "c", "a"):
        searcher.search(query)
    assert [c["query"] for c in provider.calls] == ["a", "b", "c", "a"]  # "a" was the oldest, so dropped


# --- deadline, retries, rate limits -----------------------------------------------------------------------------


def test_a_blocking_provider_is_abandoned_at_the_deadline():
    provider = FakeProvider([page(1)], block=30)
    start = time.monotonic()
    with pytest.raises(WebSearchUnavailable, match=r"^web search unavailable: Fake did not answer within 0.3 s$"):
        WebSearch(provider, timeout=0.3).search("q")
    assert time.monotonic() - start < 10  # the provider blocks for 30 s; generous for a loaded machine
    provider.released.set()


def test_the_deadline_is_passed_to_the_provider_and_can_be_set_per_call():
    provider = FakeProvider([page(1)])
    WebSearch(provider, timeout=3).search("q")
    WebSearch(provider, timeout=3).search("q", timeout=1.5)
    assert 2.5 < provider.calls[0]["timeout"] <= 3 and 1 < provider.calls[1]["timeout"] <= 1.5


def test_transient_failures_are_retried_with_backoff_within_the_deadline():
    pauses: list[float] = []
    flaky = FakeProvider([page(1)], errors=[WebSearchUnavailable("slow", retryable=True)] * 2)
    out = WebSearch(flaky, timeout=5, sleep=pauses.append).search("q")
    assert len(out) == 1 and len(flaky.calls) == 3 and pauses == [0.25, 0.5]


def test_no_retry_when_it_cannot_help_or_would_not_fit():
    pauses: list[float] = []
    offline = FakeProvider(errors=[WebSearchUnavailable("no network")])
    with pytest.raises(WebSearchUnavailable, match="no network"):
        WebSearch(offline, sleep=pauses.append).search("q")
    tight = FakeProvider(errors=[WebSearchUnavailable("slow", retryable=True)] * 3)
    with pytest.raises(WebSearchUnavailable, match="slow"):
        WebSearch(tight, timeout=1.0, sleep=pauses.append).search("q")
    assert len(offline.calls) == 1 and len(tight.calls) == 1 and pauses == []


def test_a_rate_limit_pauses_the_provider_for_a_while():
    clock = Clock()
    provider = FakeProvider([page(1)], errors=[WebSearchUnavailable("slow down", rate_limited=True)])
    searcher = WebSearch(provider, clock=clock)
    with pytest.raises(WebSearchUnavailable, match="slow down"):
        searcher.search("q")
    with pytest.raises(WebSearchUnavailable, match=r"Fake is rate limiting this machine; try again in 60 s"):
        searcher.search("other")
    assert len(provider.calls) == 1
    clock.now += websearch.RATE_LIMIT_COOLDOWN + 1
    assert len(searcher.search("q")) == 1


def test_a_provider_bug_becomes_a_one_line_unavailable():
    provider = FakeProvider(errors=[ValueError("bad page\nsecond line")])
    with pytest.raises(WebSearchUnavailable, match=r"^web search unavailable: Fake failed: ValueError: bad page$"):
        WebSearch(provider).search("q")


# --- queries and settings ---------------------------------------------------------------------------------------


def test_queries_join_the_label_and_the_domain_once(monkeypatch):
    assert build_query("Pikachu") == "Pikachu Pokémon"
    assert build_query("  Mr.   Mime ", "Pokémon") == "Mr. Mime Pokémon"
    assert build_query("Pokémon Center", "pokémon") == "Pokémon Center"
    assert build_query("Pikachu", "") == "Pikachu"
    monkeypatch.setenv("RECOMMENDER_WEB_DOMAIN", "plush toy")
    assert build_query("Pikachu") == "Pikachu plush toy"
    with pytest.raises(RecommenderError, match="empty"):
        build_query("   ")


def test_csv_items_are_searched_by_their_metadata_columns():
    watch = Item("w1", "w1.jpg", None, {"brand": "Rolex", "model": " Submariner ", "ref": ""})
    assert query_for_item(watch, columns=("brand", "model", "ref"), domain="watch") == "Rolex Submariner watch"
    assert query_for_item(Item("p", "p.png", "Eevee"), columns=("brand",)) == "Eevee Pokémon"
    with pytest.raises(RecommenderError, match="no label or in columns brand"):
        query_for_item(Item("x", "x.png"), columns=("brand",), domain="")


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("RECOMMENDER_WEB_TIMEOUT", "2.5")
    monkeypatch.setenv("RECOMMENDER_WEB_CACHE_TTL", "10")
    searcher = WebSearch(FakeProvider())
    assert (searcher.timeout, searcher.ttl) == (2.5, 10)
    monkeypatch.setenv("RECOMMENDER_WEB_CACHE_TTL", "0")  # caching off
    provider = FakeProvider([page(1)])
    searcher = WebSearch(provider)
    searcher.search("q")
    searcher.search("q")
    assert len(provider.calls) == 2
    monkeypatch.setenv("RECOMMENDER_WEB_TIMEOUT", "soon")
    with pytest.raises(RecommenderError, match="RECOMMENDER_WEB_TIMEOUT must be a positive number"):
        WebSearch(FakeProvider())


def test_providers_are_chosen_by_name(monkeypatch):
    assert isinstance(websearch.make_provider(), DuckDuckGoProvider)
    monkeypatch.setenv("RECOMMENDER_WEB_PROVIDER", "off")
    with pytest.raises(WebSearchUnavailable, match=r"turned off \(RECOMMENDER_WEB_PROVIDER=off\)"):
        search_media("Pikachu")
    monkeypatch.setenv("RECOMMENDER_WEB_PROVIDER", "bing-pro")
    set_provider(None)
    with pytest.raises(RecommenderError, match="unknown web search provider 'bing-pro'"):
        search_media("Pikachu")


def test_providers_can_be_imported_by_path(monkeypatch):
    provider = websearch.make_provider("fake_web:FakeProvider")
    assert provider.name == "fake"
    monkeypatch.setenv("RECOMMENDER_WEB_PROVIDER", "fake_web:FakeProvider")
    set_provider(None)
    assert [link.source for link in search_media("Pikachu")] == ["fans0.example.com", "fans1.example.com"]
    for bad, why in [
        ("fake_web:Nope", "cannot be imported"),
        ("no_such_module:x", "cannot be imported"),
        ("fake_web:__doc__", "not callable"),
    ]:
        with pytest.raises(RecommenderError, match=why):
            websearch.make_provider(bad)


def test_bad_arguments_are_named():
    searcher = WebSearch(FakeProvider())
    with pytest.raises(RecommenderError, match="unknown link kind 'gifs'"):
        searcher.search("q", kind="gifs")
    with pytest.raises(RecommenderError, match="between 1 and 50"):
        searcher.search("q", limit=0)


def test_search_media_is_light_to_import():
    code = "import sys, recommender, recommender.websearch; print('ddgs' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False"


# --- the DuckDuckGo provider's translation of ddgs --------------------------------------------------------------


class FakeDDGS:
    """Stands in for ddgs.DDGS: records how it is called and answers like ddgs 9 does."""

    calls: ClassVar[list[tuple[str, float, str, dict[str, object]]]] = []
    answer: ClassVar[list[dict[str, object]] | BaseException] = []

    def __init__(self, proxy: str | None = None, timeout: float | None = 5) -> None:
        self.timeout = timeout

    def _answer(self, method: str, query: str, **kwargs: object) -> list[dict[str, object]]:
        FakeDDGS.calls.append((method, self.timeout or 0, query, kwargs))
        if isinstance(FakeDDGS.answer, BaseException):
            raise FakeDDGS.answer
        return FakeDDGS.answer

    def text(self, query: str, **kwargs: object) -> list[dict[str, object]]:
        return self._answer("text", query, **kwargs)

    def images(self, query: str, **kwargs: object) -> list[dict[str, object]]:
        return self._answer("images", query, **kwargs)

    def videos(self, query: str, **kwargs: object) -> list[dict[str, object]]:
        return self._answer("videos", query, **kwargs)


@pytest.fixture
def fake_ddgs(monkeypatch):
    ddgs = pytest.importorskip("ddgs")
    FakeDDGS.calls, FakeDDGS.answer = [], []
    monkeypatch.setattr(ddgs, "DDGS", FakeDDGS)
    return FakeDDGS


def test_duckduckgo_provider_calls_ddgs_with_safe_search_and_maps_each_kind(fake_ddgs):
    provider = DuckDuckGoProvider()
    fake_ddgs.answer = [{"title": "Pikachu - Bulbapedia", "href": "https://bulbapedia.example/Pikachu", "body": "…"}]
    assert provider.fetch("Pikachu Pokémon", kind="page", limit=8, timeout=4) == [
        Link("Pikachu - Bulbapedia", "https://bulbapedia.example/Pikachu", "", None, "page")
    ]
    fake_ddgs.answer = [
        {
            "title": "Pikachu",
            "image": "https://img.example/p.png",
            "thumbnail": "https://t.example/p",
            "url": "https://fans.example/p",
            "height": 10,
            "width": 10,
            "source": "Bing",
        }
    ]
    assert provider.fetch("Pikachu Pokémon", kind="image", limit=8, timeout=4) == [
        Link("Pikachu", "https://fans.example/p", "", "https://t.example/p", "image", image="https://img.example/p.png")
    ]
    fake_ddgs.answer = [
        {
            "title": "Pikachu song",
            "content": "https://video.example/watch?v=1",
            "images": {"large": "https://i.example/l.jpg", "medium": "https://i.example/m.jpg"},
        }
    ]
    assert provider.fetch("Pikachu Pokémon", kind="video", limit=8, timeout=4) == [
        Link("Pikachu song", "https://video.example/watch?v=1", "", "https://i.example/m.jpg", "video")
    ]
    methods = [call[0] for call in fake_ddgs.calls]
    assert methods == ["text", "images", "videos"]
    for _, _, query, kwargs in fake_ddgs.calls:
        assert query == "Pikachu Pokémon"
        assert kwargs == {"region": "us-en", "safesearch": "on", "max_results": 8, "backend": "duckduckgo"}
    # Images and videos make two requests in turn, so each gets half the time.
    assert [call[1] for call in fake_ddgs.calls] == [4, 2, 2]


def test_duckduckgo_no_results_is_an_empty_list(fake_ddgs):
    from ddgs.exceptions import DDGSException

    fake_ddgs.answer = DDGSException("No results found.")
    assert DuckDuckGoProvider().fetch("zzzz", kind="page", limit=5, timeout=4) == []


def _nested(outer: type[BaseException], inner_text: str, cause: BaseException | None = None) -> BaseException:
    """Built the way ddgs 9 builds them: DDGSException(DDGSException("Type: repr")) from the HTTP error."""
    inner = outer(inner_text)
    inner.__cause__ = cause
    return outer(inner)


def test_ddgs_failures_become_one_line_reasons(fake_ddgs):
    from ddgs.exceptions import DDGSException, RatelimitException, TimeoutException

    cases = [
        (
            _nested(DDGSException, "DNSError: DNSError('error sending request > error resolving DNS > no records')"),
            "no network (cannot resolve duckduckgo.com)",
            False,
            False,
        ),
        (
            _nested(DDGSException, "ConnectError: ConnectError('Connection refused (os error 111)')"),
            "no network (cannot connect to duckduckgo.com)",
            False,
            False,
        ),
        (TimeoutException(TimeoutException("operation timed out")), "DuckDuckGo did not answer in time", True, False),
        (RatelimitException("202 Ratelimit"), "DuckDuckGo is rate limiting this machine; try again later", False, True),
        (
            DDGSException("_extract_vqd() query='x' Could not extract vqd."),
            "DuckDuckGo is rate limiting this machine; try again later",
            False,
            True,
        ),
        (DDGSException("something\nodd"), "DuckDuckGo search failed (DDGSException: something)", False, False),
    ]
    for exc, reason, retryable, rate_limited in cases:
        fake_ddgs.answer = exc
        with pytest.raises(WebSearchUnavailable) as info:
            DuckDuckGoProvider().fetch("x", kind="image", limit=5, timeout=4)
        assert (info.value.reason, info.value.retryable, info.value.rate_limited) == (reason, retryable, rate_limited)


# --- the CLI, with a fake provider in-process ---------------------------------------------------------------------


LINKS = [
    Link(
        "Pikachu (Pokémon) - Bulbapedia",
        "https://bulbapedia.bulbagarden.net/wiki/Pikachu_(Pok%C3%A9mon)",
        "",
        None,
        "page",
    ),
    Link("Pikachu | Pokédex", "https://www.pokemon.com/us/pokedex/pikachu", "", "https://t.example/p.png", "page"),
    Link("dup", "https://www.pokemon.com/us/pokedex/pikachu/", "", None, "page"),
]


def test_cli_json_prints_an_array_of_links():
    provider = FakeProvider(LINKS)
    set_provider(provider)
    result = CliRunner().invoke(cli, ["links", "Pikachu", "--json", "-k", "5", "--kind", "images"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data == [
        {
            "title": "Pikachu (Pokémon) - Bulbapedia",
            "url": LINKS[0].url,
            "source": "bulbapedia.bulbagarden.net",
            "thumbnail": None,
            "kind": "image",
            "image": None,
        },
        {
            "title": "Pikachu | Pokédex",
            "url": LINKS[1].url,
            "source": "pokemon.com",
            "thumbnail": "https://t.example/p.png",
            "kind": "image",
            "image": None,
        },
    ]
    assert provider.calls[0]["query"] == "Pikachu Pokémon" and provider.calls[0]["kind"] == "image"


def test_cli_text_lists_domain_title_and_url():
    set_provider(FakeProvider(LINKS))
    result = CliRunner().invoke(cli, ["links", "Pikachu", "--domain", ""])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["1", "bulbapedia.bulbagarden.net", "Pikachu", "(Pokémon)", "-", "Bulbapedia"]
    assert lines[1].strip() == LINKS[0].url and len(lines) == 4


def test_cli_says_when_nothing_was_found_and_fails_in_one_line():
    set_provider(FakeProvider([]))
    result = CliRunner().invoke(cli, ["links", "Missingno"])
    assert result.exit_code == 0 and result.output == "no links found for 'Missingno Pokémon'\n"
    set_provider(FakeProvider(errors=[WebSearchUnavailable("no network (cannot resolve duckduckgo.com)")]))
    result = CliRunner().invoke(cli, ["links", "Pikachu", "--json"])
    assert result.exit_code == 1
    assert result.output == "Error: web search unavailable: no network (cannot resolve duckduckgo.com)\n"

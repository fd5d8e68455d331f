"""The app for real: `python app.py` on a free port, driven by Debian's Chromium through Playwright."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from appserver import SETTLED, start_app
from conftest import CHROMIUM

ROOT = Path(__file__).resolve().parent.parent
PIKACHU = ROOT / "assets" / "pokemon" / "sprites" / "025.png"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)"),
]


# The server itself (`app_server`, `app_url`, `app_folder`) and the `browser` are session fixtures in
# conftest.py, shared with the reliability and security tests.


@pytest.fixture
def page(browser: object, app_url: str) -> Iterator[object]:
    page = browser.new_page(viewport={"width": 1280, "height": 1100})  # type: ignore[attr-defined]
    page.goto(app_url)
    page.wait_for_selector("#query input[type=file]", state="attached", timeout=60_000)
    yield page
    page.close()


def new_answer(page: object, before: str) -> str:
    """Wait for an answer other than `before`, settled (`appserver.SETTLED`); returns its text."""
    page.wait_for_function(SETTLED, arg=before.strip(), timeout=60_000)  # type: ignore[attr-defined]
    return page.inner_text("#answer").strip()  # type: ignore[attr-defined]


def ask(page: object, picture: Path) -> str:
    """Upload a picture and wait for a new answer; returns the answer's text."""
    before = page.inner_text("#answer")  # type: ignore[attr-defined]
    page.set_input_files("#query input[type=file]", str(picture))  # type: ignore[attr-defined]
    return new_answer(page, before)


def test_before_the_first_search_the_page_says_what_to_do_and_shows_no_empty_panels(page):
    assert page.inner_text("#answer").startswith("Drop in a picture")
    assert not page.locator("#results").is_visible()
    assert page.locator("#gallery:visible, #another:visible, #scores:visible").count() == 0
    ask(page, PIKACHU)
    page.wait_for_selector("#gallery img", timeout=30_000)
    assert page.locator("#results").is_visible()


def test_a_picture_gets_its_name_scores_look_alikes_and_links(page, tmp_path):
    answer = ask(page, PIKACHU)
    assert answer.startswith("This is “Pikachu” (1.00)")  # a catalog picture is itself
    page.wait_for_function("document.querySelectorAll('#gallery img').length >= 8")
    assert "1. Pikachu" in page.inner_text("#scores") and "1.00" in page.inner_text("#scores")
    assert page.locator("#another img").count() == 1  # another picture of Pikachu
    assert "Another picture of it" in page.inner_text("#another")
    # Whole pictures in the gallery: no cropped heads and tails.
    fits = page.evaluate("[...document.querySelectorAll('#gallery img')].map(i => getComputedStyle(i).objectFit)")
    assert fits and set(fits) == {"contain"}, fits
    # Captions have a strip of their own: none reaches into the area its picture is drawn in.
    assert page.evaluate(
        "[...document.querySelectorAll('#gallery .thumbnail-item')].every(t => {"
        " const i = t.querySelector('img'), c = t.querySelector('.caption-label'); if (!c) return true;"
        " const r = i.getBoundingClientRect(), pad = parseFloat(getComputedStyle(i).paddingBottom);"
        " return pad > 0 && c.getBoundingClientRect().top >= r.bottom - pad - 1; })"
    )
    assert "Recognising with" in page.inner_text("body")  # the status line in plain words
    page.wait_for_selector("#related a", timeout=30_000)
    links = page.locator("#related a")
    assert "Pikachu Pokémon fan page 0" in page.inner_text("#related")
    assert links.first.get_attribute("target") == "_blank"
    assert "noopener" in (links.first.get_attribute("rel") or "")
    page.screenshot(path=str(tmp_path / "result.png"), full_page=True)


def test_garbage_gets_a_one_line_error_and_the_next_picture_still_works(page, tmp_path):
    """A broken picture clears the answer before it and says why once, in the answer's place."""
    assert ask(page, PIKACHU).startswith("This is “Pikachu”")
    garbage = tmp_path / "holiday.jpg"
    garbage.write_text("<html><body>not a picture</body></html>")
    answer = ask(page, garbage)
    assert answer.startswith("Not answered") and "holiday.jpg: this is an HTML page, not an image" in answer
    # Nothing of Pikachu's answer is left beside it: the panels are gone until the next answer.
    page.wait_for_function(
        "!document.querySelector('#results') || !document.querySelector('#results').checkVisibility()"
    )
    assert page.locator("#gallery img:visible").count() == 0 and "Pikachu" not in page.inner_text("body")
    # One message: no error toast, no "Error" badge anywhere.
    assert page.locator(".toast-body").count() == 0 and "Error" not in page.inner_text("body")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(PIKACHU.read_bytes()[:200])
    assert "cut.png" in ask(page, truncated)
    assert ask(page, ROOT / "assets" / "pokemon" / "sprites" / "004.png").startswith("This is “Charmander”")


def test_the_named_api_answers_gradio_clients(app_url):
    """identify and search answer JSON with named, typed parameters; no server path in any answer."""
    import json

    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(app_url, verbose=False)
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert [p["parameter_name"] for p in api["/identify"]["parameters"]] == ["image"]
    assert [(p["parameter_name"], p["python_type"]["type"]) for p in api["/search"]["parameters"]] == [
        ("image", "filepath"),
        ("k", "int"),
        ("index", "str"),
    ]
    answer = client.predict(handle_file(str(PIKACHU)), api_name="/identify")
    assert set(answer) == {
        "label",
        "score",
        "in_catalog",
        "threshold",
        "message",
        "another_image",
        "matches",
        "shared_with",
    }
    assert answer["label"] == "Pikachu" and answer["in_catalog"] and answer["message"].startswith("This is “Pikachu”")
    assert answer["score"] > answer["threshold"] and answer["matches"][0]["label"] == "Pikachu"
    assert answer["another_image"] is None or not answer["another_image"].startswith("/")
    matches = client.predict(handle_file(str(PIKACHU)), 3, "", api_name="/search")
    assert [m["rank"] for m in matches] == [1, 2, 3] and matches[0]["label"] == "Pikachu"
    assert set(matches[0]) == {"rank", "id", "label", "score", "metadata"}
    assert str(ROOT) not in json.dumps([answer, matches])  # ids, never where the catalog lies on the server
    with pytest.raises(AppError, match="greater than maximum value 24"):  # bounded
        client.predict(handle_file(str(PIKACHU)), 10_000, "", api_name="/search")
    with pytest.raises(AppError, match="no uploaded index named .someone-elses. in this session"):
        client.predict(handle_file(str(PIKACHU)), 3, "upload:someone-elses", api_name="/search")
    text = client.predict(handle_file(str(PIKACHU)), api_name="/identify_text")  # the first API, kept
    assert text.startswith("This is “Pikachu”")


def test_the_javascript_client_identifies_a_picture(app_url):
    """The README's `@gradio/client` example under node: the same JSON answer as from Python."""
    import json
    import os
    import shutil
    import subprocess

    js = ROOT / "tests" / "js"
    if shutil.which("node") is None or not (js / "node_modules" / "@gradio" / "client").is_dir():
        if os.environ.get("CI"):
            pytest.fail("node and @gradio/client are needed in CI (.ci/run: npm ci --prefix tests/js)")
        pytest.skip("node or @gradio/client missing: npm ci --prefix tests/js")
    run = subprocess.run(
        ["node", "identify.mjs", app_url, str(PIKACHU)], cwd=js, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert answer["label"] == "Pikachu" and answer["message"].startswith("This is “Pikachu”") and answer["matches"]


def test_with_the_real_web_client_offline_the_page_says_so(tmp_path_factory, tiny_model, browser, app_url, app_folder):
    # A second server with the real ddgs client: no network here, so the links line says why, quickly,
    # and the rest of the answer is there regardless. It loads the first server's index (same model).
    folder = tmp_path_factory.mktemp("app-offline")
    process, url = start_app(
        folder,
        {
            "RECOMMENDER_MODEL": str(tiny_model),
            "RECOMMENDER_WEB_PROVIDER": "duckduckgo",
            "RECOMMENDER_INDEX_DIR": str(app_folder / "index"),
        },
    )
    try:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#query input[type=file]", state="attached", timeout=60_000)
        started = time.monotonic()
        assert ask(page, PIKACHU).startswith("This is “Pikachu”")
        page.wait_for_selector("#links-offline", timeout=30_000)
        assert time.monotonic() - started < 15
        assert "Related media unavailable: web search unavailable" in page.inner_text("#related")
        assert page.locator("#gallery img").count() >= 8
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_click_a_look_alike_then_more_like_this_and_search_a_part(page):
    ask(page, PIKACHU)
    page.wait_for_function("document.querySelectorAll('#gallery img').length >= 8")
    page.locator("#gallery img").nth(1).click()
    page.wait_for_selector("#overlay img", timeout=30_000)  # where the two pictures match
    page.wait_for_function(
        "document.querySelector('#selected').innerText.includes('warm colours mark the regions')", timeout=30_000
    )
    picked = page.inner_text("#selected").split("·")[0].strip()
    before = page.inner_text("#answer")
    page.click("#more")
    assert new_answer(page, before).startswith(f"This is “{picked}” (1.00)")  # that picture, now the query
    page.click("text=Search a part of the picture")
    page.wait_for_selector("#crop canvas", timeout=30_000)
    page.click("#crop-search")
    page.wait_for_function(
        "document.querySelector('#answer').innerText.includes('the part you cropped')", timeout=60_000
    )
    assert page.inner_text("#answer").strip().startswith(f"This is “{picked}” (1.00)")  # uncropped: that picture


def test_the_catalog_tab_draws_the_similarity_matrix(page):
    page.click("button[role=tab]:has-text('Catalog')")
    page.wait_for_selector("#matrix img", timeout=60_000)
    page.wait_for_function("document.querySelector('#matrix-note').innerText.includes('all')", timeout=30_000)
    assert "pokemon" in page.inner_text("#matrix-note")
    page.click("#features label:has-text('5')")
    page.wait_for_function(
        "document.querySelector('#matrix-note').innerText.includes('5 principal components')", timeout=60_000
    )


#: What the selection line says with nothing selected (app.CHOOSE).
CHOOSE = "Click a look-alike to see where it matches your picture."
FEEDBACK = ("#like", "#dislike", "#reset", "#more")


def enabled(page: object) -> dict[str, bool]:
    return {button: page.is_enabled(button) for button in FEEDBACK}  # type: ignore[attr-defined]


def select(page: object, position: int, before: str) -> str:
    """Click the look-alike at `position` until the selection line names another item than `before`."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(3):  # a click on a picture the gallery is replacing is lost: retried
        page.locator("#gallery img").nth(position).click()  # type: ignore[attr-defined]
        try:
            page.wait_for_function(  # type: ignore[attr-defined]
                "p => { const t = document.querySelector('#selected').innerText; return t !== p && t.includes('·'); }",
                arg=before,
                timeout=15_000,
            )
            return page.inner_text("#selected")  # type: ignore[attr-defined]
        except PlaywrightTimeout:
            continue
    pytest.fail("clicking a look-alike never selected it")


def cleared(page: object) -> None:
    """The selection after a new ranking: nothing selected, no overlay, feedback on an item off."""
    page.wait_for_function(  # type: ignore[attr-defined]
        "c => document.querySelector('#selected').innerText.trim() === c", arg=CHOOSE, timeout=30_000
    )
    assert page.locator("#overlay img").count() == 0  # type: ignore[attr-defined]
    state = enabled(page)
    assert not state["#like"] and not state["#dislike"] and not state["#more"], state


def test_feedback_steers_the_next_ranking_and_reset_undoes_it(page):
    assert page.locator("#like:visible").count() == 0  # nothing to act on before an answer: not even shown
    headline = ask(page, PIKACHU).splitlines()[0]
    assert enabled(page) == dict.fromkeys(FEEDBACK, False)  # shown now, off until a look-alike is picked
    assert headline.startswith("This is “Pikachu” (1.00)")
    page.wait_for_function("document.querySelectorAll('#gallery img').length >= 8")
    assert enabled(page) == dict.fromkeys(FEEDBACK, False)  # no selection yet, no feedback to reset
    first = page.inner_text("#gallery")
    assert select(page, 0, CHOOSE).startswith("Pikachu ·")  # Pikachu itself
    assert enabled(page) == {"#like": True, "#dislike": True, "#reset": False, "#more": True}
    page.wait_for_selector("#overlay img", timeout=30_000)
    page.click("#dislike")
    page.wait_for_function("document.querySelector('#gallery').innerText.includes('1 less like')", timeout=60_000)
    answer = page.inner_text("#answer").strip()
    assert answer.splitlines()[0] == headline  # what the picture is does not change with feedback
    assert "Look-alikes steered by your feedback: 0 more like, 1 less like" in answer
    cleared(page)  # the gallery was re-ranked: what was selected is no longer there to act on
    assert page.is_enabled("#reset")
    picked = select(page, 2, CHOOSE).split("·")[0].strip()
    page.click("#like")
    page.wait_for_function(
        "document.querySelector('#answer').innerText.includes('1 more like, 1 less like')", timeout=60_000
    )
    assert page.inner_text("#answer").strip().splitlines()[0] == headline  # a 👍 on another item renames nothing
    assert picked != "Pikachu" and "1 more like, 1 less like" in page.inner_text("#gallery")
    cleared(page)
    page.click("#reset")
    page.wait_for_function("!document.querySelector('#answer').innerText.includes('feedback')", timeout=60_000)
    page.wait_for_function("t => document.querySelector('#gallery').innerText === t", arg=first, timeout=30_000)
    assert page.inner_text("#answer").strip().splitlines()[0] == headline
    cleared(page)
    assert not page.is_enabled("#reset")  # no feedback left to reset


def test_scores_are_similarities_one_line_per_label(page):
    ask(page, PIKACHU)
    page.wait_for_selector("#scores li", timeout=30_000)
    rows = [row.strip() for row in page.locator("#scores li").all_inner_texts()]
    names = [" ".join(row.split()[1:-1]) for row in rows]
    assert rows[0].split() == ["1.", "Pikachu", "1.00"]  # a similarity, not a percentage
    assert len(names) == len(set(names)) == 8  # the catalog has several pictures per label: each label once
    assert "%" not in page.inner_text("#scores")
    values = [float(row.split()[-1]) for row in rows]
    assert values == sorted(values, reverse=True)
    widths = page.evaluate("[...document.querySelectorAll('#scores .score-bar span')].map(s => s.offsetWidth)")
    assert widths[0] > widths[-1] > 0  # bars as long as the similarities


def test_clicking_an_example_searches_it(page):
    before = page.inner_text("#answer")
    page.locator("text=Examples").scroll_into_view_if_needed()
    page.locator(".gallery-item, button.gallery-item, [data-testid='dataset'] button, table.gallery td").first.click()
    answer = new_answer(page, before)
    assert answer.startswith(("This is", "You gave"))
    page.wait_for_function("document.querySelectorAll('#gallery img').length >= 8")
    assert page.locator("#query img").count() == 1  # the example is the query shown


def test_the_catalog_map_shows_the_query_and_thumbnails_on_hover(page):
    ask(page, PIKACHU)
    page.click("button[role=tab]:has-text('Catalog')")
    page.click("#draw-map")
    page.wait_for_selector("#catalog-map .js-plotly-plot", timeout=60_000)
    page.locator("#catalog-map").scroll_into_view_if_needed()
    page.wait_for_function(
        "document.querySelector('#catalog-map .js-plotly-plot').dataset.thumbs === '1'", timeout=30_000
    )
    traces = page.evaluate("document.querySelector('#catalog-map .js-plotly-plot').data.map(t => t.name)")
    assert traces[-1] == "your picture"
    x, y = page.evaluate("""() => { const gd = document.querySelector('#catalog-map .js-plotly-plot');
        const fl = gd._fullLayout, t = gd.data[0], r = gd.getBoundingClientRect();
        return [r.left + fl._size.l + fl.xaxis.l2p(t.x[0]), r.top + fl._size.t + fl.yaxis.l2p(t.y[0])]; }""")
    page.mouse.move(x - 3, y - 3)
    page.mouse.move(x, y)
    page.wait_for_function(
        "[...document.querySelectorAll('body > img')].some(i => i.style.display === 'block'"
        " && i.src.startsWith('data:image/png'))",
        timeout=10_000,
    )

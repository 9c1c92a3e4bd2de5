"""The page in a real browser: Playwright driving Debian's Chromium (fake camera) against the whole
service (tests/page_stack.py: real Redis, ingest with the tiny model's encoder, the web app on uvicorn
with WHIP mounted, a worker process running the tiny model's real `ModelEngine`).

The worker runs the real model rather than the fake engine: no test here needs a chosen answer text.
What they check is that the page shows what the service produced (the final record's answer, its
clips and evidence, the replay of the exact range chosen), and the real model's records are the ones
a user sees. Its weights are untrained, which is also what makes the banner show.

The service asks for a bearer token (the harder path: thumbnails and replays are fetched with it, the
WebSocket sends it as a subprotocol, WHIP as a header); the tests put it in sessionStorage as the page
does after asking once, except the test of that dialog. Screenshots go to artifacts/screenshots/.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import require, unique_prefix
from page_stack import FILE_STREAMS, PageStack

from flashlive.memory.server import RedisServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--use-fake-device-for-media-stream",  # a generated camera picture
    "--use-fake-ui-for-media-stream",  # camera permission granted without a prompt
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-background-networking",  # closed network: no update or field-trial fetches
    "--disable-component-update",
    "--no-first-run",
]
TOKEN = "page-test-token"
TOKEN_KEY = "flashlive.token"
WAIT_MS = 30_000
FILE_CLIPS = 12  # 24 s of the demo video sampled at 2 fps, 4 frames a clip


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PageStack]:
    from flashlive.stream.demo import write_demo_video

    video = tmp_path_factory.mktemp("page") / "lobby.mp4"
    write_demo_video(video, seconds=24.0)
    with PageStack(redis_server.url, unique_prefix("pg"), video, token=TOKEN) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module (each test gets its own context: fresh storage)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "the playwright package is not installed (pip install -e '.[dev]')")
        raise
    require(
        shutil.which(CHROMIUM) or Path(CHROMIUM).exists(),
        f"{CHROMIUM} is not installed (apt-get install chromium)",
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Console:
    """Console errors and uncaught exceptions of a page; `allow` takes patterns that are expected."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        self.allow: list[re.Pattern[str]] = []
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def _console(self, message: Any) -> None:
        if message.type == "error":
            where = message.location.get("url", "")
            self.errors.append(f"console.error: {message.text} ({where})")

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self.allow)]


@pytest.fixture
def page(browser: Any, stack: PageStack) -> Iterator[tuple[Any, Console]]:
    """A page of the app with the token already given (as the page keeps it after asking once). Fails
    the test on any console error or uncaught exception."""
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    context.add_init_script(f"sessionStorage.setItem({json.dumps(TOKEN_KEY)}, {json.dumps(TOKEN)})")
    pg = context.new_page()
    console = Console(pg)
    pg.set_default_timeout(WAIT_MS)
    try:
        yield pg, console
        assert console.unexpected() == [], "the page logged errors"
    finally:
        context.close()


def open_page(pg: Any, url: str, stream: str | None = "lobby") -> None:
    pg.goto(url)
    pg.wait_for_selector("body[data-ready=true]")
    if stream is not None:
        pg.click(f'#stream-list li[data-stream="{stream}"] button')
        pg.wait_for_function(f"document.querySelector('#stream-title').textContent === {json.dumps(stream)}")
        if stream in FILE_STREAMS:
            pg.wait_for_function(f"document.querySelectorAll('#timeline li.clip').length === {FILE_CLIPS}")


# every timeline thumbnail in the strip's visible part is a picture (or marked missing), not the
# placeholder shown while it loads (thumbnails load once they scroll into view)
THUMBNAILS_SHOWN = """() => {
  const list = document.querySelector('#timeline');
  if (!list || !list.offsetParent) return true;
  const box = list.getBoundingClientRect();
  return [...list.querySelectorAll('li.clip img')].every((i) => {
    const r = i.getBoundingClientRect();
    const seen = r.right > box.left + 1 && r.left < box.right - 1;
    return !seen || i.classList.contains('missing') || (i.complete && i.naturalWidth > 0);
  });
}"""


def shot(pg: Any, name: str, *, full_page: bool = True) -> Path:
    """A screenshot of the page as it is on screen, once the thumbnails in view have loaded.

    A whole page taller than the window is taken through a window as tall as the page, not Playwright's
    full_page: Chromium's capture beyond the viewport lays the page out again and scrolls inner
    scrollers back to their start, so the timeline showed its oldest clips, whose thumbnails the page
    had not loaded (never in view): dark, empty boxes that no user sees."""
    path = SCREENSHOTS / f"{name}.png"
    pg.wait_for_function(THUMBNAILS_SHOWN)
    size = pg.viewport_size
    height = pg.evaluate("document.documentElement.scrollHeight")
    if not full_page or height <= size["height"]:
        pg.screenshot(path=str(path))
        return path
    pg.set_viewport_size({"width": size["width"], "height": height})
    try:
        pg.wait_for_function(THUMBNAILS_SHOWN)
        pg.screenshot(path=str(path))
    finally:
        pg.set_viewport_size(size)
    return path


def api(stack: PageStack, method: str, path: str, **kwargs: Any) -> Any:
    reply = httpx.request(method, stack.url + path, headers=stack.auth(), timeout=30, **kwargs)
    assert reply.status_code < 400, reply.text
    return reply.json()


def segments(stack: PageStack, stream: str) -> list[dict[str, Any]]:
    return list(api(stack, "GET", f"/api/streams/{stream}/segments")["segments"])


def timeline_ids(pg: Any) -> list[str]:
    return list(pg.eval_on_selector_all("#timeline li.clip", "els => els.map(e => e.dataset.clipId)"))


def ask(pg: Any, question: str, *, scope: str | None = None, max_tokens: int = 24) -> Any:
    """Ask through the form; returns the answer card once it is done (or failed)."""
    if not pg.is_visible("#ask-max-tokens"):
        pg.click("#ask-form details summary")
    pg.fill("#ask-max-tokens", str(max_tokens))
    if scope is not None:
        pg.select_option("#ask-scope", scope)
    pg.fill("#ask-question", question)
    pg.press("#ask-question", "Enter")
    card = pg.locator("#answers li.answer").first
    card.locator("xpath=self::*[@data-state='done' or @data-state='error']").wait_for()
    return card


# controls without an accessible name (label, aria-label, aria-labelledby, or a button's text) and
# images without alt text
UNLABELLED = """() => {
  const named = (e) => (e.labels && e.labels.length) || e.getAttribute('aria-label')
    || e.getAttribute('aria-labelledby') || (e.tagName === 'BUTTON' && e.textContent.trim())
    || (e.tagName === 'A' && e.textContent.trim());
  const bad = [...document.querySelectorAll('input, select, textarea, button, a[href], [role=listbox]')]
    .filter((e) => !named(e)).map((e) => e.outerHTML.slice(0, 80));
  return bad.concat([...document.querySelectorAll('img:not([alt])')].map((e) => e.outerHTML.slice(0, 80)));
}"""


# -- the tests -------------------------------------------------------------------------------------


def test_the_page_loads_without_console_errors(
    page: tuple[Any, Console], stack: PageStack, browser: Any
) -> None:
    pg, console = page
    open_page(pg, stack.url)
    # the status strip, fed over the WebSocket, and the banner for the tiny model's random weights
    pg.wait_for_function("document.querySelector('[data-stat=connection]').textContent === 'live'")
    pg.wait_for_function("document.querySelector('[data-stat=workers]').textContent === '1'")
    assert pg.is_visible("#random-banner") and "untrained" in pg.inner_text("#random-banner").lower()
    assert "12 clips" in pg.inner_text("[data-stat=memory]")
    assert pg.inner_text('#stream-list li[data-stream="lobby"] .badge') == "stopped"
    # every clip of the memory is on the timeline, in order, and its thumbnails (fetched with the
    # token) are real pictures
    assert timeline_ids(pg) == [s["id"] for s in segments(stack, "lobby")]
    pg.wait_for_function(
        "[...document.querySelectorAll('#timeline li.clip img')].slice(-4)"
        ".every(i => i.complete && i.naturalWidth > 0 && i.src.startsWith('blob:'))"
    )
    assert not pg.is_visible("#token-dialog")
    assert pg.evaluate(UNLABELLED) == []  # every control has a name a screen reader can say
    shot(pg, "page-desktop")
    # at a phone's width nothing overflows sideways and the question box is still there
    pg.set_viewport_size({"width": 390, "height": 844})
    pg.wait_for_timeout(300)
    assert pg.evaluate("document.scrollingElement.scrollWidth") <= 390
    assert pg.is_visible("#ask-question") and pg.is_visible("#publish-button")
    shot(pg, "page-phone")
    assert console.unexpected() == []

    # the same service without a token: no dialog, no console error either
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    try:
        other = context.new_page()
        open_console = Console(other)
        open_page(other, stack.open_url)
        assert not other.is_visible("#token-dialog") and not other.is_visible("#token-change")
        pg.wait_for_timeout(500)
        assert open_console.unexpected() == []
    finally:
        context.close()


def test_a_screenshot_shows_the_timeline_as_it_is_on_screen(
    page: tuple[Any, Console], stack: PageStack
) -> None:
    """The screenshots are what the README points at: taking one leaves the timeline where it was, and
    every thumbnail it shows is a picture of the video (the demo scene: a light grey background), not
    the dark box of a thumbnail still loading."""
    from PIL import Image

    pg, _ = page
    pg.set_viewport_size({"width": 1366, "height": 600})  # the page is taller than the window
    open_page(pg, stack.url)
    scroll = "document.querySelector('#timeline').scrollLeft"
    pg.wait_for_function(f"{scroll} > 0")  # following the newest clips: the oldest are out of view
    before = pg.evaluate(scroll)
    path = shot(pg, "page-short-window")
    assert pg.evaluate(scroll) == before
    boxes = pg.evaluate(
        """() => {
        const box = document.querySelector('#timeline').getBoundingClientRect();
        return [...document.querySelectorAll('#timeline li.clip img')].map((i) => i.getBoundingClientRect())
          .filter((r) => r.left >= box.left && r.right <= box.right)
          .map((r) => [r.left + scrollX, r.top + scrollY, r.right + scrollX, r.bottom + scrollY]);
    }"""
    )
    assert len(boxes) >= 4
    with Image.open(path) as picture:
        gray = picture.convert("L")
        for left, top, right, bottom in boxes:
            inner = (round(left) + 4, round(top) + 4, round(right) - 4, round(bottom) - 4)
            mean = float(np.asarray(gray.crop(inner)).mean())
            assert mean > 150, f"a dark thumbnail ({mean:.0f}) at {inner} in {path.name}"


def test_the_token_is_asked_once_and_kept_for_the_tab(browser: Any, stack: PageStack) -> None:
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    try:
        pg = context.new_page()
        pg.set_default_timeout(WAIT_MS)
        console = Console(pg)
        console.allow.append(re.compile(r"status of 401"))  # the refused requests themselves
        pg.goto(stack.url)
        pg.wait_for_selector("#token-dialog[open]")
        pg.fill("#token-input", "wrong-token")
        pg.press("#token-input", "Enter")
        pg.wait_for_function("document.querySelector('#token-error').textContent.includes('refused')")
        assert pg.is_visible("#token-dialog")
        shot(pg, "page-token-refused")
        pg.fill("#token-input", TOKEN)
        pg.click("#token-submit")
        pg.wait_for_selector("body[data-ready=true]")
        assert pg.evaluate(f"sessionStorage.getItem({json.dumps(TOKEN_KEY)})") == TOKEN
        assert pg.is_visible("#token-change")
        pg.reload()  # the same tab keeps it: no second question
        pg.wait_for_selector("body[data-ready=true]")
        assert not pg.is_visible("#token-dialog")
        pg.wait_for_function("document.querySelector('[data-stat=connection]').textContent === 'live'")
        assert console.unexpected() == []
    finally:
        context.close()


def test_publishing_the_camera_puts_clips_on_the_timeline(
    page: tuple[Any, Console], stack: PageStack
) -> None:
    pg, _ = page
    name = f"cam-{uuid.uuid4().hex[:6]}"
    open_page(pg, stack.url, stream=None)
    pg.fill("#publish-name", name)
    pg.click("#publish-button")
    pg.wait_for_function(f"document.querySelector('#stream-title').textContent === {json.dumps(name)}")
    pg.wait_for_function("document.querySelectorAll('#timeline li.clip').length >= 2", timeout=60_000)
    assert pg.get_attribute("#publish-button", "aria-pressed") == "true"
    # the clips on the timeline are the ones ingest stored from the browser's camera
    shown = timeline_ids(pg)
    stored = [s["id"] for s in segments(stack, name)]
    assert shown == stored[: len(shown)]
    row = api(stack, "GET", f"/api/streams/{name}")
    assert row["state"] == "live" and row["source"].startswith(f"whip://{name}")
    pg.wait_for_selector(f'#stream-list li[data-stream="{name}"] .badge[data-state="live"]')
    pg.wait_for_function("document.querySelector('#live-still').naturalWidth > 0")
    shot(pg, "page-camera")
    # stopping deletes the WHIP session: ingest stops the stream and keeps its clips
    pg.click("#publish-button")
    deadline = time.monotonic() + 20
    while api(stack, "GET", f"/api/streams/{name}")["state"] != "stopped":
        assert time.monotonic() < deadline, "the stream did not stop after the page stopped publishing"
        time.sleep(0.2)
    assert pg.get_attribute("#publish-button", "aria-pressed") == "false"
    assert api(stack, "GET", f"/api/streams/{name}")["clips"] >= len(shown)


def test_an_answer_streams_into_the_page(page: tuple[Any, Console], stack: PageStack) -> None:
    pg, _ = page
    open_page(pg, stack.url)
    # record every text the answer shows, to see it grow piece by piece before the final record
    pg.evaluate(
        """() => {
        window.seenTexts = [];
        new MutationObserver(() => {
          const card = document.querySelector('#answers li.answer');
          if (!card) return;
          window.seenTexts.push([card.dataset.state, card.querySelector('.answer-text').textContent]);
        }).observe(document.querySelector('#answers'),
                   {subtree: true, childList: true, characterData: true, attributes: true});
    }"""
    )
    card = ask(pg, "What colour is the ball?", max_tokens=48)
    assert card.get_attribute("data-state") == "done", card.inner_text()
    job = card.get_attribute("data-job")
    final = api(stack, "GET", f"/api/ask/{job}")["result"]
    assert final["type"] == "final" and final["stream"] == "lobby" and 0 < final["new_tokens"] <= 48
    assert card.locator(".answer-text").text_content() == final["answer"]
    streamed = [text for state, text in pg.evaluate("window.seenTexts") if state == "streaming" and text]
    # the page showed part of the answer before the final record came, and only ever appended to it
    assert any(len(t) < len(final["answer"]) for t in streamed), f"the answer did not stream in: {streamed}"
    assert all(final["answer"].startswith(t) for t in streamed)
    chips = card.locator(".chip")
    assert chips.count() == len(final["evidence"]) > 0
    assert {c["clip_id"] for c in final["evidence"]} == set(
        chips.evaluate_all("cs => cs.map(c => c.dataset.clipId)")
    )
    shot(pg, "page-answer")


def test_a_watch_alert_arrives_over_the_websocket(page: tuple[Any, Console], stack: PageStack) -> None:
    pg, _ = page
    frames: list[dict[str, Any]] = []
    pg.on("websocket", lambda ws: ws.on("framereceived", lambda f: frames.append(json.loads(f))))
    open_page(pg, stack.url, "yard")
    pg.wait_for_function("document.querySelector('[data-stat=connection]').textContent === 'live'")
    before = {w["id"] for w in api(stack, "GET", "/api/watches?stream=yard")["watches"]}
    condition = f"a ball is on screen {uuid.uuid4().hex[:4]}"
    pg.fill("#watch-condition", condition)
    pg.fill("#watch-threshold", "0")  # any score reaches it: the first evaluation fires
    pg.click("#watch-button")
    pg.wait_for_selector(f'#watch-list li.watch:has-text("{condition}")')
    (watch,) = [w for w in api(stack, "GET", "/api/watches?stream=yard")["watches"] if w["id"] not in before]
    alert = pg.locator(f'#alerts li.alert[data-watch="{watch["id"]}"]')
    alert.wait_for()
    assert alert.get_attribute("data-origin") == "live" and alert.get_attribute("data-kind") == "start"
    pushed = [f for f in frames if f["topic"] == "event" and f["payload"]["event"]["watch"] == watch["id"]]
    assert pushed and pushed[0]["payload"]["event"]["kind"] == "start"
    history = api(stack, "GET", "/api/events?stream=yard")["events"]
    assert pushed[0]["payload"]["id"] in [e["id"] for e in history]  # the same event, from its stream
    pg.wait_for_function("document.querySelector('#alerts li.alert img').naturalWidth > 0")
    shot(pg, "page-watch-alert")
    # removing the watch ends its occurrence: the `end` event arrives over the socket too
    pg.click(f'#watch-list li.watch[data-watch="{watch["id"]}"] button')
    pg.wait_for_selector(f'#alerts li.alert[data-watch="{watch["id"]}"][data-kind="end"]')
    assert watch["id"] not in {w["id"] for w in api(stack, "GET", "/api/watches?stream=yard")["watches"]}
    assert pg.locator(f'#alerts li.alert[data-watch="{watch["id"]}"]').count() == 1  # one card per occurrence


def test_selecting_a_past_range_replays_it_and_asks_about_it(
    page: tuple[Any, Console], stack: PageStack
) -> None:
    pg, _ = page
    open_page(pg, stack.url)
    clips = segments(stack, "lobby")
    first, last = 2, 5
    items = pg.locator("#timeline li.clip")
    items.nth(first).scroll_into_view_if_needed()
    a = items.nth(first).bounding_box()
    b = items.nth(last).bounding_box()
    assert a and b
    with pg.expect_response(lambda r: "/replay?" in r.url) as replay:
        pg.mouse.move(a["x"] + a["width"] / 2, a["y"] + a["height"] / 2)
        pg.mouse.down()
        pg.mouse.move(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2, steps=8)
        pg.mouse.up()
    reply = replay.value
    assert reply.status == 200 and reply.headers["content-type"] == "video/mp4"
    asked = dict(httpx.URL(reply.url).params)
    assert float(asked["start"]) == clips[first]["start"]
    assert float(asked["end"]) == clips[last + 1]["start"]  # [start, end): exactly the 4 clips chosen
    selected = pg.eval_on_selector_all(
        '#timeline li.clip[aria-selected="true"]', "els => els.map(e => e.dataset.clipId)"
    )
    assert selected == [c["id"] for c in clips[first : last + 1]]
    # the browser decodes the replay: one frame per clip at the chosen 4 clips a second
    pg.wait_for_function("document.querySelector('#replay-video').readyState >= 2")
    duration = pg.evaluate("document.querySelector('#replay-video').duration")
    assert abs(duration - 4 / 4) < 0.3, duration
    assert pg.evaluate("document.querySelector('#replay-video').videoWidth") > 0
    shot(pg, "page-replay")
    # and the question box asks about that range only
    pg.click("#timeline-ask")
    assert pg.eval_on_selector("#ask-scope", "s => s.value") == "range"
    card = ask(pg, "What happens here?")
    assert card.get_attribute("data-state") == "done", card.inner_text()
    final = api(stack, "GET", f"/api/ask/{card.get_attribute('data-job')}")["result"]
    assert final["window"]["start"] == clips[first]["start"]
    assert [c["id"] for c in final["clips"]] == [c["id"] for c in clips[first : last + 1]]
    assert float(card.get_attribute("data-used-start")) == clips[first]["start"]
    assert float(card.get_attribute("data-used-end")) == clips[last]["end"]


def test_a_range_is_chosen_by_touch_at_a_phones_width(browser: Any, stack: PageStack) -> None:
    """No Shift key and no drag on a phone (a finger scrolls the strip): tap a clip, turn on "Select
    a range", tap another."""
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True, device_scale_factor=2
    )
    context.add_init_script(f"sessionStorage.setItem({json.dumps(TOKEN_KEY)}, {json.dumps(TOKEN)})")
    try:
        pg = context.new_page()
        pg.set_default_timeout(WAIT_MS)
        console = Console(pg)
        open_page(pg, stack.url)
        clips = segments(stack, "lobby")
        items = pg.locator("#timeline li.clip")
        with pg.expect_response(lambda r: "/replay?" in r.url) as one:
            items.nth(8).tap()
        assert float(dict(httpx.URL(one.value.url).params)["start"]) == clips[8]["start"]
        pg.tap("#timeline-extend")
        assert pg.get_attribute("#timeline-extend", "aria-pressed") == "true"
        with pg.expect_response(lambda r: "/replay?" in r.url) as three:
            items.nth(10).tap()
        asked = dict(httpx.URL(three.value.url).params)
        assert float(asked["start"]) == clips[8]["start"] and float(asked["end"]) == clips[11]["start"]
        assert pg.inner_text("#timeline-selection").endswith("3 clips")
        pg.wait_for_function("document.querySelector('#replay-video').readyState >= 2")
        assert pg.evaluate("document.scrollingElement.scrollWidth") <= 390
        pg.locator(".main-panel").screenshot(path=str(SCREENSHOTS / "page-phone-range.png"))
        assert console.unexpected() == []
    finally:
        context.close()


def test_an_evidence_chip_moves_the_timeline_and_replays_its_clip(
    page: tuple[Any, Console], stack: PageStack
) -> None:
    pg, _ = page
    open_page(pg, stack.url)
    card = ask(pg, "Where is the ball?", scope="all")
    assert card.get_attribute("data-state") == "done", card.inner_text()
    clips = segments(stack, "lobby")
    # start from the other end of the timeline: the first clip chosen, scrolled to the left
    pg.focus("#timeline")
    pg.keyboard.press("Home")
    with pg.expect_response(lambda r: "/replay?" in r.url):
        pg.keyboard.press("Enter")
    assert pg.evaluate("document.querySelector('#timeline').scrollLeft") == 0
    chips = card.locator(".chip")
    ids = chips.evaluate_all("cs => cs.map(c => c.dataset.clipId)")
    target = max(range(len(ids)), key=lambda i: [c["id"] for c in clips].index(ids[i]))
    clip_id = ids[target]
    assert clip_id != clips[0]["id"]
    hidden_at_start = pg.evaluate(
        """id => document.getElementById('clip-' + id).getBoundingClientRect().right >
                 document.querySelector('#timeline').getBoundingClientRect().right""",
        clip_id,
    )
    with pg.expect_response(lambda r: "/replay?" in r.url) as replay:
        chips.nth(target).click()
    clip = next(c for c in clips if c["id"] == clip_id)
    assert float(dict(httpx.URL(replay.value.url).params)["start"]) == clip["start"]
    selected = pg.eval_on_selector_all(
        '#timeline li.clip[aria-selected="true"]', "els => els.map(e => e.dataset.clipId)"
    )
    assert selected == [clip_id]
    # the timeline scrolled to it: the chosen clip is inside the timeline's visible box
    pg.wait_for_function(
        """id => {
        const list = document.querySelector('#timeline').getBoundingClientRect();
        const item = document.getElementById('clip-' + id).getBoundingClientRect();
        return item.left >= list.left - 1 && item.right <= list.right + 1;
    }""",
        arg=clip_id,
    )
    if hidden_at_start:
        assert pg.evaluate("document.querySelector('#timeline').scrollLeft") > 0
    pg.wait_for_function("document.querySelector('#replay-video').readyState >= 2")
    assert "1 clip" in pg.inner_text("#player-caption")
    shot(pg, "page-evidence")


def test_alerts_missed_while_the_socket_was_down_arrive_after_it_reconnects(
    page: tuple[Any, Console], stack: PageStack
) -> None:
    """The page's WebSocket is cut (Playwright routes /ws through the test) while a watch fires; when
    it reconnects it subscribes from the last event id it saw, and gets that alert, once."""
    pg, _ = page
    down = {"now": False}
    sent: list[dict[str, Any]] = []  # page -> server, after each (re)connect
    received: list[dict[str, Any]] = []
    links: list[tuple[Any, Any]] = []

    def route(ws: Any) -> None:
        if down["now"]:
            ws.close(code=1012, reason="test outage")
            return
        server = ws.connect_to_server()
        links.append((ws, server))
        mark = {"topic": "connected", "payload": len(links)}
        sent.append(mark)
        received.append(mark)

        def to_server(message: str) -> None:
            sent.append(json.loads(message))
            server.send(message)

        def to_page(message: str) -> None:
            received.append(json.loads(message))
            ws.send(message)

        ws.on_message(to_server)
        server.on_message(to_page)

    pg.route_web_socket(re.compile(r"/ws$"), route)
    open_page(pg, stack.url, "porch")
    pg.wait_for_function("document.querySelector('[data-stat=connection]').textContent === 'live'")
    pg.wait_for_selector('#alerts[data-loaded="porch"]', state="attached")  # its alert history is in
    history = api(stack, "GET", "/api/events?stream=porch&limit=1000")["events"]
    seen = history[-1]["id"] if history else "0-0"

    # the outage: the connection is cut and every reconnect refused until the watch has fired
    down["now"] = True
    page_ws, server_ws = links[-1]
    server_ws.close(code=1001, reason="test outage")
    page_ws.close(code=1012, reason="test outage")
    pg.wait_for_function("document.querySelector('[data-stat=connection]').textContent !== 'live'")
    watch = api(
        stack, "POST", "/api/watches", json={"stream": "porch", "condition": "a ball", "threshold": 0}
    )
    deadline = time.monotonic() + 30
    while not [e for e in api(stack, "GET", f"/api/events?stream=porch&after={seen}")["events"]
               if e["event"]["watch"] == watch["id"]]:  # fmt: skip
        assert time.monotonic() < deadline, "the watch did not fire"
        time.sleep(0.2)
    assert pg.locator(f'#alerts li.alert[data-watch="{watch["id"]}"]').count() == 0
    down["now"] = False

    alert = pg.locator(f'#alerts li.alert[data-watch="{watch["id"]}"]')
    alert.wait_for()
    pg.wait_for_function("document.querySelector('[data-stat=connection]').textContent === 'live'")
    last_connect = max(i for i, m in enumerate(sent) if m["topic"] == "connected")
    resumed = [
        m["payload"] for m in sent[last_connect:]
        if m["topic"] == "subscribe" and m["payload"]["channel"] == "events"
    ]  # fmt: skip
    assert resumed and resumed[0]["after"]["porch"] == seen  # it asked for what followed its last id
    last_connect = max(i for i, m in enumerate(received) if m["topic"] == "connected")
    replayed = [m["payload"] for m in received[last_connect:] if m["topic"] == "event"]
    assert replayed and all(compare_ids(e["id"], seen) > 0 for e in replayed)  # nothing shown twice
    assert watch["id"] in {e["event"]["watch"] for e in replayed}
    assert alert.count() == 1 and alert.get_attribute("data-kind") == "start"
    api(stack, "DELETE", f"/api/watches/{watch['id']}")


def compare_ids(a: str, b: str) -> int:
    ka = tuple(int(x) for x in a.split("-"))
    kb = tuple(int(x) for x in b.split("-"))
    return (ka > kb) - (ka < kb)


def test_errors_from_the_api_are_shown_to_the_user(page: tuple[Any, Console], stack: PageStack) -> None:
    """Refused requests are explained with the server's own message, next to what caused them."""
    pg, console = page
    console.allow.append(re.compile(r"status of 4\d\d"))  # the refused requests themselves
    pg.on("dialog", lambda d: d.accept())  # "Remove stream ...?"
    open_page(pg, stack.url)
    # a watch condition longer than the API takes
    condition = "x" * 2500
    expected = httpx.post(
        stack.url + "/api/watches", headers=stack.auth(), json={"stream": "lobby", "condition": condition}
    ).json()["error"]["message"]
    pg.fill("#watch-condition", condition)
    pg.click("#watch-button")
    pg.wait_for_function("m => document.querySelector('#watch-error').textContent === m", arg=expected)
    assert "condition" in expected
    # a stream URL the API refuses
    pg.click(".add-stream summary")
    pg.fill("#add-stream-name", "ftpcam")
    pg.fill("#add-stream-url", "ftp://camera.example/1")
    pg.click("#add-stream-form button[type=submit]")
    pg.wait_for_function("document.querySelector('#add-stream-error').textContent.includes('rtsp://')")
    # a stream that is registered but has no memory yet: asking about it says so
    name = f"door-{uuid.uuid4().hex[:4]}"
    pg.fill("#add-stream-name", name)
    pg.fill("#add-stream-url", "rtsp://127.0.0.1:9/nothing-here")
    pg.click("#add-stream-form button[type=submit]")
    pg.wait_for_function(f"document.querySelector('#stream-title').textContent === {json.dumps(name)}")
    pg.wait_for_selector(f'#stream-list li[data-stream="{name}"] .badge[data-state="pending"]')
    card = ask(pg, "Is anyone there?")
    assert card.get_attribute("data-state") == "error"
    assert card.get_attribute("data-code") == "unknown_stream"
    assert name in card.locator(".answer-error").inner_text()
    shot(pg, "page-errors")
    # removing it (after the confirmation) takes it off the list and out of the registry
    pg.click("#stream-remove")
    pg.wait_for_selector(f'#stream-list li[data-stream="{name}"]', state="detached")
    assert name not in {s["name"] for s in api(stack, "GET", "/api/streams")["streams"]}

"""The labelling page in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright):
each mode by mouse and by keyboard, skip, undo, reload, export, and hostile model text.

These tests fail (never skip) when Chromium or Playwright is missing: CI must install them
(``apt-get install -y chromium`` and the dev extra). Screenshots of each mode go to
``$POSTTRAIN_SCREENSHOTS`` when set (the README's images), else to the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from posttrain.collect.command import main
from posttrain.collect.db import Collection

from .conftest import fill, start_server

CHROMIUM = "/usr/bin/chromium"
HOSTILE = ["<script>window.__pwned = 1</script>", '<img src=x onerror="window.__pwned = 2">',
           "</textarea><b id=bold>bold?</b><textarea>"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: apt-get install -y chromium"
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium refuses its own sandbox.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """``serve(prompts, mode, token=None)`` -> (collection, url) with a server subprocess running."""
    processes: list[subprocess.Popen] = []

    def start(prompts: dict[str, list[str]], mode: str, token: str | None = None) -> tuple[Collection, str]:
        collection = fill(tmp_path / "c.db", prompts, mode)
        env = {"POSTTRAIN_COLLECT_TOKEN": token} if token else None
        process, url = start_server(tmp_path / "c.db", env=env)
        processes.append(process)
        return collection, url

    yield start
    for process in processes:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _screenshot(page: Page, tmp_path: Path, name: str) -> None:
    folder = Path(os.environ.get("POSTTRAIN_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"collect-{name}.png"), full_page=True)


def _done(page: Page, count: int) -> None:
    expect(page.locator("#progress")).to_contain_text(f"{count} done")


def _values(collection: Collection, who: str) -> list[Any]:
    return [label["value"] for label in collection.labels() if label["annotator"] == who]


def _prompts(count: int, size: int) -> dict[str, list[str]]:
    return {f"What is {i} + {i}?": [f"answer {i}.{j}" for j in range(size)] for i in range(count)}


def test_rank_by_mouse_and_keyboard_undo_reload_export(serve: Any, page: Page, tmp_path: Path) -> None:
    collection, url = serve(_prompts(3, 3), "rank")
    page.goto(url + "/")
    page.fill("#annotator", "ann")
    page.click("#start")
    expect(page.locator("#prompt")).to_contain_text("What is 0 + 0?")
    _screenshot(page, tmp_path, "rank")
    # Mouse: drag the third response to the top, then move the (new) second one down.
    page.drag_and_drop('li.card[data-pos="2"]', "li.card >> nth=0")
    expect(page.locator("li.card >> nth=0")).to_contain_text("answer 0.2")
    page.click('li.card >> nth=1 >> [data-action="down"]')
    page.click('[data-action="submit"]')
    _done(page, 1)
    assert _values(collection, "ann") == [{"ranking": [2, 1, 0]}]
    # Keyboard: focus response 3, move it up twice, submit.
    page.keyboard.press("3")
    page.keyboard.press("Shift+ArrowUp")
    page.keyboard.press("Shift+ArrowUp")
    page.keyboard.press("Enter")
    _done(page, 2)
    assert _values(collection, "ann") == [{"ranking": [2, 1, 0]}, {"ranking": [2, 0, 1]}]
    # Undo brings the second prompt back; a reload shows it again, with the annotator remembered.
    page.keyboard.press("z")
    _done(page, 1)
    expect(page.locator("#prompt")).to_contain_text("What is 1 + 1?")
    page.reload()
    expect(page.locator("#prompt")).to_contain_text("What is 1 + 1?")
    _done(page, 1)
    page.keyboard.press("j")
    page.keyboard.press("Shift+k")  # the focused second response moves to the top
    page.keyboard.press("Enter")
    _done(page, 2)
    page.click("#skip")
    expect(page.locator("#message")).to_contain_text("Nothing left to label")
    assert _values(collection, "ann") == [{"ranking": [2, 1, 0]}, {"ranking": [1, 0, 2]}]
    assert main(["export", "--db", str(collection.path), "--out", str(tmp_path / "out")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "rankings.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["ranking"], r["annotator"]) for r in rows] == [
        ("What is 0 + 0?", [2, 1, 0], "ann"), ("What is 1 + 1?", [1, 0, 2], "ann")]
    assert rows[0]["responses"] == ["answer 0.0", "answer 0.1", "answer 0.2"]


def test_ab_by_mouse_and_keyboard_with_skip(serve: Any, page: Page, tmp_path: Path) -> None:
    collection, url = serve(_prompts(5, 2), "ab")
    page.goto(url + "/?annotator=bob")
    expect(page.locator("li.card")).to_have_count(2)
    expect(page.locator("li.card >> nth=0 >> .tag")).to_have_text("A")
    _screenshot(page, tmp_path, "ab")
    page.click('[data-action="choose-a"]')
    _done(page, 1)
    for key, count in (("b", 2), ("t", 3), ("x", 4)):
        page.keyboard.press(key)
        _done(page, count)
    expect(page.locator("#progress")).to_contain_text("1 left")
    page.keyboard.press("s")
    expect(page.locator("#progress")).to_contain_text("0 left")
    assert [v["choice"] for v in _values(collection, "bob")] == ["a", "b", "tie", "both_bad"]
    assert main(["export", "--db", str(collection.path), "--out", str(tmp_path / "out")]) == 0
    pairs = [json.loads(line) for line in (tmp_path / "out" / "pairs.jsonl").read_text().splitlines()]
    labels = collection.labels()
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [
        (labels[0]["candidates"][0]["text"], labels[0]["candidates"][1]["text"]),
        (labels[1]["candidates"][1]["text"], labels[1]["candidates"][0]["text"])]


def test_thumbs_by_mouse_and_keyboard_with_a_token(serve: Any, page: Page, tmp_path: Path) -> None:
    collection, url = serve(_prompts(2, 3), "thumbs", token="tok-123")
    page.goto(url + "/")
    expect(page.locator("body")).to_contain_text("missing or wrong token")
    page.goto(url + "/?token=tok-123&annotator=cy")
    expect(page.locator("li.card")).to_have_count(3)
    assert "token" not in page.url  # dropped from the address bar once the cookie holds it
    for pos, action in ((0, "thumb-up"), (1, "thumb-down"), (2, "thumb-up")):
        page.click(f'li.card >> nth={pos} >> [data-action="{action}"]')
    _screenshot(page, tmp_path, "thumbs")
    page.click('[data-action="submit"]')
    _done(page, 1)
    page.keyboard.press("Enter")
    expect(page.locator("#message")).to_have_text("Response 1 has no thumb yet.")
    for key in ("d", "u", "d"):
        page.keyboard.press(key)
    page.keyboard.press("Enter")
    _done(page, 2)
    assert _values(collection, "cy") == [{"thumbs": [True, False, True]}, {"thumbs": [False, True, False]}]
    assert main(["export", "--db", str(collection.path), "--out", str(tmp_path / "out")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "unpaired.jsonl").read_text().splitlines()]
    assert [(r["completion"], r["label"]) for r in rows] == [
        ("answer 0.0", True), ("answer 0.1", False), ("answer 0.2", True),
        ("answer 1.0", False), ("answer 1.1", True), ("answer 1.2", False)]


@pytest.mark.parametrize("mode", ["rank", "ab", "thumbs"])
def test_hostile_model_text_is_shown_as_text(serve: Any, page: Page, mode: str) -> None:
    prompt = '<img src=y onerror="window.__pwned = 3">Summarise </textarea>'
    collection, url = serve({prompt: HOSTILE}, mode)
    page.goto(url + "/?annotator=eve")
    expect(page.locator("li.card")).to_have_count(2 if mode == "ab" else 3)
    shown = page.locator("#candidates").inner_text() + page.locator("#prompt").inner_text()
    expected = HOSTILE if mode != "ab" else [c["text"] for c in collection.next_item("eve")["candidates"]]
    for text in [*expected, prompt]:
        assert text in shown
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#candidates img, #prompt img, #bold, textarea, main script").count() == 0

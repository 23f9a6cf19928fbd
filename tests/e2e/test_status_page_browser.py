"""The agent's status page in a real browser: headless Chromium (Debian's chromium and
chromium-driver, through selenium) against one agent's API in process over in-memory
consensus. The page's script re-renders what the server rendered, identically, and then
follows the cluster as it changes. A screenshot is saved in the test's tmp_path."""

from __future__ import annotations

import asyncio
import html
import re
from pathlib import Path
from typing import Any

import pytest

from consensus.commands import MarkServerFailed
from tests.component.test_status_page import HOSTILE_REASON, Rows, commit_trouble, page
from tests.component.test_stops_api import WALL, Api

# The fixtures, used by their names.
from tests.component.test_stops_api import api as api
from tests.e2e.test_browser import WAIT_S
from tests.e2e.test_browser import browser as browser

selenium = pytest.importorskip("selenium")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

# Each row the page shows, by its data attribute: [class, text of its cells].
_ROWS_JS = """
const out = {};
for (const tr of document.querySelectorAll(`tr[data-${arguments[0]}]`)) {
  const text = Array.from(tr.cells, (c) => c.textContent).join(" ");
  out[tr.getAttribute(`data-${arguments[0]}`)] = [tr.className, text.replace(/\\s+/g, " ").trim()];
}
return out;
"""
_BANNERS_JS = """
const banners = document.querySelectorAll("#banners .banner");
return Array.from(banners, (b) => [b.className, b.textContent]);
"""


def _rows(driver: WebDriver, attribute: str) -> dict[str, tuple[str, str]]:
    found: dict[str, list[str]] = driver.execute_script(_ROWS_JS, attribute)
    return {key: (cls, text) for key, (cls, text) in found.items()}


def _banners_in(served: str) -> list[tuple[str, str]]:
    banners = []
    for chunk in served.split('<p class="banner ')[1:]:
        tone, _, rest = chunk.partition('">')
        banners.append((f"banner {tone}", rest.split("</p>")[0]))
    return banners


def _wait(driver: WebDriver, condition: Any) -> Any:
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition)


async def test_the_page_shows_the_failed_server_and_follows_the_cluster(
    api: Api, browser: WebDriver, tmp_path: Path
) -> None:
    await commit_trouble(api)
    served, _ = await page(api, "/")

    def load_and_wait_for_the_script() -> str:
        browser.get(api.url + "/")
        updated = _wait(
            browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-updated")
        )
        return str(updated)

    first_update = await asyncio.to_thread(load_and_wait_for_the_script)

    # The script's rendering is the server's, row for row.
    for attribute in ("server", "slot", "decision"):
        in_browser = await asyncio.to_thread(_rows, browser, attribute)
        assert in_browser == Rows(served, attribute).rows, attribute
    # Except the time a stop has left, which runs on from the agent's clock in the browser.
    stops = await asyncio.to_thread(_rows, browser, "stop")
    left = re.compile(r"^acme (2 min 0 s|1 min 5\d s) ")
    assert {k: (c, left.sub("acme ", t)) for k, (c, t) in stops.items()} == {
        k: (c, left.sub("acme ", t)) for k, (c, t) in Rows(served, "stop").rows.items()
    }
    assert left.match(stops["acme"][1])
    banners = await asyncio.to_thread(browser.execute_script, _BANNERS_JS)
    assert [tuple(b) for b in banners] == [
        (cls, html.unescape(text)) for cls, text in _banners_in(served)
    ]

    failed = await asyncio.to_thread(
        browser.find_element, By.CSS_SELECTOR, 'tr[data-server="a3"] td.state'
    )
    assert failed.text == "failed"
    assert "tone-bad" in str(failed.get_attribute("class"))
    assert failed.value_of_css_property("color") == "rgba(176, 0, 32, 1)"
    stop = await asyncio.to_thread(browser.find_element, By.CSS_SELECTOR, 'tr[data-stop="acme"]')
    assert HOSTILE_REASON in stop.text  # shown as text, never run (an alert would fail the test)
    assert "2023-11-14 22:13:20Z" in browser.find_element(By.ID, "updated").text  # agent's clock

    # The cluster changes; the page follows within a poll or two, without a reload.
    await api.commit(MarkServerFailed(id="second", at=WALL - 1, server="a2", incarnation=1))

    def wait_for_a2_failed() -> None:
        _wait(
            browser,
            lambda d: (
                d.find_element(By.CSS_SELECTOR, 'tr[data-server="a2"]').get_attribute("data-state")
                == "failed"
            ),
        )

    await asyncio.to_thread(wait_for_a2_failed)
    assert "Failed: a2, a3" in browser.find_element(By.ID, "banners").text
    newest = browser.find_element(By.CSS_SELECTOR, "#decisions tr")
    assert newest.get_attribute("data-decision") == "d000010"
    assert "a2 was declared failed" in newest.text  # words fetched from /v1/decisions/{id}
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-updated") != first_update

    shot = tmp_path / "status-page.png"
    assert await asyncio.to_thread(browser.save_screenshot, str(shot))
    assert shot.stat().st_size > 0
    print(f"screenshot: {shot}")

    # The decision page, one click away.
    def open_the_decision() -> str:
        newest.find_element(By.TAG_NAME, "a").click()
        _wait(browser, lambda d: "/decisions/d000010" in d.current_url)
        return str(browser.find_element(By.ID, "explanation").text)

    explanation = await asyncio.to_thread(open_the_decision)
    assert explanation.startswith("a2 was declared failed")
    await asyncio.to_thread(browser.save_screenshot, str(tmp_path / "decision-page.png"))

"""The status page in a real browser (SPEC §11): headless Chromium on a real daemon.

Each test starts ``bgsyncd run`` on the emulator with the page on a loopback
listener and drives Debian's Chromium through Selenium.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from bgsyncd.emulator import Emulator
from tests.support.browser import chromium
from tests.support.daemons import (
    DaemonProcess,
    free_port,
    make_folder,
    start_daemon,
    status_json,
    wait_status,
    write_config,
)
from tests.support.helpers import product_image, wait_until
from tests.support.paths import ROOT

EVIL = "<img src=x onerror=alert(1)>.jpg"
SCREENSHOT = ROOT / "docs" / "pictures" / "status-page.png"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    with chromium(tmp_path / "profile") as driver:
        yield driver


def _daemon(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> tuple[str, Path, dict[str, Any]]:
    port = free_port()
    folder = make_folder(tmp_path, "products")
    config = write_config(
        tmp_path / "config.toml",
        base_url=emulator.url,
        folders=[folder, make_folder(tmp_path, "shop")],
        metrics_listen=f"127.0.0.1:{port}",
    )
    start_daemon(daemons, config)
    return f"http://127.0.0.1:{port}/", config, folder


# Read in one script each: the page swaps its content every 2 s, so an element
# found by one call may be gone by the next.
def _count(driver: WebDriver, folder: str, state: str) -> int:
    text = driver.execute_script(
        "const row = [...document.querySelectorAll('[data-folder]')]"
        ".find(r => r.dataset.folder === arguments[0]);"
        "return row.querySelector(`[data-state='${arguments[1]}']`).textContent;",
        folder,
        state,
    )
    return int(text)


def _rows(driver: WebDriver, hook: str) -> list[str]:
    found: list[str] = driver.execute_script(
        "return [...document.querySelectorAll(`[${arguments[0]}]`)]"
        ".map(e => e.getAttribute(arguments[0]));",
        hook,
    )
    return found


_PHOTO0_IMGS = "const imgs = document.querySelectorAll('[data-job=\"photo0.jpg\"] img');"


def _click(driver: WebDriver, css: str) -> bool:
    """Click the element (a real click); False when the refresh replaced it meanwhile."""
    try:
        driver.find_element(By.CSS_SELECTOR, css).click()
    except StaleElementReferenceException:
        return False
    return True


def test_the_counts_match_status_json_and_a_dropped_file_appears_without_reload(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess], browser: WebDriver
) -> None:
    url, config, folder = _daemon(tmp_path, emulator, daemons)
    inbox = Path(folder["inbox"])
    for i in range(3):
        (inbox / f"photo{i}.jpg").write_bytes(product_image(64 + i, 48))
    (inbox / "broken.jpg").write_bytes(b"not an image at all")
    wait_status(config, done=3, quarantined=1)
    browser.get(url)
    status = status_json(config)
    for name, counts in status["folders"].items():
        for state, n in counts.items():
            assert _count(browser, name, state) == n, (name, state)
    assert "broken.jpg" in _rows(browser, "data-quarantined")
    assert browser.find_elements(By.CSS_SELECTOR, '[data-quarantined] button[data-action="retry"]')
    assert set(_rows(browser, "data-job")) == {
        "photo0.jpg",
        "photo1.jpg",
        "photo2.jpg",
        "broken.jpg",
    }
    assert browser.find_elements(By.CSS_SELECTOR, "[data-paused]") == []
    # Thumbnails: made by the daemon, at most 256 px, shown by the browser.
    wait_until(
        lambda: browser.execute_script(
            "const imgs = document.querySelectorAll('[data-job=\"photo0.jpg\"] img');"
            "return imgs.length === 2 && [...imgs].every(i => i.complete && i.naturalWidth > 0"
            " && i.naturalWidth <= 256 && i.naturalHeight <= 256);"
        ),
        10,
        what="thumbnails loaded",
    )
    marker = browser.find_element(By.TAG_NAME, "h1")
    browser.execute_script(_PHOTO0_IMGS + "imgs.forEach(i => { i.keptNode = true; });")
    (inbox / "late.jpg").write_bytes(product_image(80, 60))
    wait_until(lambda: "late.jpg" in _rows(browser, "data-job"), 8, what="late.jpg on the page")
    wait_until(lambda: _count(browser, "products", "done") == 4, 8, what="done = 4 on the page")
    assert marker.is_displayed()  # the same document: no reload
    # The refreshes kept the unchanged thumbnails' <img> nodes: not fetched again.
    assert browser.execute_script(
        _PHOTO0_IMGS + "return imgs.length === 2 && [...imgs].every(i => i.keptNode === true);"
    )
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))


def test_a_hostile_name_shows_as_text_and_its_retry_button_requeues_it(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess], browser: WebDriver
) -> None:
    url, config, folder = _daemon(tmp_path, emulator, daemons)
    (Path(folder["inbox"]) / EVIL).write_bytes(b"not an image")
    wait_status(config, quarantined=1)
    browser.get(url)
    assert _rows(browser, "data-quarantined") == [EVIL]
    names = browser.execute_script(
        "return [...document.querySelectorAll('[data-quarantined] .name')].map(e => e.textContent);"
    )
    assert names == [EVIL]
    # No element was made from the name, and nothing ran.
    assert browser.find_elements(By.CSS_SELECTOR, 'img[src="x"]') == []
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 (asks the browser)
    # Mend the file where it lies in quarantine, then Retry it from the page.
    (Path(folder["quarantine"]) / EVIL).write_bytes(product_image(64, 48))
    wait_until(
        lambda: _click(browser, '[data-quarantined] button[data-action="retry"]'),
        5,
        what="Retry clicked",
    )
    wait_status(config, done=1, quarantined=0)
    assert (Path(folder["outbox"]) / "<img src=x onerror=alert(1)>.png").exists()
    wait_until(
        lambda: (
            _rows(browser, "data-outcome") == ["done"]
            and _rows(browser, "data-job") == [EVIL]
            and not browser.find_elements(By.CSS_SELECTOR, "[data-quarantined]")
        ),
        8,
        what="the page shows it done",
    )
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018

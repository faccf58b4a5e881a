"""The review page in a real headless browser (Debian's chromium, driven by chromedriver
through Selenium), by keyboard only: correct one, confirm one, undo; then corrections.csv.
Numbers too: the doubtful digits marked, a correction typed as a string and sent with Enter.

.ci/run installs chromium and chromium-driver when they are missing, and sets
DIGITD_REQUIRE_BROWSER=1 so that CI fails rather than skips without them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time

import pytest

from reviewproc import ReviewServer, make_number_outbox, make_outbox, read_csv

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        if os.environ.get("DIGITD_REQUIRE_BROWSER") == "1":
            pytest.fail(f"missing {missing}: apt-get install chromium chromium-driver")
        pytest.skip(f"no {missing} (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="digitd-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                 "--window-size=1200,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    return driver, profile


def wait(condition, timeout: float = 30.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or condition}")


@contextlib.contextmanager
def review_page(outbox):
    """`digitd review --reviewer kb` on the outbox and the page open in the browser: yields
    (server, driver, shown), shown() giving the id of the result on screen."""
    server = ReviewServer(outbox, "--reviewer", "kb").wait_ready()
    try:
        driver, profile = browser()
        try:
            driver.get(server.url + "/")
            card = driver.find_element("id", "card")
            yield server, driver, lambda: card.get_attribute("data-id")
        finally:
            driver.quit()
            shutil.rmtree(profile, ignore_errors=True)
    finally:
        server.close()


def test_review_by_keyboard(tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    outbox = make_outbox(tmp_path / "daemon")
    with review_page(outbox) as (server, driver, shown):
        first = wait(shown, what="the first result")
        queue = {i["id"]: i for i in server.queue(limit=500)["items"]}
        assert first == min(queue.values(), key=lambda i: i["confidence"])["id"]
        assert driver.find_element("id", "digit").text == str(queue[first]["digit"])
        assert driver.find_element("id", "count-queue").text == str(len(queue))
        preview = driver.find_element("id", "preview")
        wait(lambda: driver.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", preview),
            what="the preview to load")

        keys = ActionChains(driver)
        wrong = (queue[first]["digit"] + 1) % 10
        keys.send_keys(str(wrong)).perform()  # a digit key corrects
        second = wait(lambda: shown() != first and shown(), what="the second result")
        keys.send_keys(Keys.ENTER).perform()  # Enter confirms
        third = wait(lambda: shown() not in (first, second) and shown(), what="the third")
        keys.send_keys(Keys.SPACE).perform()  # Space skips, writing nothing
        fourth = wait(lambda: shown() != third and shown(), what="the fourth")
        keys.send_keys("u").perform()  # u undoes the last verdict: the confirmation
        wait(lambda: shown() == second, what="the undone result to come back")
        wait(lambda: driver.find_element("tag name", "body").get_attribute("data-inflight")
             == "0", what="the requests to finish")
        assert driver.find_element("id", "count-mine").text == "1"
        assert fourth != second

        rows = read_csv(outbox / "corrections.csv")
        assert [(r["id"], r["verdict"], r["label"], r["reviewer"]) for r in rows] == [
            (first, "corrected", str(wrong), "kb"),
            (second, "confirmed", str(queue[second]["digit"]), "kb"),
            (second, "undone", "", "kb"),
        ]
        assert (outbox / "corrections" / f"{first}.png").is_file()
        remaining = {i["id"] for i in server.queue(limit=500)["items"]}
        assert first not in remaining and second in remaining and third in remaining

        keys.send_keys("x").perform()  # x: not a digit, on the result brought back
        wait(lambda: shown() != second, what="the next result")
        wait(lambda: driver.find_element("tag name", "body").get_attribute("data-inflight")
             == "0", what="the request to finish")
        last = read_csv(outbox / "corrections.csv")[-1]
        assert (last["id"], last["verdict"], last["label"]) == (second, "not_a_digit", "")
        assert driver.find_element("id", "status").get_attribute("class") != "error"

        # n: this digit is really a number; its digits are typed, Enter sends the string
        # (Escape with nothing typed goes back to the one-key verdicts)
        current = wait(shown, what="the result on screen")
        typed = driver.find_element("id", "typed")
        assert not typed.is_displayed()
        keys.send_keys("n").perform()
        wait(typed.is_displayed, what="n to open the typed string")
        keys.send_keys(Keys.ESCAPE).perform()
        wait(lambda: not typed.is_displayed(), what="Escape to close it")
        keys.send_keys("n" + "38").perform()
        wait(lambda: typed.text == "38", what="38 typed")
        keys.send_keys(Keys.ENTER).perform()
        wait(lambda: shown() != current, what="the next result")
        wait(lambda: driver.find_element("tag name", "body").get_attribute("data-inflight")
             == "0", what="the request to finish")
        last = read_csv(outbox / "corrections.csv")[-1]
        assert (last["id"], last["predicted"], last["label"], last["verdict"]) == (
            current, str(queue[current]["digit"]), "38", "corrected")


def test_review_numbers_by_keyboard(tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    outbox, truth = make_number_outbox(tmp_path / "daemon", n=8)
    with review_page(outbox) as (server, driver, shown):
        first = wait(shown, what="the first result")
        queue = {i["id"]: i for i in server.queue(limit=500)["items"]}
        item = queue[first]
        digit = driver.find_element("id", "digit")
        assert digit.text == item["digits"]
        marked = [s.text for s in digit.find_elements("css selector", "span.doubtful")]
        assert marked == [str(p["digit"]) for p in item["parts"] if p["doubtful"]]
        assert marked  # the daemon ran at 0.9999: every number here has a doubtful digit
        typed = driver.find_element("id", "typed")
        assert typed.is_displayed() and typed.text == ""

        label = truth[item["file"]]
        if label == item["digits"]:
            label = item["digits"] + "1"  # a digit the reader missed
        keys = ActionChains(driver)
        keys.send_keys("9" + Keys.BACKSPACE + label[:-1] + "5").perform()
        keys.send_keys(Keys.BACKSPACE + label[-1]).perform()
        wait(lambda: typed.text == label, what=f"{label!r} typed")
        keys.send_keys(Keys.ENTER).perform()  # Enter sends the string
        second = wait(lambda: shown() != first and shown(), what="the second result")
        wait(lambda: typed.text == "", what="the typed string cleared")
        keys.send_keys("12").perform()
        wait(lambda: typed.text == "12", what="12 typed")
        keys.send_keys(Keys.ESCAPE).perform()  # Escape clears what was typed
        wait(lambda: typed.text == "", what="Escape to clear")
        keys.send_keys(Keys.ENTER).perform()  # nothing typed: Enter confirms the string
        wait(lambda: shown() not in (first, second), what="the third result")
        wait(lambda: driver.find_element("tag name", "body").get_attribute("data-inflight")
             == "0", what="the requests to finish")
        rows = read_csv(outbox / "corrections.csv")
        assert [(r["id"], r["predicted"], r["label"], r["verdict"]) for r in rows] == [
            (first, item["digits"], label, "corrected"),
            (second, queue[second]["digits"], queue[second]["digits"], "confirmed"),
        ]
        assert driver.find_element("id", "status").get_attribute("class") != "error"

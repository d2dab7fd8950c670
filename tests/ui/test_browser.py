"""The page in a real headless Chromium: `streamlit run ui/app.py` against a live server.

Needs /usr/bin/chromium and /usr/bin/chromedriver (Debian: chromium, chromium-driver; elsewhere
FINGPT_CHROMIUM and FINGPT_CHROMEDRIVER say where they are) and selenium. Without them the tests
are skipped, except with CI=true, where they fail. FINGPT_SCREENSHOT=path.png keeps the
screenshot there.
"""

import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from serving.protocol import Limits
from serving.testing import free_port, serve
from ui import streamlit_command

CHROMIUM = Path(os.environ.get("FINGPT_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("FINGPT_CHROMEDRIVER", "/usr/bin/chromedriver"))
try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    webdriver = None

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1600",
]


@pytest.fixture(scope="module")
def slow_server(bundle):
    """A server that lets one request run long enough to be stopped by hand."""
    with serve(bundle, limits=Limits(max_tokens=1_000_000), timeout=300) as live:
        yield live


@pytest.fixture(scope="module")
def streamlit_page(tmp_path_factory):
    """open(api_url): the URL of `streamlit run ui/app.py` with FINGPT_API_URL=api_url."""
    processes = []

    def open_page(api_url: str) -> str:
        port = free_port()
        command = streamlit_command("--server.headless", "true", "--server.port", str(port))
        command += ["--server.address", "127.0.0.1", "--server.fileWatcherType", "none"]
        log = tmp_path_factory.mktemp("streamlit") / "log.txt"
        env = {**os.environ, "FINGPT_API_URL": api_url, "FINGPT_API_KEY": ""}
        process = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            assert process.poll() is None, f"streamlit exited: {log.read_text()}"
            try:
                if httpx.get(f"{url}/_stcore/health").status_code == 200:
                    return url
            except httpx.TransportError:
                pass
            assert time.time() < deadline, f"streamlit never answered: {log.read_text()}"
            time.sleep(0.1)

    yield open_page
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


def missing() -> str | None:
    if webdriver is None:
        return "selenium (pip install -e '.[dev]')"
    absent = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    return " and ".join(absent) + " (make chromium)" if absent else None


def require_browser() -> None:
    """Skip where Chromium, its driver or selenium is missing; fail there with CI=true, since CI
    must not pass with the page untested."""
    if lacking := missing():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and the browser test cannot run: it needs {lacking}", pytrace=False)
        pytest.skip(f"needs {lacking}")


@pytest.fixture(scope="module", autouse=True)
def chromium():
    """Before the server and the page start: can these tests run here?"""
    require_browser()


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'chromium'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(str(CHROMEDRIVER)))
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def wait(driver, condition, timeout: float = 60):
    """condition(driver)'s first true value; Streamlit redraws elements, so a stale one is retried."""
    stale = (StaleElementReferenceException,)
    return WebDriverWait(driver, timeout, ignored_exceptions=stale).until(condition)


def button(driver, label: str):
    """The button of that label, once the page shows it."""
    path = f"//*[@data-testid='stButton']//button[normalize-space(.)='{label}']"
    return wait(driver, lambda d: d.find_elements(By.XPATH, path), 30)[0]


def wait_for_text(driver, text: str, timeout: float = 60) -> None:
    wait(driver, lambda d: text in d.find_element(By.TAG_NAME, "body").text, timeout)


def live_text(driver) -> str:
    """The text streaming in, outside the history."""
    texts = driver.find_elements(By.CSS_SELECTOR, "[data-testid='stHtml']")
    return next((e.text for e in texts if not e.find_elements(By.XPATH, "ancestor::details")), "")


EXPANDER_TEXT = "[data-testid='stExpander'] [data-testid='stHtml']"


def history_titles(driver) -> list[str]:
    summaries = driver.find_elements(By.CSS_SELECTOR, "[data-testid='stExpander'] summary")
    return [e.text.splitlines()[-1] for e in summaries]  # after the name of the arrow icon


def test_generate_in_a_real_browser_and_take_a_screenshot(server, streamlit_page, browser, tmp_path):
    card = httpx.get(f"{server.url}/v1/models").json()["data"][0]["card"]
    browser.get(streamlit_page(server.url))
    wait_for_text(browser, "Ready: serving tiny")
    wait_for_text(browser, f"{card['parameters']:,} parameters")
    [prompt] = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "textarea[aria-label='Prompt']"))
    prompt = prompt.get_attribute("value")
    assert prompt.startswith("Operator: Good day, and welcome to the Acme Corp Fourth Quarter 2024 Earnings")
    button(browser, "Generate").click()

    def finished(d):  # one generation in the history, its text rendered
        titles = history_titles(d)
        texts = [e.text for e in d.find_elements(By.CSS_SELECTOR, EXPANDER_TEXT)]
        return (titles, texts) if len(titles) == len(texts) == 1 and texts[0] else False

    [title], [text] = wait(browser, finished)
    ended = "(reached max tokens, 200|ended by a stop string or the end of the call, [0-9]+) tokens"
    assert re.fullmatch(rf"#1 at [0-9:]{{8}}: {ended}", title)
    assert text.startswith(prompt) and len(text) > len(prompt)
    assert not browser.find_elements(By.XPATH, "//*[normalize-space(text())='Deploy']")  # no dev toolbar
    path = Path(os.environ.get("FINGPT_SCREENSHOT") or tmp_path / "fingpt-ui.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(path))
    print(f"screenshot: {path}")


def test_the_stop_button_ends_a_long_generation(slow_server, streamlit_page, browser):
    browser.get(streamlit_page(slow_server.url))
    wait_for_text(browser, "Ready: serving tiny")
    field = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "input[aria-label='Max tokens']"), 30)[0]
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys("500000", Keys.ENTER)
    button(browser, "Generate").click()
    wait(browser, lambda d: live_text(d).startswith("Operator: Good day"))
    button(browser, "Stop generating").click()
    wait(browser, lambda d: any(t.endswith("stopped") for t in history_titles(d)))
    assert (
        "Stopped generation #1: its text so far is kept below."
        in browser.find_element(By.TAG_NAME, "body").text
    )
    assert not browser.find_elements(By.XPATH, "//button[normalize-space(.)='Stop generating']")
    wait(browser, lambda _: not slow_server.engine.owners, 30)  # the server dropped it


def test_score_an_uploaded_call_in_a_browser_and_take_a_screenshot(server, streamlit_page, browser, tmp_path):
    browser.get(streamlit_page(server.url))
    wait_for_text(browser, "Ready: serving tiny")
    path = "//*[@data-testid='stRadio']//label[normalize-space(.)='Score a call']"
    wait(browser, lambda d: d.find_elements(By.XPATH, path), 30)[0].click()
    call = "Operator: Good afternoon. Revenue was $1.48 billion, up 24.9%. Our next question comes from Alex."
    (tmp_path / "call.txt").write_text(call)  # uploaded as a file (AppTest covers pasting)
    upload = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "input[type='file']"), 30)[0]
    upload.send_keys(str(tmp_path / "call.txt"))
    wait_for_text(browser, "call.txt")
    button(browser, "Score").click()
    wait_for_text(browser, "The most surprising sentences")
    shaded = browser.find_elements(By.CSS_SELECTOR, "[data-testid='stHtml'] span[title*='bits, p =']")
    assert "".join(span.text for span in shaded).strip() == call  # every token, shaded, in order
    assert "Bits per byte" in browser.find_element(By.TAG_NAME, "body").text
    path = Path(os.environ.get("FINGPT_SCORE_SCREENSHOT") or tmp_path / "fingpt-score.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(path))
    print(f"screenshot: {path}")

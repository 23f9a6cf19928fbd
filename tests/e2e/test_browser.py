"""End to end in a real browser: headless Chromium (Debian's chromium and chromium-driver,
driven through selenium) against a real app process on SQLite. The owner follows the setup
link, signs out and in again, creates a space and a thread, posts a message with a file
attached, downloads it, and finds the message by search; in a second run the owner turns on a
TOTP second factor and signs in with a code. Screenshots of each step are saved in
the test's output directory (its tmp_path, printed on failure)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.component.test_app import REPO, free_port, wait_healthy

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
PASSWORD = "a long and sound passphrase 7"
WAIT_S = 20.0


def _missing() -> str | None:
    for tool, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(tool, os.X_OK):
            return f"{tool} is not installed (Debian package {package})"
    return None


@pytest.fixture
def app_url(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real app process serving tenant acme; yields its base URL and the setup token."""
    data = tmp_path / "slot"
    admin = subprocess.run(
        [sys.executable, "-m", "app.admin", "tenant-create", "--data-dir", str(data),
         "--name", "acme", "--admin-email", "owner@acme.test"],
        cwd=REPO, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    token = json.loads(admin.stdout.strip().splitlines()[-1])["setup_token"]
    port = free_port()
    argv = [
        sys.executable, "-m", "app", "--slot", "s1", "--server", "m1", "--epoch", "1",
        "--port", str(port), "--tenant", "acme", "--data-dir", str(data),
    ]  # fmt: skip
    with (tmp_path / "app.log").open("w") as log:
        child = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        wait_healthy(child, port)
        yield f"http://acme.localhost:{port}", token
    finally:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    reason = _missing()
    if reason is not None:
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-quic", "--window-size=1200,900",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):  # fmt: skip
        options.add_argument(flag)
    service = Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


class Steps:
    """The browser, the site and where screenshots go; one method per user action."""

    def __init__(self, driver: WebDriver, base: str, shots: Path) -> None:
        self.driver = driver
        self.base = base
        self.shots = shots
        shots.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def field(self, name: str) -> WebElement:
        return self.driver.find_element(By.NAME, name)

    def fill(self, **values: str) -> None:
        for name, value in values.items():
            element = self.field(name)
            element.clear()
            element.send_keys(value)

    def submit(self, button_text: str) -> None:
        """Click the submit button labelled ``button_text`` and wait for the next page."""
        before = self.driver.find_element(By.TAG_NAME, "html")
        button = self.driver.find_element(
            By.XPATH, f"//button[@type='submit' and normalize-space()='{button_text}']"
        )
        button.click()
        WebDriverWait(self.driver, WAIT_S).until(lambda d: _stale(before))

    def heading(self) -> str:
        return str(self.driver.find_element(By.TAG_NAME, "h1").text)

    def body(self) -> str:
        return str(self.driver.find_element(By.TAG_NAME, "body").text)

    def shot(self, name: str) -> Path:
        self.count += 1
        path = self.shots / f"{self.count:02d}-{name}.png"
        assert self.driver.save_screenshot(str(path)), path
        return path


def _stale(element: WebElement) -> bool:
    try:
        element.is_enabled()
    except Exception:  # noqa: BLE001 - selenium's StaleElementReferenceException: page replaced
        return True
    return False


def download(url: str, cookie: str) -> tuple[int, dict[str, str], bytes]:
    """GET ``url`` with the session cookie (the name resolves on loopback; the Host stays)."""
    parts = urllib.parse.urlsplit(url)
    direct = parts._replace(netloc=f"127.0.0.1:{parts.port}").geturl()
    headers = {"Cookie": f"mw_session={cookie}", "Host": parts.netloc}
    request = urllib.request.Request(direct, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as reply:
        return reply.status, dict(reply.headers), reply.read()


def test_sign_in_create_a_space_post_upload_and_search(
    app_url: tuple[str, str], browser: WebDriver, tmp_path: Path
) -> None:
    base, token = app_url
    s = Steps(browser, base, tmp_path / "screenshots")
    print(f"screenshots in {s.shots}")

    # The setup link: the owner chooses a name and password, and is signed in.
    s.open(f"/join?token={token}")
    s.fill(display_name="Olga Owner", password=PASSWORD, confirm=PASSWORD)
    s.shot("join")
    s.submit("Join")
    assert browser.current_url.endswith("/spaces"), s.body()

    # Sign out, then sign in through /login.
    s.submit("Sign out")
    assert "/login" in browser.current_url
    s.fill(email="owner@acme.test", password="not the password")
    s.submit("Sign in")
    assert "wrong e-mail or password" in s.body()
    s.fill(password=PASSWORD)
    s.shot("sign-in")
    s.submit("Sign in")
    assert browser.current_url.endswith("/spaces"), s.body()

    # A space, a thread in it, and a message with a file attached.
    s.fill(name="Launch plans", description="Everything about Friday")
    s.submit("Create space")
    assert s.heading() == "Launch plans"
    s.fill(title="Kick-off", body="Welcome to the launch thread")
    s.submit("Start thread")
    assert s.heading() == "Kick-off"
    notes = tmp_path / "countdown notes.txt"
    notes.write_text("T-minus 10 minutes: final checks\n")
    s.fill(body="The rocket launches on **Friday** <script>alert(1)</script> https://example.test")
    s.field("file").send_keys(str(notes))
    s.submit("Post")
    assert "The rocket launches on" in s.body()
    assert "<script>alert(1)</script>" in s.body()  # shown as text, never run
    link = browser.find_element(By.PARTIAL_LINK_TEXT, "countdown notes.txt")
    s.shot("thread")

    # The attachment downloads as an attachment, byte for byte.
    session = browser.get_cookie("mw_session")
    assert session is not None and session["httpOnly"] and session["sameSite"] == "Lax"
    status, headers, content = download(str(link.get_attribute("href")), session["value"])
    assert status == 200 and content == notes.read_bytes()
    assert headers["Content-Disposition"].startswith("attachment")

    # Search finds the message and links to its thread.
    s.open("/search")
    s.fill(q="rocket")
    s.submit("Search")
    assert "The rocket launches on" in s.body()
    s.shot("search")
    browser.find_element(By.PARTIAL_LINK_TEXT, "Kick-off").click()
    WebDriverWait(browser, WAIT_S).until(lambda d: "/threads/" in d.current_url)
    assert s.heading() == "Kick-off"
    deadline = time.monotonic() + 1  # the screenshots are the test's record: make sure of them
    while len(list(s.shots.glob("*.png"))) < s.count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(list(s.shots.glob("*.png"))) == s.count == 4


def test_enrol_a_second_factor_then_sign_in_with_a_code(
    app_url: tuple[str, str], browser: WebDriver, tmp_path: Path
) -> None:
    pyotp = pytest.importorskip("pyotp")
    base, token = app_url
    s = Steps(browser, base, tmp_path / "screenshots")
    print(f"screenshots in {s.shots}")
    s.open(f"/join?token={token}")
    s.fill(display_name="Olga Owner", password=PASSWORD, confirm=PASSWORD)
    s.submit("Join")
    assert browser.current_url.endswith("/spaces"), s.body()

    # Enrol: the QR code is inline SVG, the key is shown as text for typing in by hand.
    s.open("/settings/2fa")
    assert browser.find_elements(By.CSS_SELECTOR, "svg path")
    secret = str(browser.find_element(By.ID, "totp-secret").text).replace(" ", "")
    totp = pyotp.TOTP(secret)
    s.shot("enrol")
    s.fill(code=totp.now())
    s.submit("Turn on")
    codes = browser.find_elements(By.CSS_SELECTOR, "#recovery-codes code")
    assert len(codes) == 10 and "shown only now" in s.body()
    s.shot("recovery-codes")

    # Sign out; the password alone no longer signs in: the code form comes next.
    s.submit("Sign out")
    s.fill(email="owner@acme.test", password=PASSWORD)
    s.submit("Sign in")
    assert browser.current_url.endswith("/login"), browser.current_url
    assert browser.get_cookie("mw_session") is None
    assert s.heading() == "Two-step sign-in"
    # The next step's code: the one that turned the factor on is used up (no replay), and a
    # step ahead is within the accepted window.
    s.fill(code=totp.at(time.time() + 30))
    s.shot("second-step")
    s.submit("Verify")
    assert browser.current_url.endswith("/spaces"), s.body()
    assert browser.get_cookie("mw_session") is not None
    s.shot("signed-in")
    deadline = time.monotonic() + 1
    while len(list(s.shots.glob("*.png"))) < s.count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(list(s.shots.glob("*.png"))) == s.count == 4

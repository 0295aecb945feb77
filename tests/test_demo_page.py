"""The microphone page (``/demo``): served by the app, public behind a key, and working in a real browser.

The browser tests run Debian's headless Chromium through its own chromedriver (``/usr/bin/chromedriver``; selenium
is told its path, and Selenium Manager, which would download one, is made to fail if anything calls it). The fake
microphone plays a committed clip from ``tests/fixtures`` (16 kHz speech) through the page's AudioWorklet, which
resamples the browser's rate back to 16 kHz, to a real server with the shipped weights and default decoding.

What is compared: the texts of the page's ``.final`` elements, joined by spaces, against the text ``POST
/transcribe`` gives on the same server for the very file the microphone plays. That file is the clip with LEAD s
of silence before it (the page needs a moment to start capturing) and TAIL s after it: Chromium loops the file, so
the silence keeps a second pass of the phrase away while its final arrives. The page is stopped once a final has
come *and* one pass of the phrase has been sent, and ``eof`` makes the server final whatever is still open, so
what the page shows covers exactly one pass of the clip.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.routes.demo import STATIC
from model.decoding import DecodeOptions
from tests.test_shipped_model import FIXTURES, ROOT, WEIGHTS

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CLIP = FIXTURES / "s7-test_seen-000016.wav"  # "checks whether the system is operational", one phrase, 2.1 s
LEAD, TAIL = 1.0, 20.0  # seconds of silence before and after the clip
KEY = "demo-page-test-key"

needs_browser = pytest.mark.skipif(not CHROMIUM.is_file() or not CHROMEDRIVER.is_file(),
                                   reason="no /usr/bin/chromium or /usr/bin/chromedriver "
                                          "(apt-get install chromium chromium-driver; `make system-deps` does)")


# ---------------------------------------------------------------------------------------------- served by the app

@pytest.fixture(scope="module")
def client() -> TestClient:
    """The app behind a key, without its lifespan: no model is loaded to serve static files."""
    return TestClient(create_app(Settings(weights=WEIGHTS, api_key=KEY)))


def test_root_redirects_to_the_page_keeping_the_query(client: TestClient) -> None:
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/demo"
    r = client.get("/?autostart=1&access_token=abc", follow_redirects=False)
    assert r.headers["location"] == "/demo?autostart=1&access_token=abc"


def test_the_page_and_its_files_are_public_behind_a_key(client: TestClient) -> None:
    assert client.get("/metrics").status_code == 401  # the key is on
    page = client.get("/demo")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name, kind in (("demo.js", "text/javascript"), ("pcm-worklet.js", "text/javascript"),
                       ("demo.css", "text/css")):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), name
        assert r.content == (STATIC / name).read_bytes()
    for name in ("nothing.js", "%2e%2e%2fmain.py", "..%2fdemo.py", "README.md"):
        assert client.get(f"/static/{name}").status_code == 404, name
    assert "/demo" not in client.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).text


def test_the_page_fetches_nothing_from_elsewhere() -> None:
    """No absolute or protocol-relative URL in any file: no CDN, no fonts. The browser test checks it live too."""
    for path in STATIC.iterdir():
        text = path.read_text()
        for needle in ("http://", "https://", "ws://", "wss://", "@import", "url(", '="//', "@font-face"):
            assert needle not in text, (path.name, needle)


def test_an_installed_package_has_the_static_files() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["app"]
    files = sorted(p.name for p in STATIC.iterdir())
    assert {"demo.html", "demo.js", "demo.css", "pcm-worklet.js"} <= set(files)
    assert all(any((STATIC / f).relative_to(STATIC.parent).match(g) for g in globs) for f in files), (files, globs)


# ------------------------------------------------------------------------------------------------- in a browser

@pytest.fixture(scope="module")
def padded_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wave, rate = sf.read(CLIP, dtype="float32")
    assert rate == 16000 and wave.ndim == 1
    silence = np.zeros(int(LEAD * rate), np.float32), np.zeros(int(TAIL * rate), np.float32)
    path = tmp_path_factory.mktemp("mic") / "clip.wav"
    sf.write(path, np.concatenate([silence[0], wave, silence[1]]), rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def browser(padded_clip: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    if not CHROMIUM.is_file() or not CHROMEDRIVER.is_file():
        pytest.skip("no /usr/bin/chromium or /usr/bin/chromedriver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.selenium_manager import SeleniumManager

    def no_downloads(*_args, **_kwargs):
        raise AssertionError("Selenium Manager must not run: the test uses the system chromedriver")

    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={padded_clip}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(profile.parent / "chromedriver.log"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SeleniumManager, "binary_paths", no_downloads)
        driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def open_server(launch):
    with launch(weights=WEIGHTS, default_beam_size=DecodeOptions.beam_size, max_streams=1) as live:
        yield live


@pytest.fixture(scope="module")
def keyed_server(launch):
    with launch(weights=WEIGHTS, default_beam_size=DecodeOptions.beam_size, api_key=KEY) as live:
        yield live


def transcribe(url: str, path: Path, key: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.post(f"{url}/transcribe", files={"file": (path.name, path.read_bytes())}, headers=headers,
                   timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["text"]


def wait_for(driver, predicate, timeout: float, what: str):
    """Poll ``predicate(driver)`` until it is truthy; on time-out, fail with the page's status and console."""
    deadline = time.monotonic() + timeout
    while not (value := predicate(driver)):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}; status {page_status(driver)}; "
                        f"console {driver.get_log('browser')}")
        time.sleep(0.1)
    return value


def page_status(driver) -> tuple[str, str]:
    return driver.execute_script("const s = document.getElementById('status'); return [s.dataset.state, s.textContent]")


def finals(driver) -> list[dict]:
    return driver.execute_script("""return [...document.querySelectorAll('#transcript .final')].map(e =>
        ({text: e.textContent, start: Number(e.dataset.start), end: Number(e.dataset.end)}))""")


def caption(driver, url: str, clip: Path) -> list[dict]:
    """Open ``url`` (which autostarts), wait for a final and one pass of the clip, Stop, wait for the close."""
    driver.get(url)
    wait_for(driver, lambda d: page_status(d)[0] == "listening", 60, "the page to listen")
    listening = time.monotonic()
    print("status:", page_status(driver)[1])
    clip_s = sf.info(clip).duration - TAIL  # the silence in front and the phrase
    wait_for(driver, finals, 60, "a final")
    time.sleep(max(0.0, listening + clip_s + 0.5 - time.monotonic()))  # the whole phrase has been sent
    elapsed = time.monotonic() - listening
    driver.find_element("id", "stop").click()
    wait_for(driver, lambda d: page_status(d)[0] != "stopping", 60, "the last finals and the close")
    assert elapsed < clip_s + TAIL - 1, f"the first final took {elapsed:.1f} s: the microphone may have looped"
    assert page_status(driver) == ["closed", "closed"]
    assert driver.find_element("id", "partial").text == ""
    shown = finals(driver)
    print(f"the page: {shown} (stopped {elapsed:.1f} s after it started listening)")
    phrase = LEAD, LEAD + sf.info(CLIP).duration  # where the clip is in the file, in seconds from its start
    assert all(phrase[0] - 0.5 <= f["start"] < f["end"] <= phrase[1] + 1.0 for f in shown), shown
    return shown


def assert_same_origin_only(driver, url: str) -> None:
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(url))
    loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(u.startswith(origin + "/") for u in loaded), loaded
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


@needs_browser
def test_the_page_captions_the_microphone_like_an_upload(browser, open_server, padded_clip: Path) -> None:
    expected = transcribe(open_server.url, padded_clip)
    shown = caption(browser, f"{open_server.url}/demo?autostart=1", padded_clip)
    assert " ".join(f["text"] for f in shown) == expected
    assert_same_origin_only(browser, open_server.url)


@needs_browser
def test_a_busy_server_shows_in_the_status_line(browser, open_server) -> None:
    """The open server takes one stream (max_streams=1): with it held, the page is told 1013 and says so."""
    from websockets.sync.client import connect

    from app.client import stream_url

    with connect(stream_url(open_server.url), proxy=None) as held:
        held.send(json.dumps({"type": "config", "sample_rate": 16000}))
        deadline = time.monotonic() + 10
        while len(open_server.state.streams) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        browser.get(f"{open_server.url}/demo?autostart=1")
        state, text = wait_for(browser, lambda d: page_status(d)[0] not in ("idle", "connecting") and page_status(d),
                               30, "the busy status")
        held.send(json.dumps({"type": "eof"}))
    assert state == "busy" and "1013" in text and "limit 1" in text, text
    assert not browser.find_element("id", "start").get_property("disabled")


@needs_browser
def test_behind_a_key_the_page_takes_it_from_its_url(browser, keyed_server, padded_clip: Path) -> None:
    assert httpx.get(f"{keyed_server.url}/demo").status_code == 200  # the page itself needs no key
    expected = transcribe(keyed_server.url, padded_clip, KEY)
    shown = caption(browser, f"{keyed_server.url}/demo?autostart=1&access_token={KEY}", padded_clip)
    assert " ".join(f["text"] for f in shown) == expected
    assert_same_origin_only(browser, keyed_server.url)


@needs_browser
def test_behind_a_key_the_page_asks_for_it(browser, keyed_server) -> None:
    """Without a key the stream is refused (1008) and the status says so; typed into the field, the key works."""
    browser.get(f"{keyed_server.url}/demo?autostart=1")
    state, text = wait_for(browser, lambda d: page_status(d)[0] not in ("idle", "connecting") and page_status(d),
                           30, "the refusal")
    assert state == "auth" and "API key" in text and "1008" in text, text
    browser.find_element("id", "key").send_keys(KEY)
    browser.find_element("id", "start").click()
    wait_for(browser, lambda d: page_status(d)[0] == "listening", 60, "the page to listen")
    browser.find_element("id", "stop").click()
    wait_for(browser, lambda d: page_status(d)[0] != "stopping", 60, "the close")
    assert page_status(browser) == ["closed", "closed"]

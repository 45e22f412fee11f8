"""The web page in a real browser: headless Debian Chromium driven by Playwright.

One ``entitwist app`` server (a subprocess, tiny untrained model, free loopback port) serves
every test of this file; the page may reach nothing but that server. Covered: the page
loads with its examples; an example runs and shows its pictures; an uploaded image with a
typed sentence gives a mask whose pixels equal ``Predictor.predict`` on the same image
(both the downloaded mask PNG and the mask shown); bad uploads and an empty sentence show
one error line; stopping the server removes its temporary folder.

A second server, started with ``--allow-remote`` and ``ENTITWIST_APP_AUTH``, shows Gradio's
login page: a wrong password is refused, the right one opens the page.

Without Chromium or Playwright these tests are skipped with one line, unless
``ENTITWIST_REQUIRE_BROWSER=1`` (CI), which makes them fail saying what to install. Set
``ENTITWIST_UPDATE_SCREENSHOT=1`` to refresh ``docs/images/app_screenshot.png`` from the run.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import entitwist
from browser_helpers import AppServer, chromium_path, launch_chromium, local_only, save_screenshot
from entitwist.data.synthetic_scene import generate_scene

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "docs" / "images" / "app_screenshot.png"
RUN_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("app_model")
    entitwist.create_model("entitwist_tiny").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    chromium_path()  # fail first, with the fix, when there is no browser
    app = AppServer(
        model_dir, tmp_path_factory.mktemp("app_cwd"), ["--examples", "2", "--max-upload-mb", "1"]
    )
    try:
        app.wait_ready(timeout=90)
        yield app
    finally:
        app.stop()


@pytest.fixture(scope="module")
def browser(server: AppServer) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chrome = launch_chromium(pw)
        try:
            yield chrome
        finally:
            chrome.close()


@pytest.fixture()
def page(browser: Any, server: AppServer) -> Iterator[tuple[Any, list[str]]]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    refused = local_only(tab, server.url)
    tab.goto(server.url)
    tab.wait_for_selector("#segment", timeout=30_000)
    yield tab, refused
    context.close()
    assert refused == [], f"the page tried to reach the internet: {refused[:3]}"


def _status(tab: Any) -> str:
    return tab.locator("#status").inner_text().strip()


def _wait_status(tab: Any, prefix: str) -> str:
    tab.wait_for_function(
        "p => (document.querySelector('#status')?.innerText || '').trim().startsWith(p)",
        arg=prefix,
        timeout=RUN_TIMEOUT_MS,
    )
    return _status(tab)


def _fetch_png(tab: Any, url: str) -> np.ndarray:
    response = tab.request.get(url)
    assert response.ok, f"{url}: HTTP {response.status}"
    return np.asarray(Image.open(io.BytesIO(response.body())))


def test_page_loads_with_its_examples(page: tuple[Any, list[str]]) -> None:
    tab, _ = page
    assert tab.title() == "entitwist"
    assert "referring segmentation" in tab.locator("h1").inner_text()
    rows = tab.locator("#examples tbody tr")
    assert rows.count() == 2
    assert "scene_1.png" in rows.nth(0).inner_text()
    assert tab.locator("#upload input[type=file]").count() == 1
    assert tab.locator("#sentences textarea").is_editable()


def test_server_serves_no_file_outside_its_folder(
    page: tuple[Any, list[str]], server: AppServer
) -> None:
    tab, _ = page
    for path in (server.log_path, Path("/etc/passwd"), REPO / "pyproject.toml"):
        response = tab.request.get(f"{server.url}gradio_api/file={path}")
        assert response.status in (403, 404), (path, response.status)


def test_an_example_runs_and_shows_its_pictures(page: tuple[Any, list[str]]) -> None:
    tab, _ = page
    tab.locator("#examples tbody tr").nth(0).locator("td").nth(0).click()
    status = _wait_status(tab, "Segmented")
    assert "scene_1.png (256x256, no CRS)" in status
    tab.wait_for_selector("#overlay img", timeout=RUN_TIMEOUT_MS)
    n_sentences = len(tab.locator("#sentences textarea").input_value().strip().splitlines())
    assert tab.locator("#overlay img").count() == n_sentences >= 1
    mask = _fetch_png(tab, tab.locator("#mask img").first.get_attribute("src"))
    assert mask.shape == (256, 256) and set(np.unique(mask)) <= {0, 255}
    links = tab.locator("#downloads a[download]")
    names = sorted(links.nth(i).get_attribute("download") for i in range(links.count()))
    assert len(names) == 2 * n_sentences
    assert names[0].startswith("scene_1") and names[-1].endswith("_polygons.geojson")


def test_upload_and_sentence_give_the_predictors_mask(
    page: tuple[Any, list[str]], model_dir: Path, tmp_path: Path
) -> None:
    from entitwist.inference import Predictor

    tab, _ = page
    rgb = generate_scene(21, size=128).image[:112]  # (112, 128, 3)
    image = tmp_path / "my_scene.png"
    Image.fromarray(rgb).save(image)
    sentence = "the storage tank at the top left"
    tab.locator("#upload input[type=file]").set_input_files(str(image))
    _wait_status(tab, "Loaded")  # the upload's preview
    assert "my_scene.png (128x112, no CRS)" in _status(tab)
    tab.locator("#sentences textarea").fill(sentence)
    tab.locator("#segment").click()
    status = _wait_status(tab, "Segmented")
    assert "my_scene.png (128x112, no CRS) for 1 sentence(s)" in status

    expected = Predictor.from_pretrained(model_dir, device="cpu").predict(rgb, sentence)
    want = expected.mask.astype(np.uint8) * 255  # (112, 128)
    link = tab.locator('#downloads a[download="my_scene_mask.png"]')
    downloaded = _fetch_png(tab, link.get_attribute("href"))
    assert downloaded.shape == (112, 128)
    np.testing.assert_array_equal(downloaded, want)
    shown = _fetch_png(tab, tab.locator("#mask img").first.get_attribute("src"))
    np.testing.assert_array_equal(shown, want)

    target = SCREENSHOT if os.environ.get("ENTITWIST_UPDATE_SCREENSHOT") else tmp_path / "app.png"
    shot = save_screenshot(tab, target)
    assert shot.stat().st_size < 300_000
    assert Image.open(shot).size[0] == 1280


def test_bad_uploads_and_empty_sentence_show_one_error_line(
    page: tuple[Any, list[str]], tmp_path: Path
) -> None:
    tab, _ = page
    # Gradio's own checks (the size limit given to it, the file types): one message each
    noise = np.random.default_rng(0).integers(0, 256, size=(700, 800, 3), dtype=np.uint8)
    big = tmp_path / "big.png"
    Image.fromarray(noise).save(big)
    assert big.stat().st_size > 2**20
    tab.locator("#upload input[type=file]").set_input_files(str(big))
    toast = tab.locator("[data-testid=toast-body]").filter(has_text="maximum allowed size")
    toast.first.wait_for(timeout=10_000)
    assert '"big.png"' in toast.first.inner_text()
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    tab.locator("#upload input[type=file]").set_input_files(str(notes))
    toast = tab.locator("[data-testid=toast-body]").filter(has_text="Invalid file type")
    toast.first.wait_for(timeout=10_000)
    assert "notes.txt" in toast.first.inner_text()

    fake = tmp_path / "photo.png"
    fake.write_text("not an image at all\n" * 50)
    tab.locator("#upload input[type=file]").set_input_files(str(fake))
    status = _wait_status(tab, "Error:")
    assert status.startswith("Error: cannot read image 'photo.png'")
    assert "Traceback" not in tab.content()

    good = tmp_path / "good.png"
    Image.fromarray(generate_scene(4, size=64).image).save(good)
    if tab.locator("#upload button[aria-label='Clear']").count():
        tab.locator("#upload button[aria-label='Clear']").first.click()
    tab.locator("#upload input[type=file]").set_input_files(str(good))
    _wait_status(tab, "Loaded")
    tab.locator("#sentences textarea").fill("  \n ")
    tab.locator("#segment").click()
    status = _wait_status(tab, "Error: the sentence is empty")
    assert "\n" not in status
    assert tab.locator("#mask img").count() == 0


def test_stopping_the_server_removes_its_temporary_folder(server: AppServer) -> None:
    assert server.temp_dir is not None and server.temp_dir.is_dir()
    assert (server.temp_dir / "gradio").is_dir()  # the uploads went here
    uploads = [p.name for p in (server.temp_dir / "gradio").rglob("*.png")]
    assert "my_scene.png" in uploads or "scene_1.png" in uploads
    assert server.stop() == 0
    assert not server.temp_dir.exists()
    # nothing was written in the folder it ran from (no .gradio/, no outputs) but our log
    assert sorted(p.name for p in server.cwd.iterdir()) == ["server.log"]
    assert "temporary files removed" in server.log()


LOGIN = ("alice", "correct-horse-battery")


@pytest.fixture(scope="module")
def shared_server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """The page as shared with --allow-remote (on loopback all the same): it asks a login."""
    chromium_path()
    app = AppServer(
        model_dir,
        tmp_path_factory.mktemp("shared_cwd"),
        ["--examples", "1", "--allow-remote"],
        env={"ENTITWIST_APP_AUTH": ":".join(LOGIN)},
    )
    try:
        app.wait_ready(timeout=90)
        yield app
    finally:
        app.stop()


def _log_in(tab: Any, user: str, password: str) -> None:
    tab.get_by_label("username").fill(user)
    tab.get_by_label("password").fill(password)
    tab.get_by_role("button", name="Login").click()


def test_shared_page_asks_for_a_login(browser: Any, shared_server: AppServer) -> None:
    import time

    deadline = time.monotonic() + 20  # the line follows the server's start
    while "press Ctrl-C" not in shared_server.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    line = [ln for ln in shared_server.log().splitlines() if "can reach" in ln or "can open" in ln]
    assert line == [
        f"entitwist app: {shared_server.url} (only this machine can reach it; "
        f"it asks for a login (users: {LOGIN[0]}))"
    ]
    assert LOGIN[1] not in shared_server.log()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    refused = local_only(tab, shared_server.url)
    tab.goto(shared_server.url)
    tab.get_by_role("button", name="Login").wait_for(timeout=30_000)
    assert "entitwist: log in to use this page" in tab.locator("body").inner_text()
    assert tab.locator("#segment").count() == 0
    # nothing of the app is served without the login
    assert tab.request.get(f"{shared_server.url}config").status == 401

    _log_in(tab, LOGIN[0], "wrong-password")
    tab.get_by_text("Incorrect Credentials").wait_for(timeout=10_000)
    assert tab.locator("#segment").count() == 0
    assert tab.request.get(f"{shared_server.url}config").status == 401

    _log_in(tab, *LOGIN)
    tab.wait_for_selector("#segment", timeout=30_000)
    assert "referring segmentation" in tab.locator("h1").inner_text()
    assert tab.locator("#examples tbody tr").count() == 1
    assert tab.request.get(f"{shared_server.url}config").status == 200
    context.close()
    assert refused == [], f"the page tried to reach the internet: {refused[:3]}"

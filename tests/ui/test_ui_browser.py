"""The web UI in a real browser: `dicomflow serve`, DCMTK's storescu, Debian's Chromium driven
by Playwright (never a downloaded browser). Each page's screenshot is saved under
test-artifacts/ui/.

The tests share one server and one browser and run in file order: the ingest first, then the
pages a radiographer, a researcher and an administrator would open. The browser logs in with
the admin token (pasted on the login page, as a person would); the last tests log in as a reader
of de-identified data, check the CSRF protection and log out.
"""

import csv
import io
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect, sync_playwright

from dicomflow.kernel.backends import open_bus
from dicomflow.kernel.events import Topic
from dicomflow.kernel.settings import Settings
from dicomflow.synthetic import iter_study_tree, write_tree
from tests.conftest import ADMIN_TOKEN, free_port
from tests.e2e.conftest import Server, server_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "ui"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PATIENTS, SERIES, INSTANCES = 2, 2, 5
TOTAL = PATIENTS * SERIES * INSTANCES
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`dicomflow serve` with two patients (2 series x 5 CT/MR instances each) sent by storescu."""
    folder = tmp_path_factory.mktemp("ui-e2e")
    data_dir = folder / "data"
    dicom_port, http_port = free_port(), free_port()
    server = Server(
        data_dir,
        dicom_port,
        http_port,
        server_env(data_dir, dicom_port, http_port),
        folder / "server.log",
    )
    server.start()
    try:
        write_tree(
            iter_study_tree(
                patients=PATIENTS, series_per_study=SERIES, instances_per_series=INSTANCES
            ),
            folder / "send",
        )
        server.storescu(folder / "send")
        server.wait_idle()
        yield server
    finally:
        if server.process is not None:
            server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: scripts/bootstrap.sh installs it (apt chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            launched.close()


def new_page(browser: Browser, served: Server) -> tuple[Page, list[str]]:
    context = browser.new_context(
        base_url=f"http://127.0.0.1:{served.http_port}",
        viewport={"width": 1366, "height": 900},
        accept_downloads=True,
    )
    context.set_default_timeout(TIMEOUT_MS)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    return opened, errors


def log_in(page: Page, token: str, start: str = "/") -> None:
    """Open `start`, land on the login page, paste the token, come back to `start`."""
    page.goto(start)
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Log in").click()
    expect(page).not_to_have_url(re.compile("/ui/login"))


@pytest.fixture(scope="module")
def page(browser: Browser, served: Server) -> Iterator[Page]:
    opened, errors = new_page(browser, served)
    log_in(opened, ADMIN_TOKEN)
    yield opened
    opened.context.close()
    assert not errors, f"JavaScript errors: {errors}"


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def pixel_std(png: bytes) -> float:
    return float(np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64).std())


def test_dashboard_shows_the_ingest(page: Page, served: Server) -> None:
    page.goto("/ui/dashboard")
    expect(page.locator("#received-count")).to_contain_text(str(TOTAL))
    expect(page.locator("#stored-count")).to_contain_text(str(TOTAL))
    expect(page.locator("#indexed-count")).to_contain_text(str(TOTAL))
    expect(page.locator("#processor-table")).to_contain_text("storage")
    expect(page.locator("#modality-chart svg rect").first).to_be_visible()
    expect(page.locator("#senders-chart")).to_contain_text("E2ESCU")
    expect(page.locator("#per-day-chart svg")).to_be_visible()
    screenshot(page, "dashboard")


def test_search_finds_the_study(page: Page) -> None:
    page.goto("/")
    page.get_by_label("Patient name").fill("DOE")
    page.get_by_role("button", name="Search").click()
    results = page.locator("#results")
    expect(results).to_contain_text("1 study")
    expect(results).to_contain_text("DOE, JOHN0")
    expect(results).not_to_contain_text("ROE")
    assert "patient_name=DOE" in page.url
    # the query box takes the Lucene-style syntax of /api/search
    page.get_by_label("Patient name").fill("")
    page.get_by_label("Query").fill("PatientName:ROE* AND ModalitiesInStudy:MR")
    page.get_by_role("button", name="Search").click()
    expect(results).to_contain_text("ROE, JANE1")
    expect(results).not_to_contain_text("DOE, JOHN0")
    page.goto("/")
    expect(page.locator("#results")).to_contain_text(f"{PATIENTS} studies")
    _wait_for_images(page, "#results img.thumb", PATIENTS * SERIES)
    screenshot(page, "search")


def _wait_for_images(page: Page, selector: str, count: int) -> None:
    """Wait until `count` images of `selector` are loaded with pixels (not broken)."""
    page.wait_for_function(
        """([selector, count]) => {
            const images = Array.from(document.querySelectorAll(selector));
            return images.length >= count && images.every(i => i.complete && i.naturalWidth > 0);
        }""",
        arg=[selector, count],
    )


def test_study_page_shows_thumbnails(page: Page) -> None:
    page.goto("/?patient_name=DOE")
    page.locator("#results h3 a").first.click()
    expect(page.locator("h1")).to_contain_text("CHEST WITH CONTRAST")
    expect(page.locator(".attributes")).to_contain_text("DOE, JOHN0")
    _wait_for_images(page, ".series-grid img.thumb", SERIES)
    thumbnail = page.locator(".series-grid img.thumb").first
    assert pixel_std(thumbnail.screenshot()) > 5
    expect(page.locator("#instances tbody tr")).to_have_count(INSTANCES)
    # the instance list of the other series, through htmx
    page.get_by_role("link", name="Instances").nth(1).click()
    expect(page.locator("#instances tbody tr")).to_have_count(INSTANCES)
    screenshot(page, "study")


def test_viewer_shows_a_rendered_frame(page: Page) -> None:
    page.goto("/?patient_name=DOE")
    page.locator("#results .series-strip a").first.click()
    frame = page.locator("#frame")
    _wait_for_images(page, "#frame", 1)
    size = frame.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert size == [64, 64]
    rendered = page.request.get(frame.get_attribute("src"))
    assert rendered.ok and rendered.headers["content-type"] == "image/png"
    assert pixel_std(rendered.body()) > 5, "the rendered frame is blank"
    assert pixel_std(frame.screenshot()) > 5, "the frame on screen is blank"
    expect(page.locator("#frame-info")).to_contain_text(f"Image 1 of {INSTANCES}")
    # scroll through the series with the keyboard, then a window preset and zoom
    page.locator("#viewport").focus()
    page.keyboard.press("ArrowDown")
    expect(page.locator("#frame-info")).to_contain_text(f"Image 2 of {INSTANCES}")
    page.get_by_role("button", name="Bone").click()
    expect(frame).to_have_attribute("src", _contains("window=400%2C1800"))
    _wait_for_images(page, "#frame", 1)
    page.get_by_role("button", name="Zoom in").click()
    expect(page.locator("#zoom-level")).not_to_contain_text("fit")
    page.get_by_role("button", name="Fit", exact=True).click()
    expect(page.locator("#zoom-level")).to_contain_text("fit")
    _wait_for_images(page, "#frame", 1)
    screenshot(page, "viewer")


def _contains(text: str) -> re.Pattern[str]:
    return re.compile(re.escape(text))


def test_tag_dump_shows_patient_name(page: Page) -> None:
    page.goto("/?patient_name=DOE")
    page.locator("#results h3 a").first.click()
    page.get_by_role("link", name="Tags of instance 1").click()
    row = page.locator('#tag-table tr[data-keyword="PatientName"]')
    expect(row).to_contain_text("(0010,0010)")
    expect(row).to_contain_text("DOE^JOHN0")
    expect(page.locator('#tag-table tr[data-keyword="PixelData"]')).to_contain_text("bulk data")
    screenshot(page, "tags")
    page.get_by_label("Filter tags").fill("PatientName")
    expect(page.locator("#tag-count")).to_contain_text("1 of")


def test_csv_export_downloads_the_right_rows(page: Page, served: Server) -> None:
    page.goto("/?modality=CT&sort=PatientName")
    expect(page.locator("#results")).to_contain_text("studies")
    with page.expect_download() as info:
        page.locator("#export-csv").click()
    download = info.value
    text = Path(download.path()).read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    expected = served.http.get(
        "/api/search", params={"q": "ModalitiesInStudy:CT", "limit": 100}
    ).json()
    assert {r["StudyInstanceUID"] for r in rows} == {
        s["StudyInstanceUID"] for s in expected["results"]
    }
    assert len(rows) == expected["total"] == PATIENTS
    assert [r["PatientName"] for r in rows] == sorted(r["PatientName"] for r in rows)
    assert all(r["NumberOfStudyRelatedInstances"] == str(SERIES * INSTANCES) for r in rows)
    with page.expect_download() as info:
        page.locator("#export-json").click()
    exported = json.loads(Path(info.value.path()).read_text(encoding="utf-8"))
    assert exported["total"] == PATIENTS and len(exported["results"]) == PATIENTS


def test_deidentified_namespace_is_one_click_away(page: Page) -> None:
    page.goto("/")
    expect(page.locator("#namespace-banner")).to_contain_text("Original data")
    page.locator(".ns-switch").get_by_role("link", name="De-identified").click()
    expect(page.locator("#namespace-banner")).to_contain_text("De-identified data")
    results = page.locator("#results")
    expect(results).to_contain_text(f"{PATIENTS} studies")
    expect(results).not_to_contain_text("DOE, JOHN0")
    assert "namespace=deidentified" in page.url
    _wait_for_images(page, "#results img.thumb", PATIENTS * SERIES)
    screenshot(page, "search-deidentified")


def test_dead_letter_is_listed_and_retried(page: Page, served: Server) -> None:
    bus = open_bus(Settings(data_dir=served.data_dir))
    try:
        bus.producer().publish(bus.topic(Topic.RECEIVED), "1.2.3", b'{"type": "nonsense"}')
    finally:
        bus.close()
    served.wait_idle()
    page.goto("/ui/dashboard")
    expect(page.locator("#deadletter-count")).to_have_text("1")
    table = page.locator("#deadletter-table")
    expect(table).to_contain_text("storage")
    expect(table).to_contain_text("PoisonEvent")
    expect(table).to_contain_text("dicomflow.received")
    page.get_by_role("button", name="Retry").click()
    expect(page.locator("#deadletters-box .notice")).to_contain_text("re-published")
    served.wait_idle()
    # still poison: the retry fails again and a second dead letter appears
    expect(page.locator("#deadletter-count")).to_have_text("2", timeout=TIMEOUT_MS)


def test_admin_destinations_processors_and_reindex(page: Page, served: Server) -> None:
    page.goto("/ui/admin")
    page.get_by_label("AE title").fill("PACS2")
    page.get_by_label("Host").fill("127.0.0.1")
    page.get_by_label("Port").fill("11113")
    page.get_by_role("button", name="Add destination").click()
    expect(page.locator("#destination-table")).to_contain_text("PACS2")
    destinations = served.http.get("/api/admin/destinations").json()["destinations"]
    assert [d["ae_title"] for d in destinations] == ["PACS2"]
    expect(page.locator("#admin-processor-table")).to_contain_text("deidentify")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Rebuild index").click()
    expect(page.locator("#reindex-box")).to_contain_text("done")
    expect(page.locator("#reindex-box")).to_contain_text(f"{TOTAL} objects indexed")
    deadline = time.monotonic() + 10
    while served.http.get("/api/search").json()["total"] != PATIENTS:
        assert time.monotonic() < deadline, "the rebuilt index misses studies"
        time.sleep(0.2)
    screenshot(page, "admin")


def test_a_deid_reader_sees_only_deidentified_data_and_no_admin(
    browser: Browser, served: Server, page: Page
) -> None:
    # The admin makes the researcher's token on the admin page; it is shown once.
    page.goto("/ui/admin")
    page.get_by_label("Name", exact=True).fill("researcher")
    page.get_by_label("Role", exact=True).select_option("deid-reader")
    page.get_by_role("button", name="Create token").click()
    token = page.locator("#new-token-value").inner_text()
    expect(page.locator("#token-table")).to_contain_text("researcher")
    screenshot(page, "admin-token-created")
    page, errors = new_page(browser, served)  # the researcher, in a browser of their own
    try:
        page.goto("/ui/login")
        page.get_by_label("Token").fill("dft_0000000000000000_" + "x" * 43)
        page.get_by_role("button", name="Log in").click()
        expect(page.locator("#login-error")).to_contain_text("not valid")
        log_in(page, token, "/ui/dashboard")
        expect(page.locator("#user-menu")).to_contain_text("researcher")
        cookie = next(c for c in page.context.cookies() if c["name"] == "dicomflow_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert token not in cookie["value"]
        page.goto("/")
        expect(page.locator("#namespace-banner")).to_contain_text("De-identified data")
        expect(page.locator("#results")).to_contain_text(f"{PATIENTS} studies")
        expect(page.locator("#results")).not_to_contain_text("DOE, JOHN0")
        expect(page.locator("#ns-switch")).to_have_count(0)
        expect(page.get_by_role("link", name="Admin")).to_have_count(0)
        screenshot(page, "search-deid-reader")
        denied = page.goto("/?namespace=original")
        assert denied is not None and denied.status == 403
        expect(page.locator("main")).to_contain_text("phi-reader")
        assert page.goto("/ui/admin").status == 403  # type: ignore[union-attr]
        page.goto("/")
        page.get_by_role("button", name="Log out").click()
        expect(page).to_have_url(re.compile("/ui/login"))
        page.goto("/ui/dashboard")
        expect(page).to_have_url(re.compile(r"/ui/login\?next=%2Fui%2Fdashboard"))
    finally:
        page.context.close()
    assert not errors, f"JavaScript errors: {errors}"


def test_ui_changes_from_another_site_are_refused(page: Page, served: Server) -> None:
    """The session cookie is SameSite=Strict; a forged POST is refused on its Origin too."""
    form = {"ae_title": "EVIL", "host": "203.0.113.9", "port": "104"}
    for headers in ({"Origin": "http://evil.example"}, {"Referer": "http://evil.example/x"}, {}):
        forged = page.request.post("/ui/fragments/destinations", form=form, headers=headers)
        assert forged.status == 403, (headers, forged.status)
    destinations = served.http.get("/api/admin/destinations").json()["destinations"]
    assert "EVIL" not in [d["ae_title"] for d in destinations]
    origin = f"http://127.0.0.1:{served.http_port}"
    same_site = page.request.post(
        "/ui/fragments/destinations", form=form, headers={"Origin": origin, "HX-Request": "true"}
    )
    assert same_site.status == 200
    assert served.http.delete("/api/admin/destinations/EVIL").status_code == 204

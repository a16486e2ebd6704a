"""Phase `ui`: how long the web UI's pages take to load with the archive at each size.

Two measures per page. Server: the time to the last byte of the page's HTML and of every
fragment and image it loads (what the archive costs, from a keep-alive HTTP client). Browser:
Debian's Chromium driven by Playwright, from navigation start until the page is ready for the
user: the load event fired, no htmx request in flight and every image in view decoded (lazy
images below the fold load as the user scrolls). The browser
measure is skipped, with a note, when Playwright or Chromium is missing.
"""

import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from dicomflow.bench.data import patient_name
from dicomflow.bench.receivers import BenchError, HttpClient
from dicomflow.bench.stats import latency_summary

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
READY = """() => document.readyState === 'complete'
    && !document.querySelector('.htmx-request')
    && Array.from(document.images).every(
        (image) => image.complete || image.getBoundingClientRect().top > window.innerHeight)"""
_SUBRESOURCE = re.compile(rb'(?:hx-get|src)="(/(?:ui/fragments|dicomweb)[^"]*)"')


@dataclass(frozen=True)
class UiPage:
    name: str
    path: str


def _first(http: HttpClient, path: str, tag: str) -> str:
    answer = http.get_json(path)
    if not answer:
        raise BenchError(f"GET {path} found nothing")
    return str(answer[0][tag]["Value"][0])


def ui_pages(http: HttpClient, studies: int, seed: int) -> list[UiPage]:
    """The pages a user opens, on a study picked at random among the `studies` archived."""
    study_number = random.Random(seed).randrange(studies)
    pid = f"BPID{study_number:08d}"
    study = _first(http, f"/dicomweb/studies?PatientID={pid}", "0020000D")
    series = _first(http, f"/dicomweb/studies/{study}/series", "0020000E")
    instance = _first(http, f"/dicomweb/studies/{study}/series/{series}/instances", "00080018")
    prefix = patient_name(study_number)[:5]
    return [
        UiPage("search page", "/"),
        UiPage("search: name prefix", "/?" + urlencode({"patient_name": prefix + "*"})),
        UiPage("search: free text", "/?" + urlencode({"q": prefix}, quote_via=quote)),
        UiPage("search: page 20 of all", "/?page=20"),
        UiPage("study", f"/ui/studies/{study}"),
        UiPage("viewer", f"/ui/viewer/{study}/{series}"),
        UiPage("tag dump", f"/ui/tags/{study}/{series}/{instance}"),
        UiPage("dashboard", "/ui/dashboard"),
        UiPage("admin", "/ui/admin"),
    ]


def _server_load(http: HttpClient, path: str) -> float:
    """Seconds to fetch a page and, one after the other, the fragments and images it names."""
    started = time.perf_counter()
    status, body = http.get(path)
    if status != 200:
        raise BenchError(f"GET {path} answered {status}: {body[:300]!r}")
    for match in dict.fromkeys(_SUBRESOURCE.findall(body)):
        http.get(match.decode().replace("&amp;", "&"))
    return time.perf_counter() - started


def _sampled(
    pages: list[UiPage], rounds: int, load: Callable[[str], float]
) -> dict[str, dict[str, Any]]:
    samples: dict[str, list[float]] = {page.name: [] for page in pages}
    for round_number in range(rounds + 1):
        for page in pages:
            seconds = load(page.path)
            if round_number:  # the first round warms caches, as a user's second visit would
                samples[page.name].append(seconds)
    return {name: latency_summary(values) for name, values in samples.items()}


def chromium_path() -> str | None:
    return next((path for path in CHROMIUM_CANDIDATES if Path(path).exists()), None)


def measure_ui(
    port: int, pages: list[UiPage], rounds: int, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """Server and browser load times of every page: {"server": {...}, "browser": {...}}."""
    http = HttpClient(port, headers=headers)
    try:
        out: dict[str, Any] = {"server": _sampled(pages, rounds, lambda p: _server_load(http, p))}
    finally:
        http.close()
    out["browser"] = _browser(port, pages, rounds, headers or {})
    return out


def _browser(
    port: int, pages: list[UiPage], rounds: int, headers: dict[str, str]
) -> dict[str, Any]:
    chromium = chromium_path()
    try:
        from playwright.sync_api import TimeoutError as PlaywrightTimeout
        from playwright.sync_api import sync_playwright
    except ImportError:
        return {"status": "n/a (Playwright is not installed: pip install -e .[dev])"}
    if chromium is None or shutil.which(chromium) is None:
        return {"status": "n/a (Chromium not found: apt-get install chromium)"}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, args=CHROMIUM_ARGS, headless=True
        )
        try:
            context = browser.new_context(extra_http_headers=headers)
            page = context.new_page()

            def load(path: str) -> float:
                page.goto(f"http://127.0.0.1:{port}{path}", wait_until="load")
                try:
                    page.wait_for_function(READY, polling=10, timeout=30_000)
                except PlaywrightTimeout as exc:
                    raise BenchError(f"{path} was not ready after 30 s in Chromium") from exc
                ready_ms: float = page.evaluate("performance.now()")
                return ready_ms / 1000

            return _sampled(pages, rounds, load)
        finally:
            browser.close()

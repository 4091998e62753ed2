"""Drive Debian's Chromium headless for the live view's browser test, and read its screenshots.

Playwright (the PyPI package ``playwright``) talks to the system's ``/usr/bin/chromium``; its own
browser download (``playwright install``) is never used, so nothing is fetched at test time.
Screenshots are checked with Pillow: the live view draws vehicles, tracks and event markers in
opaque, distinctive colours (``COLOURS`` in cloud_bridge/static/app.js, repeated below), so a
test can count them.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageChops

if TYPE_CHECKING:
    from playwright.sync_api import ConsoleMessage, Page

RGB = tuple[int, int, int]

# Colours of cloud_bridge/static/app.js (COLOURS) and app.css (--c-*): keep the three in step.
VEHICLE_ONLINE: RGB = (0x0E, 0xA5, 0xE9)  # circle marker fill, online vehicle
VEHICLE_OFFLINE: RGB = (0x64, 0x74, 0x8B)  # circle marker fill, offline vehicle
TRACK: RGB = (0x7C, 0x3A, 0xED)  # replayed trip's polyline
HARSH: RGB = (0xDC, 0x26, 0x26)  # harsh_* / impact markers (diamonds) on a replay
IDLE: RGB = (0xF5, 0x9E, 0x0B)  # idle_start / excessive_idle / idle_end markers (squares)
REPLAY_CURSOR: RGB = (0x10, 0xB9, 0x81)  # the replay's moving position
MAP_BACKGROUND: RGB = (0xEE, 0xF2, 0xF6)  # the map with no tiles

CHROMIUM_ENV = "LIVEVIEW_CHROMIUM"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
# Root in a container has no user namespace for Chromium's sandbox; /dev/shm may be tiny.
CHROMIUM_ARGS = ("--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--hide-scrollbars")


class BrowserUnavailable(RuntimeError):
    """Chromium or Playwright is missing; the message says what to install."""


def chromium_path() -> str:
    """The system Chromium (``$LIVEVIEW_CHROMIUM`` first): Playwright's own build is not used."""
    override = os.environ.get(CHROMIUM_ENV)
    candidates = [override] if override else list(CHROMIUM_CANDIDATES)
    if not override:
        found = shutil.which("chromium") or shutil.which("chromium-browser")
        if found:
            candidates.append(found)
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise BrowserUnavailable(
        f"no Chromium at {', '.join(c for c in candidates if c)}: install Debian's package "
        "(`apt-get install chromium`, which scripts/ensure-deps.sh does) or set "
        f"{CHROMIUM_ENV} to a Chromium binary"
    )


def browser_missing() -> str | None:
    """Why a browser test cannot run here, or None; for ``pytest.skip`` where that is wanted."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return _PLAYWRIGHT_MISSING
    try:
        chromium_path()
    except BrowserUnavailable as exc:
        return str(exc)
    return None


_PLAYWRIGHT_MISSING = (
    "the Python package `playwright` is missing: `.venv/bin/pip install -e '.[dev]'` "
    "(or `pip install playwright`); do not run `playwright install`, the tests use the "
    "system Chromium"
)


@dataclass
class BrowserPage:
    """A page plus everything the browser reported as an error while the test ran."""

    page: Page
    errors: list[str] = field(default_factory=list)

    def assert_no_errors(self, allow: Iterable[str] = ()) -> None:
        """Fail on any console error or uncaught exception (a 404 asset shows up here too).

        ``allow`` lists substrings of errors a test provoked on purpose: Chromium itself logs
        every 4xx/5xx answer ("... status of 503 ..."), so a test of the retry banner allows it.
        """
        allowed = tuple(allow)
        errors = [e for e in self.errors if not any(a in e for a in allowed)]
        if errors:
            raise AssertionError("browser reported errors:\n  " + "\n  ".join(errors))

    def screenshot(self, path: str | Path, selector: str | None = None) -> Path:
        """Save a PNG of the viewport, or of one element (``#map`` leaves the side panel out)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        if selector:
            self.page.locator(selector).screenshot(path=str(out))
        else:
            self.page.screenshot(path=str(out))
        return out


@contextmanager
def open_page(
    width: int = 1280,
    height: int = 800,
    *,
    timezone: str = "UTC",
    chromium: str | None = None,
) -> Iterator[BrowserPage]:
    """A headless Chromium page at a fixed size and time zone, closed on exit."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise BrowserUnavailable(_PLAYWRIGHT_MISSING) from exc
    executable = chromium or chromium_path()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=executable, headless=True, args=list(CHROMIUM_ARGS)
        )
        try:
            context = browser.new_context(
                viewport={"width": width, "height": height},
                device_scale_factor=1,
                locale="en-GB",
                timezone_id=timezone,
            )
            page = context.new_page()
            result = BrowserPage(page)

            def on_console(msg: ConsoleMessage) -> None:
                if msg.type == "error":
                    loc = msg.location
                    where = f" ({loc.get('url', '')}:{loc.get('lineNumber', '')})" if loc else ""
                    result.errors.append(f"console.error: {msg.text}{where}")

            def on_page_error(exc: Exception) -> None:
                result.errors.append(f"uncaught: {exc}")

            page.on("console", on_console)
            page.on("pageerror", on_page_error)
            yield result
        finally:
            browser.close()


def wait_for(page: Page, js_condition: str, timeout: float = 10.0, poll: float = 0.05) -> None:
    """Wait until the JS expression is truthy in the page, or fail with it after ``timeout`` s.

    The expression is re-evaluated (not awaited), so a page mid-navigation just counts as false.
    """
    deadline = time.monotonic() + timeout
    last_error = ""
    while True:
        try:
            if page.evaluate(f"() => Boolean({js_condition})"):
                return
            last_error = ""
        except Exception as exc:  # a navigation or a ReferenceError before the script loads
            last_error = f" (last error: {exc})"
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for `{js_condition}`{last_error}"
            )
        page.wait_for_timeout(poll * 1000)


# --------------------------------------------------------------------------- screenshots

PngSource = str | Path | bytes | Image.Image


def _rgb(png: PngSource) -> Image.Image:
    if isinstance(png, Image.Image):
        return png.convert("RGB")
    if isinstance(png, bytes):
        from io import BytesIO

        return Image.open(BytesIO(png)).convert("RGB")
    with Image.open(png) as img:
        return img.convert("RGB")


def colour_mask(png: PngSource, rgb: RGB, tolerance: int = 8) -> Image.Image:
    """An "L" image: 255 where every channel is within ``tolerance`` of ``rgb``, else 0."""
    img = _rgb(png)
    bands = []
    for band, target in zip(img.split(), rgb, strict=True):
        lo, hi = target - tolerance, target + tolerance
        bands.append(band.point(lambda v, lo=lo, hi=hi: 255 if lo <= v <= hi else 0))
    mask = ImageChops.multiply(ImageChops.multiply(bands[0], bands[1]), bands[2])
    return mask


def colour_pixels(png: PngSource, rgb: RGB, tolerance: int = 8) -> int:
    """How many pixels are near ``rgb`` (each channel within ``tolerance``)."""
    return colour_mask(png, rgb, tolerance).histogram()[255]


def colour_blobs(png: PngSource, rgb: RGB, tolerance: int = 8, min_pixels: int = 12) -> int:
    """How many separate patches of ``rgb`` of at least ``min_pixels`` (e.g. vehicle markers).

    Patches touch through 8-neighbours; markers that overlap on screen count as one.
    """
    mask = colour_mask(png, rgb, tolerance)
    width, height = mask.size
    data = mask.tobytes()
    todo = {i for i, v in enumerate(data) if v}
    blobs = 0
    while todo:
        stack = [todo.pop()]
        size = 0
        while stack:
            i = stack.pop()
            size += 1
            y, x = divmod(i, width)
            for dy in (-1, 0, 1):
                ny = y + dy
                if not 0 <= ny < height:
                    continue
                for dx in (-1, 0, 1):
                    nx = x + dx
                    j = ny * width + nx
                    if 0 <= nx < width and j in todo:
                        todo.remove(j)
                        stack.append(j)
        if size >= min_pixels:
            blobs += 1
    return blobs


def is_blank(png: PngSource, share: float = 0.995) -> bool:
    """True when one colour covers at least ``share`` of the image: nothing was drawn."""
    img = _rgb(png)
    total = img.width * img.height
    colours = img.getcolors(maxcolors=total)
    if not colours:
        return True
    return max(count for count, _ in colours) >= share * total

"""Pages as a person sees them: headless Chromium renders a page at a window width, and the tests read what it
rendered (the DOM after layout, and whether anything runs off the right edge) or a screenshot of it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

# after layout: how wide the page's content is against the window, written into the DOM for --dump-dom to show
MEASURE = (
    "<script>window.addEventListener('load', () => {"
    "document.body.setAttribute('data-scroll-width', document.documentElement.scrollWidth);"
    "document.body.setAttribute('data-window-width', window.innerWidth);});</script>"
)


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed in CI (apt-get install chromium)")
        pytest.skip("chromium not installed: the page was parsed but not rendered in a browser")
    return found


def _run(page: Path, work: Path, *args: str) -> str:
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={work / 'chrome'}",
        *args,
        f"file://{page}",
    ]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120).stdout


def rendered(page: Path, work: Path, width: int = 1400) -> dict:
    """The DOM Chromium rendered at ``width`` px, and the page's content width after layout."""
    probe = work / f"{page.stem}.measured.html"
    probe.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    dom = _run(probe, work, f"--window-size={width},1000", "--virtual-time-budget=5000", "--dump-dom")
    m = re.search(r'data-scroll-width="(\d+)" data-window-width="(\d+)"', dom)
    assert m, "the page did not finish its layout in Chromium"
    return {"dom": dom, "scroll_width": int(m.group(1)), "window_width": int(m.group(2))}


def screenshot(page: Path, out: Path, width: int = 1400, height: int = 1000) -> Path:
    _run(page, out.parent, f"--window-size={width},{height}", f"--screenshot={out}")
    if os.environ.get("LORAFORGE_KEEP_SCREENSHOTS"):
        shutil.copy(out, os.environ["LORAFORGE_KEEP_SCREENSHOTS"])
    return out


def assert_painted(png: Path, width: int, height: int) -> None:
    """The screenshot is the window's size and shows a page: text and figures in many shades on a light ground,
    not a blank, black or one-colour error page."""
    from PIL import Image

    with Image.open(png) as im:
        assert im.size == (width, height), im.size
        rgb = im.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 16) or []
        assert len(colours) > 50, f"{png}: {len(colours)} colours: a blank page"
        light = sum(n for n, c in colours if min(c) > 200)
        assert light > 0.5 * width * height, f"{png}: not a page on a light ground"
        dark = sum(n for n, c in colours if max(c) < 100)
        assert dark > 0.001 * width * height, f"{png}: no text drawn"

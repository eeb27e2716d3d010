"""docs/images holds the screenshots docs/make_screenshots.py took of a real stack, and the
script's screenshot helper works (headless system Chromium through Playwright)."""

from __future__ import annotations

import importlib.util
import shutil
import struct
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGES = REPO_ROOT / "docs" / "images"
SCRIPT = REPO_ROOT / "docs" / "make_screenshots.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk; fails unless ``path`` starts like a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert head[12:16] == b"IHDR", f"{path}: no IHDR chunk first"
    return struct.unpack(">II", head[16:24])


def _script():
    spec = importlib.util.spec_from_file_location("make_screenshots", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["dashboard.png", "market.png", "coin.png", "asset_graph.png"])
def test_committed_screenshots_are_sane_pngs(name):
    path = IMAGES / name
    assert path.is_file(), f"{path} missing: run docs/make_screenshots.py"
    width, height = _png_size(path)
    assert (800, 500) <= (width, height) <= (3000, 3000), (width, height)
    assert 20_000 < path.stat().st_size < 2_000_000, path.stat().st_size
    from PIL import Image

    with Image.open(path) as image:
        image.verify()  # whole file decodes (CRCs, zlib stream)
    with Image.open(path) as image:
        colours = image.convert("RGB").resize((64, 40)).getcolors(maxcolors=64 * 40)
    assert len(colours) > 20, "a nearly blank screenshot"


@pytest.mark.skipif(
    not (shutil.which("chromium") or shutil.which("chromium-browser")),
    reason="chromium is not installed (apt-get install -y chromium)",
)
def test_screenshot_helper_captures_a_local_page(tmp_path):
    shots = _script()
    page = tmp_path / "page.html"
    page.write_text(
        "<html><body style='margin:0;background:rgb(10,120,200)'>"
        "<script>setTimeout(() => { document.getElementById('s').remove();"
        " document.body.insertAdjacentHTML('beforeend', '<h1>Top 5 gainers</h1>'); }, 300)"
        "</script><p id='s'>Loading</p></body></html>"
    )
    out = tmp_path / "shots" / "page.png"
    with shots.browser() as chromium:
        shots.screenshot(
            chromium,
            page.as_uri(),
            out,
            wait_for_text=("Top 5 gainers",),
            absent_text=("Loading",),
            settle_s=0.1,
            timeout_s=20,
            viewport=(320, 200),
        )
        with pytest.raises(Exception, match="never"):
            shots.screenshot(
                chromium,
                page.as_uri(),
                tmp_path / "never.png",
                wait_for_text=("never shown",),
                timeout_s=1,
            )
    assert _png_size(out) == (320, 200)
    assert not (tmp_path / "never.png").exists()
    from PIL import Image

    with Image.open(out) as image:
        assert image.convert("RGB").getpixel((310, 190)) == (10, 120, 200)

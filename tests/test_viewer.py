"""The reports' interactive viewer: vendored NiiVue, compact volumes, and the viewer working in headless Chromium."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from adheat_app.report.viewer import Layer, encode_volume, top_percent_threshold, viewer_html

STATIC = resources.files("adheat_app.report").joinpath("static")
#: Chromium flags that give headless WebGL2 through SwiftShader, offline and without a profile's state.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                  "--virtual-time-budget=10000", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--window-size=1200,900")
#: Test-only script put first into ``<head>``: records uncaught errors, rejected promises and console errors in
#: ``<html data-errors=...>``.
ERROR_HOOK = """<script>
(function () {
  var root = document.documentElement;
  function record(text) { root.dataset.errors = (root.dataset.errors ? root.dataset.errors + ' | ' : '') + text; }
  window.addEventListener('error', function (e) { record(e.message || 'resource error'); }, true);
  window.addEventListener('unhandledrejection', function (e) { record('unhandled rejection: ' + e.reason); });
  var error = console.error;
  console.error = function () {
    record('console.error: ' + Array.prototype.join.call(arguments, ' '));
    error.apply(console, arguments);
  };
})();
</script>"""
#: Test-only script put last into ``<body>``: once the viewer is ready, runs ``ACTIONS`` and records the canvas's
#: place on the page in ``data-canvas`` (x, y, width, height).
ACT_WHEN_READY = """<script>
(function () {
  var root = document.getElementById('adheat-viewer');
  function set(role, value) {
    var element = root.querySelector('[data-role="' + role + '"]');
    element.value = value;
    element.dispatchEvent(new Event('change'));
  }
  function poll() {
    if (root.dataset.state === 'loading') { setTimeout(poll, 50); return; }
    if (root.dataset.state === 'ready') { ACTIONS }
    var box = root.querySelector('canvas').getBoundingClientRect();
    root.dataset.canvas = [box.x, box.y, box.width, box.height].map(Math.round).join(' ');
  }
  poll();
})();
</script>"""
HIPPOCAMPUS_MM = "-26 -22 -14"


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium; .ci/run installs it)")
    return exe


def browse(html: str, folder: Path, actions: str = "", flags: tuple[str, ...] = CHROMIUM_FLAGS
           ) -> tuple[str, np.ndarray]:
    """The DOM and a screenshot (RGB array) of a page with the test scripts, after Chromium ran them offline."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    end = html.rindex("</body>")  # the last one: NiiVue's bundle holds the string too
    probe = folder / "page.html"
    probe.write_text(html.replace("<head>", "<head>" + ERROR_HOOK, 1)[:end + len(ERROR_HOOK)]
                     + ACT_WHEN_READY.replace("ACTIONS", actions) + html[end:])
    shot = folder / "shot.png"
    proc = subprocess.run([chromium(), *flags, f"--user-data-dir={folder / 'profile'}", f"--screenshot={shot}",
                           "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, np.asarray(Image.open(shot).convert("RGB")).astype(int)


def without_viewer(page: str) -> str:
    """A report's text without the viewer's element (its scripts, NiiVue's bundle and its data)."""
    return re.sub(r'<div id="adheat-viewer".*?</script>\n</div>', "", page, flags=re.S)


def viewer_root(dom: str) -> dict[str, str]:
    """The ``data-`` attributes of the viewer's root element, and the page's recorded errors (``errors``)."""
    tag = re.search(r'<div id="adheat-viewer"([^>]*)>', dom).group(1)
    attributes = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', tag))
    errors = re.search(r'<html[^>]*data-errors="([^"]*)"', dom)
    return attributes | {"errors": errors.group(1) if errors else ""}


def canvas_pixels(dom: str, shot: np.ndarray) -> np.ndarray:
    x, y, width, height = map(int, viewer_root(dom)["canvas"].split())
    assert width > 100 and height > 100
    return shot[y:y + height, x:x + width]


def warm_pixels(pixels: np.ndarray) -> int:
    """Pixels of NiiVue's ``warm`` colour map (orange to yellow)."""
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return int(((r > 200) & (g > 60) & (b < 80)).sum())


def winter_pixels(pixels: np.ndarray) -> int:
    """Pixels of NiiVue's ``winter`` colour map (blue to green), the negative side of signed overlays."""
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return int(((r < 60) & (np.maximum(g, b) > 150)).sum())


def grey_pixels(pixels: np.ndarray) -> int:
    """Mid-grey pixels: the background image in grey scale."""
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return int(((abs(r - g) < 8) & (abs(g - b) < 8) & (r > 50) & (r < 230)).sum())


@pytest.fixture(scope="module")
def viewer_page():
    """A page with only the viewer: the 4 mm template, AAL3, an unsigned and a signed overlay at the hippocampus."""
    from adheat_app.templates import get_atlas, get_template

    template = get_template(4.0)
    atlas = get_atlas(4.0, template.space)
    brain = template.mask_array()
    hippocampus = atlas.region_mask(["Hippocampus"])
    rng = np.random.default_rng(0)
    unsigned = np.where(brain, 0.2 * rng.random(template.shape) + hippocampus, 0).astype(np.float32)
    signed = np.where(brain, 0.1 * rng.standard_normal(template.shape) - hippocampus, 0).astype(np.float32)
    overlays = [Layer("unsigned", nib.Nifti1Image(unsigned, template.affine), threshold=0.5),
                Layer("signed", nib.Nifti1Image(signed, template.affine), signed=True, threshold=0.5)]
    fragment = viewer_html([Layer("template", template.t1w)], overlays, atlas,
                           fallback='<p id="static-figures">static figures</p>')
    return f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"></head><body>{fragment}</body></html>'


def test_vendored_niivue_matches_its_record():
    record = json.loads(STATIC.joinpath("niivue.json").read_text())
    bundle = STATIC.joinpath("niivue.umd.js").read_bytes()
    assert record["package"] == "@niivue/niivue" and record["license"] == "BSD-2-Clause"
    assert hashlib.sha256(bundle).hexdigest() == record["sha256"] and len(bundle) == record["bytes"]
    assert b"</script" not in bundle.lower()  # inlined into a <script> element
    assert "BSD 2-Clause License" in STATIC.joinpath("niivue.LICENSE").read_text()


@pytest.mark.parametrize("signed", [False, True])
def test_encoded_volume_keeps_zero_sign_and_values_within_half_a_step(signed):
    rng = np.random.default_rng(1)
    values = (rng.standard_normal((9, 8, 7)) if signed else rng.random((9, 8, 7))).astype(np.float32)
    values[0] = 0
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    img = nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(encode_volume(values, affine, signed))))
    decoded = np.asarray(img.dataobj, dtype=np.float64)
    step = img.dataobj.slope
    assert img.get_data_dtype() == np.uint8 and np.allclose(img.affine, affine)
    assert np.all(decoded[0] == 0) and np.max(np.abs(decoded - values)) <= step / 2 + 1e-6
    assert np.array_equal(np.sign(decoded[np.abs(values) > step]), np.sign(values[np.abs(values) > step]))


def test_top_percent_threshold_and_grid_check():
    values = np.zeros((10, 10, 10), dtype=np.float32)
    values.flat[:100] = -np.arange(1, 101)
    assert top_percent_threshold(values, 5) == pytest.approx(95.05)
    assert top_percent_threshold(np.zeros(3), 5) == 0.0
    template = Layer("a", nib.Nifti1Image(values, np.eye(4)))
    shifted = Layer("b", nib.Nifti1Image(values, np.diag([2.0, 2.0, 2.0, 1.0])))
    with pytest.raises(ValueError, match="'b' is not on the grid of 'a'"):
        viewer_html([template], [shifted])
    with pytest.raises(ValueError, match="colour map 'rainbow'"):
        viewer_html([template], [Layer("c", template.image, colormap="rainbow")])


@pytest.mark.slow
def test_viewer_draws_switches_overlays_and_names_the_region(viewer_page, tmp_path):
    dom, shot = browse(viewer_page, tmp_path / "first")
    root = viewer_root(dom)
    assert root["state"] == "ready" and root["errors"] == "", root
    assert root["overlay"] == "unsigned" and root["background"] == "template"
    first = canvas_pixels(dom, shot)
    assert grey_pixels(first) > 5000 and warm_pixels(first) > 50 and winter_pixels(first) == 0  # non-blank

    dom, shot = browse(viewer_page, tmp_path / "second",
                       f"set('overlay', '1'); set('goto', '{HIPPOCAMPUS_MM}');")
    root = viewer_root(dom)
    assert root["state"] == "ready" and root["errors"] == "", root
    assert root["overlay"] == "signed" and root["region"] == "Hippocampus_L"
    location = re.search(r'data-role="location">([^<]*)<', dom).group(1)
    assert location.startswith("MNI -26, -22, -14 mm") and "AAL3: Hippocampus_L" in location and "signed: -" in location
    second = canvas_pixels(dom, shot)
    assert winter_pixels(second) > 50  # the picker put the signed map's negative hippocampus on screen


@pytest.mark.slow
def test_viewer_falls_back_to_static_figures_without_webgl(viewer_page, tmp_path):
    flags = tuple(f for f in CHROMIUM_FLAGS if "angle" not in f and "swiftshader" not in f) + ("--disable-webgl",)
    dom, _ = browse(viewer_page, tmp_path, flags=flags)
    root = viewer_root(dom)
    assert root["state"] == "fallback" and root["errors"] == ""
    fallback = dom.split('data-role="fallback"', 1)[1].split("</div>", 1)[0]
    assert "hidden" not in fallback.split(">", 1)[0] and "no WebGL2" in fallback and 'id="static-figures"' in fallback


def test_layer_names_cannot_end_the_script_and_the_fragment_is_self_contained():
    values = np.zeros((6, 6, 6), dtype=np.float32)
    values[2:4, 2:4, 2:4] = 1.0
    image = nib.Nifti1Image(values, np.eye(4))
    fragment = viewer_html([Layer("template", image)], [Layer("</script><b>x</b>", image, threshold=0.5)])
    assert fragment.count("</script>") == 3  # the data, NiiVue's bundle and the viewer's script
    assert 'src="http' not in fragment and "<link" not in fragment
    data = json.loads(re.search(r'id="adheat-viewer-data">(.*?)</script>', fragment, re.S).group(1))
    assert data["overlays"][0]["name"] == "</script><b>x</b>" and data["initial"] == 0 and data["atlas"] is None

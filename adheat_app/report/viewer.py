"""The reports' interactive brain viewer: NiiVue inlined with the volumes it shows, one HTML fragment.

:func:`viewer_html` turns named layers on one grid (backgrounds such as the
template or a preprocessed scan; overlays such as heatmaps, references or a
t map) and an atlas into a fragment that works offline in one page: NiiVue's
UMD bundle (``static/niivue.umd.js``, vendored at the version recorded in
``static/niivue.json`` by ``scripts/update_niivue.py``, BSD-2-Clause,
``static/niivue.LICENSE``), the viewer's script (``static/viewer.js``) and a
JSON block of the volumes. Each volume is quantised to 8 bits with its scale
in the NIfTI header (``scl_slope``, ``scl_inter``; a signed map keeps 0
exact), gzipped and base64-encoded; the atlas is its integer labels plus the
region names. The page shows one background and one overlay at a time (a
volume is decoded when first shown, so start-up does not grow with the
number of overlays), with
pickers for both, a threshold slider and a colour map for the overlay, and a
readout of the crosshair in MNI mm with the atlas region under it. Without
WebGL2 (or JavaScript) the fragment shows a message and the caller's static
fallback instead.

The fragment's root carries ``data-state`` (``ready`` or ``fallback``),
``data-overlay``, ``data-background`` and ``data-region`` (the region at the
crosshair) for tests. Where the layers come from is
:mod:`adheat_app.report.viewer_layers`.
"""

from __future__ import annotations

import base64
import functools
import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import nibabel as nib
import numpy as np

from adheat_app.report.html import esc
from adheat_app.templates import Atlas

#: Colour maps offered for overlays (NiiVue names).
COLORMAPS = ("warm", "hot", "red", "green", "blue", "viridis", "plasma", "inferno", "winter", "cool", "gray")
#: Colour map of the negative side of signed overlays.
NEGATIVE_COLORMAP = "winter"
#: Percentile of the nonzero voxels' absolute values that saturates the colour scale.
SATURATION_PERCENTILE = 99.5
#: Percentile of a background's nonzero voxels drawn black.
BACKGROUND_FLOOR_PERCENTILE = 2.0
#: Levels of an 8-bit volume.
LEVELS = 255

STYLE = """
#adheat-viewer .viewer-controls { display: flex; flex-wrap: wrap; gap: .4em 1.2em; align-items: center;
  margin: .4em 0; }
#adheat-viewer .viewer-canvas { width: 100%; height: 520px; background: #000; }
#adheat-viewer canvas { width: 100%; height: 100%; display: block; }
#adheat-viewer .viewer-location { font-family: ui-monospace, monospace; font-size: .9em; min-height: 1.3em; }
#adheat-viewer input[type=range] { width: 12em; vertical-align: middle; }
"""


@dataclass(frozen=True)
class Layer:
    """One volume of the viewer.

    Attributes
    ----------
    name : str
        Shown in the picker and the readout.
    image : nibabel.Nifti1Image
        The map; every layer of a viewer shares one grid (shape and affine).
    colormap : str
        NiiVue colour map (overlays: one of :data:`COLORMAPS`; backgrounds: ``gray``).
    signed : bool
        Show negative values too, with :data:`NEGATIVE_COLORMAP` (overlays only).
    threshold : float or None
        Overlays: absolute values below it are transparent (None: show every nonzero voxel). Backgrounds:
        ignored (the floor is :data:`BACKGROUND_FLOOR_PERCENTILE`).
    description : str
        One line under the picker: what the map is and how its default threshold was chosen.
    """

    name: str
    image: nib.Nifti1Image
    colormap: str = "warm"
    signed: bool = False
    threshold: float | None = None
    description: str = ""


def top_percent_threshold(values: np.ndarray, percent: float) -> float:
    """The absolute value above which the top ``percent`` % of the nonzero voxels lie (0 for an empty map)."""
    magnitude = np.abs(values[np.isfinite(values) & (values != 0)])
    return float(np.percentile(magnitude, 100.0 - percent)) if magnitude.size else 0.0


def encode_volume(values: np.ndarray, affine: np.ndarray, signed: bool) -> str:
    """A map as a gzipped 8-bit NIfTI in base64, its scale in ``scl_slope``/``scl_inter``.

    Signed maps: levels 1..255 with 128 at 0, so 0 (and the sign) stays exact. Other
    maps: levels 0..255 from ``min(0, minimum)`` to the maximum, so a nonnegative map
    keeps 0 exact. The quantisation step is 1/127 (signed) or 1/255 of the range.
    """
    values = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if signed:
        slope = max(float(np.abs(values).max()), np.finfo(np.float32).tiny) / 127.0
        inter = -128.0 * slope
    else:
        inter = min(0.0, float(values.min()))
        slope = max(float(values.max()) - inter, np.finfo(np.float32).tiny) / LEVELS
    levels = np.clip(np.rint((values - inter) / slope), 0, LEVELS).astype(np.uint8)
    img = nib.Nifti1Image(levels, affine)
    img.header.set_slope_inter(slope, inter)
    img.header.set_xyzt_units("mm")
    return _base64_gzip(img.to_bytes())


def _base64_gzip(raw: bytes) -> str:
    return base64.b64encode(gzip.compress(raw, compresslevel=6, mtime=0)).decode("ascii")


def encode_labels(atlas: Atlas) -> str:
    """An atlas's label volume as a gzipped NIfTI (uint8 where the labels fit, else int16) in base64."""
    labels = atlas.array()
    dtype = np.uint8 if labels.min() >= 0 and labels.max() <= np.iinfo(np.uint8).max else np.int16
    img = nib.Nifti1Image(labels.astype(dtype), atlas.img.affine)
    img.header.set_xyzt_units("mm")
    return _base64_gzip(img.to_bytes())


def _background_spec(layer: Layer) -> dict:
    values = np.asarray(layer.image.dataobj, dtype=np.float32)
    nonzero = values[np.isfinite(values) & (values != 0)]
    floor = float(np.percentile(nonzero, BACKGROUND_FLOOR_PERCENTILE)) if nonzero.size else 0.0
    top = float(np.percentile(nonzero, SATURATION_PERCENTILE)) if nonzero.size else 1.0
    return {"name": layer.name, "description": layer.description, "colormap": "gray", "signed": False,
            "threshold": floor, "cal_max": max(top, floor + 1e-6), "colorbar": False,
            "data": encode_volume(values, layer.image.affine, signed=False)}


def _overlay_spec(layer: Layer) -> dict:
    if layer.colormap not in COLORMAPS:
        raise ValueError(f"overlay {layer.name!r}: colour map {layer.colormap!r} is not one of {', '.join(COLORMAPS)}")
    values = np.asarray(layer.image.dataobj, dtype=np.float32)
    finite = values[np.isfinite(values)]
    peak = float(np.abs(finite).max()) if finite.size else 0.0
    threshold = float(layer.threshold) if layer.threshold is not None else 0.0
    cal_max = max(top_percent_threshold(values, 100.0 - SATURATION_PERCENTILE), threshold * 1.01, 1e-6)
    return {"name": layer.name, "description": layer.description, "colormap": layer.colormap,
            "colormap_negative": NEGATIVE_COLORMAP, "signed": layer.signed, "threshold": threshold,
            "cal_max": cal_max, "max": max(peak, cal_max), "colorbar": True,
            "data": encode_volume(values, layer.image.affine, signed=layer.signed)}


def _check_grid(layers: Sequence[Layer], atlas: Atlas | None) -> None:
    shape, affine = layers[0].image.shape[:3], layers[0].image.affine
    images = [(layer.name, layer.image) for layer in layers] + ([(atlas.name, atlas.img)] if atlas else [])
    for name, image in images:
        if image.shape[:3] != shape or not np.allclose(image.affine, affine, atol=1e-3):
            raise ValueError(f"viewer layer {name!r} is not on the grid of {layers[0].name!r} "
                             f"({image.shape[:3]} vs {shape})")


@functools.lru_cache(maxsize=None)
def _static(name: str) -> str:
    return resources.files("adheat_app.report").joinpath("static", name).read_text(encoding="utf-8")


def niivue_version() -> str:
    """The version of the vendored NiiVue bundle (``static/niivue.json``)."""
    return json.loads(_static("niivue.json"))["version"]


def _options(items: Sequence[tuple[str, str]], selected: str | None = None) -> str:
    return "".join(f'<option value="{esc(value)}"{" selected" if value == selected else ""}>{esc(text)}</option>'
                   for value, text in items)


def _script_json(data: dict) -> str:
    """JSON safe inside a ``<script>`` element (no ``</`` can end it; NaN, which JSON lacks, raises)."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def viewer_html(backgrounds: Sequence[Layer], overlays: Sequence[Layer], atlas: Atlas | None = None,
                fallback: str = "", initial: int = 0) -> str:
    """The viewer as an HTML fragment with NiiVue, its script and every volume inlined.

    Parameters
    ----------
    backgrounds : sequence of Layer
        At least one; the first is shown first.
    overlays : sequence of Layer
        Maps drawn over the background, one at a time (may be empty).
    atlas : Atlas, optional
        Label volume on the same grid; the readout names its region at the crosshair.
    fallback : str
        HTML shown instead of the viewer where WebGL2 or JavaScript is unavailable (e.g. a link to the page's
        static figures).
    initial : int
        Index of the overlay shown first.

    Raises
    ------
    ValueError
        No background, a layer on another grid, or an unknown colour map.
    """
    if not backgrounds:
        raise ValueError("the viewer needs at least one background layer")
    _check_grid([*backgrounds, *overlays], atlas)
    spec = {
        "backgrounds": [_background_spec(layer) for layer in backgrounds],
        "overlays": [_overlay_spec(layer) for layer in overlays],
        "initial": min(initial, len(overlays) - 1),
        "atlas": None if atlas is None else {"name": atlas.name, "data": encode_labels(atlas),
                                             "names": {str(k): v for k, v in sorted(atlas.labels.items())}},
    }
    background_picker = _options([(str(i), layer.name) for i, layer in enumerate(backgrounds)])
    overlay_picker = _options([(str(i), layer.name) for i, layer in enumerate(overlays)] + [("-1", "none")],
                              str(spec["initial"]))
    needs = "The interactive viewer needs JavaScript and WebGL2"
    hidden_background = " hidden" if len(backgrounds) < 2 else ""
    return f"""<div id="adheat-viewer" data-state="loading">
<style>{STYLE}</style>
<div data-role="controls" class="viewer-controls">
<label{hidden_background}>Background <select data-role="background">{background_picker}</select></label>
<label>Overlay <select data-role="overlay">{overlay_picker}</select></label>
<span data-role="overlay-controls">
<label>Threshold |value| &ge; <input type="range" data-role="threshold" min="0"></label>
<span data-role="threshold-value"></span>
<label>Colours <select data-role="colormap">{_options([(c, c) for c in COLORMAPS])}</select></label>
</span>
<label>Go to (x y z mm) <input data-role="goto" size="12" placeholder="-26 -22 -14"></label>
</div>
<p class="note" data-role="description"></p>
<div data-role="canvas-box" class="viewer-canvas"><canvas data-role="canvas"></canvas></div>
<p class="viewer-location" data-role="location"></p>
<p class="note">Click or drag in a view to move the crosshair; scroll to change slices. Values are shown at 8-bit
precision. Viewer: NiiVue {esc(niivue_version())} (BSD-2-Clause).</p>
<div data-role="fallback" hidden><p class="missing">{needs} (<span data-role="reason"></span>).</p>{fallback}</div>
<noscript><p class="missing">{needs}.</p>{fallback}</noscript>
<script type="application/json" id="adheat-viewer-data">{_script_json(spec)}</script>
<script>{_static("niivue.umd.js")}</script>
<script>{_static("viewer.js")}</script>
</div>
"""

"""What the reports' interactive viewer shows: the layers of ``group.html`` and of each ``sub-<label>.html``.

``group.html`` (:func:`group_viewer`): the template as background; overlays
the group mean map (label ``all``) of every method, the SVM activation
pattern, every reference map scored against (the user's map or meta-analysis,
the region prior, the simulated truth) and the cohort's two-sample t map.
``sub-<label>.html`` (:func:`subject_viewer`): each session's preprocessed
T1w as background; overlays its log Jacobian and its heatmaps (of a
two-channel model the sum over channels, as the page's static figures; each
channel's map stays in its file). Both name the
AAL3 region under the crosshair. Default thresholds: a reference's own
binarisation threshold, the t map's FWE threshold, and for every other map
the top :data:`TOP_PERCENT` % of its nonzero voxels by absolute value (one
of the top-k levels of the overlap scores). Each function returns the
viewer's HTML (:mod:`adheat_app.report.viewer`) or a "Not computed"
paragraph when there is nothing to overlay.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np

from adheat_app.bids import Derivatives
from adheat_app.cohort import Cohort
from adheat_app.config import RunConfig
from adheat_app.errors import InputError
from adheat_app.io import read_json
from adheat_app.layout import (
    MapName, find_heatmaps, find_preproc, group_map_methods, group_map_path, logjacobian_path, sidecar_path,
)
from adheat_app.report.html import not_computed
from adheat_app.report.viewer import Layer, top_percent_threshold, viewer_html
from adheat_app.templates import Atlas, Template, get_atlas, parse_resolution

LOGGER = logging.getLogger(__name__)

#: Default overlay threshold of maps without one of their own: the top k % of nonzero voxels.
TOP_PERCENT = 5.0
#: Shown where WebGL2 is unavailable: the group page's sections with static figures of the same maps.
GROUP_FALLBACK = ('<p>The same maps as static figures: <a href="#heatmaps">mean heatmaps</a>, '
                  '<a href="#svm">SVM pattern</a>, <a href="#reference">reference maps</a>.</p>')
#: As :data:`GROUP_FALLBACK`, for a subject's page.
SUBJECT_FALLBACK = ('<p>The same maps as static figures: <a href="#heatmaps">heatmaps</a>, '
                    '<a href="#preprocessing">registration QC</a>.</p>')


def _top_layer(name: str, image: nib.Nifti1Image, what: str, signed: bool | None = None) -> Layer:
    """An overlay thresholded at its top :data:`TOP_PERCENT` % (signed when it has negative values)."""
    values = np.asarray(image.dataobj, dtype=np.float32)
    threshold = top_percent_threshold(values, TOP_PERCENT)
    signed = bool((values < 0).any()) if signed is None else signed
    return Layer(name, image, colormap="warm", signed=signed, threshold=threshold,
                 description=f"{what}; shown where |value| \u2265 {threshold:.3g} (top {TOP_PERCENT:g} % of its "
                             "nonzero voxels).")


def _atlas_on(image: nib.Nifti1Image, space: str, resolution: float) -> Atlas | None:
    """AAL3 on the grid of ``image`` (None, logged, when it cannot be had on that grid)."""
    try:
        atlas = get_atlas(resolution, space)
    except (InputError, ValueError, OSError) as exc:
        LOGGER.warning("viewer: no AAL3 region names (%s)", exc)
        return None
    if atlas.img.shape[:3] != image.shape[:3] or not np.allclose(atlas.img.affine, image.affine, atol=1e-3):
        LOGGER.warning("viewer: AAL3 of %s at %g mm is not on the maps' grid; no region names", space, resolution)
        return None
    return atlas


def _group_overlays(config: RunConfig, derivs: Derivatives, cohort: Cohort, template: Template) -> list[Layer]:
    from adheat_app.baseline.svm import output_paths
    from adheat_app.evaluation.cohort_reference import ALPHA, NAME as COHORT, cohort_paths
    from adheat_app.evaluation.references import REFERENCES, Context
    from adheat_app.evaluation.references._catalog import all_references

    root, space, res = derivs.root, template.space, template.res_label
    methods = sorted(group_map_methods(root, space, res),
                     key=lambda m: (MapName.parse(m).summed.desc, MapName.parse(m).channel or ""))
    overlays = [_top_layer(method, nib.load(group_map_path(root, space, res, method, "all")),
                           f"{method}: mean of the per-subject maps, all subjects") for method in methods]
    pattern = output_paths(derivs, cohort)[0]
    if pattern.is_file():
        overlays.append(_top_layer("SVM pattern", nib.load(pattern), "SVM activation pattern (Haufe et al. 2014), "
                                   "mean over folds", signed=True))
    try:
        references = all_references(Context(config, derivs, cohort, template, compute=False))
    except InputError as exc:
        LOGGER.warning("viewer: no reference maps (%s)", exc)
        references = []
    # the cohort's maps (one per input channel) are shown as their signed t maps below
    tested = [ref for ref in references if ref.name in REFERENCES[COHORT].names]
    for ref in (ref for ref in references if ref.name not in REFERENCES[COHORT].names):
        overlays.append(Layer(f"reference: {ref.name}", nib.Nifti1Image(ref.values.astype(np.float32), template.affine),
                              colormap="green", threshold=ref.threshold,
                              description=f"{ref.description} Shown above its threshold {ref.threshold:.3g}."))
    for ref in tested:
        t_map = cohort_paths(derivs, cohort, ref.name.removeprefix(COHORT))["t"]
        if t_map.is_file():
            overlays.append(Layer(f"reference: {ref.name} t", nib.load(t_map), signed=True,
                                  threshold=ref.threshold,
                                  description=f"t of {cohort.positive_label} minus {cohort.negative_label}; shown "
                                              f"where |t| \u2265 {ref.threshold:.3g} (FWE p < {ALPHA:g})."))
    return overlays


def group_viewer(config: RunConfig, derivs: Derivatives, cohort: Cohort, template: Template) -> str:
    """The viewer of ``group.html``: group maps, SVM pattern, references and t map over the template."""
    overlays = _group_overlays(config, derivs, cohort, template)
    if not overlays:
        return not_computed("no group maps, SVM pattern or reference maps to explore")
    background = Layer(f"template ({template.space})", template.t1w)
    return viewer_html([background], overlays, _atlas_on(template.t1w, template.space, template.resolution),
                       GROUP_FALLBACK)


def _heatmap_layer(path: Path, key: str, method: str) -> Layer:
    side = sidecar_path(path)
    sidecar = read_json(side) if side.is_file() else {}
    signed = sidecar.get("Signed")
    probability = sidecar.get("PredictedProbability")
    probability = f"{probability:.3f}" if isinstance(probability, (int, float)) else "n/a"
    what = (f"{method} heatmap of {key} (fold {sidecar.get('Fold', 'n/a')}, target "
            f"{sidecar.get('TargetClass', 'n/a')}, predicted probability {probability})")
    return _top_layer(f"{key} {method}", nib.load(path), what, None if signed is None else bool(signed))


def subject_viewer(derivs: Derivatives, subject: str) -> str:
    """The viewer of ``sub-<label>.html``: each session's log Jacobian and heatmaps over its preprocessed T1w."""
    sessions = find_preproc(derivs.root, subject)
    if not sessions:
        return not_computed(f"no preprocessed T1w for sub-{subject}")
    _, first = sessions[0]
    space, res = first.get("space"), first.get("res")
    backgrounds, overlays = [], []
    for path, name in sessions:
        if (name.get("space"), name.get("res")) != (space, res):
            continue
        backgrounds.append(Layer(f"{name.key} preprocessed T1w", nib.load(path)))
        maps = {found.get("desc"): heatmap for heatmap, found in find_heatmaps(derivs.root, space, res, subject)
                if found.key == name.key}
        overlays += [_heatmap_layer(heatmap, name.key, method) for method, heatmap in maps.items()
                     if MapName.parse(method).channel is None or MapName.parse(method).summed.desc not in maps]
        scan = SimpleNamespace(subject=name.get("sub"), session=name.get("ses"))
        logjacobian = logjacobian_path(derivs.root, scan, space, res)
        if logjacobian.is_file():
            overlays.append(_top_layer(f"{name.key} log Jacobian", nib.load(logjacobian),
                                       f"log Jacobian determinant of {name.key}'s registration (negative: less tissue "
                                       "than the template, relative to the whole brain)", signed=True))
    if not overlays:
        return not_computed(f"no log Jacobian or heatmaps of sub-{subject} to explore")
    atlas = _atlas_on(backgrounds[0].image, space, parse_resolution(res))
    return viewer_html(backgrounds, overlays, atlas, SUBJECT_FALLBACK)


"""The template-space writer: simulated subjects written as if the participant level had registered them.

Training, heatmap and evaluation tests and benchmarks start from here in
seconds (no native scan, no registration).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from adheat_app.bids import Derivatives, T1wInput
from adheat_app.simulate.anatomy import GroundTruth
from adheat_app.simulate.cohort import REFERENCE_SITE, SubjectSpec
from adheat_app.simulate.geometry import nifti
from adheat_app.simulate.subject import sample_subject, subject_anatomy


def template_space_image(truth: GroundTruth, spec: SubjectSpec, individual: bool = True) -> np.ndarray:
    """A subject's image on the template grid, before pose, bias and noise, with its site's contrast.

    Parameters
    ----------
    truth : GroundTruth
        The anatomy of the subject's parent. A parent other than the template
        is sampled through its SyN correspondence, as a perfect registration
        would bring it onto the template.
    spec : SubjectSpec
        The subject.
    individual : bool
        Include the individual displacement, age and ventricle flows. False
        gives the parent with only the planted atrophy (for ``darkening`` and
        the template parent: its mean inside ``truth.region`` is ``1 -
        spec.scale`` times the template's).

    Returns
    -------
    numpy.ndarray
        float32 array on the template grid, in the units of ``truth.intensity``.
    """
    anatomy = subject_anatomy(truth, spec)
    sample = sample_subject(truth, anatomy, truth.template_points(), individual)
    return sample.intensity(spec.site.class_means(truth.class_means)).astype(np.float32)


def relevance_ratio(maps: np.ndarray, region: np.ndarray, brain: np.ndarray) -> float:
    """How strongly heatmaps point at a planted region: relevance per voxel inside it over that in the rest.

    Each map's absolute values inside ``brain`` are scaled to unit total (an
    all-zero map stays zero), averaged over maps, and the mean per voxel inside
    ``region`` is divided by the mean per voxel in the rest of ``brain``: 1 means
    no preference.

    Parameters
    ----------
    maps : numpy.ndarray
        Heatmaps ``(N, X, Y, Z)`` on the template grid.
    region, brain : numpy.ndarray
        Boolean masks of the planted region and the brain on that grid.
    """
    absolute = np.abs(maps) * brain
    total = absolute.sum(axis=(1, 2, 3), keepdims=True)
    mean = (absolute / np.where(total > 0, total, 1)).mean(axis=0)
    return float(mean[region & brain].mean() / mean[~region & brain].mean())


def write_template_space_derivatives(derivs: Derivatives, truths: Mapping[str, GroundTruth],
                                     specs: Sequence[SubjectSpec],
                                     intensity_norm: str = "whitematter", noise: float = 0.02,
                                     seed: int = 0) -> list[T1wInput]:
    """Write each simulated scan's template-space image where the participant level writes its output.

    The "oracle" preprocessing: instead of simulating a native scan and
    registering it, each session's image is the subject's template-space image
    (:func:`template_space_image`: individual anatomy, planted atrophy and its
    site's contrast) plus Gaussian noise of SD ``noise`` times the site's noise
    relative to the reference site (intensity units of ``truth.intensity``),
    normalised by ``--intensity-norm`` inside the template brain mask, and
    written with that mask as ``desc-preproc_T1w`` / ``desc-brain_mask``.
    Training, heatmap and evaluation benchmarks and tests start from here in
    seconds. The raw dataset (``derivs.bids_dir``) must come from
    :func:`simulate_cohort` with the same ``specs``; ``truths`` holds the
    anatomy of every parent the specs name (``spec.anatomy``).

    Returns
    -------
    list of T1wInput
        The raw inputs the written images stand for, in the order of ``specs``.
    """
    from adheat_app.layout import preproc_paths, subject_path
    from adheat_app.preprocess.intensity import normalise

    template = next(iter(truths.values())).template
    mask = template.mask_array().astype(bool)
    template_data = np.asarray(template.t1w.dataobj, dtype=np.float32)
    rng = np.random.default_rng(seed)
    inputs = []
    for spec in specs:
        image = template_space_image(truths[spec.anatomy], spec)
        for session in range(spec.sessions):
            ses = spec.session_label(session)
            t1w = T1wInput(spec.label, ses, subject_path(derivs.bids_dir, spec.label, ses, "T1w"))
            sd = noise * spec.site.noise / REFERENCE_SITE.noise
            noisy = image + rng.normal(0, sd, image.shape).astype(np.float32)
            data = normalise(noisy, mask, intensity_norm, template_data, mask)
            img_path, mask_path = preproc_paths(derivs.root, t1w, template.space, template.res_label)
            sources = [derivs.source_uri(t1w.path)]
            derivs.write_image(img_path, nifti(data, template.affine, 4),
                               {"Sources": sources, "SkullStripped": True, "IntensityNormalization": intensity_norm,
                                "Description": "simulated template-space image (no registration)"})
            derivs.write_image(mask_path, nifti(mask.astype(np.uint8), template.affine, 4),
                               {"Sources": sources, "Type": "Brain"})
            inputs.append(t1w)
    return inputs

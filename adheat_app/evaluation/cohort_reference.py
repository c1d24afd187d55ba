"""The cohort reference: where do the two classes differ in this cohort (voxel-wise two-sample test)?

The classic mass-univariate answer: a two-sample t-test, positive class
against negative class, of the preprocessed images (the CNN's input) at every
brain voxel, with family-wise error control by permutation of the labels
(max-t, two-sided; nilearn's ``non_parametric_inference``, Winkler et al.
2014). One scan per subject (the first session) keeps the samples independent.

Outputs under ``group/`` (``<P>vs<N>`` from the class labels, e.g. ``ADvsCN``):

* ``space-<s>_res-<r>_desc-ADvsCN_stat-t_statmap.nii.gz``: the t map
  (positive: higher intensity in the positive class);
* ``space-<s>_res-<r>_desc-ADvsCN_stat-logpfwe_statmap.nii.gz``: -log10 of the
  FWE-corrected p-value;
* ``space-<s>_res-<r>_desc-ADvsCN_mask.nii.gz``: voxels with FWE p < :data:`ALPHA`.

It is scored as reference ``cohort``: continuous values ``|t|``, binary
reference the FWE-significant voxels. With max-t correction the significant
voxels are exactly those whose ``|t|`` exceeds every non-significant voxel's,
so the reference's threshold is the largest ``|t|`` of a non-significant voxel.
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings

import nibabel as nib
import numpy as np
import pandas as pd

from adheat_app.bids import Derivatives, is_complete, software_versions
from adheat_app.cohort import Cohort
from adheat_app.config import RunConfig
from adheat_app.evaluation.reference import Reference
from adheat_app.layout import to_label
from adheat_app.templates import Template
from adheat_app.volumes import cache_key, load_volumes

LOGGER = logging.getLogger(__name__)

NAME = "cohort"
#: Family-wise error rate of the mask.
ALPHA = 0.05
#: Fewest subjects per class for the test.
MIN_PER_CLASS = 3


def _contrast(cohort: Cohort) -> str:
    return f"{to_label(cohort.positive_label)}vs{to_label(cohort.negative_label)}"


def cohort_paths(derivs: Derivatives, cohort: Cohort) -> dict[str, object]:
    """Paths of the t map, the -log10 FWE p map and the significance mask."""
    grid = {"space": cohort.space, "res": cohort.res_label, "desc": _contrast(cohort)}
    return {"t": derivs.group_path("statmap", **grid, stat="t"),
            "logp": derivs.group_path("statmap", **grid, stat="logpfwe"),
            "mask": derivs.group_path("mask", **grid)}


def two_sample_test(images: np.ndarray, positive: np.ndarray, mask: np.ndarray, affine: np.ndarray,
                    n_permutations: int, seed: int, n_jobs: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Voxel-wise two-sample t-test with max-t FWE correction (two-sided).

    Parameters
    ----------
    images : numpy.ndarray
        ``(n, X, Y, Z)`` images.
    positive : numpy.ndarray
        Bool ``(n,)``: the scans of the positive class (the others are the negative class).
    mask : numpy.ndarray
        Brain mask (bool, image grid).
    affine : numpy.ndarray
        Affine of the grid.
    n_permutations : int
        Label permutations of the max-t null distribution.
    seed : int
        Seed of the permutations.
    n_jobs : int
        Processes of ``permuted_ols``.

    Returns
    -------
    tuple of numpy.ndarray
        The t map and the -log10 FWE-corrected p map (grid shape, 0 outside the mask).
    """
    from nilearn.glm.second_level import SecondLevelModel, non_parametric_inference

    group = np.where(positive, 1.0, -1.0)
    design = pd.DataFrame({"group": group, "intercept": np.ones(len(group))})
    data = [nib.Nifti1Image(np.asarray(image, dtype=np.float32), affine) for image in images]
    mask_img = nib.Nifti1Image(mask.astype(np.uint8), affine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nilearn's notes on design and mask handling
        model = SecondLevelModel(mask_img=mask_img, minimize_memory=True).fit(data, design_matrix=design)
        t_map = np.asarray(model.compute_contrast("group", output_type="stat").dataobj, dtype=np.float32)
        logp = non_parametric_inference(data, design_matrix=design, second_level_contrast="group", mask=mask_img,
                                        n_perm=n_permutations, two_sided_test=True, random_state=seed,
                                        n_jobs=n_jobs, verbose=0)
    return t_map * mask, np.asarray(logp.dataobj, dtype=np.float32) * mask


def significance_threshold(abs_t: np.ndarray, significant: np.ndarray) -> float:
    """Largest ``|t|`` of a non-significant voxel (``|t| > threshold`` is then the significant set)."""
    rest = abs_t[~significant]
    return float(rest.max()) if rest.size else 0.0


def cohort_reference(config: RunConfig, derivs: Derivatives, cohort: Cohort, template: Template,
                     compute: bool = True) -> Reference | None:
    """Compute (or reuse) the cohort's two-sample test and return it as reference ``cohort``.

    Returns None (logged) when ``--n-permutations`` is 0, when a class has
    fewer than :data:`MIN_PER_CLASS` subjects, or when ``compute`` is False
    and no outputs of these inputs exist.
    """
    if config.evaluation.n_permutations <= 0:
        return None
    first: dict[str, object] = {}
    for scan in cohort.labelled:
        first.setdefault(scan.subject, scan)
    scans = list(first.values())
    positive = np.array([s.target == 1 for s in scans])
    if min(positive.sum(), (~positive).sum()) < MIN_PER_CLASS:
        LOGGER.info("cohort reference: fewer than %d subjects in a class; not computed", MIN_PER_CLASS)
        return None
    n_perm, seed = config.evaluation.n_permutations, config.execution.seed
    paths = cohort_paths(derivs, cohort)
    mask = template.mask_array()
    inputs = hashlib.sha256(f"{cache_key([s.image for s in scans])}|{positive.tolist()}|{n_perm}|{seed}|{ALPHA}"
                            .encode()).hexdigest()[:16]
    if not config.execution.overwrite and all(is_complete(p, InputsHash=inputs) for p in paths.values()):
        t_map = np.asarray(nib.load(paths["t"]).dataobj, dtype=np.float32)
        significant = np.asarray(nib.load(paths["mask"]).dataobj) > 0
    elif not compute:
        return None
    else:
        start = time.time()
        volumes = load_volumes([s.image for s in scans], config.work_dir)
        # --nprocs 0 means every CPU: joblib's -1
        t_map, logp = two_sample_test(volumes, positive, mask, template.affine, n_perm, seed,
                                      config.execution.nprocs or -1)
        significant = (logp > -np.log10(ALPHA)) & mask
        seconds = round(time.time() - start, 3)
        common = {"InputsHash": inputs, "Test": "two-sample t-test, voxel-wise (nilearn SecondLevelModel)",
                  "Contrast": f"{cohort.positive_label} - {cohort.negative_label}",
                  "Correction": "max-t family-wise error by label permutation, two-sided "
                                "(nilearn non_parametric_inference)",
                  "NPermutations": n_perm, "Seed": seed, "Alpha": ALPHA,
                  "NPositive": int(positive.sum()), "NNegative": int((~positive).sum()),
                  "Subjects": [s.key for s in scans], "Sources": [derivs.source_uri(s.image) for s in scans],
                  "Template": template.describe(), "Software": software_versions(), "WallTimeSeconds": seconds}
        for key, data, description in (
                ("t", t_map, "t statistic of the positive minus the negative class"),
                ("logp", logp, "-log10 of the FWE-corrected p-value (max-t, two-sided)"),
                ("mask", significant.astype(np.uint8), f"voxels with FWE-corrected p < {ALPHA}")):
            derivs.write_image(paths[key], nib.Nifti1Image(data, template.affine),
                               {**common, "Description": description})
        LOGGER.info("cohort reference: %d of %d voxels FWE-significant (%d permutations, %.1f s)",
                    int(significant.sum()), int(mask.sum()), n_perm, seconds)
    abs_t = np.abs(t_map) * mask
    return Reference(NAME, abs_t.astype(np.float32), significance_threshold(abs_t[mask], significant[mask]),
                     f"Voxel-wise two-sample t-test {cohort.positive_label} vs {cohort.negative_label} of this "
                     f"cohort's preprocessed images, max-t FWE p < {ALPHA} ({n_perm} permutations); values |t|.",
                     str(paths["t"]))

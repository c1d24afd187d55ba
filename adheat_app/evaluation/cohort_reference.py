"""The cohort reference: where do the two classes differ in this cohort, in each feature the model reads?

The classic mass-univariate answer, once per input channel of ``--input``
(the preprocessed intensity: voxel-based morphometry of the images; the log
Jacobian: tensor-based morphometry): a general linear model at every brain
voxel with the class (positive +1, negative -1), an intercept and the
``--covariates`` columns of ``participants.tsv`` present (age, sex, site;
categorical columns one-hot coded without their first level, numeric ones
standardised, missing values their own level or the median), tested for the
class, with family-wise error control by permutation (max-t, two-sided;
nilearn's ``non_parametric_inference`` with the covariates as confounds,
Winkler et al. 2014). A site or age difference between the classes therefore
does not appear as a class effect. One scan per subject (the first session)
keeps the samples independent.

The reference is computed from the same subjects whose heatmaps it scores,
so it is not independent of them: it says where *this* cohort's classes
differ, not where the disease acts in general.

A reference is *uninformative*, and reported as such instead of scored
(:attr:`~.reference.Reference.uninformative`), when fewer than
:func:`min_voxels` voxels are significant, or when the class is a linear
function of the covariates (R^2 above :data:`MAX_CONFOUND_R2`, e.g. every AD
subject scanned at one site and every CN at another): a class effect cannot be
told from a covariate effect, and no test is run.

Outputs under ``group/`` (``<P>vs<N>`` from the class labels, e.g. ``ADvsCN``,
followed by the channel with several channels: ``ADvsCNlogjacobian``):

* ``space-<s>_res-<r>_desc-ADvsCN_stat-t_statmap.nii.gz``: the t map
  (positive: higher values in the positive class);
* ``space-<s>_res-<r>_desc-ADvsCN_stat-logpfwe_statmap.nii.gz``: -log10 of the
  FWE-corrected p-value;
* ``space-<s>_res-<r>_desc-ADvsCN_mask.nii.gz``: voxels with FWE p < :data:`ALPHA`.

Each is scored as reference ``cohort`` (one channel) or ``cohort<channel>``:
continuous values ``|t|``, binary reference the FWE-significant voxels. With
max-t correction the significant voxels are exactly those whose ``|t|``
exceeds every non-significant voxel's, so the reference's threshold is the
largest ``|t|`` of a non-significant voxel.
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings

import nibabel as nib
import numpy as np
import pandas as pd

from adheat_app.baseline.covariates import covariate_columns
from adheat_app.bids import Derivatives, is_complete, software_versions
from adheat_app.cohort import Cohort, Scan
from adheat_app.config import RunConfig
from adheat_app.evaluation.reference import Reference
from adheat_app.inputs import input_key, load_inputs
from adheat_app.layout import to_label
from adheat_app.plotting import frozen_heap
from adheat_app.templates import Template

LOGGER = logging.getLogger(__name__)

NAME = "cohort"
#: Family-wise error rate of the mask.
ALPHA = 0.05
#: Fewest subjects per class for the test.
MIN_PER_CLASS = 3
#: A reference with fewer significant voxels than this share of the brain (or than :data:`MIN_VOXELS`) is
#: uninformative.
MIN_SHARE = 0.001
MIN_VOXELS = 10
#: Above this R^2 of the class on the covariates, a class effect cannot be told from a covariate effect.
MAX_CONFOUND_R2 = 0.95


def min_voxels(n_brain: int) -> int:
    """Fewest significant voxels of an informative reference on a brain of ``n_brain`` voxels."""
    return max(MIN_VOXELS, int(np.ceil(MIN_SHARE * n_brain)))


def covariate_design(config: RunConfig, scans: list[Scan]) -> pd.DataFrame:
    """The covariate columns of the model (one row per scan; see the module docstring), possibly empty."""
    columns = {}
    for name, (values, categorical) in covariate_columns(config, scans).items():
        if categorical:
            levels = values.fillna("n/a").astype(str)
            dummies = pd.get_dummies(levels, prefix=name, drop_first=True, dtype=float)
            columns.update({c: dummies[c].to_numpy() for c in dummies.columns})
        else:
            numbers = pd.to_numeric(values, errors="coerce")
            numbers = numbers.fillna(numbers.median())
            sd = float(numbers.std())
            columns[name] = ((numbers - numbers.mean()) / (sd if sd > 0 else 1.0)).to_numpy(dtype=float)
    return pd.DataFrame(columns, index=range(len(scans)))


def confound_r2(group: np.ndarray, covariates: pd.DataFrame) -> float:
    """R^2 of the class (+1/-1) regressed on an intercept and the covariates (0 without covariates)."""
    if covariates.shape[1] == 0:
        return 0.0
    design = np.column_stack([np.ones(len(group)), covariates.to_numpy(dtype=float)])
    fitted = design @ np.linalg.lstsq(design, group, rcond=None)[0]
    total = float(np.sum((group - group.mean()) ** 2))
    return 1.0 - float(np.sum((group - fitted) ** 2)) / total if total > 0 else 1.0


def _contrast(cohort: Cohort) -> str:
    return f"{to_label(cohort.positive_label)}vs{to_label(cohort.negative_label)}"


def cohort_paths(derivs: Derivatives, cohort: Cohort, channel: str = "") -> dict[str, object]:
    """Paths of the t map, the -log10 FWE p map and the significance mask (of one input ``channel`` of several)."""
    grid = {"space": cohort.space, "res": cohort.res_label, "desc": f"{_contrast(cohort)}{channel}"}
    return {"t": derivs.group_path("statmap", **grid, stat="t"),
            "logp": derivs.group_path("statmap", **grid, stat="logpfwe"),
            "mask": derivs.group_path("mask", **grid)}


@frozen_heap  # nilearn collects garbage for every image it reads
def two_sample_test(images: np.ndarray, positive: np.ndarray, mask: np.ndarray, affine: np.ndarray,
                    n_permutations: int, seed: int, n_jobs: int = 1, covariates: pd.DataFrame | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Voxel-wise test of the class effect, adjusted for covariates, with max-t FWE correction (two-sided).

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
    covariates : pandas.DataFrame, optional
        Covariate columns (one row per image) entering the model as confounds.

    Returns
    -------
    tuple of numpy.ndarray
        The t map and the -log10 FWE-corrected p map (grid shape, 0 outside the mask).
    """
    from nilearn.glm.second_level import SecondLevelModel, non_parametric_inference

    group = np.where(positive, 1.0, -1.0)
    design = pd.DataFrame({"group": group, "intercept": np.ones(len(group))})
    if covariates is not None and covariates.shape[1]:
        design = pd.concat([design, covariates.reset_index(drop=True)], axis=1)
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


def _uninformative(name: str, reason: str, template: Template) -> Reference:
    """A reference that is reported, not scored: zero values and the reason."""
    return Reference(name, np.zeros(template.shape, np.float32), 0.0, f"Not scored: {reason}.", "", None, reason)


def cohort_reference(config: RunConfig, derivs: Derivatives, cohort: Cohort, template: Template,
                     compute: bool = True) -> list[Reference]:
    """Compute (or reuse) the cohort's voxel-wise class test of every input channel; one reference per channel.

    Returns no reference (logged) when ``--n-permutations`` is 0, when a class has
    fewer than :data:`MIN_PER_CLASS` subjects, or when ``compute`` is False and no
    outputs of these inputs exist. Uninformative references (see the module
    docstring) carry their reason.
    """
    if config.evaluation.n_permutations <= 0:
        return []
    first: dict[str, Scan] = {}
    for scan in cohort.labelled:
        first.setdefault(scan.subject, scan)
    scans = list(first.values())
    positive = np.array([s.target == 1 for s in scans])
    if min(positive.sum(), (~positive).sum()) < MIN_PER_CLASS:
        LOGGER.info("cohort reference: fewer than %d subjects in a class; not computed", MIN_PER_CLASS)
        return []
    channels = cohort.channels
    names = [f"{NAME}{c}" if len(channels) > 1 else NAME for c in channels]
    covariates = covariate_design(config, scans)
    r2 = confound_r2(np.where(positive, 1.0, -1.0), covariates)
    if r2 > MAX_CONFOUND_R2:
        reason = (f"the class is confounded with the covariates {', '.join(covariates.columns)} (R^2 = {r2:.2f}): "
                  "a class effect cannot be told from a covariate effect")
        LOGGER.warning("cohort reference: %s; not computed", reason)
        return [_uninformative(name, reason, template) for name in names]
    n_perm, seed = config.evaluation.n_permutations, config.execution.seed
    mask = template.mask_array()
    inputs = hashlib.sha256(f"{input_key(scans, channels)}|{positive.tolist()}|{n_perm}|{seed}|"
                            f"{ALPHA}|{covariates.to_csv()}".encode()).hexdigest()[:16]
    volumes = None
    references = []
    for c, (channel, name) in enumerate(zip(channels, names)):
        paths = cohort_paths(derivs, cohort, channel if len(channels) > 1 else "")
        if not config.execution.overwrite and all(is_complete(p, InputsHash=inputs) for p in paths.values()):
            t_map = np.asarray(nib.load(paths["t"]).dataobj, dtype=np.float32)
            significant = np.asarray(nib.load(paths["mask"]).dataobj) > 0
        elif not compute:
            continue
        else:
            if volumes is None:
                volumes = load_inputs(scans, channels, config.work_dir)
            t_map, significant = _compute(config, derivs, cohort, template, scans, positive, covariates, channel,
                                          np.asarray(volumes[:, c], dtype=np.float32), paths, inputs)
        abs_t = np.abs(t_map) * mask
        n_significant, needed = int(significant[mask].sum()), min_voxels(int(mask.sum()))
        feature = {"intensity": "preprocessed images", "logjacobian": "log Jacobian maps (tensor-based "
                   "morphometry)"}.get(channel, channel)
        adjusted = f", adjusted for {', '.join(covariates.columns)}" if covariates.shape[1] else ""
        reason = (f"only {n_significant} FWE-significant voxel(s), fewer than {needed}" if n_significant < needed
                  else "")
        references.append(Reference(
            name, abs_t.astype(np.float32), significance_threshold(abs_t[mask], significant[mask]),
            f"Voxel-wise test {cohort.positive_label} vs {cohort.negative_label} of this cohort's {feature}"
            f"{adjusted}, max-t FWE p < {ALPHA} ({n_perm} permutations); values |t|. Computed from the same "
            f"subjects whose heatmaps it scores, so not independent of them."
            + (f" Not scored: {reason}." if reason else ""), str(paths["t"]), None, reason))
    return references


def _compute(config: RunConfig, derivs: Derivatives, cohort: Cohort, template: Template, scans: list[Scan],
             positive: np.ndarray, covariates: pd.DataFrame, channel: str, volumes: np.ndarray, paths: dict,
             inputs: str) -> tuple[np.ndarray, np.ndarray]:
    """Run the test of one channel and write its three images; the t map and the significance mask."""
    n_perm, seed = config.evaluation.n_permutations, config.execution.seed
    mask = template.mask_array()
    start = time.time()
    # --nprocs 0 means every CPU: joblib's -1
    t_map, logp = two_sample_test(volumes, positive, mask, template.affine, n_perm, seed,
                                  config.execution.nprocs or -1, covariates)
    significant = (logp > -np.log10(ALPHA)) & mask
    seconds = round(time.time() - start, 3)
    common = {"InputsHash": inputs, "Test": "voxel-wise general linear model, t-test of the class (nilearn "
                                            "SecondLevelModel)",
              "Channel": channel, "Contrast": f"{cohort.positive_label} - {cohort.negative_label}",
              "Covariates": list(covariates.columns),
              "Correction": "max-t family-wise error by permutation, two-sided, covariates as confounds "
                            "(nilearn non_parametric_inference)",
              "NPermutations": n_perm, "Seed": seed, "Alpha": ALPHA,
              "NPositive": int(positive.sum()), "NNegative": int((~positive).sum()),
              "Subjects": [s.key for s in scans], "Sources": [derivs.source_uri(s.image) for s in scans],
              "Template": template.describe(), "Software": software_versions(), "WallTimeSeconds": seconds}
    for key, data, description in (
            ("t", t_map, "t statistic of the positive minus the negative class"),
            ("logp", logp, "-log10 of the FWE-corrected p-value (max-t, two-sided)"),
            ("mask", significant.astype(np.uint8), f"voxels with FWE-corrected p < {ALPHA}")):
        derivs.write_image(paths[key], nib.Nifti1Image(data, template.affine), {**common, "Description": description})
    LOGGER.info("cohort reference %s: %d of %d voxels FWE-significant (%d permutations, %.1f s)", channel,
                int(significant.sum()), int(mask.sum()), n_perm, seconds)
    return t_map, significant

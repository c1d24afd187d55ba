"""Meta-analysis reference from published peak coordinates: activation likelihood estimation with NiMARE.

``--reference-map`` accepts, besides a NIfTI map, the foci of published
experiments:

* a Sleuth text file (``.txt``, the BrainMap/GingerALE export:
  ``// Reference=MNI`` or ``Talairach``, then per experiment ``// name`` lines,
  ``// Subjects=N`` and one ``x y z`` line per focus), read by NiMARE's
  ``convert_sleuth_to_dataset`` (Talairach foci are converted to MNI);
* a tab-separated table (``.tsv``; ``#`` lines are comments) with columns
  ``study``, ``n_subjects``, ``x``, ``y``, ``z`` (MNI mm), one row per focus;
  the rows of a ``study`` form one experiment.

NiMARE's ALE (Eickhoff et al. 2009, 2012; Turkeltaub et al. 2012) gives the
ALE map, thresholded the BrainMap way: cluster-forming voxel threshold
p < 0.001 and cluster-level family-wise error p < 0.05 by Monte Carlo
simulation (``--n-permutations`` iterations; Eickhoff et al. 2012, 2016). ``--reference-threshold T`` replaces the correction by ``ALE > T``.
ALE needs about 17-20 experiments or more for its results to be driven by
more than one experiment (Eickhoff et al. 2016); fewer are warned about.

Outputs under ``group/`` (on the analysis grid):
``space-<s>_res-<r>_desc-meta_stat-ale_statmap.nii.gz`` (the ALE map) and
``space-<s>_res-<r>_desc-meta_mask.nii.gz`` (the reference voxels), with
sidecars naming the foci file, experiments and threshold. Scored as reference
``meta``.
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from adheat_app.bids import Derivatives, file_hash, is_complete, software_versions
from adheat_app.cohort import Cohort
from adheat_app.config import RunConfig
from adheat_app.errors import InputError
from adheat_app.evaluation.reference import Reference
from adheat_app.io import read_json
from adheat_app.layout import is_foci_file, is_foci_table, sidecar_path
from adheat_app.templates import Template, resample

LOGGER = logging.getLogger(__name__)

NAME = "meta"
#: Experiments below which ALE results are unreliable (Eickhoff et al. 2016).
MIN_EXPERIMENTS = 17
#: Cluster-forming voxel-level p and cluster-level FWE alpha (the BrainMap/GingerALE defaults).
VOXEL_P = 0.001
CLUSTER_ALPHA = 0.05
TSV_COLUMNS = ("study", "n_subjects", "x", "y", "z")
OPTION = "--reference-map"


def _tsv_dataset(path: Path) -> dict:
    """NiMARE dataset dictionary of a foci table (one experiment per study)."""
    try:
        table = pd.read_csv(path, sep="\t", comment="#")
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{OPTION} {path}: not a readable TSV ({exc})") from exc
    missing = [c for c in TSV_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"{OPTION} {path}: columns {', '.join(missing)} are missing; a foci TSV needs "
                         f"{', '.join(TSV_COLUMNS)} (x y z in MNI mm, one row per focus)")
    numeric = table[list(TSV_COLUMNS[1:])].apply(pd.to_numeric, errors="coerce")
    if numeric.isna().any().any() or table.empty:
        raise InputError(f"{OPTION} {path}: n_subjects, x, y and z must be numbers on every row")
    source = {}
    for study, rows in table.assign(**numeric).groupby("study", sort=False):
        source[str(study)] = {"contrasts": {"1": {
            "coords": {"space": "MNI", "x": rows["x"].tolist(), "y": rows["y"].tolist(), "z": rows["z"].tolist()},
            "metadata": {"sample_sizes": [int(rows["n_subjects"].iloc[0])]}}}}
    return source


def existing_foci_file(path: str | Path) -> Path:
    """``path`` as a Path, or an :class:`InputError` naming it when it is not a file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{OPTION} {path}: file not found; pass a NIfTI map, a Sleuth .txt or a foci .tsv")
    return path


def read_foci(path: Path):
    """The experiments of a Sleuth ``.txt`` or foci ``.tsv`` file as a NiMARE ``Dataset``.

    Raises
    ------
    InputError
        When the file is missing or cannot be parsed.
    """
    from nimare.dataset import Dataset
    from nimare.io import convert_sleuth_to_dataset

    path = existing_foci_file(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if is_foci_table(path):
            return Dataset(_tsv_dataset(path))
        try:
            return convert_sleuth_to_dataset(str(path))
        except Exception as exc:  # NiMARE raises ValueError/IndexError/KeyError on malformed files
            raise InputError(f"{OPTION} {path}: not a Sleuth text file ({type(exc).__name__}: {exc}); expected "
                             "'// Reference=MNI', '// Subjects=N' and 'x y z' lines per experiment") from exc


def ale(dataset, threshold: float | None, n_iters: int, seed: int, n_cores: int = 1) -> tuple[nib.Nifti1Image,
                                                                                            nib.Nifti1Image, str]:
    """ALE map and reference mask (NiMARE's MNI152 2 mm grid) of a dataset.

    Parameters
    ----------
    dataset : nimare.dataset.Dataset
        The experiments.
    threshold : float or None
        ``ALE > threshold`` forms the mask; None: cluster-level FWE (:data:`VOXEL_P`, :data:`CLUSTER_ALPHA`).
    n_iters : int
        Monte Carlo iterations of the correction.
    seed : int
        Seed of the Monte Carlo simulation (NumPy's global generator, which NiMARE draws from).
    n_cores : int
        Processes of the simulation.

    Returns
    -------
    tuple
        ALE image, mask image (uint8) and a sentence saying how the mask was made.
    """
    from nimare.correct import FWECorrector
    from nimare.meta.cbma.ale import ALE

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = ALE().fit(dataset)
        stat = result.get_map("stat")
        if threshold is not None:
            mask = np.asarray(stat.dataobj) > threshold
            how = f"ALE > {threshold:g} (--reference-threshold)"
        else:
            np.random.seed(seed)
            corrected = FWECorrector(method="montecarlo", voxel_thresh=VOXEL_P, n_iters=n_iters,
                                     n_cores=n_cores).transform(result)
            logp = np.asarray(corrected.get_map("logp_desc-size_level-cluster_corr-FWE_method-montecarlo").dataobj)
            z = np.asarray(corrected.get_map("z_desc-size_level-cluster_corr-FWE_method-montecarlo").dataobj)
            mask = (logp > -np.log10(CLUSTER_ALPHA)) & (z > 0)
            how = (f"cluster-level FWE p < {CLUSTER_ALPHA} (cluster-forming p < {VOXEL_P}, {n_iters} Monte Carlo "
                   "iterations)")
    return stat, nib.Nifti1Image(mask.astype(np.uint8), stat.affine), how


def meta_paths(derivs: Derivatives, cohort: Cohort) -> dict[str, Path]:
    """Paths of the ALE map and the reference mask under ``group/``."""
    grid = {"space": cohort.space, "res": cohort.res_label, "desc": NAME}
    return {"ale": derivs.group_path("statmap", **grid, stat="ale"), "mask": derivs.group_path("mask", **grid)}


def meta_reference(config: RunConfig, derivs: Derivatives, cohort: Cohort, template: Template,
                   compute: bool = True) -> Reference | None:
    """The ALE reference of ``--reference-map`` foci (None when it names no foci file).

    Reuses the outputs under ``group/`` made from the same file and settings;
    with ``compute`` False, returns None instead of computing them.
    """
    ev = config.evaluation
    if not ev.reference_map or not is_foci_file(ev.reference_map):
        return None
    path = existing_foci_file(ev.reference_map)
    seed, n_iters = config.execution.seed, ev.n_permutations
    if ev.reference_threshold is None and n_iters <= 0:
        raise InputError(f"{OPTION} {path}: the ALE's cluster-level FWE correction needs Monte Carlo iterations; "
                         "set --n-permutations (e.g. 1000) or give --reference-threshold")
    inputs = hashlib.sha256(f"{file_hash(path)}|{ev.reference_threshold}|{n_iters}|{seed}|"
                            f"{template.space}|{template.res_label}".encode()).hexdigest()[:16]
    paths = meta_paths(derivs, cohort)
    if not (not config.execution.overwrite and all(is_complete(p, InputsHash=inputs) for p in paths.values())):
        if not compute:
            return None
        start = time.time()
        dataset = read_foci(path)
        n_experiments, n_foci = len(dataset.ids), len(dataset.coordinates)
        if n_experiments < MIN_EXPERIMENTS:
            LOGGER.warning("%s %s: %d experiment(s); ALE needs about %d or more (Eickhoff et al. 2016), so this map "
                           "is not a meaningful meta-analysis", OPTION, path.name, n_experiments, MIN_EXPERIMENTS)
        stat, mask_img, how = ale(dataset, ev.reference_threshold, n_iters, seed, config.execution.nprocs)
        values = np.asarray(resample(stat, template.shape, template.affine).dataobj, dtype=np.float32)
        mask_grid = np.asarray(resample(nib.Nifti1Image(np.asarray(mask_img.dataobj, np.float32), mask_img.affine),
                                        template.shape, template.affine).dataobj) >= 0.5
        brain = template.mask_array()
        common = {"InputsHash": inputs, "Sources": [str(path)], "Experiments": n_experiments, "Foci": n_foci,
                  "Method": "activation likelihood estimation (NiMARE ALE, default kernel)",
                  "Threshold": how, "Seed": seed, "Template": template.describe(), "Software": software_versions(),
                  "WallTimeSeconds": round(time.time() - start, 3),
                  "Warning": (f"{n_experiments} experiment(s): fewer than the {MIN_EXPERIMENTS} ALE needs"
                              if n_experiments < MIN_EXPERIMENTS else None)}
        derivs.write_image(paths["ale"], nib.Nifti1Image(values * brain, template.affine),
                           {**common, "Description": f"ALE map of the foci in {path.name}"})
        derivs.write_image(paths["mask"], nib.Nifti1Image((mask_grid & brain).astype(np.uint8), template.affine),
                           {**common, "Description": f"Reference voxels: {how}"})
        LOGGER.info("meta-analysis reference: %d experiment(s), %d foci, %d voxels (%s)", n_experiments, n_foci,
                    int((mask_grid & brain).sum()), how)
    values = np.asarray(nib.load(paths["ale"]).dataobj, dtype=np.float32)
    mask = np.asarray(nib.load(paths["mask"]).dataobj) > 0
    meta = read_json(sidecar_path(paths["mask"]))
    threshold = float(ev.reference_threshold) if ev.reference_threshold is not None else 0.0
    return Reference(NAME, values, threshold,
                     f"ALE meta-analysis (NiMARE) of {meta['Experiments']} experiment(s), {meta['Foci']} foci from "
                     f"{path.name}; reference voxels: {meta['Threshold']}"
                     + (f". Warning: {meta['Warning']}." if meta.get("Warning") else ""), str(path), mask)
